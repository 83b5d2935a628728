"""How each float IR op is written in ONNX opset 17: one rule a row of `RULES`, a function
of the emitter and the node returning the ONNX tensors of the node's outputs.

The IR follows torch's functional API (`qcompiler.ir.ops`); the attribute conversions
here are the places the two conventions differ: conv `padding=[ph, pw]` is ONNX
`pads=[ph, pw, ph, pw]`; `pad` lists (begin, end) pairs from the last axis as torch does,
ONNX all begins then all ends; torch's `nearest` resize is ONNX `asymmetric` / `floor`;
a reshape's `-1` stands for the batch, as in both.
"""

from __future__ import annotations

import math

import numpy as np

from qcompiler.backends.onnx.qdq import emit_fake_quant
from qcompiler.errors import OnnxExportError
from qcompiler.ir import Node
from qcompiler.ir.dims import Dim

_ONNX_DTYPES = {"f32": 1, "u8": 2, "i8": 3, "i16": 5, "i32": 6, "i64": 7, "bool": 9, "f16": 10, "f64": 11}


def _x(e, node: Node, index: int = 0):
    return e.tensor(node.inputs[index])


def _one(e, node: Node, op_type: str, inputs: list, attrs: dict | None = None) -> list:
    return e.node(op_type, inputs, attrs, name=node.name)


def _part(e, node: Node, op_type: str, inputs: list, attrs: dict | None = None, tag: str = "") -> object:
    return e.node(op_type, inputs, attrs, name=f"{node.name}.{tag or op_type.lower()}")[0]


def _rank(node: Node, index: int = 0) -> int:
    return len(node.inputs[index].shape)


def _refuse(node: Node, why: str):
    raise OnnxExportError(f"{node.describe()}: {why}")


# ---- layers -------------------------------------------------------------------------------------


def _conv(e, node: Node) -> list:
    a = node.attrs
    inputs = [_x(e, node, i) for i in range(len(node.inputs))]
    attrs = {
        "strides": list(a["stride"]),
        "pads": list(a["padding"]) * 2,
        "dilations": list(a["dilation"]),
        "group": int(a["groups"]),
    }
    if node.op == "conv_transpose2d":
        attrs["output_padding"] = list(a["output_padding"])
    return _one(e, node, "ConvTranspose" if node.op == "conv_transpose2d" else "Conv", inputs, attrs)


def _linear(e, node: Node) -> list:
    x, weight = _x(e, node), _x(e, node, 1)
    bias = node.inputs[2] if len(node.inputs) > 2 else None
    if _rank(node) == 2:
        return _one(
            e, node, "Gemm", [x, weight] + ([e.tensor(bias)] if bias is not None else []), {"transB": 1}
        )
    transposed = _transposed_weight(e, node)
    if bias is None:
        return _one(e, node, "MatMul", [x, transposed])
    product = _part(e, node, "MatMul", [x, transposed])
    return _one(e, node, "Add", [product, e.tensor(bias)])


def _transposed_weight(e, node: Node):
    """linear's weight [out, in] as MatMul reads it, [in, out]: a constant or a quantized
    constant is stored transposed (QDQ on axis 1), so importers see a weight, not an op."""
    weight = node.inputs[1]
    producer = weight.producer
    if producer is not None and producer.op == "fake_quant" and producer.inputs[0].is_constant:
        return emit_fake_quant(e, producer, transpose=True)
    if weight.is_constant:
        return e.constant(f"{weight.name}.transposed", np.ascontiguousarray(weight.data.T))
    return _part(e, node, "Transpose", [e.tensor(weight)], {"perm": [1, 0]})


def _batch_norm(e, node: Node) -> list:
    x, weight, bias, mean, var = node.inputs
    channels = mean.shape[0]
    scale = (
        e.tensor(weight)
        if weight is not None
        else e.constant(f"{node.name}.ones", np.ones(channels, np.float32))
    )
    shift = (
        e.tensor(bias)
        if bias is not None
        else e.constant(f"{node.name}.zeros", np.zeros(channels, np.float32))
    )
    return _one(
        e,
        node,
        "BatchNormalization",
        [e.tensor(x), scale, shift, e.tensor(mean), e.tensor(var)],
        {"epsilon": float(node.attrs["eps"])},
    )


def _layer_norm(e, node: Node) -> list:
    normalized = list(node.attrs["normalized_shape"])
    weight = node.inputs[1] if len(node.inputs) > 1 else None
    bias = node.inputs[2] if len(node.inputs) > 2 else None
    scale = (
        e.tensor(weight)
        if weight is not None
        else e.constant(f"{node.name}.ones", np.ones(normalized, np.float32))
    )
    inputs = [_x(e, node), scale] + ([e.tensor(bias)] if bias is not None else [])
    return _one(
        e, node, "LayerNormalization", inputs, {"axis": -len(normalized), "epsilon": float(node.attrs["eps"])}
    )


def _embedding(e, node: Node) -> list:
    return _one(e, node, "Gather", [_x(e, node, 1), _x(e, node, 0)], {"axis": 0})


# ---- elementwise --------------------------------------------------------------------------------


def _simple(op_type: str, **fixed):
    def rule(e, node: Node) -> list:
        return _one(e, node, op_type, [_x(e, node, i) for i in range(len(node.inputs))], fixed)

    return rule


def _clamp(e, node: Node) -> list:
    bounds = [
        e.scalar(f"{node.name}.{key}", node.attrs[key])
        if node.attrs[key] is not None
        else e.gs.Variable.empty()
        for key in ("min", "max")
    ]
    return _one(e, node, "Clip", [_x(e, node), *bounds])


def _hardsigmoid(e, node: Node) -> list:
    return _one(e, node, "HardSigmoid", [_x(e, node)], {"alpha": 1.0 / 6.0, "beta": 0.5})


def _times_x(e, node: Node, op_type: str, inputs=None) -> list:
    """x * f(x): silu (f = sigmoid), mish (f = tanh(softplus(x)))."""
    x = _x(e, node)
    return _one(e, node, "Mul", [x, _part(e, node, op_type, inputs or [x])])


def _silu(e, node: Node) -> list:
    return _times_x(e, node, "Sigmoid")


def _mish(e, node: Node) -> list:
    return _times_x(e, node, "Tanh", [_part(e, node, "Softplus", [_x(e, node)])])


def _gelu(e, node: Node) -> list:
    """Gelu has no op before opset 20: torch.onnx's formula, x * (erf(x / sqrt 2) + 1) * 0.5
    (the importer recognises it), or the tanh form."""
    x = _x(e, node)
    if node.attrs["approximate"] == "tanh":
        cube = _part(e, node, "Mul", [x, _part(e, node, "Mul", [x, x], tag="square")], tag="cube")
        inner = _part(e, node, "Add", [x, _part(e, node, "Mul", [cube, e.scalar("c", 0.044715)], tag="c3")])
        scaled = _part(e, node, "Mul", [inner, e.scalar("k", math.sqrt(2 / math.pi))])
        shape = _part(e, node, "Tanh", [scaled])
    else:
        shape = _part(e, node, "Erf", [_part(e, node, "Div", [x, e.scalar("sqrt2", math.sqrt(2))])])
    one_plus = _part(e, node, "Add", [shape, e.scalar("one", 1.0)], tag="one_plus")
    product = _part(e, node, "Mul", [x, one_plus], tag="product")
    return _one(e, node, "Mul", [product, e.scalar("half", 0.5)])


def _rsqrt(e, node: Node) -> list:
    return _one(e, node, "Reciprocal", [_part(e, node, "Sqrt", [_x(e, node)])])


def _pow(e, node: Node) -> list:
    return _one(e, node, "Pow", [_x(e, node), e.scalar(f"{node.name}.exponent", node.attrs["exponent"])])


def _elu(e, node: Node) -> list:
    a = node.attrs
    if a["scale"] == 1.0 and a["input_scale"] == 1.0:
        return _one(e, node, "Elu", [_x(e, node)], {"alpha": float(a["alpha"])})
    if a["input_scale"] == 1.0 and abs(a["alpha"] - 1.6732632) < 1e-6 and abs(a["scale"] - 1.0507010) < 1e-6:
        return _one(e, node, "Selu", [_x(e, node)], {"alpha": float(a["alpha"]), "gamma": float(a["scale"])})
    _refuse(node, "elu with scale/input_scale other than ELU's or SELU's has no ONNX op")


def _softplus(e, node: Node) -> list:
    if node.attrs["beta"] != 1.0:
        _refuse(node, "softplus with beta != 1 has no ONNX op")
    return _one(e, node, "Softplus", [_x(e, node)])


def _prelu(e, node: Node) -> list:
    slopes = node.inputs[1]
    slope = e.tensor(slopes)
    if slopes.shape[0] > 1 and _rank(node) > 2:  # one slope per channel, axis 1
        slope = _part(e, node, "Reshape", [slope, e.ints("slope_shape", [-1] + [1] * (_rank(node) - 2))])
    return _one(e, node, "PRelu", [_x(e, node), slope])


def _cast(e, node: Node) -> list:
    return _one(e, node, "Cast", [_x(e, node)], {"to": _ONNX_DTYPES[node.attrs["dtype"]]})


def _negated(op_type: str):
    def rule(e, node: Node) -> list:
        return _one(e, node, "Not", [_part(e, node, op_type, [_x(e, node), _x(e, node, 1)])])

    return rule


# ---- pooling and reductions ---------------------------------------------------------------------


def _pool(op_type: str):
    def rule(e, node: Node) -> list:
        a = node.attrs
        padding = list(a["padding"])
        attrs = {
            "kernel_shape": list(a["kernel_size"]),
            "strides": list(a["stride"] or a["kernel_size"]),
            "pads": padding * 2,
            "ceil_mode": int(a["ceil_mode"]),
        }
        if op_type == "MaxPool":
            attrs["dilations"] = list(a["dilation"])
        else:
            attrs["count_include_pad"] = int(a["count_include_pad"])
        return _one(e, node, op_type, [_x(e, node)], attrs)

    return rule


def _adaptive_avg_pool(e, node: Node) -> list:
    out_size = list(node.attrs["output_size"])
    in_size = [int(d) for d in node.inputs[0].shape[2:]]
    if all(o == 1 for o in out_size):
        return _one(e, node, "GlobalAveragePool", [_x(e, node)])
    if any(i % o for i, o in zip(in_size, out_size, strict=True)):
        _refuse(
            node,
            f"adaptive average pooling from {in_size} to {out_size} (windows of "
            "different sizes) has no ONNX op",
        )
    kernel = [i // o for i, o in zip(in_size, out_size, strict=True)]
    return _one(e, node, "AveragePool", [_x(e, node)], {"kernel_shape": kernel, "strides": kernel})


def _dims(node: Node) -> list[int]:
    dim = node.attrs["dim"]
    rank = _rank(node)
    if dim is None:
        return list(range(rank))
    return [int(d) % rank for d in (dim if isinstance(dim, list | tuple) else [dim])]


def _reduce(op_type: str, axes_input: bool = False):
    def rule(e, node: Node) -> list:
        keep = int(node.attrs["keepdim"])
        if axes_input:  # ReduceSum takes its axes as an input since opset 13
            return _one(e, node, op_type, [_x(e, node), e.ints("axes", _dims(node))], {"keepdims": keep})
        return _one(e, node, op_type, [_x(e, node)], {"axes": _dims(node), "keepdims": keep})

    return rule


def _argmax(e, node: Node) -> list:
    if node.attrs["dim"] is None:
        flat = _part(e, node, "Reshape", [_x(e, node), e.ints("flat", [-1])])
        return _one(e, node, "ArgMax", [flat], {"axis": 0, "keepdims": 0})
    return _one(
        e, node, "ArgMax", [_x(e, node)], {"axis": _dims(node)[0], "keepdims": int(node.attrs["keepdim"])}
    )


def _var(e, node: Node) -> list:
    """sum((x - mean)^2) / (count - correction)."""
    x, axes = _x(e, node), _dims(node)
    count = int(np.prod([int(node.inputs[0].shape[a]) for a in axes]))
    mean = _part(e, node, "ReduceMean", [x], {"axes": axes, "keepdims": 1})
    centred = _part(e, node, "Sub", [x, mean])
    squares = _part(e, node, "Mul", [centred, centred])
    total = _part(
        e, node, "ReduceSum", [squares, e.ints("axes", axes)], {"keepdims": int(node.attrs["keepdim"])}
    )
    return _one(e, node, "Div", [total, e.scalar("count", count - node.attrs["correction"])])


def _vector_norm(e, node: Node) -> list:
    order = node.attrs["ord"]
    op_type = {2.0: "ReduceL2", 1.0: "ReduceL1"}.get(float(order))
    if op_type is None:
        _refuse(node, f"vector_norm of order {order} has no ONNX op (orders 1 and 2 do)")
    return _one(
        e, node, op_type, [_x(e, node)], {"axes": _dims(node), "keepdims": int(node.attrs["keepdim"])}
    )


# ---- data movement ------------------------------------------------------------------------------


def _shape_with_batch(node: Node, shape) -> list[int]:
    """A target shape whose symbolic dims are written -1 (the batch, at most one)."""
    written = [-1 if isinstance(d, Dim) or d == -1 else int(d) for d in shape]
    if written.count(-1) > 1:
        _refuse(node, f"reshape to {list(shape)} has more than one inferred dimension")
    if 0 in written:
        _refuse(node, "reshape to a shape with a zero dimension is not exported")
    return written


def _reshape(e, node: Node) -> list:
    return _one(
        e, node, "Reshape", [_x(e, node), e.ints("shape", _shape_with_batch(node, node.output.shape))]
    )


def _flatten(e, node: Node) -> list:
    start = node.attrs["start_dim"] % _rank(node)
    end = node.attrs["end_dim"] % _rank(node)
    if (
        end == _rank(node) - 1
        and start > 0
        and all(not isinstance(d, Dim) for d in node.inputs[0].shape[start:])
    ):
        return _one(e, node, "Flatten", [_x(e, node)], {"axis": start})
    return _reshape(e, node)


def _permute(e, node: Node) -> list:
    rank = _rank(node)
    return _one(e, node, "Transpose", [_x(e, node)], {"perm": [int(d) % rank for d in node.attrs["dims"]]})


def _transpose(e, node: Node) -> list:
    rank = _rank(node)
    perm = list(range(rank))
    a, b = node.attrs["dim0"] % rank, node.attrs["dim1"] % rank
    perm[a], perm[b] = perm[b], perm[a]
    return _one(e, node, "Transpose", [_x(e, node)], {"perm": perm})


def _concat(e, node: Node) -> list:
    return _one(e, node, "Concat", [e.tensor(v) for v in node.inputs], {"axis": int(node.attrs["dim"])})


def _split(e, node: Node) -> list:
    sizes = list(node.attrs["sizes"])
    return e.node(
        "Split",
        [_x(e, node), e.ints("split", sizes)],
        {"axis": int(node.attrs["axis"])},
        name=node.name,
        outputs=len(node.outputs),
    )


def _slice(e, node: Node) -> list:
    a = node.attrs
    limit = np.iinfo(np.int64).max
    end = min(int(a["end"]), limit) if a["end"] is not None else limit
    start = int(a["start"]) if a["start"] is not None else 0
    return _one(
        e,
        node,
        "Slice",
        [
            _x(e, node),
            e.ints("starts", [start]),
            e.ints("ends", [end]),
            e.ints("axes", [int(a["axis"])]),
            e.ints("steps", [int(a["step"])]),
        ],
    )


def _expand(e, node: Node) -> list:
    shape = [1 if isinstance(d, Dim) or d == -1 else int(d) for d in node.attrs["shape"]]
    return _one(e, node, "Expand", [_x(e, node), e.ints("shape", shape)])


_PAD_MODES = {"constant": "constant", "reflect": "reflect", "replicate": "edge"}


def _pad(e, node: Node) -> list:
    a = node.attrs
    if a["mode"] not in _PAD_MODES:
        _refuse(
            node, f"pad mode {a['mode']!r} has no ONNX opset 17 form (constant, reflect and replicate do)"
        )
    rank, pairs = _rank(node), list(a["pads"])
    begins, ends = [0] * rank, [0] * rank
    for i in range(len(pairs) // 2):  # torch: (begin, end) of the last axis first
        begins[rank - 1 - i], ends[rank - 1 - i] = pairs[2 * i], pairs[2 * i + 1]
    inputs = [_x(e, node), e.ints("pads", begins + ends)]
    if a["mode"] == "constant":
        inputs.append(e.scalar("value", a["value"] or 0.0))
    return _one(e, node, "Pad", inputs, {"mode": _PAD_MODES[a["mode"]]})


def _resize(e, node: Node) -> list:
    """Sizes, not scales, so the output is the IR's exactly: the batch and channels read
    from the input's shape, the spatial sizes from the attribute."""
    a, x = node.attrs, _x(e, node)
    shape = _part(e, node, "Shape", [x])
    leading = _part(e, node, "Slice", [shape, e.ints("zero", [0]), e.ints("two", [2])], tag="leading")
    sizes = _part(e, node, "Concat", [leading, e.ints("size", list(a["size"]))], {"axis": 0}, tag="sizes")
    empty = e.gs.Variable.empty()
    if a["mode"] == "nearest":
        attrs = {"mode": "nearest", "coordinate_transformation_mode": "asymmetric", "nearest_mode": "floor"}
    elif a["mode"] in ("bilinear", "linear"):
        attrs = {
            "mode": "linear",
            "coordinate_transformation_mode": "align_corners" if a["align_corners"] else "half_pixel",
        }
    else:
        _refuse(node, f"resize mode {a['mode']!r} is not exported (nearest and bilinear are)")
    return _one(e, node, "Resize", [x, empty, empty, sizes], attrs)


def _softmax(e, node: Node) -> list:
    return _one(e, node, "Softmax", [_x(e, node)], {"axis": int(node.attrs["dim"])})


def _leaky_relu(e, node: Node) -> list:
    return _one(e, node, "LeakyRelu", [_x(e, node)], {"alpha": float(node.attrs["negative_slope"])})


RULES = {
    "conv2d": _conv,
    "conv1d": _conv,
    "conv_transpose2d": _conv,
    "linear": _linear,
    "matmul": _simple("MatMul"),
    "embedding": _embedding,
    "batch_norm": _batch_norm,
    "layer_norm": _layer_norm,
    "relu": _simple("Relu"),
    "clamp": _clamp,
    "hardswish": _simple("HardSwish"),
    "hardsigmoid": _hardsigmoid,
    "silu": _silu,
    "gelu": _gelu,
    "sigmoid": _simple("Sigmoid"),
    "tanh": _simple("Tanh"),
    "softmax": _softmax,
    "abs": _simple("Abs"),
    "exp": _simple("Exp"),
    "log": _simple("Log"),
    "erf": _simple("Erf"),
    "sqrt": _simple("Sqrt"),
    "rsqrt": _rsqrt,
    "reciprocal": _simple("Reciprocal"),
    "mish": _mish,
    "pow": _pow,
    "leaky_relu": _leaky_relu,
    "elu": _elu,
    "softplus": _softplus,
    "prelu": _prelu,
    "cast": _cast,
    "eq": _simple("Equal"),
    "ne": _negated("Equal"),
    "gt": _simple("Greater"),
    "ge": _simple("GreaterOrEqual"),
    "lt": _simple("Less"),
    "le": _simple("LessOrEqual"),
    "logical_and": _simple("And"),
    "logical_or": _simple("Or"),
    "logical_not": _simple("Not"),
    "where": _simple("Where"),
    "add": _simple("Add"),
    "sub": _simple("Sub"),
    "mul": _simple("Mul"),
    "div": _simple("Div"),
    "max_pool2d": _pool("MaxPool"),
    "max_pool1d": _pool("MaxPool"),
    "avg_pool2d": _pool("AveragePool"),
    "avg_pool1d": _pool("AveragePool"),
    "adaptive_avg_pool2d": _adaptive_avg_pool,
    "adaptive_avg_pool1d": _adaptive_avg_pool,
    "mean": _reduce("ReduceMean"),
    "sum": _reduce("ReduceSum", axes_input=True),
    "amax": _reduce("ReduceMax"),
    "amin": _reduce("ReduceMin"),
    "argmax": _argmax,
    "var": _var,
    "vector_norm": _vector_norm,
    "concat": _concat,
    "expand": _expand,
    "split": _split,
    "slice": _slice,
    "reshape": _reshape,
    "flatten": _flatten,
    "permute": _permute,
    "transpose": _transpose,
    "pad": _pad,
    "resize": _resize,
}


def emit_op(e, node: Node) -> list:
    rule = RULES.get(node.op)
    if rule is None:
        _refuse(node, f"op '{node.op}' has no ONNX export rule")
    return rule(e, node)
