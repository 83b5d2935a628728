"""Migrate activation outliers into the weights of the linear layers that read them
(SmoothQuant, Xiao et al. 2023).

    %h = layer_norm(%x, %g, %b)               %h = layer_norm(%x, %g, %b)        (residual)
    %q = linear(%h, %wq, %bq)          ->      %h.s = layer_norm(%x, %g / s, %b / s)
    %k = linear(%h, %wk, %bk)                  %q = linear(%h.s, %wq * s, %bq)
                                               %k = linear(%h.s, %wk * s, %bk)

For every activation read by linear layers, the scales s_j = max|x_j|^alpha /
max|W_:,j|^(1 - alpha) (`qcompiler.numerics.smoothing`, the paper's eq. 4; max|x_j| over
every token of the calibration data, max|W_:,j| over the layers sharing x) divide the
activation's channels and multiply the weights' columns, so a per-tensor 8-bit step no
longer spends its range on a few outlier channels. The division folds into the
layer_norm that produces x (into a copy of it when the residual path reads it too); an
activation not produced by a layer_norm (after GELU, or the attention context) is left
alone unless `insert_mul=True`, which divides it with an explicit `mul` (an op of its own
to quantize, which is why it is off by default). `qcompiler.quantization.linear_inputs`
has the graph side.

alpha: the paper's default 0.5 suits BERT-size encoders; larger alpha (0.75-0.9) moves
more into the weights and helps models with larger outliers. It is searchable:
`qc.search_smoothing_alpha(model, calibration, held_out)` quantizes at each alpha of a grid
and keeps the best SQNR on held-out batches; `QuantConfig.smoothing_alpha` carries the
choice (the `transformer` preset's 0.5), so `qc.quantize` runs this pass with it.

Requires: a float graph (no fake_quant yet: the weights must be final before ranges are
measured), calibration batches. Preserves: the function (float rounding aside: tested to
1e-5), output shapes and names; adds layer_norm copies where needed. Known limits: linear
layers only (matmul between two activations has no weight to take the scale).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import ClassVar

from qcompiler.errors import OptionError
from qcompiler.ir import Graph
from qcompiler.ir.edit import require_float_graph
from qcompiler.ir.evaluate import input_batches
from qcompiler.ir.pipeline import PassResult
from qcompiler.numerics.smoothing import smoothing_scales, weight_column_max
from qcompiler.quantization.linear_inputs import (
    divide_input_channels,
    linear_input_groups,
    record_linear_inputs,
)


@dataclass(frozen=True, eq=False)  # eq=False: the data may hold tensors
class MigrateActivationScales:
    """The configured SmoothQuant pass (see the module docstring)."""

    calibration_data: Iterable
    alpha: float = 0.5
    insert_mul: bool = False

    name: ClassVar[str] = "migrate_activation_scales"
    in_place: ClassVar[bool] = True

    def __post_init__(self):
        if isinstance(self.alpha, bool) or not isinstance(self.alpha, (int, float)) \
                or not 0.0 <= self.alpha <= 1.0:
            raise OptionError(f"migrate_activation_scales(alpha={self.alpha!r}): alpha is the "
                              "migration strength, a number in [0, 1] (0.5 is SmoothQuant's default)")
        if self.calibration_data is None:
            raise OptionError("migrate_activation_scales needs calibration_data: the activation "
                              "ranges it migrates are measured on it")

    def __call__(self, graph: Graph) -> PassResult:
        require_float_graph(graph, "migrate_activation_scales")
        groups = linear_input_groups(graph)
        if not groups:
            return PassResult(graph, False, ["no linear layer with a constant weight: nothing to smooth"])
        batches = input_batches(self.calibration_data, graph)
        stats = record_linear_inputs(graph, batches, [value for value, _ in groups])
        notes, changed = [], 0
        for value, linears in groups:
            weight_max = weight_column_max([linear.inputs[1].data for linear in linears])
            scales = smoothing_scales(stats[value.name].abs_max, weight_max, self.alpha)
            how = divide_input_channels(graph, value, linears, scales, allow_mul=self.insert_mul)
            names = ", ".join(f"%{linear.name}" for linear in linears)
            if how is None:
                notes.append(f"%{value.name} (read by {names}) is not produced by a layer_norm; "
                             "left alone (insert_mul=True divides it with a mul)")
                continue
            changed += 1
            notes.append(f"%{value.name} -> {names}: scales {scales.min():.3g}..{scales.max():.3g}, {how}")
        notes.insert(0, f"smoothed the inputs of {changed} of {len(groups)} linear group(s), "
                        f"alpha={self.alpha}")
        return PassResult(graph, changed > 0, notes)


def migrate_activation_scales(graph: Graph | None = None, /, *, calibration_data: Iterable,
                              alpha: float = 0.5, insert_mul: bool = False):
    """`migrate_activation_scales(calibration_data=batches, alpha=0.5)` returns the configured
    pass; with a graph first, it runs it (-> PassResult)."""
    configured = MigrateActivationScales(calibration_data, alpha, insert_mul)
    return configured if graph is None else configured(graph)


migrate_activation_scales.in_place = True
