"""Binary, ternary or power-of-two weights, simulated in float.

    %y = conv2d(%x, %w, %b)    ->    %y = conv2d(%x, %w', %b)    w' = alpha * sign(w)   (binary)
                                                                  w' = alpha * {-1, 0, 1} (ternary)
                                                                  w' = +-2^n or 0        (power of two)

Per output channel (the quantizers and their papers are in `qcompiler.numerics.low_bit`:
XNOR-Net's binary weights with alpha = mean |w|, TWN's ternary weights with the 0.7 mean |w|
threshold, INQ's power-of-two code book of `bits` bits). The graph keeps float weights that
hold exactly the values a low-bit kernel reconstructs, so running it is the simulation.
Fine-tune straight through with `qc.finetune(..., project_weights=pass.projections(graph))`
(latent float weights updated, forward on the quantized ones); run `projections` on the
graph *before* this pass, since it names the weights to keep quantized.

Options: `scheme` ("binary", "ternary", "power_of_two"); `bits` (power of two only, in
[2, 8]); `layers` / `ignore` (names or fnmatch patterns: binary networks usually keep the
first and last layers in full precision, Rastegari et al. 2016 §4).

Requires: a float graph. Preserves: structure, names, shapes, dtypes; changes the function
by the quantization error (notes give each weight's relative error). Errors, raised before
the graph is touched: an unknown scheme, bits out of range, an unknown layer name.

Integer execution: `qc.quantize` gives these weights an exact integer grid (0 and +-2^k,
`qcompiler.quantization.low_bit_grids`) and `qc.lower_to_integer` runs them as shift layers,
or as XNOR-popcount layers where the input is a 1-bit activation (`binarize_activations`;
docs/integer-spec.md, section 13), bit-exact with the simulation.

Known limits: activations are not binarized here (`binarize_activations` does that).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from typing import ClassVar

import numpy as np

from qcompiler.compression.layer_weights import check_layer_options, layer_weights
from qcompiler.errors import OptionError
from qcompiler.ir import Graph
from qcompiler.ir.edit import require_float_graph
from qcompiler.ir.pipeline import PassResult
from qcompiler.numerics import low_bit


@dataclass(frozen=True)
class quantize_weights_low_bit:  # lower case: with its options it reads like a function call
    """The configured low-bit weight pass (see the module docstring)."""

    in_place: ClassVar[bool] = True  # rewrites the graph it is given

    scheme: str = "ternary"
    bits: int = 4
    layers: tuple[str, ...] | None = None
    ignore: tuple[str, ...] = ()

    def __post_init__(self):
        check_layer_options("quantize_weights_low_bit", self.scheme, self.layers, self.ignore)
        if self.scheme not in low_bit.SCHEMES:
            raise OptionError(f"quantize_weights_low_bit: unknown scheme {self.scheme!r}; choose one "
                              f"of {', '.join(low_bit.SCHEMES)}")
        low_bit.power_of_two_range(np.ones(1), self.bits)  # checks bits

    def projections(self, graph: Graph) -> dict[str, Callable[[np.ndarray], np.ndarray]]:
        """Weight name -> this pass's quantizer, for the weights it rewrites in `graph`: what
        `qc.finetune(project_weights=...)` keeps quantized while training straight through."""
        weights, _ = layer_weights(graph, self.layers, self.ignore, "quantize_weights_low_bit")
        quantizer = partial(low_bit.quantize, scheme=self.scheme, bits=self.bits)
        return {weight.name: quantizer for weight in weights}

    def __call__(self, graph: Graph) -> PassResult:
        require_float_graph(graph, "quantize_weights_low_bit")
        weights, notes = layer_weights(graph, self.layers, self.ignore, "quantize_weights_low_bit")
        modified = False
        for weight in weights:
            original = weight.data
            quantized = low_bit.quantize(original, self.scheme, self.bits)
            if np.array_equal(quantized, original):
                continue
            modified = True
            weight.data = quantized  # a new array: graph copies share the old one
            error = np.linalg.norm(quantized - original) / max(np.linalg.norm(original), 1e-30)
            notes.append(f"%{weight.name}: {self.scheme}, relative error {error:.3g}")
        return PassResult(graph, modified, notes)
