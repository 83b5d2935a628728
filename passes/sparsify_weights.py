"""Unstructured sparsity: set the least important individual weights to zero.

    %y = conv2d(%x, %w, %b)    ->    %y = conv2d(%x, %w * mask, %b)

Scores (larger is more important): "magnitude" |w| (Han et al. 2015), or the saliency
criteria "obd" (Optimal Brain Damage, LeCun et al. 1990) and "taylor" (first-order Taylor,
Molchanov et al. 2019), which need `calibration_data` (`qcompiler.compression.saliency`);
for binary networks "binary_angle" / "ternary_angle": |w| cos(theta), theta the angle
between the weight's kernel and its binary (ternary) version (`importance.low_bit_angles`).
`scope="global"` ranks all selected weights together and zeroes the lowest `sparsity`
fraction of them (one threshold; layers that matter less lose more); `scope="local"`
zeroes `sparsity` of every weight. Weights that are already zero count towards the
fraction, so running the pass again with a higher sparsity continues a schedule: the
gradual schedule of Zhu & Gupta 2017 is `qcompiler.numerics.sparsity.gradual_schedule`,
with `qc.finetune(..., preserve_sharing=True)` between the steps (pruned weights stay zero).

The graph keeps dense float weights with zeros in them: it runs everywhere a float graph
runs, and `qcompiler.analysis.storage.storage_report` prices the zeros away (compressed
sparse rows with relative indices, Han et al. 2016). No backend runs the zeros faster yet.

Options: `sparsity` in [0, 1); `scope`; `criterion`; `calibration_data`; `layers` /
`ignore` (layer names or fnmatch patterns).

Requires: a float graph (prune before quantizing). Preserves: structure, names, shapes,
dtypes; changes the function by the zeroed weights (the notes give each weight's
sparsity). Errors, raised before the graph is touched: sparsity outside [0, 1) or another
bad option (at construction); a saliency criterion without calibration_data; an unknown
layer name; a local sparsity that would zero every weight of a layer.

Known limits: biases are not pruned; "global" magnitude compares raw magnitudes across
layers (fold batch norms first so that each layer's scale is in its weights).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import ClassVar

import numpy as np

from qcompiler.compression import saliency
from qcompiler.compression.layer_weights import check_layer_options, layer_weights
from qcompiler.errors import OptionError, PassError
from qcompiler.ir import Graph
from qcompiler.ir.edit import require_float_graph
from qcompiler.ir.pipeline import PassResult
from qcompiler.numerics import importance
from qcompiler.numerics import sparsity as sparsity_math

# Per weight |w| cos(theta), theta the angle between its kernel (output channel) and that
# kernel's binary version: magnitude, discounted where binarization keeps little direction.
ANGLE_CRITERIA = {"binary_angle": "binary", "ternary_angle": "ternary"}
CRITERIA = ("magnitude", *ANGLE_CRITERIA, *saliency.CRITERIA)
_DATA_FREE = ("magnitude", *ANGLE_CRITERIA)


def _angle_scores(weight: np.ndarray, scheme: str) -> np.ndarray:
    rows = weight.reshape(weight.shape[0], -1)
    cosine = np.cos(importance.low_bit_angles(rows, scheme))
    return np.abs(weight) * cosine.reshape((-1,) + (1,) * (weight.ndim - 1))


@dataclass(frozen=True)
class sparsify_weights:  # lower case: with its options it reads like a function call
    """The configured unstructured-pruning pass (see the module docstring)."""

    in_place: ClassVar[bool] = True  # rewrites the graph it is given

    sparsity: float = 0.5
    scope: str = "local"  # raw magnitudes of different layers are not comparable
    criterion: str = "magnitude"
    calibration_data: Sequence | None = None
    layers: tuple[str, ...] | None = None
    ignore: tuple[str, ...] = ()

    def __post_init__(self):
        check_layer_options("sparsify_weights", self.sparsity, self.layers, self.ignore)
        sparsity_math.check_sparsity(self.sparsity, "sparsify_weights")
        if self.scope not in ("global", "local"):
            raise OptionError(f"sparsify_weights: scope must be 'global' or 'local', got {self.scope!r}")
        if self.criterion not in CRITERIA:
            raise OptionError(f"sparsify_weights: unknown criterion {self.criterion!r}; choose one "
                              f"of {', '.join(CRITERIA)}")
        if self.criterion not in _DATA_FREE and not self.calibration_data:
            raise OptionError(f"sparsify_weights: criterion {self.criterion!r} needs "
                              "calibration_data (batches of inputs, optionally with labels)")

    def __call__(self, graph: Graph) -> PassResult:
        require_float_graph(graph, "sparsify_weights")
        weights, notes = layer_weights(graph, self.layers, self.ignore, "sparsify_weights")
        if not weights or self.sparsity == 0:
            return PassResult(graph, False, notes)
        if self.criterion == "magnitude":
            scores = [np.abs(w.data) for w in weights]
        elif self.criterion in ANGLE_CRITERIA:
            scores = [_angle_scores(w.data, ANGLE_CRITERIA[self.criterion]) for w in weights]
        else:
            by_name = saliency.weight_saliency(graph, weights, self.criterion, self.calibration_data)
            # A weight already zero stays the least important whatever its gradient says.
            scores = [np.where(w.data == 0, -1.0, by_name[w.name]) for w in weights]
        masks = sparsity_math.pruned_masks(scores, self.sparsity, self.scope)
        for weight, mask in zip(weights, masks, strict=True):
            if mask.all():
                raise PassError(f"sparsify_weights: sparsity {self.sparsity} would zero every weight "
                                f"of %{weight.name}; lower the sparsity or add the layer to ignore")
        # Everything above only reads the graph; from here on it changes.
        modified = False
        for weight, mask in zip(weights, masks, strict=True):
            newly = mask & (weight.data != 0)
            if not newly.any():
                continue
            modified = True
            weight.data = np.where(mask, 0, weight.data).astype(weight.data.dtype)  # a new array
            notes.append(f"%{weight.name}: {100 * (weight.data == 0).mean():.1f}% zero "
                         f"({int(newly.sum())} weights zeroed)")
        return PassResult(graph, modified, notes)
