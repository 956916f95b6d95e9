"""Attainable MatMul peaks per backend and precision, measured with the kernel library each row uses.

A benchmark row is set against the peak of its own precision and library (design, "Measuring
against the limit"): an OpenVINO BF16 row against OpenVINO's BF16 MatMul (AMX tiles where the CPU
has them), an INT8 row against an INT8 MatMul of the same library, never against the FP32 peak
(which would report INT8 rows at several hundred percent). The kernels:

- ONNX Runtime FP32: a ``MatMul`` graph of two square inputs (runtime.benchmark.peak.ort_matmul_peak).
- ONNX Runtime INT8: ``MatMulInteger`` on uint8 x int8 inputs (the U8S8 kernel the dynamically
  quantized graphs run), int32 output.
- OpenVINO FP32 / BF16: a ``MatMul`` of an input by a constant weight, compiled with the f32 /
  bf16 inference hint (OpenVINO packs constant weights at compile time, as in the model graphs).
- OpenVINO INT8: the same with QuantizeLinear / DequantizeLinear on the input and an int8
  constant weight, which OpenVINO turns into its INT8 (AMX / VNNI) MatMul.

The FLOP count is 2 n^3 for every precision (multiply-adds count twice whatever their width).
"""
from __future__ import annotations

from typing import Any, Callable, Sequence

import numpy as np

PEAK_KERNELS = {
    ("ort-cpu", "fp32"): "onnxruntime MatMul float32",
    ("ort-cpu", "int8"): "onnxruntime MatMulInteger uint8 x int8",
    ("openvino", "fp32"): "openvino MatMul f32 hint",
    ("openvino", "bf16"): "openvino MatMul bf16 hint",
    ("openvino", "int8"): "openvino MatMul on QDQ uint8 x int8",
}


def _model_bytes(graph) -> bytes:
    import onnx
    from onnx import helper

    opsets = [helper.make_opsetid("", 17)]
    model = helper.make_model(graph, opset_imports=opsets, producer_name="ts2net-bench")
    model.ir_version = helper.find_min_ir_version_for(opsets)
    onnx.checker.check_model(model)
    return model.SerializeToString()


def matmul_integer_model(n: int) -> bytes:
    """C(int32) = MatMulInteger(A uint8, B int8), square n x n inputs."""
    from onnx import TensorProto, helper

    graph = helper.make_graph([helper.make_node("MatMulInteger", ["A", "B"], ["C"])], f"matmulint{n}",
                              [helper.make_tensor_value_info("A", TensorProto.UINT8, [n, n]),
                               helper.make_tensor_value_info("B", TensorProto.INT8, [n, n])],
                              [helper.make_tensor_value_info("C", TensorProto.INT32, [n, n])])
    return _model_bytes(graph)


def constant_weight_matmul_model(n: int, quantized: bool, seed: int = 0) -> bytes:
    """C = A @ W for an n x n float input A and a constant W; quantized: QDQ on A and an int8 W."""
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(seed)
    nodes, inits = [], []
    if quantized:
        inits += [numpy_helper.from_array(np.array(0.02, np.float32), "a_scale"),
                  numpy_helper.from_array(np.array(128, np.uint8), "a_zero"),
                  numpy_helper.from_array(rng.integers(-127, 128, (n, n), dtype=np.int8), "W_q"),
                  numpy_helper.from_array(np.array(0.01, np.float32), "w_scale"),
                  numpy_helper.from_array(np.array(0, np.int8), "w_zero")]
        nodes += [helper.make_node("QuantizeLinear", ["A", "a_scale", "a_zero"], ["A_q"]),
                  helper.make_node("DequantizeLinear", ["A_q", "a_scale", "a_zero"], ["A_dq"]),
                  helper.make_node("DequantizeLinear", ["W_q", "w_scale", "w_zero"], ["W"]),
                  helper.make_node("MatMul", ["A_dq", "W"], ["C"])]
    else:
        inits.append(numpy_helper.from_array(rng.standard_normal((n, n), dtype=np.float32), "W"))
        nodes.append(helper.make_node("MatMul", ["A", "W"], ["C"]))
    graph = helper.make_graph(nodes, f"matmul_const{n}", [helper.make_tensor_value_info("A", TensorProto.FLOAT, [n, n])],
                              [helper.make_tensor_value_info("C", TensorProto.FLOAT, [n, n])], initializer=inits)
    return _model_bytes(graph)


def ort_int8_matmul_peak(sizes: Sequence[int], threads: int | None) -> dict[str, Any]:
    import onnxruntime as ort

    from .peak import _best_seconds

    options = ort.SessionOptions()
    options.log_severity_level = 3
    if threads:
        options.intra_op_num_threads, options.inter_op_num_threads = threads, 1
    rng = np.random.default_rng(0)
    per_size = {}
    for n in sizes:
        session = ort.InferenceSession(matmul_integer_model(n), sess_options=options,
                                       providers=["CPUExecutionProvider"])
        feed = {"A": rng.integers(0, 256, (n, n), dtype=np.uint8), "B": rng.integers(-127, 128, (n, n), dtype=np.int8)}
        per_size[str(n)] = 2 * n ** 3 / _best_seconds(lambda: session.run(["C"], feed)) / 1e9
    return {"library": f"onnxruntime {ort.__version__} MatMulInteger (cpu)", "dtype": "uint8 x int8 -> int32",
            "threads": threads, "gflops_by_size": per_size, "best_gflops": max(per_size.values())}


def openvino_matmul_peak(sizes: Sequence[int], threads: int | None, precision: str) -> dict[str, Any]:
    """OpenVINO CPU MatMul at `precision` (fp32, bf16 hint, or int8 QDQ) on square sizes."""
    import openvino as ov

    from .peak import _best_seconds
    from ..openvino_backend import precision_status

    ok, reason = precision_status(precision)
    if not ok:
        raise RuntimeError(reason)
    core = ov.Core()
    config = {"INFERENCE_PRECISION_HINT": "bf16" if precision == "bf16" else "f32", "PERFORMANCE_HINT": "LATENCY"}
    if threads:
        config["INFERENCE_NUM_THREADS"] = int(threads)
    rng = np.random.default_rng(0)
    per_size = {}
    for n in sizes:
        model = core.read_model(constant_weight_matmul_model(n, quantized=precision == "int8"), b"")
        compiled = core.compile_model(model, "CPU", config)
        request = compiled.create_infer_request()
        feed = {"A": rng.standard_normal((n, n), dtype=np.float32)}
        per_size[str(n)] = 2 * n ** 3 / _best_seconds(lambda: request.infer(feed)) / 1e9
        del request, compiled
    dtype = {"fp32": "float32", "bf16": "bfloat16 (f32 in/out)", "int8": "uint8 x int8 (QDQ)"}[precision]
    return {"library": f"openvino {ov.get_version().split('-')[0]} MatMul (CPU, {precision})", "dtype": dtype,
            "threads": threads, "gflops_by_size": per_size, "best_gflops": max(per_size.values())}


def peak_measurer(backend: str, precision: str) -> Callable[[Sequence[int], int | None], dict[str, Any]] | None:
    """The function measuring the peak of a (backend, precision) row's kernels; None when another row's applies."""
    if backend == "ort-cpu" and precision == "int8":
        return ort_int8_matmul_peak
    if backend == "openvino":
        return lambda sizes, threads: openvino_matmul_peak(sizes, threads, precision)
    return None
