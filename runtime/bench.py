"""`ts2net bench`: latency, throughput and efficiency of a bundle's backends, in one run.

For every available backend x precision x batch size, both encoders: warm-up, then p50/p95/p99
latency, throughput, achieved GFLOP/s and peak RSS. A latency alone does not say whether a
backend is good, so achieved GFLOP/s (from `model_flops`, a count of the model's multiply-adds)
is set next to the attainable peak of the same kernel library measured in the same run (design,
"Measuring against the limit"): for ONNX Runtime, a `MatMul` graph of large square matrices run
by ONNX Runtime with the same thread count. A numpy or torch GEMM is not that limit: on the
reference machine it reached half of ORT's MatMul, and would overstate efficiency twofold.

The PyTorch eager baseline (export/torch_baseline.py, which imports torch) is measured in the
same run when torch is importable, so the ratios compare numbers from one machine state. The
runtime never imports torch otherwise. Building the MatMul graph needs the `onnx` package.
"""
from __future__ import annotations

import importlib
import logging
import math
import os
import time
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import click
import numpy as np

from .backends import BACKEND_PRECISIONS, BACKENDS

log = logging.getLogger(__name__)

DEFAULT_PEAK_SIZES = (768, 2048, 4096)


# ------------------------------------------------------------------------------ FLOP count
def _block_macs(tokens: int, width: int) -> int:
    """Multiply-adds of one pre-LN transformer block on `tokens` tokens of `width` channels.

    q/k/v projection 3*W^2 and output projection W^2 per token, MLP W*4W + 4W*W per token
    (12 W^2 per token in all), plus the attention scores Q K^T and the weighted sum of V:
    tokens^2 * W each (summed over heads: heads * tokens^2 * head_dim = tokens^2 * W).
    """
    return 12 * tokens * width * width + 2 * tokens * tokens * width


def model_flops(config: Mapping[str, Any], graph: str) -> int:
    """FLOPs (2 x multiply-adds) of one item through a graph: one text, or one video of max_frames frames.

    Counted from the config alone, so it holds for any backend:

    text  = max_words tokens through text_layers blocks of text_width (the causal mask does not
            skip any product), then ln_final @ text_projection on all max_words tokens
            (the graph projects every position and picks the EOT row afterwards);
    video = per frame: conv1 (grid^2 patches x 3*patch^2 x vision_width), vision_layers blocks on
            N = grid^2 + 1 tokens of vision_width, ln_post @ proj on all N tokens (vision_width x
            embed_dim), and the token selector's score predictor on all N tokens (D x D/2,
            D x D/2, D/2 x 1, D = embed_dim); then per video the temporal transformer:
            temporal_layers blocks on max_frames * (top_k + 1) tokens of text_width.

    Only matrix products and the convolution are counted; LayerNorm, softmax, GELU, the token
    shift and residual adds are not (under 1% for ViT-B/32).
    """
    if graph == "text":
        tokens, width = int(config["max_words"]), int(config["text_width"])
        macs = int(config["text_layers"]) * _block_macs(tokens, width)
        macs += tokens * width * int(config["embed_dim"])
        return 2 * macs
    if graph != "video":
        raise ValueError(f"graph={graph!r}: expected 'text' or 'video'")
    grid = int(config["image_size"]) // int(config["patch_size"])
    patch, width, dim = int(config["patch_size"]), int(config["vision_width"]), int(config["embed_dim"])
    tokens = grid * grid + 1
    per_frame = grid * grid * 3 * patch * patch * width                 # conv1
    per_frame += int(config["vision_layers"]) * _block_macs(tokens, width)
    per_frame += tokens * width * dim                                     # ln_post @ proj
    selection = config.get("token_selection", True)
    if selection:
        per_frame += tokens * (dim * (dim // 2) + dim * (dim // 2) + dim // 2)  # score predictor
    kept = int(config["top_k"]) + 1 if selection else 1
    frames = int(config["max_frames"])
    temporal = int(config["temporal_layers"]) * _block_macs(frames * kept, int(config["text_width"]))
    return 2 * (frames * per_frame + temporal)


# ------------------------------------------------------------------------------ measuring tools
class PeakRss:
    """Peak resident memory of this process over a section, as a delta over its start (MiB).

    On Linux the kernel's high-water mark is reset by writing 5 to /proc/self/clear_refs, so each
    section gets its own peak; elsewhere the process-lifetime peak (getrusage) is used, which
    only shows growth beyond every earlier peak.
    """

    def __init__(self):
        self._start_rss = 0.0
        self._exact = False

    @staticmethod
    def _status(key: str) -> float | None:
        try:
            with open("/proc/self/status") as handle:
                for line in handle:
                    if line.startswith(key + ":"):
                        return int(line.split()[1]) / 1024
        except OSError:
            return None
        return None

    @staticmethod
    def _rusage_peak() -> float:
        import resource
        import sys

        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        return peak / 1024 ** 2 if sys.platform == "darwin" else peak / 1024

    def start(self) -> None:
        try:
            with open("/proc/self/clear_refs", "w") as handle:
                handle.write("5")
            self._exact = self._status("VmHWM") is not None
        except OSError:
            self._exact = False
        rss = self._status("VmRSS")
        self._start_rss = rss if rss is not None and self._exact else self._rusage_peak()

    def delta_mib(self) -> float:
        peak = self._status("VmHWM") if self._exact else self._rusage_peak()
        return max(0.0, (peak or 0.0) - self._start_rss)


def time_runs(run: Callable[[], float], warmup: int, iters: int) -> np.ndarray:
    """Latencies (ms) of `iters` calls after `warmup` untimed ones; `run` returns its own latency."""
    for _ in range(warmup):
        run()
    return np.array([run() for _ in range(iters)], dtype=np.float64)


def _matmul_model(n: int, dtype: str) -> bytes:
    """C = A @ B for square n x n inputs, as ONNX bytes at an IR version ONNX Runtime reads."""
    import onnx
    from onnx import TensorProto, helper

    elem = TensorProto.FLOAT if dtype == "float32" else TensorProto.FLOAT16
    graph = helper.make_graph([helper.make_node("MatMul", ["A", "B"], ["C"])], f"matmul{n}",
                              [helper.make_tensor_value_info(x, elem, [n, n]) for x in "AB"],
                              [helper.make_tensor_value_info("C", elem, [n, n])])
    opsets = [helper.make_opsetid("", 17)]
    model = helper.make_model(graph, opset_imports=opsets, producer_name="ts2net-bench")
    # onnx >= 1.23 writes IR 14 by default, which older ONNX Runtimes reject: use the opset's minimum.
    model.ir_version = helper.find_min_ir_version_for(opsets)
    onnx.checker.check_model(model)
    return model.SerializeToString()


def _best_seconds(run: Callable[[], None], min_runs: int = 3, min_seconds: float = 0.3, max_runs: int = 50) -> float:
    """Best time of at least `min_runs` runs (more until `min_seconds` are spent, for small sizes).

    The first run pays for thread-pool start and packing buffers; taking the best of all runs
    discards it without a separate warm-up, which would cost another second at n = 4096.
    """
    best, runs, spent = math.inf, 0, 0.0
    while runs < min_runs or (spent < min_seconds and runs < max_runs):
        start = time.perf_counter()
        run()
        elapsed = time.perf_counter() - start
        best, runs, spent = min(best, elapsed), runs + 1, spent + elapsed
    return best


def ort_matmul_peak(sizes: Sequence[int], threads: int | None, device: str = "cpu",
                    dtype: str = "float32") -> dict[str, Any]:
    """Attainable GFLOP/s of ONNX Runtime's own MatMul kernel: best of several runs per size.

    On CUDA the matrices are bound on the GPU (I/O binding), so the figure is the kernel's, not
    the PCIe copies'.
    """
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.log_severity_level = 3
    if threads:
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
    providers = ["CUDAExecutionProvider"] if device == "cuda" else ["CPUExecutionProvider"]
    rng = np.random.default_rng(0)
    per_size = {}
    for n in sizes:
        session = ort.InferenceSession(_matmul_model(n, dtype), sess_options=options, providers=providers)
        a, b = (rng.standard_normal((n, n), dtype=np.float32).astype(dtype) for _ in range(2))
        if device == "cuda":
            binding = session.io_binding()
            for name, value in (("A", a), ("B", b)):
                binding.bind_ortvalue_input(name, ort.OrtValue.ortvalue_from_numpy(value, "cuda", 0))
            binding.bind_output("C", "cuda")

            def run():
                session.run_with_iobinding(binding)
                binding.synchronize_outputs()
        else:
            feed = {"A": a, "B": b}

            def run():
                session.run(["C"], feed)
        per_size[str(n)] = 2 * n ** 3 / _best_seconds(run) / 1e9
        del session
    return {"library": f"onnxruntime {ort.__version__} MatMul ({device})", "dtype": dtype, "threads": threads,
            "gflops_by_size": per_size, "best_gflops": max(per_size.values())}


def tensorrt_matmul_peak(sizes: Sequence[int], dtype: str = "float16") -> dict[str, Any]:
    """Attainable GFLOP/s of TensorRT on a strongly typed MatMul engine, inputs resident on the GPU."""
    import tensorrt as trt
    from polygraphy import cuda
    from polygraphy.backend.trt import EngineFromNetwork, NetworkFromOnnxBytes, TrtRunner
    from polygraphy.datatype import DataType

    rng = np.random.default_rng(0)
    per_size = {}
    for n in sizes:
        engine = EngineFromNetwork(NetworkFromOnnxBytes(_matmul_model(n, dtype), strongly_typed=True))
        with TrtRunner(engine) as runner:
            inputs = {}
            for name in "AB":
                host = rng.standard_normal((n, n), dtype=np.float32).astype(dtype)
                inputs[name] = cuda.DeviceArray(shape=host.shape, dtype=DataType.from_dtype(host.dtype)).copy_from(host)

            def run():  # the runner synchronizes its stream before returning
                runner.infer({k: v.view() for k, v in inputs.items()}, copy_outputs_to_host=False)
            per_size[str(n)] = 2 * n ** 3 / _best_seconds(run) / 1e9
            for array in inputs.values():
                array.free()
    return {"library": f"TensorRT {trt.__version__} MatMul", "dtype": dtype, "threads": None,
            "gflops_by_size": per_size, "best_gflops": max(per_size.values())}


# ------------------------------------------------------------------------------ inputs
def bench_inputs(bundle, graph: str, batch: int) -> dict[str, np.ndarray]:
    """`batch` rows cycled from the bundle's reference inputs (real token ids, real frame masks)."""
    ref = bundle.reference()
    names = ["input_ids"] if graph == "text" else ["frames", "frame_mask"]
    rows = np.arange(batch) % len(ref[names[0]])
    return {name: np.ascontiguousarray(ref[name][rows]) for name in names}


# ------------------------------------------------------------------------------ the run
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


def measure_peaks(backends: Sequence[str], precisions: Sequence[str], sizes: Sequence[int],
                  threads: int | None, plans: Sequence[tuple[str, str]] = ()) -> dict[str, Any]:
    """Peaks of every backend's precisions; `plans` adds the bf16 / int8 rows (runtime/precision_peaks.py)."""
    from .precision_peaks import peak_measurer

    peaks: dict[str, Any] = {}
    for backend in backends:
        peaks[backend] = {}
        for precision in precisions if backend != "ort-cpu" else ("fp32",):
            dtype = "float32" if precision == "fp32" else "float16"
            if backend == "openvino" or precision in ("bf16", "int8"):
                continue
            try:
                if backend == "tensorrt":
                    if precision != "fp16":
                        continue
                    peaks[backend][precision] = tensorrt_matmul_peak(sizes, dtype)
                else:
                    peaks[backend][precision] = ort_matmul_peak(sizes, threads, backend[4:], dtype)
            except Exception as exc:  # noqa: BLE001 - a missing peak must not lose the latency numbers
                peaks[backend][precision] = {"error": f"{type(exc).__name__}: {exc}"}
                log.warning("peak of %s %s not measured: %s", backend, precision, exc)
    for backend, precision in plans:
        measure = peak_measurer(backend, precision)
        if measure is None or precision in peaks.get(backend, {}):
            continue
        try:
            peaks.setdefault(backend, {})[precision] = measure(sizes, threads)
        except Exception as exc:  # noqa: BLE001 - a missing peak must not lose the latency numbers
            peaks.setdefault(backend, {})[precision] = {"error": f"{type(exc).__name__}: {exc}"}
            log.warning("peak of %s %s not measured: %s", backend, precision, exc)
    return peaks


def backend_plans(bundle, backend: str, precisions: Sequence[str]) -> tuple[list[tuple[str, str]], list[dict]]:
    """(backend, precision) rows to measure and the skipped ones with their reason."""
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
            from .openvino_backend import precision_status

            ok, reason = precision_status(precision)
            if not ok:
                skipped.append({"backend": f"{backend} {precision}", "reason": reason})
                continue
        plans.append((backend, precision))
    return plans, skipped


def _load_torch(bundle, checkpoint, threads):
    """(module, model, description) of the PyTorch baseline, or (None, None, reason)."""
    try:
        baseline = importlib.import_module("export.torch_baseline")
    except ImportError as exc:
        return None, None, f"torch (or ts2net) is not importable ({exc}); install the export extra for a baseline"
    try:
        model, description = baseline.load_baseline_model(bundle, checkpoint)
    except baseline.TorchBaselineUnavailable as exc:
        return None, None, str(exc)
    except Exception as exc:  # noqa: BLE001 - an unreadable --torch-checkpoint is the user's to fix
        if checkpoint is None:
            raise
        raise click.ClickException(f"--torch-checkpoint {checkpoint}: {exc}") from exc
    return baseline, model, description


def run_bench(bundle, backends: Sequence[str] | None = None,
              precisions: Sequence[str] = ("fp32", "fp16", "bf16", "int8"),
              batch_sizes: Sequence[int] = (1, 8), warmup: int = 3, iters: int = 20, threads: int | None = None,
              torch: bool = True, torch_checkpoint: str | None = None,
              peak_sizes: Sequence[int] = DEFAULT_PEAK_SIZES, progress: bool = True,
              torch_compile: bool = False) -> dict[str, Any]:
    """Measure everything; returns the report dict (see `bench_command` for the fields)."""
    from tqdm import tqdm

    from .backends import available_backends, create_backend
    from .reports import environment, usable_cores

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
    torch_note = None
    baseline = model = None
    if torch:
        baseline, model, torch_note = _load_torch(bundle, torch_checkpoint, threads)
        if baseline is not None:
            torch_rows = baseline.torch_plans(precisions, torch_compile)
            peaks["torch-eager"] = {p: baseline.matmul_peak(tuple(peak_sizes), threads, dtype=p)
                                    for p in sorted({p for _, p in torch_rows})}
            if torch_compile:
                peaks["torch-compile"] = peaks["torch-eager"]  # same oneDNN / MKL GEMM kernels as eager
            plans += torch_rows
        else:
            skipped.append({"backend": "torch-eager", "reason": torch_note})
    else:
        torch_note = "disabled with --no-torch"
    if torch and baseline is not None and not torch_compile:
        skipped.append({"backend": "torch-compile", "reason": "not requested (--torch-compile; compiling the "
                        "model takes minutes on a small CPU)"})

    rows = []
    bar = tqdm(total=len(plans) * 2 * len(batch_sizes), desc="bench", unit="config", disable=not progress)
    for backend, precision in plans:
        for graph in ("text", "video"):
            rss = PeakRss()
            rss.start()
            start = time.perf_counter()
            if backend.startswith("torch-"):
                runner = baseline.TorchRunner(model, graph, threads, precision=precision,
                                              compiled=backend == "torch-compile")
            else:
                runner = create_backend(bundle, graph, backend, precision if backend != "tensorrt" else None,
                                        threads=threads if backend in ("ort-cpu", "openvino") else None).load()
            load = {"load_s": time.perf_counter() - start, "load_rss_mib": rss.delta_mib()}
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
        "bundle": {"path": str(Path(bundle.path).resolve()), "id": bundle.sha256, "model": bundle.model.get("name"),
                   "source": (bundle.manifest.get("source_checkpoint") or {}).get("name"),
                   "config": dict(bundle.model)},
        "settings": {"threads": threads, "usable_cores": usable_cores(), "load_average_at_start": load_at_start,
                     "warmup": warmup, "iters": iters, "batch_sizes": list(batch_sizes),
                     "precisions": list(precisions), "backends": requested, "peak_sizes": list(peak_sizes),
                     "latency": "time of the backend call only (inputs already in host memory, outputs copied "
                                "back); p50/p95/p99 over iters"},
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
    from .path_choice import gated_precisions

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


# ------------------------------------------------------------------------------ output
def _busy_warning(settings: Mapping[str, Any]) -> list[str]:
    """A loaded machine makes every timing slower and the peak lower; say so where the numbers are read."""
    load, cores = settings.get("load_average_at_start"), settings.get("usable_cores") or 1
    if load is None or load <= 0.5 * cores:
        return []
    return [f"**Warning: the machine was busy** (1-minute load average {load:.1f} on {cores} usable cores when the "
            "run started): other processes shared the cores, so latencies are pessimistic and the measured peak is "
            "understated. Re-run on an idle machine for numbers to quote.", ""]


def render_markdown(report: dict[str, Any]) -> str:
    from .reports import environment_markdown

    s = report["settings"]
    lines = [f"# Benchmark: {report['bundle']['model']} (bundle {report['bundle']['id']})", "",
             f"{s['threads']} threads, {s['warmup']} warm-up + {s['iters']} timed runs per configuration. "
             f"Latency: {s['latency']}.", "",
             f"FLOPs per item (2 x multiply-adds from the config): text {report['flops_per_item']['text'] / 1e9:.4g} "
             f"GFLOP, video {report['flops_per_item']['video'] / 1e9:.4g} GFLOP.", "",
             *_busy_warning(s),
             "## Attainable peak (same run, same kernel library)", "",
             "ONNX Runtime CPU FP16 rows are set against the FP32 MatMul peak: the CPU path has no faster FP16 "
             "GEMM, so the FP32 peak bounds both. BF16 and INT8 rows are set against the MatMul of their own "
             "precision and library (runtime/precision_peaks.py).", "",
             "| backend | precision | library | dtype | GFLOP/s by n | best GFLOP/s |", "|---|---|---|---|---|---|"]
    for backend, by_precision in report["peaks"].items():
        for precision, peak in by_precision.items():
            if "error" in peak:
                lines.append(f"| {backend} | {precision} | not measured: {peak['error']} | | | |")
                continue
            sizes = ", ".join(f"{n}: {g:.1f}" for n, g in peak["gflops_by_size"].items())
            lines.append(f"| {backend} | {precision} | {peak['library']} | {peak['dtype']} | {sizes} | "
                         f"{peak['best_gflops']:.1f} |")
    lines += ["", "## Latency", "",
              "| graph | backend | precision | batch | p50 ms | p95 ms | p99 ms | items/s | GFLOP/s | % of peak | "
              "run RSS MiB | load RSS MiB |", "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in report["results"]:
        pct = f"{r['pct_of_peak']:.1f}" if r["pct_of_peak"] is not None else "-"
        lines.append(f"| {r['graph']} | {r['backend']} | {r['precision']} | {r['batch']} | {r['p50_ms']:.3f} | "
                     f"{r['p95_ms']:.3f} | {r['p99_ms']:.3f} | {r['items_per_s']:.1f} | {r['gflops']:.2f} | {pct} | "
                     f"{r['run_peak_rss_mib']:.1f} | {r['load_rss_mib']:.1f} |")
    if report.get("fastest_gated"):
        lines += ["", "## Fastest gated path (p50, same run)", "",
                  "| graph | batch | backend | precision | p50 ms | vs torch eager FP32 | vs torch eager BF16 autocast | "
                  "% of peak |", "|---|---|---|---|---|---|---|---|"]
        for r in report["fastest_gated"]:
            ratio = [f"{r[k]:.2f}x" if r.get(k) else "-" for k in ("vs_torch_eager_fp32", "vs_torch_eager_bf16")]
            pct = f"{r['pct_of_peak']:.1f}" if r.get("pct_of_peak") is not None else "-"
            lines.append(f"| {r['graph']} | {r['batch']} | {r['backend']} | {r['precision']} | {r['p50_ms']:.2f} | "
                         f"{ratio[0]} | {ratio[1]} | {pct} |")
    if report["ratios"]:
        versus = [v for v in ("torch-eager fp32", "torch-eager bf16") if any(r["versus"] == v for r in report["ratios"])]
        by_row: dict[tuple, dict] = {}
        for r in report["ratios"]:
            if r["versus"] in versus:
                by_row.setdefault((r["graph"], r["batch"], r["row"]), {})[r["versus"]] = r["value"]
        lines += ["", "## Speed-up vs PyTorch (p50 ratio, same run; > 1 means the row is faster)", "",
                  "| graph | batch | row | " + " | ".join(f"vs {v}" for v in versus) + " |",
                  "|---|---|---|" + "---|" * len(versus)]
        for (graph, batch, row), values in by_row.items():
            lines.append(f"| {graph} | {batch} | {row} | " + " | ".join(
                f"{values[v]:.2f}x" if v in values else "-" for v in versus) + " |")
        other = [r for r in report["ratios"] if r["versus"] not in versus]
        if other:
            lines += ["", "| ratio | graph | batch | value |", "|---|---|---|---|"]
            lines += [f"| {r['ratio']} | {r['graph']} | {r['batch']} | {r['value']:.2f} |" for r in other]
    lines += ["", f"PyTorch eager baseline: {report['torch_baseline']}."]
    if report.get("uptime"):
        lines += ["", f"`uptime` at the end of the run: `{report['uptime']}` (the machine may be shared: ratios are "
                  "same-run, absolute numbers are as loaded as this says)."]
    if report["skipped"]:
        lines += ["", "Not measured:", ""] + [f"- {s['backend']}: {s['reason']}" for s in report["skipped"]]
    lines += ["", "## Environment", "", environment_markdown(report["environment"])]
    return "\n".join(lines)


def plot_latency(report: dict[str, Any]) -> bytes:
    """PNG: p50 latency (bars) with p95 whiskers by batch size, one panel per graph, one bar per backend."""
    import io

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = report["results"]
    series = sorted({(r["backend"], r["precision"]) for r in rows}, key=lambda bp: (bp[0], bp[1] != "fp32", bp[1]))
    batches = sorted({r["batch"] for r in rows})
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2), squeeze=False)
    width = 0.8 / max(len(series), 1)
    for ax, graph in zip(axes[0], ("text", "video")):
        for i, (backend, precision) in enumerate(series):
            by_batch = {r["batch"]: r for r in rows if r["graph"] == graph and (r["backend"], r["precision"])
                        == (backend, precision)}
            xs = [j + (i - (len(series) - 1) / 2) * width for j, b in enumerate(batches) if b in by_batch]
            p50 = [by_batch[b]["p50_ms"] for b in batches if b in by_batch]
            p95 = [by_batch[b]["p95_ms"] - by_batch[b]["p50_ms"] for b in batches if b in by_batch]
            ax.bar(xs, p50, width, yerr=[np.zeros(len(p95)), p95], capsize=2, label=f"{backend} {precision}")
        ax.set_xticks(range(len(batches)), [str(b) for b in batches])
        ax.set_xlabel("batch size")
        ax.set_ylabel("latency ms (p50, whisker p95)")
        ax.set_yscale("log")
        ax.set_title(f"{graph} encoder")
        ax.grid(axis="y", alpha=0.3)
    axes[0][0].legend(fontsize=8)
    fig.suptitle(f"{report['bundle']['model']}: latency by backend and batch size "
                 f"({report['settings']['threads']} threads)")
    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=110)
    plt.close(fig)
    return buffer.getvalue()


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
@click.option("--peak-sizes", callback=lambda c, p, v: _int_list(v), default=",".join(map(str, DEFAULT_PEAK_SIZES)),
              show_default=True, help="Square MatMul sizes for the attainable-peak measurement.")
@click.option("--out", "out_dir", type=click.Path(file_okay=False, path_type=Path), default=Path("reports/bench"),
              show_default=True)
@click.option("--progress/--no-progress", default=True, show_default=True)
def bench_command(bundle_dir, backends, precisions, batch_sizes, warmup, iters, threads, use_torch, torch_checkpoint,
                  torch_compile, peak_sizes, out_dir, progress):
    """Latency / throughput / GFLOP/s of a bundle's backends next to the attainable peak; JSON + Markdown + PNG."""
    from .backends import BackendUnavailable
    from .bundle import BundleError, open_bundle
    from .reports import atomic_write_bytes, write_report

    try:
        importlib.import_module("onnx")
    except ImportError as exc:
        raise click.ClickException("`ts2net bench` builds its peak MatMul graph with the `onnx` package: "
                                   "pip install onnx") from exc
    try:
        bundle = open_bundle(bundle_dir)
        report = run_bench(bundle, backends, precisions, batch_sizes, warmup, iters, threads, use_torch,
                           torch_checkpoint, peak_sizes, progress, torch_compile)
    except (BundleError, BackendUnavailable) as exc:
        raise click.ClickException(str(exc)) from exc
    markdown = render_markdown(report)
    json_path, md_path = write_report(out_dir, "bench", report, markdown)
    png_path = atomic_write_bytes(Path(out_dir) / "bench.png", plot_latency(report)) if report["results"] else None
    click.echo(markdown.split("## Environment")[0].rstrip())
    click.echo(f"\nreport: {json_path}, {md_path}" + (f", {png_path}" if png_path else ""))
    if not report["results"]:
        raise click.ClickException("no backend could be measured: " + "; ".join(
            f"{s['backend']}: {s['reason']}" for s in report["skipped"]))
