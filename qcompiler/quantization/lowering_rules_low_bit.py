"""Integer lowering of binary-network layers (`docs/integer-spec.md`, section 13).

A conv2d / linear whose float weight is binary, ternary or power-of-two
(`qcompiler.numerics.low_bit.scheme_of`, as `quantize_weights_low_bit` leaves it) and whose
integer weight is 0 / +-2^k (the grid `qcompiler.quantization.low_bit_grids` gives it at
calibration) becomes a shift layer; if, in addition, every weight is +-2^p and its input is
+-1 around its zero point (a `sign` lowered to a lookup table whose entries are z +- 1), an
XNOR-popcount layer. Both compute the accumulator of the `qconv2d` / `qlinear` they
replace exactly, so nothing else in lowering changes; any other layer stays as it was.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from qcompiler.ir import Node, Value
from qcompiler.numerics import low_bit

_KINDS = {"conv2d": "conv2d", "linear": "linear"}


@dataclass(frozen=True)
class LowBitLayer:
    op: str
    weight: np.ndarray  # what the layer stores: packed sign bits (u8) or shift codes (i8)
    dtype: str
    suffix: str  # the constant's name after the layer's
    attrs: dict


def is_binary_input(x: Value) -> bool:
    """Whether integer value `x` is +-1 around its zero point: a lookup table's output whose
    every entry is z +- 1 (a lowered `sign`)."""
    producer = x.producer
    if producer is None or producer.op != "qlookup" or x.qparams is None:
        return False
    offsets = producer.inputs[1].data.astype(np.int64) - int(np.asarray(x.qparams.zero_point).reshape(-1)[0])
    return bool(np.isin(offsets, (-1, 1)).all())


def low_bit_layer(node: Node, x: Value, weight: np.ndarray, weight_q: np.ndarray) -> LowBitLayer | None:
    """The XNOR or shift form of a lowered layer (module docstring), or None."""
    kind = _KINDS.get(node.op)
    if kind is None:
        return None
    if not low_bit.is_low_bit_weight(weight):
        return None
    codes = low_bit.shift_codes(weight_q)
    if codes is None:
        return None
    magnitudes = np.unique(np.abs(codes))
    if is_binary_input(x) and magnitudes.size == 1 and magnitudes[0] != 0:
        bits = low_bit.pack_signs(weight_q)
        attrs = {"weight_shape": list(weight_q.shape), "weight_shift": int(magnitudes[0]) - 1}
        return LowBitLayer(f"qxnor_{kind}", bits, "u8", "weight_bits", attrs)
    return LowBitLayer(f"qshift_{kind}", codes, "i8", "weight_codes", {})


LOW_BIT_LAYER_OPS = frozenset({"qxnor_conv2d", "qxnor_linear", "qshift_conv2d", "qshift_linear"})


def integer_weight(node: Node) -> np.ndarray:
    """The integer weight a lowered layer multiplies by (decoded for XNOR and shift layers)."""
    stored = node.inputs[1].data
    if node.op.startswith("qxnor_"):
        return low_bit.unpack_signs(stored, node.attrs["weight_shape"]) << int(node.attrs["weight_shift"])
    if node.op.startswith("qshift_"):
        return low_bit.decode_shift_codes(stored)
    return stored
