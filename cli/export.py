"""`ts2net export`, `ts2net quantize` and `ts2net engine` (click), thin wrappers over export.exporter /
export.int8 / export.engine."""
from __future__ import annotations

import json
from pathlib import Path

import click

from cli.calibration import embedded_benchmark_source
from cli.errors import CannotRun, CommandError
# imported here, not in the commands: without torch the import fails while `ts2net` loads the
# command, which then says to install the export extra (cli/main.py)
from export.engine import EngineBuildError, build_engines, parse_batch_profiles
from export.exporter import ExportValidationError, export_bundle
from export.int8 import CalibrationError, add_int8_to_bundle
from runtime.bundle_format import FRAME_MASK_MODES

FRAME_MASK_CHOICE = click.Choice(list(FRAME_MASK_MODES))


@click.command("export")
@click.option("--checkpoint", type=click.Path(exists=True, path_type=Path),
              help="TS2-Net checkpoint: official pytorch_model.bin.N, our safetensors dir, or a CLIP .pt. "
                   "Default: the embedded demo model.")
@click.option("--clip", type=click.Path(exists=True, path_type=Path),
              help="OpenAI CLIP archive (ViT-B-32.pt): exports a TS2-Net initialised from it when no --checkpoint.")
@click.option("--bpe", type=click.Path(exists=True, path_type=Path),
              help="Tokenizer: CLIP's bpe_simple_vocab_16e6.txt.gz or a tokenizer.json (default: found automatically).")
@click.option("--out", required=True, type=click.Path(path_type=Path),
              help="Bundle directory to write (an existing bundle is replaced only once the new one is complete).")
@click.option("--max-frames", type=click.IntRange(min=1), help="Override max_frames (frames per video, >= 1).")
@click.option("--max-words", type=click.IntRange(min=3), help="Override max_words (text length with SOT and EOT, >= 3).")
@click.option("--frame-mask", "frame_mask_mode", type=FRAME_MASK_CHOICE,
              help="Frame mask mode (default: official for official checkpoints, fixed otherwise).")
@click.option("--opset", type=click.IntRange(17, 20), default=17, show_default=True)
@click.option("--int8/--no-int8", "int8", default=True, show_default=True,
              help="Also write INT8 graphs (ONNX Runtime quantization + NNCF OpenVINO IR), gated on the reference.")
@click.option("--calibration-videos", type=click.Path(exists=True, file_okay=False, path_type=Path), default=None,
              help="Folder of real videos the INT8 activations are calibrated on (first 16 by name; default: 16 "
                   "clips of the embedded benchmark's validation split, rendered at export).")
@click.option("--calibration-captions", type=click.Path(exists=True, dir_okay=False, path_type=Path), default=None,
              help="Captions for the text graph's calibration: one per line, or CSV/JSONL with sentence/caption "
                   "(first 64; default: the embedded benchmark's captions).")
@click.option("--int8-onnx", "int8_onnx_mode", type=click.Choice(["dynamic", "static"]), default=None,
              help="ONNX Runtime INT8 form: dynamic (default, fastest on ONNX Runtime) or calibrated static QDQ.")
def export_command(checkpoint, clip, bpe, out, max_frames, max_words, frame_mask_mode, opset, int8,
                   calibration_videos, calibration_captions, int8_onnx_mode):
    """Export a checkpoint to a validated bundle."""
    try:
        result = export_bundle(out, checkpoint=checkpoint, clip=clip, bpe=bpe, opset=opset, max_frames=max_frames,
                               max_words=max_words, frame_mask_mode=frame_mask_mode, int8=int8,
                               calibration_videos=calibration_videos, calibration_captions=calibration_captions,
                               int8_onnx_mode=int8_onnx_mode, calibration_source=embedded_benchmark_source)
    except (ExportValidationError, ValueError, FileNotFoundError, CalibrationError) as exc:
        raise CommandError(str(exc)) from exc
    _echo_reduced_precision(result.manifest)
    for precision, parity in result.parity.items():
        fig = parity.figures
        click.echo(f"{precision}: {'PASS' if parity.passed else 'FAIL'}  text cos min "
                   f"{fig['text_embeds']['cosine_min']:.6f}  frame cos min {fig['frame_embeds']['cosine_min']:.6f}  "
                   f"selection {fig.get('patch_indices', {}).get('agreement', float('nan')):.4f}  "
                   f"top-1 {fig['similarity']['top1_agreement']:.2%}")
    click.echo(f"bundle written to {result.bundle} ({sum(result.seconds.values()):.1f} s); see validation.md")


def _echo_reduced_precision(manifest) -> None:
    """One line per bf16 / int8 row recorded at export: every gate figure, not just pass / fail."""
    for key in ("bf16", "int8", "int8_openvino"):
        row = (manifest.get("parity") or {}).get(key)
        if not row:
            continue
        if row.get("skipped"):
            click.echo(f"{key}: not measured: {row['skipped']}")
            continue
        fig = row["figures"]
        state = "PASS" if row["passed"] else "FAIL (not shipped)" if key != "bf16" else "FAIL"
        click.echo(f"{key} ({row['backend']}): {state}  text cos min {fig['text_embeds']['cosine_min']:.6f} mean "
                   f"{fig['text_embeds']['cosine_mean']:.6f}  frame cos min {fig['frame_embeds']['cosine_min']:.6f} "
                   f"mean {fig['frame_embeds']['cosine_mean']:.6f}  selection "
                   f"{fig.get('patch_indices', {}).get('agreement', float('nan')):.4f}"
                   + "".join(f"\n  - {f}" for f in row["failures"]))


@click.command("quantize")
@click.option("--bundle", "bundle_dir", required=True, type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.option("--calibration-videos", type=click.Path(exists=True, file_okay=False, path_type=Path), default=None,
              help="Folder of real videos (default: the embedded benchmark, as for `ts2net export`).")
@click.option("--calibration-captions", type=click.Path(exists=True, dir_okay=False, path_type=Path), default=None)
@click.option("--int8-onnx", "int8_onnx_mode", type=click.Choice(["dynamic", "static"]), default="dynamic",
              show_default=True)
@click.option("--openvino-ir/--no-openvino-ir", default=True, show_default=True,
              help="Also write the NNCF-quantized OpenVINO IR (the fastest INT8 form on OpenVINO).")
def quantize_command(bundle_dir, calibration_videos, calibration_captions, int8_onnx_mode, openvino_ir):
    """(Re)make a bundle's INT8 graphs and its bf16 row, gated on the reference inputs."""
    try:
        manifest = add_int8_to_bundle(bundle_dir, calibration_videos, calibration_captions, int8_onnx_mode,
                                      openvino_ir, default_source=embedded_benchmark_source)
    except (CalibrationError, ValueError, FileNotFoundError) as exc:  # BundleError is a ValueError
        raise CommandError(str(exc)) from exc
    _echo_reduced_precision(manifest)
    shipped = [g for g in ("text", "video") if "int8" in manifest["graphs"][g]]
    click.echo(f"int8 graphs in {bundle_dir}: {', '.join(shipped) or 'none (gates failed)'}")
    if not shipped:
        raise CommandError("the INT8 graphs failed their gates; see the figures above")


@click.command("engine")
@click.option("--bundle", required=True, type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.option("--batch", "batch_specs", multiple=True, metavar="[GRAPH=]MIN,OPT,MAX",
              help="Optimization profile batch sizes, for both graphs or per graph (text=1,16,64). Repeatable.")
@click.option("--workspace", "workspace_mb", type=int, help="Workspace memory pool limit in MB.")
@click.option("--timing-cache", type=click.Path(path_type=Path), help="Timing cache file (default: ~/.cache/ts2net-deploy/tensorrt/timing-trt<version>-sm<cc>.cache, outside the bundle).")
@click.option("--opt-level", "optimization_level", type=click.IntRange(0, 5), help="Builder optimization level.")
def engine_command(bundle, batch_specs, workspace_mb, timing_cache, optimization_level):
    """Build strongly typed TensorRT engines from the bundle's FP16 graphs."""
    try:
        profiles = parse_batch_profiles(batch_specs)
        entries = build_engines(bundle, profiles, workspace_mb, timing_cache, optimization_level)
    except (EngineBuildError, ValueError, FileNotFoundError) as exc:
        raise CannotRun(str(exc)) from exc
    click.echo(json.dumps({g: {k: e[k] for k in ("file", "tensorrt_version", "gpu", "profile")}
                           for g, e in entries.items()}, indent=2))
