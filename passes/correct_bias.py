"""Bias correction: subtract from each quantized layer's bias the mean output error
that quantizing its weights adds.

    %w.fq = fake_quant(%w, ...)              %w.fq = fake_quant(%w, ...)
    %y = conv2d(%x, %w.fq, %b)        ->     %y = conv2d(%x, %w.fq, %b - E[(W_q - W) x])

(Nagel et al. 2019, "Data-Free Quantization Through Weight Equalization and Bias
Correction", sec. 4.2, eq. 14; the arithmetic is in
`qcompiler.numerics.bias_correction`). Rounding errors of a layer's weights do
not average out over its input channels when the inputs are not zero-mean
(after a ReLU they never are): the output then carries a systematic per-channel
shift that a per-tensor or low-bit quantizer makes large. Removing it changes
the function on purpose: the claim, tested, is a lower mean output error.

Two ways to know E[x], the mean input of each layer:
- empirical (`calibration_data=`, batches as `qcompiler.quantization.calibrate.calibrate`
  takes them): the graph is run node by node over all batches together, with
  fake quantization on, and each quantized layer is corrected as soon as its
  input is known, before its output is computed. Later layers therefore see the
  corrected earlier ones, and E[(W_q - W) x] is measured exactly (borders of
  padded convs included) on the inputs the quantized network really produces.
  Memory: the live activations of all batches at once;
- analytical, data-free (`statistics=`): per-channel (mean, std) of pre-activation
  values, as `qcompiler.quantization.data_free.batchnorm_statistics` reads them from batch
  norms, keyed by value name. E[x] for a layer whose input is such a value
  through clipping activations (relu, clamp) and fake_quant nodes is the
  clipped-normal mean; residual adds sum means, and global average pooling and
  the flatten after it keep them. E[(W_q - W) x] is then the interior value (a
  padded border sees fewer taps). Layers whose input mean does not follow (the
  graph input, a clipped sum) are skipped, with a note.

Requires: a calibrated graph (fake_quant scales set: `insert_fake_quant` then
`calibrate`). The weights to correct are the constant inputs of the fake_quant
nodes that feed conv1d / conv2d / conv_transpose2d / linear weights. Preserves:
shapes, dtypes, node names and every qparams (the corrected bias is a float constant;
a layer's fake_quant_bias, if it has one, stays in front of it and rounds it to the
int32 grid lowering uses). Not corrected, with a note: layers whose
bias is shared with another node (the correction is per layer), non-constant
biases, and layers whose weights are not fake-quantized. Activation ranges are
not re-calibrated; the shifts are small compared with them.
"""

from __future__ import annotations

import sys
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import ClassVar

import numpy as np
import torch

from qcompiler.errors import QuantizationError
from qcompiler.ir import Graph, Node, Value
from qcompiler.ir.edit import layer_bias, output_channel_axis, set_layer_bias
from qcompiler.ir.evaluate import Evaluator, graph_runs
from qcompiler.ir.ops import OPS, WEIGHTED_OPS, run_op
from qcompiler.ir.pipeline import PassResult
from qcompiler.numerics.bias_correction import (
    clipped_normal_mean,
    corrected_bias,
    expected_output_error,
    mean_output_error,
)
from qcompiler.numerics.quant import fake_quantize, quant_range
from qcompiler.quantization.quantizers import quantize_layer_bias, require_calibrated


@dataclass(frozen=True, eq=False)  # eq=False: fields hold tensors, which do not compare
class CorrectBias:
    """The configured bias-correction pass: exactly one of the two sources (see the module
    docstring)."""

    calibration_data: Iterable | None = None
    statistics: Mapping | None = None
    progress: bool | None = None  # a tqdm bar over the graph's nodes; None: on a terminal only

    name: ClassVar[str] = "correct_bias"
    in_place: ClassVar[bool] = True  # rewrites the graph it is given

    def __post_init__(self):
        if (self.calibration_data is None) == (self.statistics is None):
            raise QuantizationError(
                "correct_bias needs exactly one source of input means: calibration_data= "
                "(empirical) or statistics= (data-free, from "
                "qcompiler.quantization.data_free.batchnorm_statistics of the unfolded graph)")

    def __call__(self, graph: Graph) -> PassResult:
        require_calibrated(graph, "correct_bias")
        notes: list[str] = []
        if self.calibration_data is not None:
            show = sys.stderr.isatty() if self.progress is None else self.progress
            corrected = _correct_empirically(graph, self.calibration_data, notes, show)
        else:
            corrected = _correct_analytically(graph, self.statistics, notes)
        notes.insert(0, f"corrected the bias of {corrected} layer(s)")
        return PassResult(graph, corrected > 0, notes)


def correct_bias(graph: Graph | None = None, /, *, calibration_data: Iterable | None = None,
                 statistics: Mapping | None = None, progress: bool | None = None):
    """`correct_bias(calibration_data=batches)` or `correct_bias(statistics=stats)` return
    the configured pass; with a graph first, they run it (-> PassResult)."""
    configured = CorrectBias(calibration_data, statistics, progress)
    return configured if graph is None else configured(graph)


correct_bias.in_place = True  # as the configured pass it runs


# ---- which layers, and their weights ---------------------------------------------------------


def _quantized_weight(graph: Graph, layer: Node, notes: list[str]) -> tuple[np.ndarray, np.ndarray] | None:
    """(W, W_q) of a layer whose weight is a fake_quant of a constant and whose bias may be
    rewritten; None (with a note when it matters) otherwise."""
    if layer.op not in WEIGHTED_OPS:
        return None
    fq = layer.inputs[1].producer
    if fq is None or fq.op != "fake_quant" or not fq.inputs[0].is_constant:
        return None
    bias = layer_bias(layer)
    if bias is not None and (not bias.is_constant or len(bias.users) != 1 or bias in graph.outputs):
        notes.append(f"%{layer.name} not corrected: its bias %{bias.name} is not a constant of "
                     "its own (shared or computed)")
        return None
    weight = fq.inputs[0].data
    attrs = fq.attrs
    qmin, qmax = quant_range(attrs.get("bits", 8), attrs.get("signed", True),
                             attrs.get("narrow_range", False))
    quantized = fake_quantize(weight, fq.inputs[1].data, fq.inputs[2].data, qmin, qmax, attrs.get("axis"))
    return weight, quantized


def _set_bias(graph: Graph, layer: Node, data: np.ndarray) -> None:
    old = layer_bias(layer)
    name = f"{old.name}.corrected" if old is not None else f"{layer.name}.bias.corrected"
    set_layer_bias(graph, layer, graph.add_constant(name, data))
    quantize_layer_bias(graph, layer)  # a layer that gains a bias may need its int32 grid


# ---- empirical ---------------------------------------------------------------------------


def _correct_empirically(graph: Graph, calibration_data: Iterable, notes: list[str],
                         progress: bool = False) -> int:
    from tqdm.auto import tqdm

    batches = [run for index, batch in enumerate(calibration_data)
               for run in graph_runs(batch, graph, index)]
    if not batches:
        raise QuantizationError("correct_bias: calibration_data is empty; give at least one batch")
    # All batches run together, one node at a time, so that each layer is corrected (from
    # its inputs over every batch) before its output is computed.
    nodes = graph.nodes
    evaluator = Evaluator(graph)
    last_uses = evaluator.last_uses(nodes, keep=graph.outputs)
    evaluator.bind(batches)
    corrected = 0
    for index, node in enumerate(tqdm(nodes, desc="bias correction", disable=not progress,
                                      leave=False)):
        weights = _quantized_weight(graph, node, notes)
        if weights is not None:
            weight, quantized = weights
            error_weight = torch.from_numpy((quantized.astype(np.float64) - weight).astype(np.float32))
            with torch.no_grad():
                errors = [run_op(node.op, [x, error_weight], node.attrs)[0].numpy()
                          for x in evaluator.batches(node.inputs[0])]
            output_error = mean_output_error(errors, output_channel_axis(node))
            bias = layer_bias(node)
            if np.any(output_error != 0):
                _set_bias(graph, node, corrected_bias(None if bias is None else bias.data,
                                                      output_error, np.float32))
                corrected += 1
                holder = node.inputs[2].producer
                if holder is not None and holder.op == "fake_quant_bias":  # ran, or is new
                    evaluator.step(holder)
        evaluator.step(node)
        evaluator.free(last_uses.get(index, ()))
    return corrected


# ---- analytical ----------------------------------------------------------------------------


def _input_mean(value: Value, statistics: Mapping) -> np.ndarray | None:
    """E[x] per channel (axis 1) of `value`, derived from the statistics it is built from."""
    described = _describe(value, statistics)
    if described is None:
        return None
    if described[0] == "mean":
        return described[1]
    _, mean, std, low, high = described
    return clipped_normal_mean(mean, std, low, high)


def _describe(value: Value, statistics: Mapping):
    """What is known of `value` per channel: ("normal", mean, std, low, high) for a
    clipped normal (a recorded pre-activation through relu/clamp), ("mean", m) when only
    the mean follows (sums, averages), or None."""
    if value.name in statistics:
        mean, std = statistics[value.name]
        return ("normal", np.asarray(mean, np.float64), np.asarray(std, np.float64), None, None)
    producer = value.producer
    if producer is None:
        return None
    inner = _describe(producer.inputs[0], statistics) if producer.inputs else None
    if producer.op == "fake_quant":  # rounding to the grid keeps the mean, to a step
        return inner
    if producer.op in ("relu", "clamp"):
        if inner is None or inner[0] != "normal":
            return None  # the mean of a clipped sum is not known from the summands' means
        lo, hi = (0.0, None) if producer.op == "relu" else (producer.attrs.get("min"),
                                                            producer.attrs.get("max"))
        _, mean, std, low, high = inner
        # clip(clip(y, a, b), c, d) = clip(y, max(a, c), min(b, d)) for overlapping bounds.
        low = lo if low is None else (low if lo is None else max(low, lo))
        high = hi if high is None else (high if hi is None else min(high, hi))
        return ("normal", mean, std, low, high)
    if producer.op == "add" and len(producer.inputs) == 2:
        # Residual adds: E[a + b] = E[a] + E[b], whatever a and b's dependence.
        means = [_input_mean(v, statistics) for v in producer.inputs]
        same_shape = producer.inputs[0].shape == producer.inputs[1].shape
        known = all(m is not None for m in means)
        return ("mean", means[0] + means[1]) if same_shape and known else None
    if _keeps_channel_means(producer) and inner is not None:
        return ("mean", _input_mean(producer.inputs[0], statistics))
    return None


def _keeps_channel_means(node: Node) -> bool:
    """Averaging over positions (global pooling, the flatten after it) keeps each channel's
    mean (zero padding aside)."""
    source = node.inputs[0]
    if node.op == "mean":
        dims = node.attrs["dim"]
        dims = [dims] if isinstance(dims, int) else list(dims)
        return all(d % len(source.shape) not in (0, 1) for d in dims) and len(source.shape) > 2
    if OPS[node.op].averages:  # pooling by averaging: over positions only
        return True
    if node.op in ("flatten", "reshape"):
        # [N, C, 1, 1] -> [N, C]: channel c stays at axis 1.
        return (len(source.shape) >= 2 and len(node.output.shape) == 2
                and node.output.shape[:2] == source.shape[:2])
    return False


def _correct_analytically(graph: Graph, statistics: Mapping, notes: list[str]) -> int:
    corrected = 0
    for node in graph:
        weights = _quantized_weight(graph, node, notes)
        if weights is None:
            continue
        if node.op == "conv_transpose2d":
            notes.append(f"%{node.name} not corrected: the analytical path does not handle "
                         "conv_transpose2d (use calibration_data)")
            continue
        input_mean = _input_mean(node.inputs[0], statistics)
        if node.op == "linear" and len(node.inputs[0].shape) != 2:
            input_mean = None  # statistics are per axis 1; a 3-D linear input has features last
        if input_mean is None:
            notes.append(f"%{node.name} not corrected: the mean of its input %{node.inputs[0].name} "
                         "does not follow from the statistics")
            continue
        weight, quantized = weights
        groups = node.attrs.get("groups", 1) if node.op != "linear" else 1
        output_error = expected_output_error(quantized.astype(np.float64) - weight, input_mean, groups)
        if np.any(output_error != 0):
            bias = layer_bias(node)
            _set_bias(graph, node, corrected_bias(None if bias is None else bias.data, output_error,
                                                  np.float32))
            corrected += 1
    return corrected
