"""The quantizers of a fake-quant graph as QDQ ONNX: activations as QuantizeLinear /
DequantizeLinear pairs, weights and int32 biases as integer initializers read through
DequantizeLinear (see the package docstring)."""

from __future__ import annotations

import numpy as np

from qcompiler.backends.onnx.emit import Emitter
from qcompiler.errors import OnnxExportError
from qcompiler.ir import Node
from qcompiler.numerics.integer_params import quantize_bias
from qcompiler.numerics.quant import quant_range, quantize


def _storage_dtype(node: Node) -> type:
    return np.int8 if node.attrs.get("signed", True) else np.uint8


def _qparam_constants(emitter: Emitter, node: Node):
    """The scale (f32) and zero point (int8/uint8) initializers of a fake_quant: scalars per
    tensor, [C] per channel."""
    scale, zero_point = node.inputs[1].data, node.inputs[2].data
    if node.attrs.get("axis") is None:
        scale, zero_point = scale.reshape(()), zero_point.reshape(())
    return (
        emitter.constant(f"{node.name}.scale", scale.astype(np.float32)),
        emitter.constant(f"{node.name}.zero_point", zero_point.astype(_storage_dtype(node))),
    )


def _axis(node: Node) -> dict:
    axis = node.attrs.get("axis")
    return {} if axis is None else {"axis": int(axis)}


def emit_fake_quant(emitter: Emitter, node: Node, *, transpose: bool = False) -> object:
    """A weight (constant input): its integers as an int8/uint8 initializer read through
    DequantizeLinear, quantized here by the simulation's own rule, so they are the integers
    it represents (`transpose`: a 2-D weight's integers transposed, the axis with them).
    An activation: QuantizeLinear then DequantizeLinear, which is exactly the
    8-bit grid; fewer bits or a narrow range have no QDQ form on activations (the clamp
    would be lost), and are refused."""
    attrs = node.attrs
    bits, signed, narrow = attrs.get("bits", 8), attrs.get("signed", True), attrs.get("narrow_range", False)
    scale, zero_point = _qparam_constants(emitter, node)
    source = node.inputs[0]
    if source.is_constant:
        qmin, qmax = quant_range(bits, signed, narrow)
        if bits > 8:
            raise OnnxExportError(
                f"{node.describe()}: {bits}-bit weights have no 8-bit QDQ form; "
                "quantize with at most 8 weight bits to export"
            )
        integers = quantize(
            source.data, node.inputs[1].data, node.inputs[2].data, qmin, qmax, attrs.get("axis")
        )
        axis = _axis(node)
        if transpose:  # a 2-D weight stored [in, out], as MatMul reads it
            integers = integers.T
            axis = {"axis": 1 - axis["axis"]} if axis else axis
        integers = np.ascontiguousarray(integers.astype(_storage_dtype(node)))
        weight = emitter.constant(f"{node.name}.quantized", integers)
        name = f"{node.name}.transposed" if transpose else node.name
        return emitter.node("DequantizeLinear", [weight, scale, zero_point], axis, name=name)[0]
    if bits != 8 or narrow:
        raise OnnxExportError(
            f"{node.describe()}: a {bits}-bit{' narrow-range' if narrow else ''} activation "
            "quantizer has no QDQ form (QuantizeLinear saturates to the full 8-bit range); "
            "export a graph quantized with 8-bit full-range activations (QuantConfig preset "
            "'int8')"
        )
    x = emitter.tensor(source)
    quantized = emitter.node(
        "QuantizeLinear",
        [x, scale, zero_point],
        _axis(node),
        name=f"{node.name}.q",
        dtype=_storage_dtype(node),
    )[0]
    return emitter.node("DequantizeLinear", [quantized, scale, zero_point], _axis(node), name=node.name)[0]


def emit_fake_quant_bias(emitter: Emitter, node: Node) -> object:
    """The int32 bias on the grid `s_in * s_w[c]` (the integers lowering stores), read
    through DequantizeLinear with that scale per channel on axis 0."""
    bias, input_scale, weight_scale = node.inputs
    if not (bias.is_constant and input_scale.is_constant and weight_scale.is_constant):
        raise OnnxExportError(
            f"{node.describe()}: a bias quantizer whose bias or scales are "
            "computed, not constants, has no QDQ form"
        )
    channels = bias.data.reshape(-1).shape[0]
    integers, saturated = quantize_bias(bias.data, input_scale.data, weight_scale.data, channels)
    step = np.float64(input_scale.data.reshape(-1)[0]) * np.broadcast_to(
        np.asarray(weight_scale.data, np.float64).reshape(-1), (channels,)
    )
    return emitter.node(
        "DequantizeLinear",
        [
            emitter.constant(f"{node.name}.quantized", integers.astype(np.int32)),
            emitter.constant(f"{node.name}.scale", step.astype(np.float32)),
            emitter.constant(f"{node.name}.zero_point", np.zeros(channels, np.int32)),
        ],
        {"axis": 0},
        name=node.name,
    )[0]
