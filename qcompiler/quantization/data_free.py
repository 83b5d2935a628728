"""Data-free activation ranges from batch-norm statistics (no calibration data).

A batch norm's output is roughly N(beta_c, gamma_c^2) per channel c when its input
matches the running statistics (Nagel et al. 2019, "Data-Free Quantization
Through Weight Equalization and Bias Correction", sec. 4.2). So the layer output a
BN normalises (after folding, the conv/linear output itself) lies mostly inside
beta +- k |gamma|, and after a fused ReLU / ReLU6 inside that range clipped to
[0, inf) / [0, 6]. That interval is the quantization range of such points.

Statistics format, shared with the passes that need it (high-bias absorption,
analytical bias correction): `{value name: (mean[C], std[C])}` per channel of the
value's axis 1. `batchnorm_statistics` keys each BN's statistics by its output
*and* by its input when that is the output of a conv/linear layer that only the BN
uses: `fold_batchnorm` keeps that layer's output name, so the entry stays valid
after folding. Record them before folding (folding deletes the BN).

Cross-layer equalization divides a layer's output channel c by s_c (and
high-bias absorption shifts it), so statistics recorded before it no longer
describe the equalized layer. `transport_statistics` re-expresses them: both
graphs run on the same random input, and per channel the affine map
after = a * before + d is fitted by least squares; it is exact when the passes
in between rescale and shift channels, which is what CLE does.

Points not on such a layer (residual adds, pooling, a final linear, graph inputs)
are observed on synthetic activations: the float graph runs on N(0, 1) inputs
(the data-free path assumes standardised inputs) and every value with
statistics is renormalised per channel to its (mean, std) as it is computed, so
what flows downstream has the magnitudes the batch norms promise.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import ClassVar

import numpy as np
import torch

from qcompiler.errors import QuantizationError
from qcompiler.ir import Graph, Value
from qcompiler.ir.dims import shape_at
from qcompiler.ir.evaluate import Evaluator, is_fake_quant
from qcompiler.ir.ops import FUSABLE_ACTIVATIONS, WEIGHTED_OPS
from qcompiler.ir.pipeline import PassResult
from qcompiler.quantization.quantizers import observed_name

Statistics = dict[str, tuple[np.ndarray, np.ndarray]]
# Synthetic examples drawn for a graph with a symbolic batch (a static graph: its own batch).
SYNTHETIC_BATCH = 8


def batchnorm_statistics(graph: Graph) -> Statistics:
    """Per-channel (mean, std) = (beta, |gamma|) of every batch norm with constant parameters."""
    statistics: Statistics = {}
    for node in graph:
        if node.op != "batch_norm":
            continue
        gamma, beta, running_mean = node.inputs[1], node.inputs[2], node.inputs[3]
        if any(v is not None and not v.is_constant for v in (gamma, beta, running_mean)):
            continue
        channels = node.output.shape[1]
        mean = np.zeros(channels) if beta is None else beta.data.astype(np.float64)
        std = np.ones(channels) if gamma is None else np.abs(gamma.data.astype(np.float64))
        statistics[node.output.name] = (mean, std)
        source = node.inputs[0]
        if source.producer is not None and source.producer.op in WEIGHTED_OPS and source.users == [node]:
            statistics[source.name] = (mean, std)
    return statistics


class _SyntheticRun(Evaluator):
    """The float graph (fake quants bypassed) on random inputs, every value with `statistics`
    renormalised to them as it is computed; `values` keeps every value by name."""

    def __init__(self, graph: Graph, statistics: Statistics | None):
        super().__init__(graph, bypass=is_fake_quant)
        self.statistics = statistics or {}
        self.values: dict[str, torch.Tensor] = {}

    def store(self, value: Value, result) -> None:
        if value.producer is not None and value.name in self.statistics:
            statistics = self.statistics[value.name]
            result = ([_renormalise(tensor, *statistics) for tensor in result]
                      if isinstance(result, list) else _renormalise(result, *statistics))
        self.values[value.name] = result[0] if isinstance(result, list) else result
        super().store(value, result)


def _run(graph: Graph, generator: torch.Generator, statistics: Statistics | None = None
         ) -> dict[str, torch.Tensor]:
    """Every value of `graph` (fake quants bypassed) on random inputs, by name; values with
    `statistics` are renormalised."""
    inputs = []
    for value in graph.inputs:
        if value.dtype != "f32":
            raise QuantizationError(f"data-free calibration synthesizes float inputs only, but graph "
                                    f"input %{value.name} is {value.type_str}; pass calibration_data")
        inputs.append(torch.randn(shape_at(value.shape, SYNTHETIC_BATCH), generator=generator))
    run = _SyntheticRun(graph, statistics)
    run.run([inputs], [v for node in graph for v in node.outputs])
    return run.values


def _per_channel(tensor: torch.Tensor) -> np.ndarray:
    """[C, everything else] view of axis 1, as float64."""
    array = tensor.numpy().astype(np.float64)
    return np.moveaxis(array, 1, 0).reshape(array.shape[1], -1)


def _renormalise(tensor: torch.Tensor, mean: np.ndarray, std: np.ndarray) -> torch.Tensor:
    shape = [1] * tensor.dim()
    shape[1] = -1
    dims = [d for d in range(tensor.dim()) if d != 1]
    own_mean = tensor.mean(dim=dims, keepdim=True)
    own_std = tensor.std(dim=dims, keepdim=True).clamp_min(1e-12)
    target_mean = torch.from_numpy(mean.astype(np.float32)).reshape(shape)
    target_std = torch.from_numpy(std.astype(np.float32)).reshape(shape)
    return (tensor - own_mean) / own_std * target_std + target_mean


def transport_statistics(statistics: Statistics, before: Graph, after: Graph, seed: int = 0
                         ) -> Statistics:
    """`statistics` of `before`'s values re-expressed for the same-named values of `after`
    (see the module docstring). Entries for values missing from `after` are dropped."""
    names = [n for n in statistics
             if n in before.values and n in after.values and not after.values[n].is_constant]
    if not names:
        return {n: s for n, s in statistics.items() if n in after.values}
    old = _run(before, torch.Generator().manual_seed(seed))
    new = _run(after, torch.Generator().manual_seed(seed))
    transported = {}
    for name in names:
        x, y = _per_channel(old[name]), _per_channel(new[name])
        x_centred, y_centred = x - x.mean(axis=1, keepdims=True), y - y.mean(axis=1, keepdims=True)
        variance = (x_centred ** 2).sum(axis=1)
        slope = np.where(variance > 0, (x_centred * y_centred).sum(axis=1)
                         / np.where(variance > 0, variance, 1.0), 1.0)
        offset = y.mean(axis=1) - slope * x.mean(axis=1)
        mean, std = statistics[name]
        transported[name] = (slope * mean + offset, np.abs(slope) * std)
    return transported


def anchored_range(value: Value, statistics: Statistics, sigmas: float) -> tuple[float, float] | None:
    """mean +- sigmas * std of the layer output behind `value`, through fused relu/clamp."""
    activations = []
    while value.name not in statistics and value.producer is not None \
            and value.producer.op in FUSABLE_ACTIVATIONS:
        activations.append(value.producer)
        value = value.producer.inputs[0]
    if value.name not in statistics:
        return None
    mean, std = statistics[value.name]
    lo, hi = mean - sigmas * std, mean + sigmas * std
    for node in reversed(activations):
        low = 0.0 if node.op == "relu" else node.attrs.get("min")
        high = None if node.op == "relu" else node.attrs.get("max")
        lo, hi = np.clip(lo, low, high), np.clip(hi, low, high)
    return float(np.min(lo)), float(np.max(hi))


def range_activations_data_free(work: Graph, points: list, statistics: Statistics | None,
                                sigmas: float, batches: int = 4, seed: int = 0) -> None:
    """Set `fixed_range` of anchored points and feed the others synthetic activations."""
    statistics = {**batchnorm_statistics(work), **(statistics or {})}
    if not statistics:
        raise QuantizationError(
            f"calibration_data is None, so ranges must come from batch-norm statistics, but graph "
            f"{work.name} has no batch_norm and none were given; pass calibration_data, or give "
            "the statistics recorded before fold_batchnorm (qc.quantize does this)")
    pending = []
    for point in points:
        ranges = [anchored_range(v, statistics, sigmas) for v in point.activation_inputs]
        if all(r is not None for r in ranges):
            point.fixed_range = (min(r[0] for r in ranges), max(r[1] for r in ranges))
        else:
            pending.append(point)
    if not pending:
        return
    generator = torch.Generator().manual_seed(seed)
    for _ in range(batches):
        values = _run(work, generator, statistics)
        for point in pending:
            for value in point.activation_inputs:
                point.observer.update(values[observed_name(value)].numpy())


# ---- the data-free PTQ steps (`qcompiler.pipelines.ptq_steps`) ------------------------------------


@dataclass(frozen=True, eq=False)  # eq=False: compared by identity, as they share a dict
class RecordBatchnormStatistics:
    """A pipeline step that reads the batch-norm statistics of the graph into the dict `into`
    (`batchnorm_statistics`) and leaves the graph as it is: the data-free steps record them
    before fold_batchnorm deletes the batch norms, for the steps after it to read."""

    into: dict

    name: ClassVar[str] = "record_batchnorm_statistics"
    in_place: ClassVar[bool] = True  # returns the graph it is given, unchanged

    def __call__(self, graph: Graph) -> PassResult:
        self.into.clear()
        self.into.update(batchnorm_statistics(graph))
        return PassResult(graph, False, [f"recorded the statistics of {len(self.into)} value(s)"])


@dataclass(frozen=True, eq=False)
class EqualizeKeepingStatistics:
    """A pipeline step that runs the cross-layer equalization pass `equalization` and then
    re-expresses the statistics in `statistics` for the equalized graph
    (`transport_statistics`): equalization rescales the channels they describe."""

    equalization: Callable[[Graph], PassResult]
    statistics: dict

    name: ClassVar[str] = "equalize_keeping_statistics"
    in_place: ClassVar[bool] = True  # as the equalization pass

    def __call__(self, graph: Graph) -> PassResult:
        before = graph.copy() if self.statistics else None
        result = self.equalization(graph)
        if before is not None:
            transported = transport_statistics(self.statistics, before, result.graph)
            self.statistics.clear()
            self.statistics.update(transported)
        return result
