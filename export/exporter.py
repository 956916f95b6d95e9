"""`ts2net export`: a TS2-Net model -> a validated bundle directory.

Steps (each shown on a progress bar): load the model, write the tokenizer, export and check the
FP32 text and video graphs, derive the FP16 graphs, compute reference outputs, validate every
graph with ONNX Runtime against PyTorch, make the INT8 graphs (export/int8.py: calibrated on real
frames and captions, gated on the reference inputs; a form that fails is not listed) and record
the bf16 row (OpenVINO hint on the FP32 graphs), write the manifest. The bundle is marked valid
only if the FP32 graphs meet the FP32 parity row; FP16 figures are measured and recorded either way.
"""
from __future__ import annotations

import logging
import os
import shutil
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np
import onnx
import torch
from tqdm import tqdm

import runtime.bundle_format as bf
import ts2net
from runtime.files import atomic_write_bytes, atomic_write_text, npz_bytes
from runtime.parity import ParityResult, compare_outputs
from runtime.tokenizer import ClipTokenizer, find_bpe_vocab, load_tokenizer
from ts2net import TS2Net
from ts2net.checkpoint import checkpoint_summary

from . import manifest as mf
from .checker import assert_trt_compatible
from .fp16 import convert_to_mixed_precision
from .onnx_graphs import DEFAULT_OPSET, export_graph, save_graph
from .reference import REFERENCE_CAPTIONS, reference_outputs, reference_video_inputs
from .specs import GraphSpec, graph_specs

log = logging.getLogger(__name__)
PACKAGED_CLIP_VOCAB = Path(__file__).parent / "assets" / "bpe_simple_vocab_16e6.txt.gz"
DEFAULT_MODEL_DIR = Path(__file__).resolve().parents[1] / "ts2net" / "demo"

# FP32 islands of the FP16 graphs, by node-name scope of the exported graph (see docs/fp16.md):
# the token score predictor through TopK, the index reordering and the gather of selected tokens.
FP32_SCOPES = ("/visual_token_selector/",)


class ExportValidationError(RuntimeError):
    """The FP32 graphs do not meet the FP32 parity row; the bundle is left marked invalid."""


@dataclass
class ExportResult:
    bundle: Path
    manifest: dict[str, Any]
    parity: dict[str, ParityResult] = field(default_factory=dict)
    seconds: dict[str, float] = field(default_factory=dict)


BUILTIN_TINY = "builtin-tiny"


def default_model() -> tuple[TS2Net, dict[str, Any], Path | None]:
    """The embedded default: the shipped demo model, else a fixed-seed tiny preset.

    `TS2NET_DEFAULT_MODEL` overrides it: a checkpoint directory in our format, or "builtin-tiny"
    for the fixed-seed tiny preset (what the test suite uses, so it never depends on the shipped
    weights).
    """
    choice = os.environ.get("TS2NET_DEFAULT_MODEL")
    directory = DEFAULT_MODEL_DIR if choice is None else None if choice == BUILTIN_TINY else Path(choice)
    if directory is not None and (directory / "model.safetensors").is_file():
        model = ts2net.load_model(directory)
        source = checkpoint_summary(directory)
        source["name"] = ("embedded demo model (ts2net/demo)" if directory == DEFAULT_MODEL_DIR
                          else f"default model from TS2NET_DEFAULT_MODEL ({directory})")
        tokenizer = directory / "tokenizer.json"
        return model, source, tokenizer if tokenizer.is_file() else None
    if choice not in (None, BUILTIN_TINY):
        raise FileNotFoundError(f"TS2NET_DEFAULT_MODEL={choice}: no model.safetensors there "
                                f"(expected a directory written by ts2net.save_model, or {BUILTIN_TINY!r})")
    torch.manual_seed(0)
    model = TS2Net(ts2net.TS2NetConfig.preset("tiny", name="tiny-random-seed0")).eval()
    return model, {"name": "tiny-random-seed0 (fixed-seed tiny preset; no demo model shipped)",
                   "format": "builtin", "sha256": None}, None


def load_source(checkpoint: str | Path | None, clip: str | Path | None, overrides: dict[str, Any]
                ) -> tuple[TS2Net, dict[str, Any], Path | None]:
    """The model to export, its source description, and a tokenizer.json found beside it (if any)."""
    if checkpoint is not None:
        if clip is not None:
            log.info("--clip %s ignored: %s holds every weight", clip, checkpoint)
        path = Path(checkpoint)
        beside = (path if path.is_dir() else path.parent) / "tokenizer.json"
        return ts2net.load_model(path, **overrides), checkpoint_summary(path), beside if beside.is_file() else None
    if clip is not None:
        return ts2net.load_model(clip, **overrides), checkpoint_summary(clip), None
    model, source, tokenizer = default_model()
    if overrides:
        replaced = TS2Net(model.cfg.replace(**overrides))
        replaced.load_state_dict(model.state_dict())
        model = replaced.eval()
    return model, source, tokenizer


def non_finite_weights(model: TS2Net) -> list[str]:
    """Names (with counts) of the model's floating tensors holding NaN or infinity.

    One NaN weight makes every output NaN, and NaN passes every `figure < limit` check, so it must
    be caught at the source, naming the tensor, before anything is exported.
    """
    bad = []
    for name, tensor in model.state_dict().items():
        if tensor.is_floating_point():
            count = int((~torch.isfinite(tensor)).sum())
            if count:
                bad.append(f"{name} ({count} of {tensor.numel()} values)")
    return bad


def require_finite_weights(model: TS2Net, label: str) -> None:
    bad = non_finite_weights(model)
    if bad:
        shown = ", ".join(bad[:5]) + (f" and {len(bad) - 5} more tensors" if len(bad) > 5 else "")
        raise ValueError(f"{label}: non-finite weights (NaN/inf) in {shown}; "
                         "the checkpoint is corrupt (re-save it from training, or restore a good copy)")


def resolve_tokenizer(model: TS2Net, bpe: str | Path | None, beside: Path | None) -> ClipTokenizer:
    """--bpe, else a tokenizer.json shipped with the checkpoint, else CLIP's vocabulary."""
    if bpe is not None:
        tokenizer = load_tokenizer(bpe)
    elif beside is not None:
        tokenizer = load_tokenizer(beside)
    else:
        vocab = find_bpe_vocab() or PACKAGED_CLIP_VOCAB
        tokenizer = load_tokenizer(vocab)
    if tokenizer.vocab_size != model.cfg.vocab_size:
        raise ValueError(f"tokenizer has {tokenizer.vocab_size} tokens but the model's token_embedding has "
                         f"{model.cfg.vocab_size} rows; pass the matching vocabulary with --bpe")
    return tokenizer


def run_onnx(path: Path, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    import onnxruntime as ort

    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    names = [o.name for o in session.get_outputs()]
    return dict(zip(names, session.run(names, inputs)))


def _graph_entry(bundle: Path, name: str, spec: GraphSpec, precision: str, model: onnx.ModelProto,
                 files: list[Path]) -> dict[str, Any]:
    entry = bf.file_entry(bundle, files[0].name, precision=precision,
                          opset=next(o.version for o in model.opset_import if o.domain in ("", "ai.onnx")),
                          inputs=[t.to_manifest() for t in spec.inputs],
                          outputs=[t.to_manifest() for t in spec.outputs],
                          dynamic_axes=sorted(spec.declared_axes))
    if len(files) > 1:
        entry["external_data"] = bf.file_entry(bundle, files[1].name)
    return entry


def check_out_dir(target: Path) -> None:
    """Refuse an `--out` we must not replace: a file, or a non-empty directory that is not a bundle."""
    if target.exists() and not target.is_dir():
        raise ValueError(f"--out {target} exists and is a file; a bundle is a directory: pick another path "
                         "(or remove the file)")
    if target.is_dir() and any(target.iterdir()) and not (target / bf.MANIFEST_NAME).is_file():
        raise ValueError(f"--out {target} is a non-empty directory without {bf.MANIFEST_NAME} (not a bundle); "
                         "pick a new or empty directory, or an existing bundle to replace")


def _swap_in(staging: Path, target: Path) -> None:
    """Replace `target` by the complete bundle in `staging`: old aside, new in, old deleted."""
    if target.exists():
        aside = Path(tempfile.mkdtemp(prefix=f".{target.name}.replaced-", dir=target.parent))
        os.rename(target, aside / target.name)
        os.rename(staging, target)
        shutil.rmtree(aside, ignore_errors=True)
    else:
        os.rename(staging, target)


def _int8_and_bf16(bundle: Path, manifest: dict[str, Any], ref: dict[str, np.ndarray], videos, captions,
                   source, onnx_mode: str | None, progress: bool) -> None:
    """INT8 graphs (entered in the manifest only if they pass the int8 gates) and the bf16 row's figures."""
    from runtime.bundle import Bundle

    from . import int8 as q

    in_memory = Bundle(bundle, manifest)   # the manifest on disk stays "invalid" until the end
    manifest["parity"]["bf16"] = q.bf16_parity(bundle, ref, in_memory.similarity_args)
    if (videos is None or captions is None) and source is None:
        reason = ("no calibration data: pass calibration_videos and calibration_captions (or a calibration_source); "
                  "`ts2net export` defaults to the embedded benchmark")
        log.warning("no INT8 graphs written: %s", reason)
        manifest["parity"]["int8"] = {"backend": "onnxruntime-cpu", "precision": "int8", "passed": None,
                                      "skipped": reason}
        return
    calibration = q.load_calibration(in_memory, videos, captions, progress=progress, default_source=source)
    outcome = q.quantize_bundle(bundle, manifest, calibration, ref, onnx_mode or q.DEFAULT_ONNX_MODE,
                                progress=progress)
    manifest["parity"].update(outcome["parity"])


def export_bundle(out: str | Path, checkpoint: str | Path | None = None, clip: str | Path | None = None,
                  bpe: str | Path | None = None, opset: int = DEFAULT_OPSET, progress: bool = True,
                  fp32_scopes: tuple[str, ...] = FP32_SCOPES, int8: bool = True,
                  calibration_videos: str | Path | None = None, calibration_captions: str | Path | None = None,
                  int8_onnx_mode: str | None = None, calibration_source=None, **overrides: Any) -> ExportResult:
    """Export a bundle into `out`; raises ExportValidationError (bundle marked invalid) on FP32 failure.

    int8: also write the INT8 graphs, calibrated on `calibration_videos` / `calibration_captions`,
    or on what `calibration_source` (export.int8.CalibrationSource) provides for the missing ones;
    with neither, the INT8 step is recorded as skipped with the reason.

    The bundle is written into a temporary sibling directory and swapped in only when complete,
    so an interrupted or failed export leaves an existing bundle at `out` exactly as it was. When
    FP32 validation fails, a new `out` receives the bundle marked invalid (for inspection); an
    existing bundle is kept and the rejected export goes to `<out>.rejected` instead.
    """
    target = Path(out)
    check_out_dir(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{target.name}.exporting-", dir=target.parent))
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(staging, 0o777 & ~umask)  # mkdtemp makes it 0700; a bundle gets the usual permissions
    replacing = target.exists() and (target / bf.MANIFEST_NAME).is_file()
    try:
        int8_options = {"videos": calibration_videos, "captions": calibration_captions, "source": calibration_source,
                        "onnx_mode": int8_onnx_mode} if int8 else None
        result = _export_into(staging, target, checkpoint, clip, bpe, opset, progress, fp32_scopes, overrides,
                              int8_options)
    except ExportValidationError as exc:
        if replacing:
            rejected = target.with_name(target.name + ".rejected")
            shutil.rmtree(rejected, ignore_errors=True)
            os.rename(staging, rejected)
            raise ExportValidationError(f"{exc}\nthe previous bundle at {target} is unchanged; the rejected export "
                                        f"is in {rejected} for inspection") from None
        _swap_in(staging, target)
        raise
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    _swap_in(staging, target)
    result.bundle = target
    return result


def _export_into(bundle: Path, target: Path, checkpoint, clip, bpe, opset: int, progress: bool,
                 fp32_scopes: tuple[str, ...], overrides: dict[str, Any],
                 int8_options: dict[str, Any] | None = None) -> ExportResult:
    """export_bundle's work, written into the (temporary) directory `bundle`; `target` names it in messages."""
    overrides = {k: v for k, v in overrides.items() if v is not None}
    steps = tqdm(total=8 if int8_options is not None else 7, desc="export", unit="step", disable=not progress)
    try:
        return _export_steps(bundle, target, checkpoint, clip, bpe, opset, steps, fp32_scopes, overrides,
                             int8_options, progress)
    finally:
        steps.close()  # before any error message, so it is not printed on the progress bar's line


def _export_steps(bundle: Path, target: Path, checkpoint, clip, bpe, opset: int, steps, fp32_scopes,
                  overrides: dict[str, Any], int8_options: dict[str, Any] | None = None,
                  progress: bool = True) -> ExportResult:
    seconds: dict[str, float] = {}

    def step(label: str, action: Callable[[], Any]) -> Any:
        steps.set_postfix_str(label)
        start = time.perf_counter()
        value = action()
        seconds[label] = round(time.perf_counter() - start, 3)
        steps.update()
        return value

    model, source, beside = step("load model", lambda: load_source(checkpoint, clip, overrides))
    require_finite_weights(model, str(checkpoint or clip or source["name"]))
    cfg = model.cfg
    specs = graph_specs(cfg)
    tokenizer = step("tokenizer", lambda: resolve_tokenizer(model, bpe, beside))
    tokenizer.save(bundle / bf.TOKENIZER_FILE)
    manifest = mf.new_manifest(cfg, float(model.clip.logit_scale.detach().exp()), source, bf.file_entry(
        bundle, bf.TOKENIZER_FILE, max_words=cfg.max_words, sot_id=tokenizer.sot_id, eot_id=tokenizer.eot_id,
        pad_id=tokenizer.pad_id, vocab_size=tokenizer.vocab_size,
        cleanup="ftfy fix_text, html unescape x2, whitespace collapse, lowercase (CLIP); runtime.load_tokenizer"))
    mf.write_manifest(bundle, manifest)   # invalid until validation passes

    def export_fp32() -> dict[str, onnx.ModelProto]:
        graphs = {}
        for name, spec in specs.items():
            graph = export_graph(model, spec, opset)
            assert_trt_compatible(graph, spec.declared_axes, source=bf.graph_file(name, "fp32"))
            files = save_graph(graph, bundle / bf.graph_file(name, "fp32"))
            manifest["graphs"].setdefault(name, {})["fp32"] = _graph_entry(bundle, name, spec, "fp32", graph, files)
            graphs[name] = graph
        return graphs

    graphs = step("export fp32 graphs", export_fp32)

    def export_fp16() -> None:
        for name, spec in specs.items():
            graph = convert_to_mixed_precision(graphs[name], lambda node: any(scope in node.name for scope in fp32_scopes))
            onnx.checker.check_model(graph, full_check=True)
            assert_trt_compatible(graph, spec.declared_axes, source=bf.graph_file(name, "fp16"))
            files = save_graph(graph, bundle / bf.graph_file(name, "fp16"))
            manifest["graphs"][name]["fp16"] = _graph_entry(bundle, name, spec, "fp16", graph, files)
            manifest["graphs"][name]["fp16"]["fp32_islands"] = list(fp32_scopes) + [
                "LayerNormalization", "Softmax"]

    step("fp16 graphs", export_fp16)

    def make_reference() -> dict[str, np.ndarray]:
        ids = tokenizer.encode_batch(list(REFERENCE_CAPTIONS), max_words=cfg.max_words)
        frames, mask = reference_video_inputs(model)
        ref = reference_outputs(model, ids, frames, mask)
        ref["captions"] = np.array(REFERENCE_CAPTIONS)
        buffer = npz_bytes(ref)
        atomic_write_bytes(bundle / bf.REFERENCE_FILE, buffer)
        manifest["reference"] = bf.file_entry(bundle, bf.REFERENCE_FILE, arrays=sorted(ref))
        return ref

    ref = step("reference outputs", make_reference)

    def validate() -> dict[str, ParityResult]:
        results = {}
        for precision in bf.CORE_PRECISIONS:
            produced = run_onnx(bundle / bf.graph_file("text", precision), {"input_ids": ref["input_ids"]})
            produced.update(run_onnx(bundle / bf.graph_file("video", precision),
                                     {"frames": ref["frames"], "frame_mask": ref["frame_mask"]}))
            produced["frame_mask"] = ref["frame_mask"]
            results[precision] = compare_outputs(
                ref, produced, precision, logit_scale=manifest["similarity"]["logit_scale"],
                frame_mask_mode=cfg.frame_mask_mode, tokens_per_frame=cfg.tokens_per_frame,
                softmax_factor=cfg.frame_softmax_factor)
            manifest["parity"][precision] = {"backend": "onnxruntime-cpu", **results[precision].to_dict()}
        return results

    parity = step("validate with onnxruntime", validate)
    if int8_options is not None and parity["fp32"].passed:
        step("int8 graphs + bf16 row", lambda: _int8_and_bf16(
            bundle, manifest, ref, int8_options["videos"], int8_options["captions"], int8_options["source"],
            int8_options["onnx_mode"], progress))
    report = ["# Export validation", "", f"Model: {cfg.name}; source: {source['name']}", ""]
    report += [parity[p].to_markdown("ONNX Runtime CPU vs PyTorch FP32") + "\n" for p in parity]
    atomic_write_text(bundle / bf.VALIDATION_FILE, "\n".join(report))
    manifest["valid"] = parity["fp32"].passed
    manifest["export_seconds"] = seconds
    step("manifest", lambda: mf.write_manifest(bundle, manifest))
    result = ExportResult(bundle, manifest, parity, seconds)
    if not parity["fp32"].passed:
        raise ExportValidationError(f"{target}: FP32 graphs fail the FP32 parity row; bundle marked invalid:\n  - "
                                    + "\n  - ".join(parity["fp32"].failures))
    return result
