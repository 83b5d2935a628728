"""Per-layer quantization sensitivity: which layers does quantization hurt most?

    report = qc.sensitivity_analysis(quantized_graph, calibration_batches)
    print(report)                                  # markdown table, most harmful first
    config = report.exclude_in(config, top_k=2)    # keep the two worst layers in float
    qg = qc.quantize(model, data, config=config)

A *layer* is a node together with the quantizers that belong to it, as
`insert_fake_quant` placed them: the fake_quant of its weight, and the fake_quant of
its output, which sits after the ReLU/ReLU6 fused into it (the node is the head of
that group). A graph input owns the fake_quant on it. Each layer is measured in one
of two ways (`mode`), on the same batches, against the FP32 outputs:

- `"one_quantized"`: only this layer's quantizers are on, every other fake_quant is
  bypassed. Measures the damage the layer does by itself; the rows are sorted by
  SQNR, lowest first. Cheap to read, but blind to interactions.
- `"one_float"`: every quantizer is on except this layer's. Measures what leaving
  the layer in float would buy in the real quantized network; the rows are sorted by
  the gain over the fully quantized network, largest first. This is what an
  exclusion does, and it sees errors that compound through later layers.

Both are common (AIMET's per-layer analysis uses the first, mixed-precision
searches often the second). Metrics: SQNR in dB (`qcompiler.numerics.quant.sqnr_db`)
over all outputs, and the mean KL(softmax(FP32) || softmax(quantized)) in nats
(`qcompiler.analysis.metrics`) with the last axis of the first output as the logits.

The reference is the quantized graph with every fake_quant bypassed, unless
`reference` is given (a float Graph or nn.Module taking the same inputs): pass the
float model when the quantized graph's weights differ from it on purpose (bias
correction, AdaRound), so that those changes are measured as well.

`to_exclusions` turns rows into node names for `QuantConfig.exclude_nodes`: the
layer's node and the activations fused into it, since excluding the head alone
would leave its fused ReLU quantizing a float value of its own. What exclusion
keeps in float is the layer's weight and arithmetic; a quantized consumer still
quantizes the layer's output at its own input (see `insert_fake_quant`). So a layer
harmed by its *activation* range gains little from exclusion; give it 16-bit
activations with `QuantConfig.node_overrides` instead.

Cost: one forward pass over the batches per layer (node by node, with torch).
Measured (shared 2-core machine, one thread) on pretrained MobileNetV2, naive
per-tensor int8 (no CLE), 16 held-out photo crops: 65 layers in 63 s
("one_quantized") and 116 s ("one_float"); excluding the top 3 layers of each
raised the whole model's SQNR from 6.2 dB to 10.1 and 8.6 dB respectively, and
its top-1 agreement with FP32 from 50% to 75%.
"""

from __future__ import annotations

import math
import sys
from collections.abc import Iterable
from dataclasses import dataclass, replace

import numpy as np
import torch

from qcompiler.analysis import metrics
from qcompiler.errors import QuantizationError
from qcompiler.ir import Graph, Node
from qcompiler.ir.evaluate import evaluate, graph_inputs
from qcompiler.ir.ops import FUSABLE_ACTIVATIONS
from qcompiler.numerics.quant import sqnr_db
from qcompiler.quantization.config import QuantConfig
from qcompiler.quantization.quantizers import fake_quant_nodes, require_calibrated

MODES = ("one_quantized", "one_float")


@dataclass(frozen=True)
class Layer:
    """A node (or graph input) and the fake_quant nodes that belong to it."""

    name: str
    op: str  # "input" for a graph input
    quantizers: tuple[str, ...]
    fused: tuple[str, ...] = ()  # activation nodes fused into it (quantized after them)


@dataclass(frozen=True)
class LayerSensitivity:
    layer: Layer
    sqnr_db: float
    kl: float


@dataclass(frozen=True)
class SensitivityReport:
    mode: str
    rows: tuple[LayerSensitivity, ...]  # most harmful first
    quantized_sqnr_db: float  # every quantizer on
    quantized_kl: float
    examples: int

    def gain_db(self, row: LayerSensitivity) -> float:
        """SQNR gained over the fully quantized network (mode "one_float")."""
        return row.sqnr_db - self.quantized_sqnr_db

    def to_markdown(self, limit: int | None = None) -> str:
        what = ("only this layer quantized" if self.mode == "one_quantized"
                else "every layer quantized except this one")
        lines = [f"Per-layer sensitivity ({what}; {self.examples} examples; fully quantized: "
                 f"SQNR {_db(self.quantized_sqnr_db)}, KL {self.quantized_kl:.4g})", "",
                 "| rank | layer | op | quantizers | SQNR (dB) | "
                 + ("gain (dB) | " if self.mode == "one_float" else "") + "KL (nats) |",
                 "|---:|---|---|---:|---:|" + ("---:|" if self.mode == "one_float" else "") + "---:|"]
        for rank, row in enumerate(self.rows[:limit], start=1):
            gain = f" {_db(self.gain_db(row))} |" if self.mode == "one_float" else ""
            lines.append(f"| {rank} | {row.layer.name} | {row.layer.op} | {len(row.layer.quantizers)} | "
                         f"{_db(row.sqnr_db)} |{gain} {row.kl:.4g} |")
        if limit is not None and len(self.rows) > limit:
            lines.append(f"\n({len(self.rows) - limit} more rows)")
        return "\n".join(lines)

    def __str__(self) -> str:
        return self.to_markdown()

    def select(self, *, top_k: int | None = None, below_db: float | None = None,
               gain_above_db: float | None = None) -> list[LayerSensitivity]:
        """The most harmful rows: the first `top_k`, and/or (mode "one_quantized") those whose
        SQNR is below `below_db`, or (mode "one_float") whose gain exceeds `gain_above_db`."""
        if top_k is None and below_db is None and gain_above_db is None:
            raise QuantizationError("choose the layers to exclude: top_k=, below_db= (mode "
                                    "'one_quantized') or gain_above_db= (mode 'one_float')")
        if below_db is not None and self.mode != "one_quantized":
            raise QuantizationError(f"below_db selects by the SQNR of a layer quantized alone "
                                    f"(mode 'one_quantized'); this report's mode is {self.mode!r}: "
                                    "use gain_above_db")
        if gain_above_db is not None and self.mode != "one_float":
            raise QuantizationError(f"gain_above_db selects by the gain of leaving a layer in float "
                                    f"(mode 'one_float'); this report's mode is {self.mode!r}: "
                                    "use below_db")
        if top_k is not None and top_k < 0:
            raise QuantizationError(f"top_k must be >= 0, got {top_k}")
        rows = list(self.rows if top_k is None else self.rows[:top_k])
        if below_db is not None:
            rows = [row for row in rows if row.sqnr_db < below_db]
        if gain_above_db is not None:
            rows = [row for row in rows if self.gain_db(row) > gain_above_db]
        return rows

    def to_exclusions(self, **selection) -> list[str]:
        """Node names for `QuantConfig.exclude_nodes` (the layers chosen by `select`, each
        with the activations fused into it)."""
        return [name for row in self.select(**selection) for name in (row.layer.name, *row.layer.fused)]

    def exclude_in(self, config: QuantConfig, **selection) -> QuantConfig:
        """`config` with the selected layers added to its exclusions."""
        return replace(config, exclude_nodes=config.exclude_nodes | set(self.to_exclusions(**selection)))


def _db(value: float) -> str:
    return f"{value:.2f}" if math.isfinite(value) else ("inf" if value > 0 else "-inf")


def quantized_layers(graph: Graph) -> list[Layer]:
    """The layers of a fake-quant graph and their quantizers, in graph order."""
    owners: dict[str, list[Node]] = {}
    kinds: dict[str, str] = {}
    fused: dict[str, tuple[str, ...]] = {}
    for fq in fake_quant_nodes(graph):
        value = fq.inputs[0]
        if value.is_constant:  # a weight, or a constant operand: owned by its reader
            readers = [user for user in fq.output.users]
            if not readers:
                continue
            head, chain = readers[0], ()
        elif value.producer is None:
            owners.setdefault(value.name, []).append(fq)
            kinds[value.name] = "input"
            continue
        else:
            head, chain = _group_head(value.producer)
        owners.setdefault(head.name, []).append(fq)
        kinds[head.name] = head.op
        fused[head.name] = tuple(sorted(set(fused.get(head.name, ())) | set(chain)))
    order = {value.name: index for index, value in enumerate(graph.inputs)}
    order.update({node.name: len(order) + index for index, node in enumerate(graph)})
    return [Layer(name, kinds[name], tuple(fq.name for fq in fqs), fused.get(name, ()))
            for name, fqs in sorted(owners.items(), key=lambda item: order[item[0]])]


def _group_head(node: Node) -> tuple[Node, tuple[str, ...]]:
    """The node a relu/clamp chain is fused into (as insert_fake_quant fuses), and the chain."""
    chain = []
    while node.op in FUSABLE_ACTIVATIONS and node.inputs[0].producer is not None \
            and node.inputs[0].producer.op != "fake_quant" and len(node.inputs[0].users) == 1:
        chain.append(node.name)
        node = node.inputs[0].producer
    return node, tuple(chain)


def run_with_quantizers(graph: Graph, inputs: list[torch.Tensor], enabled: set[str]) -> list[np.ndarray]:
    """The graph's outputs with only the fake_quant nodes named in `enabled` applied."""

    def bypassed(node: Node) -> bool:
        return (node.op == "fake_quant" and node.name not in enabled
                or node.op == "fake_quant_bias" and not _bias_quantizer_on(node, enabled))

    return [output.numpy() for output in evaluate(graph, inputs, bypass=bypassed)]


def _bias_quantizer_on(node: Node, enabled: set[str]) -> bool:
    """A layer's fake_quant_bias is on exactly when its weight's fake_quant is (both belong to
    the layer)."""
    layers = node.output.users
    weight = layers[0].inputs[1].producer if layers and len(layers[0].inputs) > 1 else None
    return weight is not None and weight.name in enabled


def sensitivity_analysis(quantized_graph: Graph, calibration_data: Iterable, *, mode: str = "one_float",
                         reference=None, max_batches: int | None = None,
                         progress: bool | None = None) -> SensitivityReport:
    """Measure every layer of a calibrated fake-quant graph (see the module docstring).

    calibration_data: batches as `qcompiler.quantization.calibrate.calibrate` takes them (use data the
        ranges were not calibrated on for an unbiased view); max_batches: read at most this many.
    reference: the FP32 model (Graph or nn.Module); default: the graph, quantizers bypassed.
    """
    from tqdm.auto import tqdm

    if mode not in MODES:
        raise QuantizationError(f"sensitivity_analysis(mode={mode!r}): choose one of {', '.join(MODES)}")
    if isinstance(quantized_graph, torch.nn.Module):
        raise QuantizationError(f"sensitivity_analysis takes the quantized Graph, not the "
                                f"{type(quantized_graph).__name__} module: quantized = "
                                "qc.quantize(model, data); qc.sensitivity_analysis(quantized, data, "
                                "reference=model)")
    if not isinstance(quantized_graph, Graph):
        raise QuantizationError(f"sensitivity_analysis takes the quantized Graph (qc.quantize), got "
                                f"{type(quantized_graph).__name__}")
    if not fake_quant_nodes(quantized_graph):
        raise QuantizationError(f"graph {quantized_graph.name} has no fake_quant nodes: sensitivity "
                                "analysis needs a quantized graph (qc.quantize)")
    require_calibrated(quantized_graph, "sensitivity_analysis")
    if calibration_data is None:
        raise QuantizationError("sensitivity_analysis needs calibration_data: batches to run the "
                                "layers on")
    batches = []
    for index, batch in enumerate(calibration_data):
        if max_batches is not None and index >= max_batches:
            break
        batches.append(graph_inputs(batch, quantized_graph, index))
    if not batches:
        raise QuantizationError("sensitivity_analysis: calibration_data is empty; give at least one batch")
    layers = quantized_layers(quantized_graph)
    everything = {fq for layer in layers for fq in layer.quantizers}
    expected = [_reference_outputs(quantized_graph, reference, batch) for batch in batches]

    def measure(enabled: set[str]) -> tuple[float, float]:
        got = [run_with_quantizers(quantized_graph, batch, enabled) for batch in batches]
        return _compare(expected, got)

    show = sys.stderr.isatty() if progress is None else progress
    rows = []
    for layer in tqdm(layers, desc="sensitivity", disable=not show):
        own = set(layer.quantizers)
        rows.append(LayerSensitivity(layer, *measure(own if mode == "one_quantized" else everything - own)))
    all_sqnr, all_kl = measure(everything)
    if mode == "one_quantized":
        rows.sort(key=lambda row: (row.sqnr_db, -row.kl))
    else:
        rows.sort(key=lambda row: (-row.sqnr_db, row.kl))
    examples = sum(int(batch[0].shape[0]) if batch[0].dim() else 1 for batch in batches)
    return SensitivityReport(mode, tuple(rows), all_sqnr, all_kl, examples)


def _reference_outputs(graph: Graph, reference, batch: list[torch.Tensor]) -> list[np.ndarray]:
    if reference is None:
        return run_with_quantizers(graph, batch, set())
    if isinstance(reference, Graph):
        return run_with_quantizers(reference, batch, set())
    if not isinstance(reference, torch.nn.Module):
        raise QuantizationError(f"sensitivity_analysis(reference=...) takes a float Graph or a "
                                f"torch.nn.Module, got {type(reference).__name__}")
    with torch.no_grad():
        outputs = reference(*batch)
    outputs = outputs if isinstance(outputs, (tuple, list)) else (outputs,)
    return [o.numpy() for o in outputs]


def _compare(expected: list[list[np.ndarray]], got: list[list[np.ndarray]]) -> tuple[float, float]:
    """(SQNR over all outputs, mean KL on the first output's last axis) across batches."""
    if len(expected[0]) != len(got[0]):
        raise QuantizationError(f"the reference gives {len(expected[0])} output(s), the quantized "
                                f"graph {len(got[0])}")
    reference = np.concatenate([o.reshape(-1) for outputs in expected for o in outputs])
    candidate = np.concatenate([o.reshape(-1) for outputs in got for o in outputs])
    if reference.shape != candidate.shape:
        raise QuantizationError("the reference's outputs differ in shape from the quantized graph's")
    first = [np.concatenate([outputs[0].reshape(-1, outputs[0].shape[-1]) for outputs in runs])
             for runs in (expected, got)]
    return float(sqnr_db(reference, candidate)), metrics.mean_kl_divergence(*first)
