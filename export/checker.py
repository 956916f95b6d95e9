"""TensorRT compatibility check of an ONNX graph, run by every export and by the tests.

It walks the whole graph and returns *every* problem (naming the nodes), so one run tells a user
everything to fix: op types outside the TensorRT ONNX parser's supported set (the onnx-tensorrt
matrix of TensorRT 10.1, see TRT_PARSER_MATRIX), random ops, TopK without a constant K below 3840 or
with sorted=0, opsets outside 17..20 (LayerNormalization must be
one op), float64 tensors, and dynamic axes other than the declared ones.
"""
from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto

OPSET_RANGE = (17, 20)

# Operators of the default ONNX domain that the TensorRT ONNX parser imports: the "Y" rows of the
# onnx-tensorrt support matrix (docs/operators.md) of the TensorRT 10.1 GA release (the matrix headed
# "TensorRT 10.0 supports operators in the inclusive range of opset 9 to opset 20"). The same parser
# ships with TensorRT 11; later releases only add ops, so this list errs on the safe side. Ops the
# matrix marks "N" (BitShift, Compress, ConcatFromSequence, DynamicQuantizeLinear, STFT, Unique,
# Multinomial, Bernoulli, the Sequence*/String*/Window ops, ...) are absent. Random ops are listed
# because the parser imports them, but check_graph rejects them first (graphs must be deterministic).
TRT_PARSER_MATRIX = "onnx-tensorrt docs/operators.md, TensorRT 10.1 GA (opset 9..20)"
TRT_SUPPORTED_OPS = frozenset("""
Abs Acos Acosh Add And ArgMax ArgMin Asin Asinh Atan Atanh AveragePool BatchNormalization Cast CastLike
Ceil Celu Clip Concat Constant ConstantOfShape Conv ConvTranspose Cos Cosh CumSum DeformConv DepthToSpace
DequantizeLinear Div Dropout Einsum Elu Equal Erf Exp Expand EyeLike Flatten Floor Gather GatherElements
GatherND Gelu Gemm GlobalAveragePool GlobalLpPool GlobalMaxPool Greater GreaterOrEqual GridSample
GroupNormalization GRU HardSigmoid HardSwish Hardmax Identity If ImageScaler InstanceNormalization IsInf
IsNaN LayerNormalization LeakyRelu Less LessOrEqual Log LogSoftmax Loop LRN LSTM LpNormalization LpPool
MatMul Max MaxPool Mean MeanVarianceNormalization Min Mish Mod Mul Neg NonMaxSuppression NonZero Not OneHot
Or Pad ParametricSoftplus Pow PRelu QuantizeLinear RandomNormal RandomNormalLike RandomUniform
RandomUniformLike Range Reciprocal ReduceL1 ReduceL2 ReduceLogSum ReduceLogSumExp ReduceMax ReduceMean
ReduceMin ReduceProd ReduceSum ReduceSumSquare Relu Reshape Resize ReverseSequence RNN RoiAlign Round
ScaledTanh Scan Scatter ScatterElements ScatterND Selu Shape Shrink Sigmoid Sign Sin Sinh Size Slice
Softmax Softplus Softsign SpaceToDepth Split Sqrt Squeeze Sub Sum Tan Tanh ThresholdedRelu Tile TopK
Transpose Trilu Unsqueeze Upsample Where Xor
""".split())
# The parser's TopK restriction: K must be a build-time constant below 3840.
TOPK_MAX_K = 3839
RANDOM_OPS = frozenset({"RandomNormal", "RandomNormalLike", "RandomUniform", "RandomUniformLike",
                        "Multinomial", "Bernoulli"})


class GraphCheckError(ValueError):
    """The graph is not TensorRT-clean; the message lists every problem."""


def _constant_names(graph: onnx.GraphProto) -> set[str]:
    names = {t.name for t in graph.initializer}
    names |= {n.output[0] for n in graph.node if n.op_type == "Constant"}
    return names


def _constant_value(graph: onnx.GraphProto, name: str):
    """The numpy value of a constant tensor (initializer or Constant node's `value`), else None."""
    from onnx import numpy_helper

    for tensor in graph.initializer:
        if tensor.name == name:
            return numpy_helper.to_array(tensor)
    for node in graph.node:
        if node.op_type == "Constant" and node.output[0] == name:
            for attribute in node.attribute:
                if attribute.name == "value":
                    return numpy_helper.to_array(attribute.t)
                if attribute.name in ("value_int", "value_ints"):
                    return onnx.helper.get_attribute_value(attribute)
    return None


def check_graph(model: onnx.ModelProto, declared_axes: set[str] | frozenset[str] = frozenset({"batch"})
                ) -> list[str]:
    """All TensorRT-compatibility problems of `model` (empty list: clean)."""
    problems: list[str] = []
    graph = model.graph
    opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), None)
    if opset is None or not OPSET_RANGE[0] <= opset <= OPSET_RANGE[1]:
        problems.append(f"opset {opset}: expected {OPSET_RANGE[0]}..{OPSET_RANGE[1]} "
                        "(>= 17 so LayerNormalization is one op; <= 20 for the TensorRT 10 parser)")
    constants = _constant_names(graph)
    for node in graph.node:
        label = f"node {node.name or '(unnamed)'} ({node.op_type})"
        if node.domain not in ("", "ai.onnx"):
            problems.append(f"{label}: custom domain {node.domain!r} has no TensorRT importer")
        elif node.op_type in RANDOM_OPS:
            problems.append(f"{label}: random op; exported graphs must be deterministic")
        elif node.op_type not in TRT_SUPPORTED_OPS:
            problems.append(f"{label}: op type not supported by the TensorRT ONNX parser")
        if node.op_type == "TopK":
            attrs = {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}
            if attrs.get("sorted", 1) != 1:
                problems.append(f"{label}: sorted=0; token selection needs a sorted TopK")
            if len(node.input) < 2 or node.input[1] not in constants:
                problems.append(f"{label}: K is not a constant")
            else:
                k = np.asarray(_constant_value(graph, node.input[1]), dtype=np.int64).ravel()
                if k.size and int(k.max()) > TOPK_MAX_K:
                    problems.append(f"{label}: K = {int(k.max())}; the TensorRT parser needs K < {TOPK_MAX_K + 1}")
        if node.op_type == "Cast" and any(a.name == "to" and a.i == TensorProto.DOUBLE for a in node.attribute):
            problems.append(f"{label}: casts to float64")
        for attribute in node.attribute:
            if attribute.type == onnx.AttributeProto.TENSOR and attribute.t.data_type == TensorProto.DOUBLE:
                problems.append(f"{label}: float64 constant")
    for tensor in graph.initializer:
        if tensor.data_type == TensorProto.DOUBLE:
            problems.append(f"initializer {tensor.name}: float64")
    for value in list(graph.input) + list(graph.output) + list(graph.value_info):
        kind = "input" if value in graph.input else "output" if value in graph.output else "tensor"
        tensor_type = value.type.tensor_type
        if tensor_type.elem_type == TensorProto.DOUBLE:
            problems.append(f"{kind} {value.name}: float64")
        if kind in ("input", "output"):
            for axis, dim in enumerate(tensor_type.shape.dim):
                if dim.dim_param and dim.dim_param not in declared_axes:
                    problems.append(f"{kind} {value.name}: axis {axis} is dynamic ({dim.dim_param!r}); "
                                    f"declared dynamic axes: {sorted(declared_axes)}")
                elif not dim.dim_param and dim.dim_value <= 0:
                    problems.append(f"{kind} {value.name}: axis {axis} has no known size")
    return problems


def assert_trt_compatible(model: onnx.ModelProto, declared_axes=frozenset({"batch"}), source: str = "graph") -> None:
    problems = check_graph(model, declared_axes)
    if problems:
        raise GraphCheckError(f"{source}: {len(problems)} TensorRT compatibility problem(s):\n  - "
                              + "\n  - ".join(problems))
