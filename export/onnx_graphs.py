"""Export one sub-graph to a clean ONNX file: trace, fold constants, fix shapes, check, save.

Uses the TorchScript-based `torch.onnx.export` (dynamo=False): it needs no extra packages and
produces plain opset-17 graphs that both ONNX Runtime and the TensorRT parser read. Constant
folding and shape cleanup go through onnxslim.
"""
from __future__ import annotations

import io
import os
import warnings
from pathlib import Path

import onnx
import torch

from ts2net import TS2Net

from .specs import GraphSpec, example_inputs

DEFAULT_OPSET = 17
TWO_GB = 2 * 1024 ** 3


def trace_to_onnx(model: TS2Net, spec: GraphSpec, opset: int = DEFAULT_OPSET) -> onnx.ModelProto:
    """The raw exported graph of `spec` (eval mode, so token selection is hard top-K)."""
    wrapper = spec.wrapper(model).eval()
    inputs = example_inputs(spec, spec.example_batch, model.cfg.vocab_size)
    buffer = io.BytesIO()
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")  # tracer warnings about shape checks turned into constants
        torch.onnx.export(wrapper, inputs, buffer, dynamo=False, opset_version=opset,
                          input_names=[t.name for t in spec.inputs], output_names=[t.name for t in spec.outputs],
                          dynamic_axes=spec.dynamic_axes, do_constant_folding=True)
    return onnx.load_from_string(buffer.getvalue())


def clean_graph(model: onnx.ModelProto, spec: GraphSpec) -> onnx.ModelProto:
    """Constant folding, dead-code removal, shape inference, spec shapes on the outputs, IR version."""
    import onnxslim

    model = onnxslim.slim(model)
    for value, tensor in zip(model.graph.output, spec.outputs):
        dims = value.type.tensor_type.shape.dim
        if len(dims) != len(tensor.shape):
            raise ValueError(f"{spec.name} graph output {value.name}: rank {len(dims)}, spec says {tensor.shape}")
        for dim, expected in zip(dims, tensor.shape):
            if isinstance(expected, str):
                dim.dim_param = expected
            else:
                if dim.dim_value and dim.dim_value != expected:
                    raise ValueError(f"{spec.name} graph output {value.name}: size {dim.dim_value} != spec {expected}")
                dim.dim_value = expected
    # the oldest IR version that carries this opset: every ONNX Runtime that knows the opset reads it
    model.ir_version = onnx.helper.find_min_ir_version_for(list(model.opset_import))
    model = onnx.shape_inference.infer_shapes(model, strict_mode=True)
    onnx.checker.check_model(model, full_check=True)
    return model


def save_graph(model: onnx.ModelProto, path: str | Path) -> list[Path]:
    """Atomic save; graphs over 2 GB go to ONNX's external-data format. Returns the files written."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp")
    large = model.ByteSize() > TWO_GB - 64 * 1024 ** 2
    data_name = f"{path.name}.data"
    if large:
        onnx.save_model(model, tmp, save_as_external_data=True, all_tensors_to_one_file=True,
                        location=data_name, size_threshold=1024)
        os.replace(tmp.parent / data_name, path.parent / data_name)
    else:
        onnx.save_model(model, tmp)
    os.replace(tmp, path)
    return [path, path.parent / data_name] if large else [path]


def export_graph(model: TS2Net, spec: GraphSpec, opset: int = DEFAULT_OPSET) -> onnx.ModelProto:
    return clean_graph(trace_to_onnx(model, spec, opset), spec)
