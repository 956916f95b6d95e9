"""`ts2net bench`: latency, throughput and efficiency of a bundle's backends, in one run.

For every available backend x precision x batch size, both encoders: warm-up, then p50/p95/p99
latency, throughput, achieved GFLOP/s and peak RSS. A latency alone does not say whether a
backend is good, so achieved GFLOP/s (from `model_flops`, a count of the model's multiply-adds)
is set next to the attainable peak of the same kernel library measured in the same run (docs/runtime.md,
"Benchmark"): for ONNX Runtime, a `MatMul` graph of large square matrices run
by ONNX Runtime with the same thread count. A numpy or torch GEMM is not that limit: on the
reference machine it reached half of ORT's MatMul, and would overstate efficiency twofold.

The PyTorch eager baseline (export/torch_baseline.py, which imports torch) is measured in the
same run when torch is importable, so the ratios compare numbers from one machine state. The
runtime never imports torch otherwise. Building the MatMul graph needs the `onnx` package.
"""
from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any, Callable, Mapping, Protocol, Sequence

import numpy as np

from ..backends import BACKEND_PRECISIONS, BACKENDS
from .flops import model_flops
from .memory import PeakRss, check_batch_sizes_fit
from .peak import DEFAULT_PEAK_SIZES, measure_peaks, time_runs


class BenchmarkError(RuntimeError):
    """The benchmark cannot run as asked (the message names the setting at fault)."""


class Baseline(Protocol):
    """The PyTorch model of the bundle, timed beside the backends as rows "torch-eager" (FP32, and BF16
    autocast: the one-line change a user would make instead of deploying) and "torch-compile".

    The runtime never imports torch: the command line builds this from `export.torch_baseline` and
    hands in a `BaselineLoader`.
    """

    def plans(self, precisions: Sequence[str], compiled: bool) -> list[tuple[str, str]]:
        """The (row, precision) pairs to time, e.g. [("torch-eager", "fp32"), ("torch-eager", "bf16")]."""

    def matmul_peak(self, sizes: tuple[int, ...], threads: int | None, dtype: str = "fp32") -> dict[str, Any]: ...

    def runner(self, graph: str, threads: int | None, precision: str = "fp32", compiled: bool = False):
        """An object with the backends' `infer(feed)` / `last_latency_ms` / `close()` shape."""


def require_onnx() -> None:
    """The peak MatMul graph is built with the `onnx` package; refuse clearly where it is missing."""
    try:
        import onnx  # noqa: F401
    except ImportError as exc:
        raise BenchmarkError("`ts2net bench` builds its peak MatMul graph with the `onnx` package: "
                             "pip install onnx") from exc


#: (bundle, threads) -> (baseline, description) or (None, reason it is unavailable)
BaselineLoader = Callable[[Any, int], "tuple[Baseline | None, str]"]


def bench_inputs(bundle, graph: str, batch: int) -> dict[str, np.ndarray]:
    """`batch` rows cycled from the bundle's reference inputs (real token ids, real frame masks)."""
    ref = bundle.reference()
    names = ["input_ids"] if graph == "text" else ["frames", "frame_mask"]
    rows = np.arange(batch) % len(ref[names[0]])
    return {name: np.ascontiguousarray(ref[name][rows]) for name in names}


def _measure(runner, feed: dict[str, np.ndarray], warmup: int, iters: int) -> tuple[np.ndarray, float]:
    rss = PeakRss()
    rss.start()

    def run() -> float:
        runner.infer(feed)
        return runner.last_latency_ms

    latencies = time_runs(run, warmup, iters)
    return latencies, rss.delta_mib()


def _row(graph, backend, precision, batch, latencies, flops_item, peak, rss_mib, load) -> dict[str, Any]:
    p50, p95, p99 = (float(np.percentile(latencies, q)) for q in (50, 95, 99))
    gflops = flops_item * batch / (p50 / 1e3) / 1e9
    return {"graph": graph, "backend": backend, "precision": precision, "batch": batch,
            "p50_ms": p50, "p95_ms": p95, "p99_ms": p99, "mean_ms": float(latencies.mean()),
            "min_ms": float(latencies.min()), "items_per_s": batch * len(latencies) / (latencies.sum() / 1e3),
            "gflops": gflops, "peak_gflops": peak, "pct_of_peak": 100 * gflops / peak if peak else None,
            "run_peak_rss_mib": rss_mib, **load}


def _peak_for(peaks: dict[str, Any], backend: str, precision: str) -> float | None:
    entry = peaks.get(backend, {})
    # CPU: no faster FP16 GEMM, so the FP32 peak bounds ONNX Runtime's FP16 rows; bf16 / int8 have their own
    chosen = entry.get(precision) or (entry.get("fp32") if precision == "fp16" else None)
    return chosen.get("best_gflops") if isinstance(chosen, dict) and "best_gflops" in chosen else None


def backend_plans(bundle, backend: str, precisions: Sequence[str]) -> tuple[list[tuple[str, str]], list[dict]]:
    """(backend, precision) rows to measure, and the skipped ones with their reason."""
    plans, skipped = [], []
    if backend == "tensorrt":
        return [(backend, bundle.engine_entry("text").get("precision", "fp16"))], []
    for precision in precisions:
        if precision not in BACKEND_PRECISIONS[backend]:
            continue
        graph_precision = "fp32" if precision == "bf16" else precision
        if not all(bundle.has_graph(g, graph_precision) for g in ("text", "video")):
            if precision == "int8":
                skipped.append({"backend": f"{backend} int8", "reason": "the bundle has no int8 graphs (`ts2net "
                                "quantize --bundle ...` adds them)"})
            continue
        if backend == "openvino":
            from ..openvino_backend import precision_status

            ok, reason = precision_status(precision)
            if not ok:
                skipped.append({"backend": f"{backend} {precision}", "reason": reason})
                continue
        plans.append((backend, precision))
    return plans, skipped


def run_bench(bundle, backends: Sequence[str] | None = None,
              precisions: Sequence[str] = ("fp32", "fp16", "bf16", "int8"),
              batch_sizes: Sequence[int] = (1, 8), warmup: int = 3, iters: int = 20, threads: int | None = None,
              baseline: BaselineLoader | None = None,
              peak_sizes: Sequence[int] = DEFAULT_PEAK_SIZES, progress: bool = True,
              torch_compile: bool = False, interleave: bool = False) -> dict[str, Any]:
    """Measure everything; returns the report dict (fields: see docs/benchmark.md).

    `baseline`: loads the PyTorch baseline (None: not measured, "disabled with --no-torch"); its rows
    are eager FP32, eager BF16 autocast when bf16 is among `precisions`, and torch.compile FP32 with
    `torch_compile`. `interleave`: every configuration of a batch size runs once per round, round
    after round, so a load change on a shared machine hits every row alike and the same-run ratios
    stay meaningful (run RSS per row is then not separable and reported as NaN).
    """
    from tqdm import tqdm

    from ..backends import available_backends, create_backend
    from ..reports import environment, usable_cores

    try:
        check_batch_sizes_fit(bundle, batch_sizes)
    except ValueError as exc:
        raise BenchmarkError(str(exc)) from None
    threads = threads or usable_cores()
    load_at_start = os.getloadavg()[0] if hasattr(os, "getloadavg") else None
    status = {s.name: s for s in available_backends(bundle)}
    requested = list(backends) if backends else [b for b in BACKENDS if status[b].available]
    skipped = [{"backend": b, "reason": status[b].reason} for b in requested if not status[b].available]
    runnable = [b for b in requested if status[b].available]
    flops = {g: model_flops(bundle.model, g) for g in ("text", "video")}
    plans = []  # (backend, precision) pairs to run
    for backend in runnable:
        backend_rows, backend_skipped = backend_plans(bundle, backend, precisions)
        plans += backend_rows
        skipped += backend_skipped
    peaks = measure_peaks(runnable, [p for p in precisions if p in ("fp32", "fp16")], peak_sizes, threads, plans)
    eager = None
    if baseline is not None:
        eager, torch_note = baseline(bundle, threads)
        if eager is not None:
            torch_rows = eager.plans(precisions, torch_compile)
            peaks["torch-eager"] = {p: eager.matmul_peak(tuple(peak_sizes), threads, dtype=p)
                                    for p in sorted({p for _, p in torch_rows})}
            if torch_compile:
                peaks["torch-compile"] = peaks["torch-eager"]  # the same oneDNN / MKL GEMM kernels as eager
            else:
                skipped.append({"backend": "torch-compile", "reason": "not requested (--torch-compile): compiling "
                                "the model took minutes on 2 loaded cores (docs/openvino.md)"})
            plans += torch_rows
        else:
            skipped.append({"backend": "torch-eager", "reason": torch_note})
    else:
        torch_note = "disabled with --no-torch"

    def open_runner(backend: str, precision: str, graph: str):
        rss = PeakRss()
        rss.start()
        start = time.perf_counter()
        if backend.startswith("torch-"):
            runner = eager.runner(graph, threads, precision, compiled=backend == "torch-compile")
        else:
            runner = create_backend(bundle, graph, backend, precision if backend != "tensorrt" else None,
                                    threads=threads if backend in ("ort-cpu", "openvino") else None).load()
        return runner, {"load_s": time.perf_counter() - start, "load_rss_mib": rss.delta_mib()}

    rows = []
    bar = tqdm(total=len(plans) * 2 * len(batch_sizes), desc="bench", unit="config", disable=not progress)
    if interleave:
        rows = _interleaved_rows(plans, batch_sizes, warmup, iters, open_runner, bundle, flops, peaks, bar)
    for backend, precision in plans if not interleave else ():
        for graph in ("text", "video"):
            runner, load = open_runner(backend, precision, graph)
            try:
                for batch in batch_sizes:
                    bar.set_postfix_str(f"{backend} {precision} {graph} b{batch}")
                    latencies, rss_mib = _measure(runner, bench_inputs(bundle, graph, batch),
                                                  warmup + (1 if backend == "torch-compile" else 0), iters)
                    rows.append(_row(graph, backend, precision, batch, latencies, flops[graph],
                                     _peak_for(peaks, backend, precision), rss_mib, load))
                    bar.update()
            finally:
                runner.close()
    bar.close()
    return {
        "command": "bench",
        "bundle": {"path": str(Path(bundle.path).resolve()), "id": bundle.content_id, "model": bundle.model.get("name"),
                   "source": (bundle.manifest.get("source_checkpoint") or {}).get("name"),
                   "config": dict(bundle.model)},
        "settings": {"threads": threads, "usable_cores": usable_cores(), "load_average_at_start": load_at_start,
                     "warmup": warmup, "iters": iters, "batch_sizes": list(batch_sizes),
                     "precisions": list(precisions), "backends": requested, "peak_sizes": list(peak_sizes),
                     "latency": "time of the backend call only (inputs already in host memory, outputs copied "
                                "back); p50/p95/p99 over iters",
                     "interleaved": interleave},
        "torch_baseline": torch_note,
        "skipped": skipped,
        "flops_per_item": flops,
        "peaks": peaks,
        "results": rows,
        "ratios": ratios(rows),
        "fastest_gated": fastest_gated_rows(rows, bundle),
        "uptime": _uptime(),
        "environment": environment(),
    }


def _interleaved_rows(plans, batch_sizes, warmup, iters, open_runner, bundle, flops, peaks, bar) -> list[dict]:
    """Latency rows measured round-robin: all runners open, one call of each configuration per round."""
    runners = {}
    try:
        for backend, precision in plans:
            for graph in ("text", "video"):
                runners[(backend, precision, graph)] = open_runner(backend, precision, graph)
        rows = []
        for batch in batch_sizes:
            feeds = {g: bench_inputs(bundle, g, batch) for g in ("text", "video")}
            latencies: dict[tuple, list[float]] = {key: [] for key in runners}
            # torch.compile compiles on its first call: give every row one extra warm-up round then
            rounds = warmup + (1 if any(key[0] == "torch-compile" for key in runners) else 0)
            for round_index in range(rounds + iters):
                for key, (runner, _) in runners.items():
                    runner.infer(feeds[key[2]])
                    if round_index >= rounds:
                        latencies[key].append(runner.last_latency_ms)
            for (backend, precision, graph), (_, load) in runners.items():
                rows.append(_row(graph, backend, precision, batch, np.array(latencies[(backend, precision, graph)]),
                                 flops[graph], _peak_for(peaks, backend, precision), float("nan"), load))
                bar.update()
        return rows
    finally:
        for runner, _ in runners.values():
            runner.close()


def ratios(rows: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """Speed ratios from the same run: every row vs torch eager FP32 and vs torch eager BF16 autocast
    (the two things a user would pick instead of deploying), and FP16 vs FP32 per backend."""
    p50 = {(r["graph"], r["backend"], r["precision"], r["batch"]): r["p50_ms"] for r in rows}
    out = []
    for (graph, backend, precision, batch), value in p50.items():
        for base in ("fp32", "bf16"):
            torch_ms = p50.get((graph, "torch-eager", base, batch))
            if torch_ms and (backend, precision) != ("torch-eager", base):
                out.append({"ratio": f"torch eager {base} / {backend} {precision}", "graph": graph, "batch": batch,
                            "value": torch_ms / value, "versus": f"torch-eager {base}",
                            "row": f"{backend} {precision}"})
        fp32_ms = p50.get((graph, backend, "fp32", batch))
        if precision == "fp16" and fp32_ms:
            out.append({"ratio": f"{backend} fp32 / fp16", "graph": graph, "batch": batch, "value": fp32_ms / value,
                        "versus": f"{backend} fp32", "row": f"{backend} {precision}"})
    return out


def fastest_gated_rows(rows: Sequence[Mapping[str, Any]], bundle) -> list[dict[str, Any]]:
    """Per graph and batch: the fastest deployed row whose precision passed its gates, with both ratios."""
    from ..path_choice import gated_precisions

    gated = gated_precisions(bundle)
    p50 = {(r["graph"], r["backend"], r["precision"], r["batch"]): r["p50_ms"] for r in rows}
    out = []
    for graph, batch in sorted({(r["graph"], r["batch"]) for r in rows}):
        candidates = [r for r in rows if (r["graph"], r["batch"]) == (graph, batch)
                      and not r["backend"].startswith("torch") and (r["backend"], r["precision"]) in gated]
        if not candidates:
            continue
        best = min(candidates, key=lambda r: r["p50_ms"])
        entry = {"graph": graph, "batch": batch, "backend": best["backend"], "precision": best["precision"],
                 "p50_ms": best["p50_ms"], "pct_of_peak": best["pct_of_peak"]}
        for base in ("fp32", "bf16"):
            torch_ms = p50.get((graph, "torch-eager", base, batch))
            entry[f"vs_torch_eager_{base}"] = torch_ms / best["p50_ms"] if torch_ms else None
        out.append(entry)
    return out


def _uptime() -> str | None:
    """`uptime`'s line (load averages over 1, 5, 15 minutes), recorded with every benchmark."""
    import shutil
    import subprocess

    if shutil.which("uptime") is None:
        return None
    try:
        return subprocess.run(["uptime"], capture_output=True, text=True, timeout=5).stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        return None
