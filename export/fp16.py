"""Mixed-precision ONNX graphs: FP16 compute, FP32 islands, FP32 I/O.

Precision is decided here, in the graph, not in an engine builder: TensorRT 11 has no FP16
builder flag, while a strongly typed build of this graph gives the same precision on TensorRT
10 and 11, and ONNX Runtime runs the very same graph on any machine so its accuracy can be checked.

The pass is ours rather than onnxconverter-common's because that converter leaves `Cast(to=float)`
nodes and some constants in FP32 inside converted regions, producing graphs ONNX Runtime rejects.
It works on tensor edges: every float tensor gets the precision of the node that produces it,
and a Cast is inserted (once per tensor and target type) wherever a consumer wants the other one.
"""
from __future__ import annotations

from typing import Callable

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

FLOAT, FLOAT16 = TensorProto.FLOAT, TensorProto.FLOAT16

# Ops that always stay FP32: normalisation statistics and softmax saturate or lose accuracy in FP16.
FP32_OP_TYPES = frozenset({"LayerNormalization", "Softmax", "ReduceMean", "Pow", "Sqrt"})


def _float_tensors(model: onnx.ModelProto) -> set[str]:
    inferred = onnx.shape_inference.infer_shapes(model, strict_mode=True)
    graph = inferred.graph
    typed = list(graph.value_info) + list(graph.input) + list(graph.output)
    names = {v.name for v in typed if v.type.tensor_type.elem_type == FLOAT}
    names |= {t.name for t in graph.initializer if t.data_type == FLOAT}
    for node in graph.node:
        if node.op_type == "Constant" and node.attribute[0].t.data_type == FLOAT:
            names.add(node.output[0])
    return names


def _to_fp16_tensor(tensor: TensorProto, name: str | None = None) -> TensorProto:
    array = numpy_helper.to_array(tensor)
    clipped = np.clip(array, np.finfo(np.float16).min, np.finfo(np.float16).max)  # -1e6 masks -> -65504
    return numpy_helper.from_array(clipped.astype(np.float16), name if name is not None else tensor.name)


def convert_to_mixed_precision(model: onnx.ModelProto, keep_fp32: Callable[[onnx.NodeProto], bool]
                               ) -> onnx.ModelProto:
    """Return a copy of `model` where every node not kept FP32 computes in FP16; I/O stays FP32."""
    model = onnx.ModelProto.FromString(model.SerializeToString())
    graph = model.graph
    floats = _float_tensors(model)
    initializers = {t.name: t for t in graph.initializer}
    precision: dict[str, int] = {i.name: FLOAT for i in graph.input if i.name in floats}
    casts: dict[tuple[str, int], str] = {}
    new_nodes: list[onnx.NodeProto] = []
    new_initializers: list[TensorProto] = []

    def as_type(name: str, target: int) -> str:
        """Name of `name` in precision `target`, creating a cast or an FP16 initializer copy once."""
        if name in initializers:
            if target == FLOAT:
                return name
            key = (name, target)
            if key not in casts:
                casts[key] = f"{name}__fp16"
                new_initializers.append(_to_fp16_tensor(initializers[name], casts[key]))
            return casts[key]
        if precision.get(name, target) == target:
            return name
        key = (name, target)
        if key not in casts:
            casts[key] = f"{name}__to_{'fp16' if target == FLOAT16 else 'fp32'}"
            new_nodes.append(helper.make_node("Cast", [name], [casts[key]], to=target,
                                              name=f"{name}__cast_{'fp16' if target == FLOAT16 else 'fp32'}"))
        return casts[key]

    for node in graph.node:
        target = FLOAT if keep_fp32(node) or node.op_type in FP32_OP_TYPES else FLOAT16
        for index, name in enumerate(node.input):
            if name and name in floats:
                node.input[index] = as_type(name, target)
        if target == FLOAT16:
            for attribute in node.attribute:
                if node.op_type == "Cast" and attribute.name == "to" and attribute.i == FLOAT:
                    attribute.i = FLOAT16
                if attribute.type == onnx.AttributeProto.TENSOR and attribute.t.data_type == FLOAT:
                    attribute.t.CopyFrom(_to_fp16_tensor(attribute.t))
        for name in node.output:
            if name in floats:
                precision[name] = target
        new_nodes.append(node)

    # graph outputs keep FP32: rename an FP16 producer's tensor and cast it back under the output name
    for output in graph.output:
        if precision.get(output.name) == FLOAT16:
            internal = f"{output.name}__fp16"
            for node in new_nodes:
                node.output[:] = [internal if o == output.name else o for o in node.output]
                node.input[:] = [internal if i == output.name else i for i in node.input]
            new_nodes.append(helper.make_node("Cast", [internal], [output.name], to=FLOAT,
                                              name=f"{output.name}__cast_fp32"))

    del graph.node[:]
    graph.node.extend(_topological(new_nodes, {i.name for i in graph.input} | set(initializers)
                                   | {t.name for t in new_initializers}))
    graph.initializer.extend(new_initializers)
    used = {i for node in graph.node for i in node.input}
    kept = [t for t in graph.initializer if t.name in used]
    del graph.initializer[:]
    graph.initializer.extend(kept)
    del graph.value_info[:]
    return onnx.shape_inference.infer_shapes(model, strict_mode=True)


def _topological(nodes: list[onnx.NodeProto], available: set[str]) -> list[onnx.NodeProto]:
    """Casts were appended where first needed; order every node after its producers."""
    available = set(available) | {""}
    ordered, pending = [], list(nodes)
    while pending:
        progressed = []
        for node in pending:
            if all(i in available for i in node.input):
                ordered.append(node)
                available.update(node.output)
            else:
                progressed.append(node)
        if len(progressed) == len(pending):
            missing = sorted({i for n in progressed for i in n.input if i not in available})[:5]
            raise ValueError(f"FP16 conversion left a graph with unresolvable inputs: {missing}")
        pending = progressed
    return ordered
