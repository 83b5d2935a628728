"""Automatic mixed precision: per linear layer, 4-bit, 8-bit or float weights, chosen from
measured sensitivity under a budget of deployed bytes or estimated latency.

    result = qc.search_mixed_precision(graph, calibration_batches, size_ratio=0.22)
    print(result)                       # the plan: layer, choice, bytes, measured sensitivity
    qc.save_config(result.config, "mixed.json")    # a QuantConfig: read it, edit it, load it
    quantized = result.quantized        # qc.quantize(graph, data, config=result.config)

In the spirit of HAWQ-v3 / AIMET AMP (Yao et al. 2021; AIMET's mixed precision), in four
steps:

1. Sensitivity: the graph is quantized twice on the base config (default: the
   `transformer` preset), with every linear weight at 4 bits (per output channel, MSE
   clipping) and at 8 bits. On each, `qc.sensitivity_analysis(mode="one_quantized")` gives
   every layer's SQNR with only its quantizers on; the noise of a choice is the relative
   noise power 10^(-SQNR / 10) (float: 0, an optimistic bound: the consumer still
   quantizes the layer's output). Noises are assumed to add (the first-order model HAWQ
   and AIMET use to rank choices).
2. Cost: deployed bytes (`qcompiler.analysis.model_size`: 4 or 8 bits a weight element,
   float32 when kept float; everything else at what the base config stores), or estimated
   latency: MACs weighted by a relative cost per MAC (8- and 4-bit weights both run on int8
   kernels, 1; float, `FLOAT_MAC_COST` = 4: an AVX-512/VNNI or AVX2 int8 dot product does 4
   multiply-adds in the lane one float32 FMA takes), other nodes' MACs held fixed.
3. Greedy (a Pareto walk): from every layer at 4 bits, repeatedly take the upgrade
   (4 -> 8, 4 -> float, 8 -> float) with the largest noise removed per unit of cost added
   that still fits the budget, until none fits.
4. The chosen config is quantized (`qc.quantize`) and measured; `result.quantized` is that
   graph and `result.measured_ratio` its real cost ratio.

A budget below what 4-bit weights everywhere reach is refused (`BudgetError`, naming the
option and the floor), before any quantization runs. `measure_precision_sensitivity` runs
step 1 once and its `plan(size_ratio=...)` steps 2-4, for several budgets.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, replace

from qcompiler.analysis.cost import node_macs
from qcompiler.analysis.model_size import stored_bytes
from qcompiler.errors import BudgetError, OptionError
from qcompiler.ir import Graph
from qcompiler.passes.insert_fake_quant import insert_fake_quant
from qcompiler.quantization.config import QOverride, QScheme, QuantConfig, as_quant_config
from qcompiler.quantization.sensitivity import sensitivity_analysis
from qcompiler.quantize import _as_graph, _first_inputs, quantize

FLOAT_MAC_COST = 4.0
CHOICES = ("w4", "w8", "float")
_WEIGHTS = {"w4": QScheme(4, symmetric=True, per_channel=True, narrow_range=True),
            "w8": QScheme(8, symmetric=True, per_channel=True, narrow_range=True)}


@dataclass(frozen=True)
class LayerChoice:
    layer: str
    choice: str
    weight_elements: int
    macs: int
    noise: dict  # choice -> estimated relative noise power


@dataclass(frozen=True)
class MixedPrecisionResult:
    config: QuantConfig
    quantized: Graph
    layers: tuple[LayerChoice, ...]
    metric: str
    target_ratio: float
    estimated_ratio: float
    measured_ratio: float

    def __str__(self) -> str:
        counts = {choice: sum(row.choice == choice for row in self.layers) for choice in CHOICES}
        lines = [f"Mixed precision under {self.metric} <= {self.target_ratio:.3g} of FP32: estimated "
                 f"{self.estimated_ratio:.3f}, measured {self.measured_ratio:.3f}; "
                 + ", ".join(f"{n} layer(s) {c}" for c, n in counts.items()), "",
                 "| layer | choice | weights | noise w4 | noise w8 |", "|---|---|---:|---:|---:|"]
        for row in self.layers:
            lines.append(f"| {row.layer} | {row.choice} | {row.weight_elements} | "
                         f"{row.noise['w4']:.3g} | {row.noise['w8']:.3g} |")
        return "\n".join(lines)


@dataclass(frozen=True, eq=False)
class PrecisionSensitivity:
    """Step 1 of the search, reusable for several budgets (`plan`)."""

    graph: Graph
    calibration_data: list
    base: QuantConfig
    linears: tuple
    noise: dict  # layer name -> {choice: relative noise power}
    quantize_options: dict

    def plan(self, *, size_ratio: float | None = None, latency_ratio: float | None = None,
             progress: bool | None = None) -> MixedPrecisionResult:
        """Steps 2-4 under one budget (module docstring)."""
        metric, target = _budget(size_ratio, latency_ratio)
        costs = _Costs(self.graph, self.base, self.linears, metric)
        costs.check_reachable(target)
        plan = {node.name: "w4" for node in self.linears}
        while True:
            spent = costs.ratio(plan)
            best = None
            for node in self.linears:
                current = plan[node.name]
                for upgrade in CHOICES[CHOICES.index(current) + 1:]:
                    trial = costs.ratio({**plan, node.name: upgrade})
                    gain = self.noise[node.name][current] - self.noise[node.name][upgrade]
                    score = gain / max(trial - spent, 1e-12)
                    if trial <= target and gain > 0 and (best is None or score > best[0]):
                        best = (score, node.name, upgrade)
            if best is None:
                break
            plan[best[1]] = best[2]
        chosen = _config(self.base, plan)
        quantized = quantize(self.graph, self.calibration_data, config=chosen, progress=progress,
                             **self.quantize_options)
        rows = tuple(LayerChoice(node.name, plan[node.name], node.inputs[1].numel, node_macs(node),
                                 self.noise[node.name]) for node in self.linears)
        return MixedPrecisionResult(chosen, quantized, rows, metric, float(target), costs.ratio(plan),
                                    costs.measured(quantized))


def search_mixed_precision(model_or_graph, calibration_data: Iterable, *, size_ratio: float | None = None,
                           latency_ratio: float | None = None, config: QuantConfig | str = "transformer",
                           sensitivity_batches: int = 1, progress: bool | None = None,
                           **quantize_options) -> MixedPrecisionResult:
    """Choose per-layer weight precision under `size_ratio` (deployed bytes / FP32 bytes) or
    `latency_ratio` (estimated latency / FP32's); see the module docstring. `quantize_options`
    go to every `qc.quantize` call."""
    metric, target = _budget(size_ratio, latency_ratio)
    sensitivity = measure_precision_sensitivity(model_or_graph, calibration_data, config=config,
                                                sensitivity_batches=sensitivity_batches,
                                                progress=progress, check=(metric, target),
                                                **quantize_options)
    return sensitivity.plan(size_ratio=size_ratio, latency_ratio=latency_ratio, progress=progress)


def measure_precision_sensitivity(model_or_graph, calibration_data: Iterable, *,
                                  config: QuantConfig | str = "transformer", sensitivity_batches: int = 1,
                                  progress: bool | None = None, check: tuple | None = None,
                                  **quantize_options) -> PrecisionSensitivity:
    """Step 1 of the module docstring: every linear layer's noise at 4 and 8 bits."""
    base = as_quant_config(config, "search_mixed_precision(config=)")
    calibration_data = list(calibration_data)
    graph = _as_graph(model_or_graph, _first_inputs(calibration_data))
    linears = tuple(node for node in graph if node.op == "linear" and node.inputs[1].is_constant
                    and node.name not in base.exclude_nodes)
    if not linears:
        raise OptionError(f"graph {graph.name} has no linear layer with a constant weight to choose "
                          "a precision for")
    if check is not None:  # refuse an impossible budget before the expensive part
        _Costs(graph, base, linears, check[0]).check_reachable(check[1])
    noise = {node.name: {"float": 0.0} for node in linears}
    for choice in ("w4", "w8"):
        quantized = quantize(graph, calibration_data, config=_config(base, {n.name: choice for n in linears}),
                             progress=progress, **quantize_options)
        report = sensitivity_analysis(quantized, calibration_data[:sensitivity_batches],
                                      mode="one_quantized", reference=graph, progress=progress)
        for row in report.rows:
            if row.layer.name in noise:
                noise[row.layer.name][choice] = 10.0 ** (-row.sqnr_db / 10.0)
    for values in noise.values():  # a layer the report did not list: no measured noise
        values.setdefault("w4", 0.0)
        values.setdefault("w8", 0.0)
    return PrecisionSensitivity(graph, calibration_data, base, linears, noise, dict(quantize_options))


def _budget(size_ratio, latency_ratio) -> tuple[str, float]:
    if (size_ratio is None) == (latency_ratio is None):
        raise OptionError("search_mixed_precision needs exactly one budget: size_ratio= (deployed "
                          "bytes / FP32 bytes) or latency_ratio= (estimated latency / FP32's)")
    metric, target = ("size", size_ratio) if size_ratio is not None else ("latency", latency_ratio)
    if isinstance(target, bool) or not isinstance(target, (int, float)) or not 0 < target <= 1:
        raise OptionError(f"search_mixed_precision({metric}_ratio={target!r}): a fraction in (0, 1]")
    return metric, target


def _config(base: QuantConfig, plan: dict[str, str]) -> QuantConfig:
    overrides = dict(base.node_overrides)
    excluded = set(base.exclude_nodes)
    for name, choice in plan.items():
        if choice == "float":
            excluded.add(name)
        else:
            overrides[name] = QOverride(weight=_WEIGHTS[choice])
    return replace(base, node_overrides=overrides, exclude_nodes=frozenset(excluded),
                   weight_observer="mse")


class _Costs:
    """The cost ratio of a plan without calibrating: the graph with 8-bit weights and the base
    config's quantizers (structure only: bytes do not depend on calibration), adjusted per
    layer."""

    def __init__(self, graph: Graph, base: QuantConfig, linears, metric: str):
        self.metric = metric
        self.linears = linears
        if metric == "size":
            probe = insert_fake_quant(graph.copy(), config=_config(base, {n.name: "w8" for n in linears}))
            self.fp32 = stored_bytes(graph)
            self.w8 = stored_bytes(probe.graph)
        else:
            self.fp32 = FLOAT_MAC_COST * sum(node_macs(node) for node in graph)
            self.w8 = sum(node_macs(node) for node in graph)

    def ratio(self, plan: dict[str, str]) -> float:
        total = self.w8
        for node in self.linears:
            choice = plan[node.name]
            if self.metric == "size":
                elements = node.inputs[1].numel
                total += {"w4": -elements // 2, "w8": 0, "float": 3 * elements}[choice]
            elif choice == "float":
                total += (FLOAT_MAC_COST - 1) * node_macs(node)
        return total / self.fp32

    def check_reachable(self, target: float) -> None:
        floor = self.ratio({node.name: "w4" for node in self.linears})
        if floor > target:
            raise BudgetError(f"search_mixed_precision({self.metric}_ratio={target}) is below what "
                              f"4-bit weights on every linear layer reach ({floor:.3f} of FP32); "
                              f"raise {self.metric}_ratio to at least {floor:.3f}, or quantize more "
                              "(e.g. the embedding table) first")

    def measured(self, quantized: Graph) -> float:
        if self.metric == "size":
            return stored_bytes(quantized) / self.fp32
        float_nodes = {n.name for n in quantized if n.op == "linear"
                       and not (n.inputs[1].producer is not None and n.inputs[1].producer.op == "fake_quant")}
        macs = sum(node_macs(n) * (FLOAT_MAC_COST if n.name in float_nodes else 1) for n in quantized
                   if n.op not in ("fake_quant", "fake_quant_bias"))
        return macs / self.fp32
