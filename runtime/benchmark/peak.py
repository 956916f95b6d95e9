"""The attainable peak of each backend's own kernel library, measured in the same run as the latencies.

For ONNX Runtime: a `MatMul` graph of large square matrices run by ONNX Runtime with the same thread
count (a numpy or torch GEMM is not that limit: on the reference machine it reached half of ORT's
MatMul, and would overstate efficiency twofold). For TensorRT: the same graph as an FP16 engine.
"""
from __future__ import annotations

import logging
import math
import time
from typing import Any, Callable, Sequence

import numpy as np

log = logging.getLogger(__name__)

DEFAULT_PEAK_SIZES = (768, 2048, 4096)


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


def measure_peaks(backends: Sequence[str], precisions: Sequence[str], sizes: Sequence[int],
                  threads: int | None, plans: Sequence[tuple[str, str]] = ()) -> dict[str, Any]:
    """Peaks of every backend's fp32 / fp16 kernels; `plans` adds the rows with their own precision's
    kernels (OpenVINO, bf16, int8: runtime/benchmark/precision_peaks.py)."""
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
