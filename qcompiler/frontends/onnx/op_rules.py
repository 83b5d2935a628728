"""How each ONNX op becomes IR: one rule a row of `RULES`, a function of the importer (its
current node is `imp.node`) that sets the node's outputs in `imp.env`.

Ops on tensors known at import time (initializers, Constant nodes, shapes) are computed
here with numpy (`_FOLDED`), within the importer's element limit: that is how the shape
arithmetic exporters write around Reshape disappears. Everything else becomes IR ops,
whose semantics follow torch's (`qcompiler.ir.ops`); the conversions are the places where
the conventions differ (pads, resize coordinates, Flatten's 2-D result, opset changes).
"""

from __future__ import annotations

import numpy as np

from qcompiler.frontends.onnx import op_rules_layout as layout
from qcompiler.frontends.onnx.folding import FOLDED, fold
from qcompiler.frontends.onnx.importer import Importer, Quantized, QuantizedConstant
from qcompiler.ir import Value

_ONNX_TO_IR_DTYPE = {
    1: "f32",
    2: "u8",
    3: "i8",
    5: "i16",
    6: "i32",
    7: "i64",
    9: "bool",
    10: "f16",
    11: "f64",
}


def _attr(imp: Importer, key: str, default=None):
    return imp.node.attrs.get(key, default)


def _unary(ir_op: str, **attrs):
    def rule(imp: Importer) -> None:
        imp.set_output(0, imp.emit(ir_op, [imp.value(0)], attrs))

    return rule


def _binary(ir_op: str):
    def rule(imp: Importer) -> None:
        imp.set_output(0, imp.emit(ir_op, [imp.value(0), imp.value(1)]))

    return rule


def _with_folding(rule):
    """Compute the op with numpy when every input is known at import time."""

    def folded(imp: Importer) -> None:
        if fold(imp):
            return
        rule(imp)

    return folded


# ---- quantization -----------------------------------------------------------------------------


def _qparams(imp: Importer):
    scale = imp.constant(1)
    zero_point = imp.constant(2, required=False)
    if zero_point is None:
        zero_point = np.zeros(scale.shape, np.uint8)
    if zero_point.dtype not in (np.int8, np.uint8, np.int32):
        raise imp.unsupported(
            f"zero point type {zero_point.dtype}: only int8 and uint8 "
            "quantization (int32 for biases) is imported"
        )
    axis = _attr(imp, "axis", 1) if scale.size > 1 else None
    if _attr(imp, "block_size", 0):
        raise imp.unsupported("blocked quantization (block_size) is not imported")
    if max(scale.ndim, zero_point.ndim) > 1 or zero_point.size != scale.size or scale.dtype.kind != "f":
        raise imp.fail(
            f"scale {scale.dtype}{list(scale.shape)} and zero point "
            f"{zero_point.dtype}{list(zero_point.shape)}: both must be scalars or vectors of "
            "one length, the scale a float"
        )
    return scale.reshape(-1), zero_point.reshape(-1), axis


def _check_axis(imp: Importer, axis: int | None, shape, size: int) -> int | None:
    """A per-axis quantization's axis, normalised, checked against the scale's length."""
    if axis is None:
        return None
    if not -len(shape) <= axis < len(shape):
        raise imp.fail(f"quantization axis {axis} is out of range for a rank-{len(shape)} tensor")
    axis %= len(shape)
    if shape[axis] != size:
        raise imp.fail(f"{size} scales for axis {axis} of size {shape[axis]}")
    return axis


def quantize_linear(imp: Importer) -> None:
    scale, zero_point, axis = _qparams(imp)
    source = imp.value(0)
    axis = _check_axis(imp, axis, source.shape, scale.size)
    if zero_point.dtype == np.int32:
        raise imp.unsupported("QuantizeLinear to int32 is not imported")
    imp.set_output(0, Quantized(source, scale, zero_point, axis, imp.node.name or imp.node.outputs[0].name))


def dequantize_linear(imp: Importer) -> None:
    item = imp.entry(imp.node.inputs[0])
    scale, zero_point, axis = _qparams(imp)
    if isinstance(item, Quantized):
        axis = _check_axis(imp, axis, item.source.shape, scale.size)
        if not (
            np.array_equal(item.scale, scale)
            and np.array_equal(item.zero_point, zero_point)
            and item.axis == axis
        ):
            raise imp.unsupported(
                f"it dequantizes the output of QuantizeLinear '{item.node}' with "
                "other quantization parameters (a requantization); QDQ pairs "
                "must share scale, zero point and axis"
            )
        imp.set_output(
            0,
            imp.fake_quant(
                item.source,
                scale,
                zero_point,
                axis,
                zero_point.dtype == np.int8,
                name=f"{item.source.name}.fq",
            ),
        )
        return
    if isinstance(item, np.ndarray) and item.dtype in (np.int8, np.uint8, np.int32):
        axis = _check_axis(imp, axis, item.shape, scale.size)
        if item.dtype != zero_point.dtype:
            raise imp.fail(f"integers of type {item.dtype} with a zero point of type {zero_point.dtype}")
        name = imp.node.inputs[0].name
        imp.set_output(0, QuantizedConstant(item, scale, zero_point, axis, name))
        return
    if isinstance(item, Value):
        raise imp.unsupported(
            f"it dequantizes '{item.name}' ({item.type_str}), an integer tensor "
            "that is not a QuantizeLinear output or an initializer: a model "
            "with integer inputs is not imported; give it float inputs"
        )
    raise imp.unsupported("its input is neither a QuantizeLinear output nor an integer initializer")


# ---- layers ---------------------------------------------------------------------------------------


def _weight(imp: Importer, index: int, transpose: bool = False) -> Value:
    """A layer's weight: a quantized one keeps its fake_quant next to the layer."""
    item = imp.entry(imp.node.inputs[index])
    if isinstance(item, QuantizedConstant):
        return imp.weight_fake_quant(item, transpose)
    if transpose and isinstance(item, np.ndarray):
        return imp.as_value(
            np.ascontiguousarray(item.astype(np.float32).T), f"{imp.node.inputs[index].name}.T"
        )
    value = imp.as_value(item, imp.node.inputs[index].name)
    return imp.emit("permute", [value], {"dims": [1, 0]}, tag="weight_t") if transpose else value


def conv(imp: Importer) -> None:
    x = imp.value(0)
    weight = _weight(imp, 1)
    spatial = len(weight.shape) - 2
    if spatial not in (1, 2):
        raise imp.unsupported(f"{spatial}-D convolution is not imported (1-D and 2-D are)")
    strides = list(_attr(imp, "strides", [1] * spatial))
    dilations = list(_attr(imp, "dilations", [1] * spatial))
    x, padding = layout.conv_padding(imp, x, weight, strides, dilations)
    bias = imp.layer_bias(2, x, weight)
    attrs = {
        "stride": strides,
        "padding": padding,
        "dilation": dilations,
        "groups": int(_attr(imp, "group", 1)),
    }
    op = "conv2d" if spatial == 2 else "conv1d"
    imp.set_output(0, imp.emit(op, [x, weight] + ([bias] if bias is not None else []), attrs))


def conv_transpose(imp: Importer) -> None:
    x, weight = imp.value(0), _weight(imp, 1)
    if len(weight.shape) != 4:
        raise imp.unsupported("only 2-D ConvTranspose is imported")
    if _attr(imp, "output_shape") is not None or _attr(imp, "auto_pad", "NOTSET") not in (
        "NOTSET",
        b"NOTSET",
    ):
        raise imp.unsupported("ConvTranspose with output_shape or auto_pad is not imported; give pads")
    pads = list(_attr(imp, "pads", [0] * 4))
    if pads[:2] != pads[2:]:
        raise imp.unsupported(f"asymmetric ConvTranspose pads {pads} are not imported")
    bias = imp.value(2) if len(imp.node.inputs) > 2 else None
    attrs = {
        "stride": list(_attr(imp, "strides", [1, 1])),
        "padding": pads[:2],
        "dilation": list(_attr(imp, "dilations", [1, 1])),
        "groups": int(_attr(imp, "group", 1)),
        "output_padding": list(_attr(imp, "output_padding", [0, 0])),
    }
    imp.set_output(0, imp.emit("conv_transpose2d", [x, weight] + ([bias] if bias is not None else []), attrs))


def gemm(imp: Importer) -> None:
    if _attr(imp, "transA", 0) or _attr(imp, "alpha", 1.0) != 1.0 or _attr(imp, "beta", 1.0) != 1.0:
        raise imp.unsupported("Gemm with transA, alpha or beta other than 0, 1, 1 is not imported")
    x = imp.value(0)
    weight = _weight(imp, 1, transpose=not _attr(imp, "transB", 0))
    bias = imp.layer_bias(2, x, weight)
    if bias is not None and tuple(bias.shape) != (weight.shape[0],):
        raise imp.unsupported(
            f"Gemm bias of shape {list(bias.shape)} (a per-output-channel [C] bias is imported)"
        )
    imp.set_output(0, imp.emit("linear", [x, weight] + ([bias] if bias is not None else [])))


def matmul(imp: Importer) -> None:
    item = imp.entry(imp.node.inputs[1])
    constant_matrix = (isinstance(item, QuantizedConstant) or isinstance(item, np.ndarray)) and item_ndim(
        item
    ) == 2
    if constant_matrix:  # x @ W with W [in, out] constant: a linear layer, weight W^T
        x = imp.value(0)
        imp.set_output(0, imp.emit("linear", [x, _weight(imp, 1, transpose=True)]))
        return
    imp.set_output(0, imp.emit("matmul", [imp.value(0), imp.value(1)]))


def add(imp: Importer) -> None:
    """x + y; a bias added to a bias-less linear layer (MatMul + Add, how exporters write a
    linear layer on 3-D inputs) becomes that layer's bias, an int32 one in a QDQ file."""
    first = imp.entry(imp.node.inputs[0])
    second = imp.entry(imp.node.inputs[1])
    for layer_out, bias, index in ((first, second, 1), (second, first, 0)):
        producer = layer_out.producer if isinstance(layer_out, Value) else None
        if (
            producer is not None
            and producer.op == "linear"
            and len(producer.inputs) == 2
            and _is_channel_bias(bias, producer.inputs[1].shape[0])
        ):
            bias_value = imp.layer_bias(index, producer.inputs[0], producer.inputs[1])
            # The bias-less layer stays for any other reader; unused, the import drops it.
            imp.set_output(0, imp.emit("linear", [*producer.inputs, bias_value]))
            return
    imp.set_output(0, imp.emit("add", [imp.value(0), imp.value(1)]))


def _is_channel_bias(item, channels: int) -> bool:
    array = item.integers if isinstance(item, QuantizedConstant) else item
    return isinstance(array, np.ndarray) and array.dtype != object and array.shape == (channels,)


def item_ndim(item) -> int:
    return (item.integers if isinstance(item, QuantizedConstant) else item).ndim


def batch_normalization(imp: Importer) -> None:
    if _attr(imp, "training_mode", 0):
        raise imp.unsupported(
            "BatchNormalization in training mode is not imported; export the model in eval mode"
        )
    inputs = [imp.value(i) for i in range(5)]
    imp.set_output(0, imp.emit("batch_norm", inputs, {"eps": float(_attr(imp, "epsilon", 1e-5))}))


def layer_normalization(imp: Importer) -> None:
    x = imp.value(0)
    axis = int(_attr(imp, "axis", -1)) % len(x.shape)
    normalized = [int(d) for d in x.shape[axis:]]
    inputs = [x, imp.value(1)] + (
        [imp.value(2)] if len(imp.node.inputs) > 2 and imp.node.inputs[2].name else []
    )
    imp.set_output(
        0,
        imp.emit(
            "layer_norm", inputs, {"normalized_shape": normalized, "eps": float(_attr(imp, "epsilon", 1e-5))}
        ),
    )


# ---- activations ------------------------------------------------------------------------------


def clip(imp: Importer) -> None:
    if imp.opset < 11:
        low, high = _attr(imp, "min"), _attr(imp, "max")
    else:
        low, high = (imp.constant(i, required=False) for i in (1, 2))
        low = None if low is None else float(low.reshape(-1)[0])
        high = None if high is None else float(high.reshape(-1)[0])
    x = imp.value(0)
    op = "relu" if low == 0.0 and high is None else "clamp"
    imp.set_output(0, imp.emit(op, [x], {} if op == "relu" else {"min": low, "max": high}))


def hard_sigmoid(imp: Importer) -> None:
    alpha, beta = float(_attr(imp, "alpha", 0.2)), float(_attr(imp, "beta", 0.5))
    x = imp.value(0)
    if abs(alpha - 1 / 6) < 1e-6 and beta == 0.5:
        imp.set_output(0, imp.emit("hardsigmoid", [x]))
        return
    scaled = imp.emit("mul", [x, imp.constant_value(f"{x.name}.alpha", np.float32(alpha))], tag="scaled")
    shifted = imp.emit("add", [scaled, imp.constant_value(f"{x.name}.beta", np.float32(beta))], tag="shifted")
    imp.set_output(0, imp.emit("clamp", [shifted], {"min": 0.0, "max": 1.0}))


def softmax(imp: Importer) -> None:
    x = imp.value(0)
    axis = int(_attr(imp, "axis", -1 if imp.opset >= 13 else 1)) % len(x.shape)
    if imp.opset < 13 and axis != len(x.shape) - 1:
        raise imp.unsupported(
            "Softmax before opset 13 over more than the last axis (it flattens "
            "from `axis`) is not imported; convert the model to opset 13+"
        )
    imp.set_output(0, imp.emit("softmax", [x], {"dim": axis}))


def prelu(imp: Importer) -> None:
    x, slope = imp.value(0), imp.constant(1)
    if slope.size == 1:
        slope = slope.reshape(1)
    elif (
        len(x.shape) >= 2
        and slope.size == x.shape[1]
        and all(d == 1 for i, d in enumerate(slope.shape) if i != len(slope.shape) - len(x.shape) + 1)
    ):
        slope = slope.reshape(-1)
    else:
        raise imp.unsupported(
            f"PRelu slopes of shape {list(slope.shape)} (one slope, or one per "
            "channel on axis 1, are imported)"
        )
    imp.set_output(0, imp.emit("prelu", [x, imp.as_value(slope.astype(np.float32), imp.node.inputs[1].name)]))


def gelu(imp: Importer) -> None:
    approximate = _attr(imp, "approximate", "none")
    approximate = approximate.decode() if isinstance(approximate, bytes) else approximate
    imp.set_output(0, imp.emit("gelu", [imp.value(0)], {"approximate": approximate}))


def pow_(imp: Importer) -> None:
    exponent = imp.constant(1).reshape(-1)
    if exponent.size != 1:
        raise imp.unsupported("Pow with a tensor exponent is not imported (a scalar is)")
    imp.set_output(0, imp.emit("pow", [imp.value(0)], {"exponent": float(exponent[0])}))


def neg(imp: Importer) -> None:
    x = imp.value(0)
    imp.set_output(
        0, imp.emit("mul", [x, imp.constant_value(f"{x.name}.minus_one", np.asarray(-1, DTYPE_OF[x.dtype]))])
    )


DTYPE_OF = {"f32": np.float32, "f16": np.float16, "f64": np.float64, "i64": np.int64, "i32": np.int32}


def cast(imp: Importer) -> None:
    to = int(_attr(imp, "to"))
    if to not in _ONNX_TO_IR_DTYPE:
        raise imp.unsupported(f"Cast to ONNX type {to} (the IR has {sorted(_ONNX_TO_IR_DTYPE.values())})")
    x = imp.value(0)
    if x.dtype == _ONNX_TO_IR_DTYPE[to]:
        imp.set_output(0, x)
        return
    imp.set_output(0, imp.emit("cast", [x], {"dtype": _ONNX_TO_IR_DTYPE[to]}))


def negated(ir_op: str):
    def rule(imp: Importer) -> None:
        imp.set_output(0, imp.emit("logical_not", [imp.emit(ir_op, [imp.value(0), imp.value(1)], tag=ir_op)]))

    return rule


def identity(imp: Importer) -> None:
    imp.set_output(0, imp.entry(imp.node.inputs[0]))


def elu(imp: Importer) -> None:
    imp.set_output(0, imp.emit("elu", [imp.value(0)], {"alpha": float(_attr(imp, "alpha", 1.0))}))


def selu(imp: Importer) -> None:
    imp.set_output(
        0,
        imp.emit(
            "elu",
            [imp.value(0)],
            {
                "alpha": float(_attr(imp, "alpha", 1.67326319217681884765625)),
                "scale": float(_attr(imp, "gamma", 1.05070102214813232421875)),
            },
        ),
    )


def leaky_relu(imp: Importer) -> None:
    imp.set_output(
        0, imp.emit("leaky_relu", [imp.value(0)], {"negative_slope": float(_attr(imp, "alpha", 0.01))})
    )


def constant(imp: Importer) -> None:
    value = _attr(imp, "value")
    if value is None:
        for key in ("value_float", "value_int", "value_floats", "value_ints"):
            if key in imp.node.attrs:
                dtype = np.float32 if "float" in key else np.int64
                imp.set_output(0, np.asarray(imp.node.attrs[key], dtype))
                return
        raise imp.unsupported("Constant without a value, value_float(s) or value_int(s) attribute")
    imp.set_output(0, imp._constant_array(value))


RULES = {
    "QuantizeLinear": quantize_linear,
    "DequantizeLinear": dequantize_linear,
    "Conv": conv,
    "ConvTranspose": conv_transpose,
    "Gemm": gemm,
    "MatMul": matmul,
    "BatchNormalization": batch_normalization,
    "LayerNormalization": layer_normalization,
    "Relu": _unary("relu"),
    "Clip": clip,
    "HardSwish": _unary("hardswish"),
    "HardSigmoid": hard_sigmoid,
    "Sigmoid": _unary("sigmoid"),
    "Tanh": _unary("tanh"),
    "Softmax": softmax,
    "Gelu": gelu,
    "LeakyRelu": leaky_relu,
    "PRelu": prelu,
    "Elu": elu,
    "Selu": selu,
    "Softplus": _unary("softplus"),
    "Mish": _unary("mish"),
    "Erf": _unary("erf"),
    "Exp": _unary("exp"),
    "Log": _unary("log"),
    "Abs": _unary("abs"),
    "Sqrt": _unary("sqrt"),
    "Reciprocal": _unary("reciprocal"),
    "Pow": pow_,
    "Neg": neg,
    "Not": _unary("logical_not"),
    "Equal": _binary("eq"),
    "Greater": _binary("gt"),
    "GreaterOrEqual": _binary("ge"),
    "Less": _binary("lt"),
    "LessOrEqual": _binary("le"),
    "And": _binary("logical_and"),
    "Or": _binary("logical_or"),
    "Where": lambda imp: imp.set_output(0, imp.emit("where", [imp.value(0), imp.value(1), imp.value(2)])),
    "Add": add,
    "Sub": _binary("sub"),
    "Mul": _binary("mul"),
    "Div": _binary("div"),
    "Cast": cast,
    "Identity": identity,
    "Dropout": identity,
    "Constant": constant,
    **layout.RULES,
}
# Ops computed with numpy when all their inputs are known at import time.
for _name in FOLDED:
    if _name in RULES:
        RULES[_name] = _with_folding(RULES[_name])
    else:
        RULES[_name] = _with_folding(layout.not_foldable(_name))
