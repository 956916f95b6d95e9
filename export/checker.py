"""TensorRT compatibility check of an ONNX graph, run by every export and by the tests.

It walks the whole graph and returns *every* problem (naming the nodes), so one run tells a user
everything to fix: op types outside the TensorRT 10/11 ONNX parser's supported set, random ops,
TopK without a constant K or with sorted=0, opsets outside 17..20 (LayerNormalization must be
one op), float64 tensors, and dynamic axes other than the declared ones.
"""
from __future__ import annotations

import onnx
from onnx import TensorProto

OPSET_RANGE = (17, 20)

# Operators of the default ONNX domain that the TensorRT 10.x / 11.x ONNX parser imports
# (onnx-tensorrt operators.md), minus the random ops, which we reject separately.
TRT_SUPPORTED_OPS = frozenset("""
Abs Acos Acosh Add And ArgMax ArgMin Asin Asinh Atan Atanh AveragePool BatchNormalization
BitShift Cast Ceil Celu Clip Compress Concat ConcatFromSequence Constant ConstantOfShape Conv
ConvTranspose Cos Cosh CumSum DeformConv DepthToSpace DequantizeLinear Div Dropout DynamicQuantizeLinear
Einsum Elu Equal Erf Exp Expand EyeLike Flatten Floor Gather GatherElements GatherND Gelu Gemm
GlobalAveragePool GlobalLpPool GlobalMaxPool Greater GreaterOrEqual GridSample GroupNormalization
GRU HardSigmoid HardSwish Hardmax Identity If InstanceNormalization IsInf IsNaN LayerNormalization
LeakyRelu Less LessOrEqual Log LogSoftmax Loop LpNormalization LpPool LRN LSTM MatMul Max MaxPool
Mean MeanVarianceNormalization Min Mish Mod Mul Multinomial Neg NonMaxSuppression NonZero Not
OneHot Or Pad ParametricSoftplus Pow PRelu QuantizeLinear Range Reciprocal ReduceL1 ReduceL2
ReduceLogSum ReduceLogSumExp ReduceMax ReduceMean ReduceMin ReduceProd ReduceSum ReduceSumSquare
Relu Reshape Resize ReverseSequence RNN RoiAlign Round ScaledTanh Scatter ScatterElements ScatterND
Selu Shape Shrink Sigmoid Sign Sin Sinh Size Slice Softmax Softplus Softsign SpaceToDepth Split
Sqrt Squeeze STFT Sub Sum Tan Tanh ThresholdedRelu Tile TopK Transpose Trilu Unique Unsqueeze
Upsample Where Xor
""".split())
RANDOM_OPS = frozenset({"RandomNormal", "RandomNormalLike", "RandomUniform", "RandomUniformLike",
                        "Multinomial", "Bernoulli"})


class GraphCheckError(ValueError):
    """The graph is not TensorRT-clean; the message lists every problem."""


def _constant_names(graph: onnx.GraphProto) -> set[str]:
    names = {t.name for t in graph.initializer}
    names |= {n.output[0] for n in graph.node if n.op_type == "Constant"}
    return names


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
