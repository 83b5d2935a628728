"""Float ops -> Relax: the ops of float graphs and of the integer graphs' reported float fall
backs (`dequantize -> softmax / layer_norm / ... -> quantize`, docs/integer-spec.md,
section 9). One lowering function per IR op in `FLOAT_LOWERINGS`, with torch's semantics
(`qcompiler.ir.ops`): Relax's own operators where they mean the same thing, TE where they do
not (pooling with torch's ceil_mode and count_include_pad rules, hardswish, hardsigmoid).

Float results match torch to float32 rounding, not bit for bit: summation orders differ and
LLVM contracts `a * b + c` into FMAs. The fall backs' float32 outputs feed a `quantize`, so
the rare value within an ulp of a rounding boundary can land one step from the
interpreter's (which runs the op in torch); docs/tvm.md gives the measured frequency.
"""

from __future__ import annotations

import numpy as np
from tvm import relax, te, tirx

from qcompiler.backends.tvm.errors import LoweringError
from qcompiler.backends.tvm.kernels import window_counts
from qcompiler.backends.tvm.lower_common import Lowering, constant, pool_geometry, relax_shape, shape_of
from qcompiler.backends.tvm.lower_float_math import MATH_LOWERINGS
from qcompiler.ir import Node


def _along_channels(ctx: Lowering, value, rank: int):
    """A per-channel vector shaped [1, C, 1, ...] to broadcast along axis 1: reshaped in numpy
    when constant (TVM would otherwise fold it by compiling and running a kernel at build
    time), in Relax otherwise."""
    shape = [1, -1] + [1] * (rank - 2)
    if value.is_constant:
        return constant(value.data.reshape(shape))
    return relax.op.reshape(ctx[value], shape)


def _bias(ctx: Lowering, node: Node, result, rank: int):
    if len(node.inputs) < 3 or node.inputs[2] is None:
        return result
    return ctx.emit(relax.op.add(result, _along_channels(ctx, node.inputs[2], rank)))


def _pairs(value, spatial):
    return [int(v) for v in (value if isinstance(value, list | tuple) else [value] * spatial)]


def lower_conv(ctx: Lowering, node: Node, attrs: dict):
    x, weight = node.inputs[:2]
    spatial = len(x.shape) - 2
    conv = {1: relax.op.nn.conv1d, 2: relax.op.nn.conv2d}[spatial]
    result = ctx.emit(conv(ctx[x], ctx[weight], strides=_pairs(attrs["stride"], spatial),
                           padding=_pairs(attrs["padding"], spatial),
                           dilation=_pairs(attrs["dilation"], spatial), groups=int(attrs["groups"])))
    return _bias(ctx, node, result, len(x.shape))


def lower_conv_transpose2d(ctx: Lowering, node: Node, attrs: dict):
    x, weight = node.inputs[:2]
    result = ctx.emit(relax.op.nn.conv2d_transpose(
        ctx[x], ctx[weight], strides=_pairs(attrs["stride"], 2), padding=_pairs(attrs["padding"], 2),
        output_padding=_pairs(attrs["output_padding"], 2), dilation=_pairs(attrs["dilation"], 2),
        groups=int(attrs["groups"])))
    return _bias(ctx, node, result, 4)


def lower_linear(ctx: Lowering, node: Node, attrs: dict):
    bias = node.inputs[2] if len(node.inputs) > 2 else None
    return ctx.emit(relax.op.linear(ctx[node.inputs[0]], ctx[node.inputs[1]],
                                    None if bias is None else ctx[bias]))


def lower_matmul(ctx: Lowering, node: Node, attrs: dict):
    return ctx.emit(relax.op.matmul(ctx[node.inputs[0]], ctx[node.inputs[1]]))


def lower_batch_norm(ctx: Lowering, node: Node, attrs: dict):
    """Inference batch norm as torch's CPU kernel computes it: x * alpha + beta with
    alpha = w / sqrt(var + eps) and beta = b - mean * alpha, per channel, in float32 (made at
    compile time when the statistics are constants, as they are in an eval-mode graph)."""
    x, weight, bias, mean, var = node.inputs
    rank = len(x.shape)
    if all(v is None or v.is_constant for v in (weight, bias, mean, var)):
        channels = x.shape[1]
        data = lambda v, fill: np.full(channels, fill, np.float32) if v is None else v.data
        alpha = (data(weight, 1.0) / np.sqrt(data(var, 0.0) + np.float32(attrs["eps"]))).astype(np.float32)
        beta = (data(bias, 0.0) - data(mean, 0.0) * alpha).astype(np.float32)
        shape = [1, -1] + [1] * (rank - 2)
        return ctx.emit(relax.op.add(relax.op.multiply(ctx[x], constant(alpha.reshape(shape))),
                                     constant(beta.reshape(shape))))
    along = lambda v: _along_channels(ctx, v, rank)
    epsilon = constant(np.float32(attrs["eps"]))
    normalized = relax.op.divide(relax.op.subtract(ctx[x], along(mean)),
                                 relax.op.sqrt(relax.op.add(along(var), epsilon)))
    if weight is not None:
        normalized = relax.op.multiply(normalized, along(weight))
    if bias is not None:
        normalized = relax.op.add(normalized, along(bias))
    return ctx.emit(normalized)


def lower_layer_norm(ctx: Lowering, node: Node, attrs: dict):
    x = node.inputs[0]
    normalized = [int(d) for d in attrs["normalized_shape"]]
    axes = list(range(len(x.shape) - len(normalized), len(x.shape)))
    ones = lambda fill: constant(np.full(normalized, fill, np.float32))
    weight = node.inputs[1] if len(node.inputs) > 1 else None
    bias = node.inputs[2] if len(node.inputs) > 2 else None
    return ctx.emit(relax.op.nn.layer_norm(ctx[x], ones(1.0) if weight is None else ctx[weight],
                                           ones(0.0) if bias is None else ctx[bias], axes,
                                           float(attrs["eps"])))


def _float_const(value: float):
    return constant(np.float32(value))


def lower_clamp(ctx: Lowering, node: Node, attrs: dict):
    result = ctx[node.inputs[0]]
    if attrs["min"] is not None:
        result = relax.op.maximum(result, _float_const(attrs["min"]))
    if attrs["max"] is not None:
        result = relax.op.minimum(result, _float_const(attrs["max"]))
    return ctx.emit(result)


def _hard(x, *, multiply: bool):
    """torch: hardsigmoid(x) = clamp(x + 3, 0, 6) / 6; hardswish(x) = x * hardsigmoid(x)."""
    def element(*i):
        gate = tirx.max(tirx.min(x(*i) + tirx.const(3.0, "float32"), tirx.const(6.0, "float32")),
                        tirx.const(0.0, "float32")) / tirx.const(6.0, "float32")
        return x(*i) * gate if multiply else gate
    return te.compute(x.shape, element, name="hardswish" if multiply else "hardsigmoid")


def lower_gelu(ctx: Lowering, node: Node, attrs: dict):
    gelu = relax.op.nn.gelu_tanh if attrs["approximate"] == "tanh" else relax.op.nn.gelu
    return ctx.emit(gelu(ctx[node.inputs[0]]))


def _unary(op):
    return lambda ctx, node, attrs: ctx.emit(op(ctx[node.inputs[0]]))


def _binary(op):
    return lambda ctx, node, attrs: ctx.emit(op(ctx[node.inputs[0]], ctx[node.inputs[1]]))


def lower_softmax(ctx: Lowering, node: Node, attrs: dict):
    return ctx.emit(relax.op.nn.softmax(ctx[node.inputs[0]], axis=int(attrs["dim"])))


def lower_mean(ctx: Lowering, node: Node, attrs: dict):
    dims = attrs["dim"] if isinstance(attrs["dim"], list | tuple) else [attrs["dim"]]
    return ctx.emit(relax.op.mean(ctx[node.inputs[0]], [int(d) for d in dims],
                                  keepdims=bool(attrs["keepdim"])))


def _float_pool(x, counts, *, out_shape, kernel_size, stride, padding, dilation, kind):
    """Max or average pooling in float32 over torch's windows (ceil_mode windows may stop
    short); `counts` holds torch's divisor at each output position (average only)."""
    spatial = len(kernel_size)
    axes = [te.reduce_axis((0, kernel_size[i]), name=f"rk{i}") for i in range(spatial)]

    def read(n, c, position):
        coords = [position[i] * stride[i] - padding[i] + axes[i] * dilation[i] for i in range(spatial)]
        inside = tirx.all(*[tirx.all(coords[i] >= 0, coords[i] < x.shape[2 + i]) for i in range(spatial)])
        safe = [tirx.max(tirx.min(coords[i], x.shape[2 + i] - 1), 0) for i in range(spatial)]
        return inside, x(n, c, *safe)

    def element(n, c, *position):
        inside, value = read(n, c, position)
        if kind == "max":
            return te.max(tirx.if_then_else(inside, value, tirx.min_value("float32")), axis=axes)
        return te.sum(tirx.if_then_else(inside, value, tirx.const(0.0, "float32")), axis=axes)

    pooled = te.compute(out_shape, element, name=f"{kind}_pool")
    if kind == "max":
        return pooled
    return te.compute(out_shape, lambda n, c, *p: pooled(n, c, *p) / counts(*p), name="avg_pool")


def lower_pool(ctx: Lowering, node: Node, attrs: dict):
    kind = "max" if node.op.startswith("max") else "avg"
    geometry = pool_geometry(node, attrs)
    geometry.setdefault("dilation", [1] * len(geometry["kernel_size"]))
    x_shape, out_shape = shape_of(node.inputs[0]), shape_of(node.output)
    counts = np.ones((), np.float32)
    if kind == "avg":
        for axis in range(len(geometry["kernel_size"])):
            along = window_counts(x_shape[2 + axis], geometry["kernel_size"][axis],
                                  geometry["stride"][axis], geometry["padding"][axis],
                                  out_shape[2 + axis], bool(attrs["count_include_pad"]))
            counts = np.multiply.outer(counts, along.astype(np.float32))
    return ctx.emit_te(node, _float_pool, ctx[node.inputs[0]], constant(counts),
                       out_shape=out_shape, kind=kind, **geometry)


def lower_adaptive_avg_pool(ctx: Lowering, node: Node, attrs: dict):
    x = node.inputs[0]
    if len(x.shape) == 3:  # via a 2-D pool over an [N, C, 1, L] view
        n, c, length = shape_of(x)
        view = relax.op.reshape(ctx[x], relax_shape([n, c, 1, length]))
        pooled = relax.op.nn.adaptive_avg_pool2d(view, [1, int(node.output.shape[-1])])
        return ctx.emit(relax.op.reshape(pooled, relax_shape(shape_of(node.output))))
    return ctx.emit(relax.op.nn.adaptive_avg_pool2d(ctx[x], [int(d) for d in node.output.shape[2:]]))


_RESIZE = {("nearest", None): ("nearest_neighbor", "asymmetric", "floor"),
           ("bilinear", False): ("linear", "half_pixel", "round"),
           ("bilinear", None): ("linear", "half_pixel", "round"),
           ("bilinear", True): ("linear", "align_corners", "round")}


def lower_resize(ctx: Lowering, node: Node, attrs: dict):
    key = (attrs["mode"], attrs["align_corners"])
    if key not in _RESIZE or len(node.output.shape) != 4:
        raise LoweringError(f"{node.describe()}: resize mode {attrs['mode']!r} with align_corners="
                            f"{attrs['align_corners']} has no lowering (nearest and bilinear 2-D do)")
    method, mode, rounding = _RESIZE[key]
    return ctx.emit(relax.op.image.resize2d(ctx[node.inputs[0]], [int(d) for d in node.output.shape[2:]],
                                            method=method, coordinate_transformation_mode=mode,
                                            rounding_method=rounding))


FLOAT_LOWERINGS = {
    "conv2d": lower_conv, "conv1d": lower_conv, "conv_transpose2d": lower_conv_transpose2d,
    "linear": lower_linear, "matmul": lower_matmul, "batch_norm": lower_batch_norm,
    "layer_norm": lower_layer_norm, "relu": _unary(relax.op.nn.relu), "clamp": lower_clamp,
    "hardswish": lambda ctx, node, attrs: ctx.emit_te(node, _hard, ctx[node.inputs[0]], multiply=True),
    "hardsigmoid": lambda ctx, node, attrs: ctx.emit_te(node, _hard, ctx[node.inputs[0]],
                                                        multiply=False),
    "silu": _unary(relax.op.nn.silu), "gelu": lower_gelu, "sigmoid": _unary(relax.op.sigmoid),
    "tanh": _unary(relax.op.tanh), "softmax": lower_softmax,
    "add": _binary(relax.op.add), "sub": _binary(relax.op.subtract),
    "mul": _binary(relax.op.multiply), "div": _binary(relax.op.divide),
    "max_pool2d": lower_pool, "max_pool1d": lower_pool, "avg_pool2d": lower_pool,
    "avg_pool1d": lower_pool, "adaptive_avg_pool2d": lower_adaptive_avg_pool,
    "adaptive_avg_pool1d": lower_adaptive_avg_pool, "mean": lower_mean, "resize": lower_resize,
    **MATH_LOWERINGS,
}
