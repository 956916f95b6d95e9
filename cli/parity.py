"""`ts2net parity` (thin wrapper over runtime.parity_check). Exit codes: 0 all checks pass, 1 a parity
check fails, 2 the check could not run (bad bundle, backend unavailable, unreadable data)."""
from __future__ import annotations

from pathlib import Path

import click

from cli.errors import CannotRun
from runtime.backends import BACKENDS


@click.command("parity")
@click.option("--bundle", "bundle_dir", required=True, type=click.Path(exists=True, file_okay=False, path_type=Path),
              help="Bundle directory.")
@click.option("--backend", type=click.Choice(BACKENDS), default="ort-cpu", show_default=True)
@click.option("--precision", type=click.Choice(["fp32", "fp16", "bf16", "int8"]), default=None,
              help="fp32 / fp16 / int8 graph for ONNX Runtime; fp32 / bf16 / int8 for OpenVINO (default fp32); "
                   "TensorRT runs its engine's precision.")
@click.option("--text-precision", type=click.Choice(["fp32", "fp16", "bf16", "int8"]), default=None,
              help="The text graph's precision [default: fp32 on the ONNX Runtime / OpenVINO bf16 and int8 paths "
                   "(docs/openvino.md, \"Text stays FP32\"), else --precision].")
@click.option("--csv", "annotations", type=click.Path(exists=True, dir_okay=False, path_type=Path), default=None,
              help="Captions: MSR-VTT 1k-A CSV (key,vid_key,video_id,sentence), or CSV/JSONL of video_id,caption.")
@click.option("--videos", type=click.Path(exists=True, file_okay=False, path_type=Path), default=None,
              help="Folder of {video_id}.mp4 files for --csv.")
@click.option("--limit", type=click.IntRange(min=1), default=None, help="Use only the first N videos of --csv.")
@click.option("--out", "out_dir", type=click.Path(file_okay=False, path_type=Path), default=Path("reports/parity"),
              show_default=True)
@click.option("--batch-size", type=click.IntRange(min=1), default=16, show_default=True)
@click.option("--threads", type=click.IntRange(min=1), default=None, help="ONNX Runtime intra-op threads.")
@click.option("--workers", type=click.IntRange(min=0), default=0, help="Video decoding threads.")
@click.option("--progress/--no-progress", default=True, show_default=True)
@click.option("--record/--no-record", default=True, show_default=True,
              help="With --csv/--videos: record the real-data gate outcome in the bundle's manifest, so `ts2net "
                   "index` / `search` never default to a path that failed on real data.")
@click.option("--skip-unsupported", is_flag=True,
              help="Exit 0 with a report saying why when the backend / precision cannot run on this machine "
                   "(e.g. bf16 on a CPU without BF16), instead of failing.")
def parity_command(bundle_dir, backend, precision, text_precision, annotations, videos, limit, out_dir, batch_size,
                   threads, workers, progress, record, skip_unsupported):
    """Compare a backend with the PyTorch FP32 reference; non-zero exit on any failure."""
    from runtime.backends import BackendUnavailable
    from runtime.bundle import BundleError
    from runtime.parity_check import run_parity, write_skipped_report

    if (annotations is None) != (videos is None):
        raise click.UsageError("--csv and --videos go together")
    try:
        report, json_path, md_path = run_parity(bundle_dir, backend, precision, annotations, videos, limit, out_dir,
                                                batch_size, threads, workers, progress, record, text_precision)
    except BackendUnavailable as exc:
        if not skip_unsupported:
            raise CannotRun(str(exc)) from exc
        write_skipped_report(bundle_dir, backend, precision, str(exc), out_dir)
        click.echo(f"parity {backend} {precision}: SKIPPED on this machine: {exc}")
        return
    except (BundleError, OSError, ValueError) as exc:
        raise CannotRun(str(exc)) from exc
    if isinstance(report.get("recorded_in_manifest"), str):
        click.echo(f"note: real-data gate {report['recorded_in_manifest']}", err=True)
    failures = report["failures"]
    text = report.get("text_precision")
    graphs = report["precision"] + (f" (text {text})" if text and text != report["precision"] else "")
    click.echo(f"parity {backend} {graphs}: {'PASS' if not failures else 'FAIL'} "
               f"({len(failures)} failure(s)); report: {json_path}, {md_path}")
    for failure in failures:
        click.echo(f"  - {failure}")
    real = report.get("real_data") or {}
    skipped = real.get("skipped_videos") or []
    if skipped:
        click.echo(f"  {len(skipped)} video(s) could not be read and were left out with their captions "
                   f"({real['captions_dropped_with_skipped_videos']} captions):")
        for s in skipped:
            click.echo(f"  ! {s['path']}: {s['reason']}")
    if failures:
        click.get_current_context().exit(1)
