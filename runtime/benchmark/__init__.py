"""`ts2net bench` as a library: latency, throughput and efficiency of a bundle's backends, in one run.

    flops   FLOP counts of one item through each graph (from the config)
    memory  peak RSS of a section
    peak    the attainable MatMul peak of each backend's kernel library, measured in the same run
    run     the orchestration (`run_bench`) and the speed ratios
    report  Markdown, the latency chart, writing the report files

No click here: errors are `BenchmarkError`, `BundleError` or `BackendUnavailable`, which the
command line (cli/bench.py) turns into messages.
"""
from .flops import model_flops
from .memory import PeakRss
from .peak import DEFAULT_PEAK_SIZES, measure_peaks, ort_matmul_peak, tensorrt_matmul_peak
from .report import plot_latency, render_markdown, write_bench_report
from .run import Baseline, BaselineLoader, BenchmarkError, bench_inputs, ratios, require_onnx, run_bench

__all__ = ["Baseline", "BaselineLoader", "BenchmarkError", "DEFAULT_PEAK_SIZES", "PeakRss", "bench_inputs",
           "measure_peaks", "model_flops", "ort_matmul_peak", "plot_latency", "ratios", "render_markdown",
           "require_onnx", "run_bench", "tensorrt_matmul_peak", "write_bench_report"]
