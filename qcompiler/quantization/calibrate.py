"""Calibration: set the scale and zero point of every fake_quant node in a graph.

    qg = calibrate(graph_with_fake_quants, calibration_data, config)

Quantization points are the fake_quant nodes, grouped by their scale constant
(nodes that share it share their qparams, e.g. the inputs of a concat).
- A point whose inputs are all constants (weights, constant operands) is set from
  the data: the config's weight observer for weights of conv/linear layers (per
  channel when the node has an axis), min/max for other constants.
- An activation point is set by the config's activation observer, fed with the
  float values at its input(s) for every calibration batch. The float graph (fake
  quants bypassed) runs node by node (`qcompiler.ir.evaluate`, the op table's torch
  functions), so what is observed is exactly what the graph computes.
- With `calibration_data=None`, activation ranges come from batch-norm statistics
  instead (`qcompiler.quantization.data_free`): mean +- sigmas * std per channel, passed through
  the fused ReLU/clamp, where a point sits on a layer that had a batch norm; other
  points are observed on synthetic activations.

Then `choose_qparams` (qcompiler.numerics.quant) turns each range into a scale and
zero point, which fill the point's constants and the `qparams` of every member's
output value. `fake_quant_bias` nodes read those scale constants when they run, so
biases land on their int32 grid with nothing more to do here. `calibrate` never
modifies its input: it works on a copy. `calibrate_in_place` (what the pass
`qcompiler.passes.calibrate` runs on a pipeline's copy) measures everything before it
writes anything, so an error (empty data, a batch of the wrong shape or dtype, NaN/Inf
in a weight or an activation) leaves nothing half-calibrated either way.
"""

from __future__ import annotations

import sys
from collections.abc import Iterable
from dataclasses import dataclass, field

import numpy as np

from qcompiler.errors import QuantizationError
from qcompiler.ir import Graph, Node, QParams, Value
from qcompiler.ir.edit import layer_bias
from qcompiler.ir.evaluate import Evaluator, graph_runs, is_fake_quant
from qcompiler.ir.ops import FAKE_QUANT_OPS, WEIGHTED_OPS
from qcompiler.numerics.integer_params import weight_scales_fitting_bias
from qcompiler.numerics.quant import choose_qparams
from qcompiler.quantization.config import QScheme, QuantConfig, as_quant_config
from qcompiler.quantization.data_free import range_activations_data_free
from qcompiler.quantization.low_bit_grids import low_bit_grid
from qcompiler.quantization.observers import make_observer
from qcompiler.quantization.quantizers import bias_scale_sources, fake_quant_nodes, observed_name
from qcompiler.quantization.range_check import RangeRecord, check_range


def scheme_of(node: Node) -> QScheme:
    """The integer format a fake_quant node's attributes describe."""
    attrs = node.attrs
    return QScheme(attrs.get("bits", 8), symmetric=attrs.get("symmetric", False),
                   per_channel=attrs.get("axis") is not None,
                   narrow_range=attrs.get("narrow_range", False), signed=attrs.get("signed", True))


@dataclass
class QuantPoint:
    """The fake_quant nodes that share one scale/zero-point pair, and how to range them."""

    scale: Value
    zero_point: Value
    nodes: list[Node]
    scheme: QScheme
    axis: int | None
    observer: object = None
    fixed_range: tuple | None = None  # set by the data-free path instead of an observer
    activation_inputs: list[Value] = field(default_factory=list)
    record: RangeRecord = field(default_factory=RangeRecord)  # `range_check`: infinities, outliers

    def observe(self, array: np.ndarray, batch: int | None, name: str) -> None:
        finite = self.record.observe(array, batch, name)
        if finite is not None:
            self.observer.update(finite)

    @property
    def name(self) -> str:
        return self.nodes[0].name


def quant_points(graph: Graph, config: QuantConfig) -> list[QuantPoint]:
    points: dict[int, QuantPoint] = {}
    for node in fake_quant_nodes(graph):
        scale, zero_point = node.inputs[1], node.inputs[2]
        if not (scale.is_constant and zero_point.is_constant):
            raise QuantizationError(f"{node.describe()}: scale and zero_point must be constants")
        point = points.get(id(scale))
        if point is None:
            point = points[id(scale)] = QuantPoint(scale, zero_point, [], scheme_of(node),
                                                   node.attrs.get("axis"))
        elif zero_point is not point.zero_point or scheme_of(node) != point.scheme \
                or node.attrs.get("axis") != point.axis:
            raise QuantizationError(f"{node.describe()} shares the scale %{scale.name} with "
                                    f"{point.nodes[0].describe()} but not its zero point or format")
        point.nodes.append(node)
    for point in points.values():
        point.activation_inputs = [n.inputs[0] for n in point.nodes if not n.inputs[0].is_constant]
        is_weight = all(n.inputs[0].is_constant for n in point.nodes) and any(
            user.op in WEIGHTED_OPS and user.inputs[1] is n.output
            for n in point.nodes for user in n.output.users)
        if point.activation_inputs and point.axis is not None:
            raise QuantizationError(f"{point.nodes[0].describe()} quantizes an activation per "
                                    "channel; activations are quantized per tensor")
        if is_weight:
            point.observer = make_observer(config.weight_observer, point.scheme, point.axis,
                                           **config.weight_observer_options)
        elif not point.activation_inputs:
            point.observer = make_observer("minmax", point.scheme, point.axis)
        else:
            producer = point.activation_inputs[0].producer
            observer = config.activation_observer_for(point.scheme, producer and producer.op)
            point.observer = make_observer(observer, point.scheme, None,
                                           **config.activation_observer_options)
    return list(points.values())


def calibrate(graph: Graph, calibration_data: Iterable | None, config: QuantConfig | None = None,
              *, progress: bool | None = None, statistics: dict | None = None,
              sigmas: float = 3.0) -> Graph:
    """A copy of `graph` with every fake_quant calibrated (see the module docstring).

    calibration_data: any iterable of batches; a batch is one tensor (or numpy array) for a
        single-input graph, or a tuple/list with one per graph input, shaped as the graph
        inputs. None selects the data-free path.
    progress: show a tqdm bar; None shows one only when stderr is a terminal.
    statistics, sigmas: the data-free path's batch-norm statistics (value name ->
        (mean, std) per channel; `qcompiler.quantization.data_free.batchnorm_statistics`) and width.
    """
    work = graph.copy()
    calibrate_in_place(work, calibration_data, config, progress=progress, statistics=statistics,
                       sigmas=sigmas)
    return work


def calibrate_in_place(work: Graph, calibration_data: Iterable | None,
                       config: QuantConfig | None = None, *, progress: bool | None = None,
                       statistics: dict | None = None, sigmas: float = 3.0,
                       notes: list[str] | None = None) -> int:
    """`calibrate`, writing the scales and zero points into `work` itself (the pass
    `qcompiler.passes.calibrate` does, on the pipeline's copy); the number of quantization
    points. Everything is measured before anything is written, so an error leaves `work` as
    it was. What a reader should know (infinities left out of ranges, near-dead channels
    given a coarser weight scale) is appended to `notes`."""
    config = as_quant_config(config)
    points = quant_points(work, config)
    if not points:
        raise QuantizationError(f"graph {work.name} has no fake_quant nodes to calibrate; "
                                "run qcompiler.passes.insert_fake_quant first")
    _check_constants_finite(work)
    for point in points:
        for node in point.nodes:
            if node.inputs[0].is_constant:
                point.observe(node.inputs[0].data, None, node.inputs[0].name)
    activation_points = [p for p in points if p.activation_inputs]
    if activation_points:
        if calibration_data is None:
            range_activations_data_free(work, activation_points, statistics, sigmas)
        else:
            _observe(work, activation_points, calibration_data, progress)
    chosen = []
    for point in points:  # in graph order: the first absurd range is the one to report
        lo, hi = _range(point)
        scale, zero_point = choose_qparams(lo, hi, bits=point.scheme.bits,
                                           symmetric=point.scheme.symmetric,
                                           signed=point.scheme.signed,
                                           narrow_range=point.scheme.narrow_range)
        scale, zero_point = low_bit_grid(point.nodes, point.activation_inputs, point.scheme,
                                         point.axis, scale, zero_point)
        if point.activation_inputs and point.fixed_range is None:
            check_range(point.record, float(np.min(lo)), float(np.max(hi)), point.scheme.bits,
                        point.name, point.activation_inputs[0])
        chosen.append((point, scale, zero_point))
    for point, scale, zero_point in chosen:
        point.scale.data, point.zero_point.data = scale, zero_point
        if notes is not None and point.record.infinities:
            notes.append(f"%{point.name}: {point.record.infinities} infinite value(s) (a mask "
                         "filled with -inf?) saturate to the ends of its range and are left out of it")
        qparams = QParams(scale, zero_point, point.scheme.bits, point.scheme.signed, point.axis,
                          point.scheme.narrow_range)
        for node in point.nodes:
            node.output.qparams = qparams
    fitted = _fit_bias_grids(work)
    if notes is not None:
        notes.extend(fitted)
    return len(points)


def _fit_bias_grids(graph: Graph) -> list[str]:
    """Widen the weight scale of channels whose int32 bias would not fit (near-dead channels:
    `integer_params.weight_scales_fitting_bias`); notes naming them."""
    notes = []
    for layer in graph:
        bias, sources = layer_bias(layer), bias_scale_sources(layer)
        if bias is None or sources is None or not bias.is_constant:
            continue
        input_scale, weight_scale = sources
        fitted = weight_scales_fitting_bias(bias.data, float(input_scale.data[0]), weight_scale.data)
        if np.array_equal(fitted, weight_scale.data):
            continue
        changed = np.flatnonzero(np.broadcast_to(fitted != weight_scale.data, fitted.shape))
        weight = layer.inputs[1].producer.inputs[0].data
        magnitude = np.abs(weight).reshape(weight.shape[0], -1).max(axis=1)
        dead = int((magnitude < np.broadcast_to(fitted, magnitude.shape) / 2).sum())
        weight_scale.data = fitted
        for user in weight_scale.users:  # the weight's fake_quant(s): their qparams follow
            if user.op == "fake_quant" and user.inputs[1] is weight_scale:
                old = user.output.qparams
                user.output.qparams = QParams(fitted, old.zero_point, old.bits, old.signed,
                                              old.axis, old.narrow_range)
        shown = ", ".join(str(c) for c in changed[:8]) + (", ..." if len(changed) > 8 else "")
        notes.append(f"{layer.describe()}: the int32 bias of {len(changed)} channel(s) ({shown}) "
                     f"would exceed 2**30 on the grid s_in * s_w, so their weight scale grows to "
                     f"fit it; {dead} channel(s) have weights below half a step (near-dead): "
                     "they compute their bias alone")
    return notes


def _range(point: QuantPoint) -> tuple:
    if point.fixed_range is not None:
        return point.fixed_range
    try:
        return point.observer.range()
    except ValueError:  # it saw nothing finite
        raise QuantizationError(f"%{point.name} saw only infinite values during calibration, "
                                "so it has no range; exclude its node from quantization "
                                "(QuantConfig(exclude_nodes=[...]))") from None


def _check_constants_finite(graph: Graph) -> None:
    """NaN in any constant, or Inf in a weight or bias, is an error. An infinite constant
    operand (a -inf mask fill) saturates like an infinite activation (`range_check`)."""
    quantization_params = {id(node.inputs[i]) for node in fake_quant_nodes(graph) for i in (1, 2)}
    layer_parameters = {id(v) for node in graph if node.op in WEIGHTED_OPS for v in node.inputs[1:]
                        if v is not None}
    layer_parameters |= {id(node.inputs[0]) for node in graph if node.op in FAKE_QUANT_OPS
                         and id(node.output) in layer_parameters}
    for value in graph.constants:
        if id(value) in quantization_params:  # NaN until calibrated; about to be replaced
            continue
        data = value.data
        if not np.issubdtype(data.dtype, np.floating):
            continue
        bad = np.isnan(data) if id(value) not in layer_parameters else ~np.isfinite(data)
        if bad.any():
            # Name the layers that read the weight, looking through its fake_quant.
            readers = [reader for user in value.users for reader in
                       (user.output.users if user.op == "fake_quant" else [user])]
            users = ", ".join(f"%{reader.name}" for reader in readers) or "no node"
            kind = "weight" if id(value) in layer_parameters else "constant"
            raise QuantizationError(
                f"{kind} %{value.name} (used by {users}) contains NaN or Inf in "
                f"{int(bad.sum())} of {data.size} values; fix the model's parameters before "
                "quantizing")


class _Observation(Evaluator):
    """The float graph (fake quants bypassed) of one calibration run, feeding each observed
    value to the observers of its points as it is computed."""

    def __init__(self, graph: Graph, listeners: dict[str, list[QuantPoint]]):
        super().__init__(graph, bypass=is_fake_quant)
        self.listeners = listeners
        self.index = 0  # the calibration batch being run, for messages

    def store(self, value: Value, result) -> None:
        super().store(value, result)
        points = self.listeners.get(value.name)
        if not points:
            return
        for tensor in result if isinstance(result, list) else [result]:
            array = tensor.numpy()
            if np.isnan(array).any():
                where = value.producer.describe() if value.producer is not None else f"input %{value.name}"
                raise QuantizationError(f"calibration batch {self.index}: {where} produced NaN; "
                                        "check the model and the data for overflow")
            for point in points:
                point.observe(array, self.index, value.name)


def _observe(work: Graph, points: list[QuantPoint], calibration_data, progress) -> None:
    from tqdm.auto import tqdm

    listeners: dict[str, list[QuantPoint]] = {}
    for point in points:
        for value in point.activation_inputs:
            listeners.setdefault(observed_name(value), []).append(point)
    observed = [work.values[name] for name in listeners]
    if progress is None:
        progress = sys.stderr.isatty()
    total = len(calibration_data) if hasattr(calibration_data, "__len__") else None
    observation = _Observation(work, listeners)
    count = 0
    for index, batch in enumerate(tqdm(calibration_data, desc="calibrating", total=total,
                                       disable=not progress)):
        observation.index = index
        for inputs in graph_runs(batch, work, index):
            observation.run([inputs], observed)
        count += 1
    if count == 0:
        raise QuantizationError("calibration_data is empty: give at least one batch (a tensor, "
                                "or a tuple with one tensor per graph input), or None for "
                                "data-free calibration from batch-norm statistics")
