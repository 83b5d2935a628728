"""Quantization grids that keep binary networks integer-exact (`docs/integer-spec.md`, section 13).

Calibration would give a binary weight +-alpha the per-channel scale alpha / 127 and a sign
activation (+-1) an asymmetric scale of 2 / 255: both correct, but neither on integers a
1-bit kernel can use. Two choices replace them after calibration:

- a weight whose float values are binary, ternary or powers of two
  (`qcompiler.numerics.low_bit.scheme_of`) gets scale max|w| / 2^p per channel, so its
  integers are 0 and +-2^k exactly (`low_bit.integer_grid`): an XNOR or shift kernel,
  and a fake-quantized weight equal to the float one;
- the output of a `sign` node gets scale 1 with the zero point in the middle of the range,
  so its integers are z +- 1 and an XNOR kernel reads one sign bit.

Both are exact (no value moves), so simulation is unchanged; only the grids differ.
"""

from __future__ import annotations

import numpy as np

from qcompiler.numerics import low_bit
from qcompiler.numerics.quant import quant_range


def low_bit_grid(nodes, activation_inputs, scheme, axis, scale, zero_point):
    """(scale, zero_point) for a quantization point: the chosen ones, or the exact low-bit
    grid where the point quantizes a low-bit weight or a sign output (module docstring)."""
    _, qmax = quant_range(scheme.bits, scheme.signed, scheme.narrow_range)
    if activation_inputs:
        producers = {getattr(v.producer, "op", None) for v in activation_inputs}
        if producers == {"sign"}:  # z +- 1 fits any signed or unsigned range of >= 2 bits
            return np.ones_like(scale), np.full_like(zero_point, 0 if scheme.signed else 1)
        return scale, zero_point
    if axis != 0 or len(nodes) != 1:
        return scale, zero_point
    grid = low_bit.integer_grid(nodes[0].inputs[0].data, qmax)
    if grid is None or (np.asarray(zero_point) != 0).any():
        return scale, zero_point
    return grid.reshape(np.shape(scale)), zero_point
