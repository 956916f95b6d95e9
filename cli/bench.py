"""`ts2net bench` (thin wrapper over runtime.benchmark; hands it the PyTorch eager baseline from export)."""
from __future__ import annotations

from pathlib import Path
from typing import Any, Callable, Sequence

import click

from cli.errors import CommandError
from runtime.backends import BACKENDS
from runtime.benchmark.peak import DEFAULT_PEAK_SIZES


def _torch_baseline(checkpoint):
    """The PyTorch eager baseline loader handed to the benchmark (the runtime never imports export or torch)."""
    try:
        from export import torch_baseline
    except ImportError as exc:
        reason = f"torch (or ts2net) is not importable ({exc}); install the export extra for a baseline"
        return lambda bundle, threads: (None, reason)
    load = torch_baseline.baseline_loader(checkpoint)

    def load_or_explain(bundle, threads):
        try:
            return load(bundle, threads)
        except Exception as exc:  # noqa: BLE001 - an unreadable --torch-checkpoint is the user's to fix
            if checkpoint is None:
                raise
            raise CommandError(f"--torch-checkpoint {checkpoint}: {exc}") from exc
    return load_or_explain


def _int_list(text: str) -> list[int]:
    try:
        values = [int(v) for v in text.split(",") if v.strip()]
    except ValueError as exc:
        raise click.BadParameter(f"{text!r}: expected comma-separated integers") from exc
    if not values or any(v < 1 for v in values):
        raise click.BadParameter(f"{text!r}: expected positive integers")
    return values


def _choice_list(allowed: Sequence[str]) -> Callable[[Any, Any, str], list[str]]:
    def parse(ctx, param, text):
        if text is None:
            return None
        values = [v.strip() for v in text.split(",") if v.strip()]
        bad = [v for v in values if v not in allowed]
        if bad or not values:
            raise click.BadParameter(f"{bad or text!r}: expected a comma-separated subset of {list(allowed)}")
        return values
    return parse


@click.command("bench")
@click.option("--bundle", "bundle_dir", required=True, type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.option("--backends", callback=_choice_list(BACKENDS), default=None,
              help="Comma-separated backends (default: every one available here).")
@click.option("--precisions", callback=_choice_list(("fp32", "fp16", "bf16", "int8")), default="fp32,fp16,bf16,int8",
              show_default=True, help="Precisions per backend (each backend runs those it supports: ORT fp32/fp16/"
                                      "int8, OpenVINO fp32/bf16/int8; bf16 also adds torch eager BF16 autocast).")
@click.option("--batch-sizes", callback=lambda c, p, v: _int_list(v), default="1,8", show_default=True)
@click.option("--warmup", type=click.IntRange(min=0), default=3, show_default=True)
@click.option("--iters", type=click.IntRange(min=1), default=20, show_default=True)
@click.option("--threads", type=click.IntRange(min=1), default=None, help="CPU threads (default: usable cores).")
@click.option("--torch/--no-torch", "use_torch", default=True, show_default=True,
              help="Also time PyTorch eager (needs torch; skipped with a reason otherwise).")
@click.option("--torch-checkpoint", type=click.Path(exists=True, path_type=Path), default=None,
              help="Checkpoint of the bundle's model for the torch baseline (default: the embedded model, if the "
                   "bundle was exported from it).")
@click.option("--torch-compile/--no-torch-compile", default=False, show_default=True,
              help="Also time torch.compile (inductor) FP32; compiling takes minutes on a small CPU.")
@click.option("--interleave/--no-interleave", default=False, show_default=True,
              help="Run the configurations round-robin (one call each per round) so load changes on a shared "
                   "machine hit every row alike.")
@click.option("--peak-sizes", callback=lambda c, p, v: _int_list(v), default=",".join(map(str, DEFAULT_PEAK_SIZES)),
              show_default=True, help="Square MatMul sizes for the attainable-peak measurement.")
@click.option("--out", "out_dir", type=click.Path(file_okay=False, path_type=Path), default=Path("reports/bench"),
              show_default=True)
@click.option("--progress/--no-progress", default=True, show_default=True)
def bench_command(bundle_dir, backends, precisions, batch_sizes, warmup, iters, threads, use_torch, torch_checkpoint,
                  torch_compile, interleave, peak_sizes, out_dir, progress):
    """Latency / throughput / GFLOP/s of a bundle's backends next to the attainable peak; JSON + Markdown + PNG."""
    from runtime.backends import BackendUnavailable
    from runtime.benchmark import BenchmarkError, require_onnx, run_bench, write_bench_report
    from runtime.bundle import BundleError, open_bundle

    try:
        require_onnx()
        bundle = open_bundle(bundle_dir)
        report = run_bench(bundle, backends, precisions, batch_sizes, warmup, iters, threads,
                           _torch_baseline(torch_checkpoint) if use_torch else None, peak_sizes, progress,
                           torch_compile, interleave)
    except (BenchmarkError, BundleError, BackendUnavailable) as exc:
        raise CommandError(str(exc)) from exc
    markdown, json_path, md_path, png_path = write_bench_report(report, out_dir)
    click.echo(markdown.split("## Environment")[0].rstrip())
    click.echo(f"\nreport: {json_path}, {md_path}" + (f", {png_path}" if png_path else ""))
    if not report["results"]:
        raise CommandError("no backend could be measured: " + "; ".join(
            f"{s['backend']}: {s['reason']}" for s in report["skipped"]))
