"""Budget search: choose how far to compress each layer so the graph meets a target.

    result = qc.search_budget(graph, calibration_batches, target_ratio=0.7, metric="macs",
                              method="remove_filters", criterion="l1")
    print(result)          # the plan: per group/layer channels or rank, MACs before/after, error
    smaller = result.graph

`target_ratio` is the fraction of the original to keep: 0.7 means 30% fewer MACs
(`metric="macs"`), parameters (`"params"`, counted as `qc.cost` counts them) or
measured latency (`"latency"`: torch eager of `qc.to_torch(graph)`, median of
repeats at a fixed thread count, `eager_latency`, timed on `latency_inputs` or else
the first calibration batch, so a graph with a symbolic batch is timed at that batch's
size). MACs and parameters are per sample for a symbolic batch (`qc.cost` counts N as 1).

How, in four steps (a sensitivity-guided greedy allocation):

1. Sensitivity (`qcompiler.compression.budget_sensitivity`): each unit (a prunable channel group
   for `method="remove_filters"`, a decomposable layer for `"decompose_low_rank"`) is
   compressed alone to a few settings and the output error on the calibration data is
   measured (Li et al. 2017, section 4.1). Between measured settings the error is
   interpolated, and the errors of several units are assumed to add (squared relative
   errors, or KL divergences).
2. Cost: the MACs and parameters of any combination of settings are estimated without
   rewriting the graph. A conv or linear layer takes (output positions) x (weight
   elements) MACs, so removing a fraction of a weight's rows or columns removes that
   fraction of its MACs (exact for conv, linear and conv_transpose; other MACs, e.g.
   matmul, are held fixed); a rank's MACs follow the channel decomposition's shapes.
3. Greedy: from the untouched graph, repeatedly move one unit to a deeper setting,
   taking the move with the least added error per unit of cost saved (a unit may
   skip settings, which handles error curves that are flat then steep). Once a single
   move can reach the target, the move that reaches it with the least added error is
   taken instead, so the result lands close to the target rather than past it. For
   latency the greedy runs to the end with MACs as the cost, and the shortest prefix
   of its moves whose measured latency meets the target is found by bisection.
4. Verification: the plan is applied with the real pass (`remove_filters` with masks,
   or `decompose_low_rank` per layer) and measured with `qc.cost` (or timed); if the
   estimate was optimistic the greedy runs again with the target lowered by the miss.

`round_to=16` keeps every pruned group's channel count a multiple of it, as
`remove_filters(round_to=)` does, and every rank (the width of the tensor between a
decomposed layer's factors). Convolution kernels work on blocks of channels, and a
partly filled block costs about as much as a full one: in torch eager on an AVX2 CPU
(the compression benchmark's kernel table) a dense 3x3 conv with 40 output channels
takes as long as one with 48, and a depthwise conv with 56 channels longer than one
with 64. Round to the block of the kernels that will run the model (16 there), or MAC
savings turn into less time than they promise.

Errors (the input graph is never modified): `BudgetError` when the target cannot be
met even with every unit at its deepest setting (the message gives the floor);
ValueError for bad options.

Known limits: the error model is additive and first order, so interactions between
units (two adjacent layers both pruned) are seen only in the final measured error;
units are compressed no further than the largest of `fractions`; latency is noisy on a
busy machine, so a latency plan is only as good as the timing.
"""

from __future__ import annotations

import glob
import statistics
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

import numpy as np
import torch

from qcompiler.analysis.cost import cost
from qcompiler.backends.torch import to_torch
from qcompiler.compression.budget_cost import PlanCost
from qcompiler.compression.budget_greedy import convex_errors, greedy_path, unit_settings
from qcompiler.compression.budget_sensitivity import (
    DEFAULT_FRACTIONS,
    ERRORS,
    Candidate,
    Sensitivity,
    candidate_units,
    measure_sensitivity,
    output_error,
    run_batches,
)
from qcompiler.compression.dependency import PRODUCER_ROLES, READER_ROLES
from qcompiler.errors import BudgetError, OptionError  # noqa: F401  (BudgetError re-exported)
from qcompiler.ir import Graph
from qcompiler.ir.evaluate import input_batches
from qcompiler.passes.decompose_low_rank import decompose_low_rank
from qcompiler.passes.remove_filters import remove_filters

METRICS = ("macs", "params", "latency")


@dataclass(frozen=True)
class UnitChoice:
    """What the search chose for one group (channels) or layer (rank)."""

    name: str
    kind: str  # "channels" or "rank"
    size: int  # channels of the group / full rank of the layer
    kept: int  # channels kept / rank chosen (== size: untouched)
    macs_before: int  # MACs of the layers the unit touches, before and after
    macs_after: int
    estimated_error: float  # the unit's own error at this setting (interpolated)

    @property
    def removed_fraction(self) -> float:
        return 1.0 - self.kept / self.size


@dataclass(frozen=True)
class BudgetResult:
    graph: Graph
    method: str
    criterion: str | None
    metric: str
    target_ratio: float
    choices: tuple[UnitChoice, ...]
    before: dict  # macs, params (and latency_s for the latency metric) of the original
    after: dict  # the same for the compressed graph, measured on it
    error: float  # the compressed graph's output error on the calibration data
    error_kind: str
    sensitivity: Sensitivity = field(repr=False)
    notes: tuple[str, ...] = ()

    @property
    def achieved_ratio(self) -> float:
        key = "latency_s" if self.metric == "latency" else self.metric
        return self.after[key] / self.before[key]

    def __str__(self) -> str:
        what = self.method + (f", criterion {self.criterion}" if self.criterion else "")
        key = "latency_s" if self.metric == "latency" else self.metric
        lines = [f"budget search ({what}): {self.metric} <= {self.target_ratio:g} x "
                 f"{self.before[key]:.6g}; reached {self.achieved_ratio:.3f}"]
        header = ("unit", "setting", "removed", "MACs before", "MACs after", "unit error")
        rows = [header] + [(c.name, f"{c.kept}/{c.size} {'ch' if c.kind == 'channels' else 'rank'}",
                            f"{c.removed_fraction:.0%}", f"{c.macs_before:,}", f"{c.macs_after:,}",
                            f"{c.estimated_error:.3g}") for c in self.choices]
        widths = [max(len(row[k]) for row in rows) for k in range(len(header))]
        lines += ["  " + "  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True))
                  for row in rows]
        lines.append(f"total MACs {self.before['macs']:,} -> {self.after['macs']:,}, params "
                     f"{self.before['params']:,} -> {self.after['params']:,}"
                     + (f", latency {self.before['latency_s'] * 1e3:.3f} -> "
                        f"{self.after['latency_s'] * 1e3:.3f} ms" if "latency_s" in self.before else "")
                     + f"; output error ({self.error_kind}) {self.error:.4g} on the calibration data")
        return "\n".join(lines)


def eager_latency(graph: Graph, inputs: Sequence[torch.Tensor], repeats: int = 20, warmup: int = 3,
                  threads: int = 1) -> float:
    """Median seconds of one forward of `qc.to_torch(graph)` (torch eager, no grad) on
    `inputs`, after `warmup` untimed calls, with torch limited to `threads` threads.

    With glibc's default malloc settings, activations of more than a few MB are returned
    to the kernel when freed and page-faulted in again on every call; that cost follows
    bytes, not MACs, and swings between runs. For steadier figures start the process with
    MALLOC_MMAP_THRESHOLD_ and MALLOC_TRIM_THRESHOLD_ raised (benchmarks/common.py,
    STEADY_ALLOCATOR) or with a caching allocator (jemalloc, tcmalloc) preloaded."""
    module = to_torch(graph, trainable=False).eval()
    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        with torch.no_grad():
            for _ in range(warmup):
                module(*inputs)
            times = []
            for _ in range(repeats):
                start = time.perf_counter()
                module(*inputs)
                times.append(time.perf_counter() - start)
    finally:
        torch.set_num_threads(previous)
    return statistics.median(times)


# ---- the search -------------------------------------------------------------------------------


def _apply(graph: Graph, method: str, candidates, sensitivity, kept: Sequence[int],
           batches) -> tuple[Graph, list]:
    compressed, notes = graph.copy(), []
    by_name = {unit.name: unit for unit in sensitivity.units}
    if method == "remove_filters":
        masks = {}
        for unit, k in zip(candidates, kept, strict=True):
            if k < unit.size:
                mask = np.ones(unit.size, bool)
                mask[list(by_name[unit.name].removal_order[:unit.size - k])] = False
                masks[unit.name] = mask
        if masks:
            notes += remove_filters(masks=masks, compensate_with=sensitivity.compensation,
                                    calibration_data=batches)(compressed).notes
    else:
        for unit, k in zip(candidates, kept, strict=True):
            if k < unit.size:
                notes += decompose_low_rank(rank=k, layers=(glob.escape(unit.name),))(compressed).notes
    return compressed.verify(), notes


def _unit_macs(unit: Candidate, report) -> int:
    """MACs of the layers a unit touches (a decomposed layer's factors keep its name as prefix)."""
    rows = {row.name: row.macs for row in report.per_node}
    if unit.kind == "rank":
        return sum(m for n, m in rows.items() if n == unit.name or n.startswith(unit.name + ".factor"))
    nodes = {m.node for m in unit.source.members_with_role(*PRODUCER_ROLES, *READER_ROLES)}
    return sum(rows.get(n, 0) for n in nodes)


def search_budget(graph: Graph, calibration_data: Iterable, target_ratio: float, metric: str = "macs",
                  method: str = "remove_filters", criterion: str | None = "l1",
                  error: str = "relative_l2", fractions: Sequence[float] = DEFAULT_FRACTIONS,
                  steps_per_unit: int = 32, sensitivity: Sensitivity | None = None,
                  latency_inputs: Sequence[torch.Tensor] | None = None, latency_repeats: int = 20,
                  threads: int = 1, compensation: str = "mean", round_to: int = 1) -> BudgetResult:
    """Compress `graph` to `target_ratio` of its `metric` with the least output error; see
    the module docstring. `sensitivity` (from `measure_sensitivity` with the same method,
    criterion, error and fractions) skips step 1, e.g. to search several targets."""
    _check_options(target_ratio, metric, error, steps_per_unit, round_to)
    candidates = candidate_units(graph, method, fractions)
    if not candidates:
        raise BudgetError(f"{method} finds nothing to compress in graph {graph.name}")
    settings = [unit_settings(unit, steps_per_unit, round_to) for unit in candidates]
    report = cost(graph)
    before = {"macs": report.macs, "params": report.params}
    if metric != "latency":
        _check_reachable(graph, candidates, settings, metric, target_ratio, before[metric], method,
                         fractions, round_to)
    batches = input_batches(calibration_data, graph)
    if sensitivity is None:
        sensitivity = measure_sensitivity(graph, batches, method, criterion, fractions, error,
                                          compensation)
    elif (sensitivity.method, sensitivity.error) != (method, error) or \
            (method == "remove_filters" and (sensitivity.criterion, sensitivity.compensation)
             != (criterion, compensation)) or \
            [u.name for u in sensitivity.units] != [c.name for c in candidates] or \
            [u.measured for u in sensitivity.units] != [c.measured for c in candidates]:
        raise OptionError("the given sensitivity was measured for another graph, method, criterion, "
                          "error, fractions or compensation; measure it with the same options")
    errors = [convex_errors(options, [unit.additive_error_at(k, error) for k in options])
              for unit, options in zip(sensitivity.units, settings, strict=True)]
    search = _Search(graph, method, candidates, settings, errors, sensitivity, batches)

    after: dict = {}
    if metric == "latency":
        inputs = tuple(latency_inputs if latency_inputs is not None else batches[0])
        before["latency_s"] = eager_latency(graph, inputs, latency_repeats, threads=threads)
        state, compressed, notes, after["latency_s"] = _search_latency(
            search, target_ratio, before["latency_s"], inputs, latency_repeats, threads)
    else:
        state, compressed, notes = _search_static(search, metric, target_ratio * before[metric],
                                                  before[metric])
    final = cost(compressed)
    after.update(macs=final.macs, params=final.params)
    measured = output_error(run_batches(graph, batches), run_batches(compressed, batches), error)
    choices = tuple(
        UnitChoice(unit.name, unit.kind, unit.size, kept, _unit_macs(unit, report),
                   _unit_macs(unit, final), _readable(unit_sensitivity, kept, error))
        for unit, unit_sensitivity, kept in zip(candidates, sensitivity.units, search.plan(state),
                                                strict=True))
    return BudgetResult(compressed, method, sensitivity.criterion, metric, target_ratio, choices,
                        before, after, measured, error, sensitivity, tuple(notes))


def _check_options(target_ratio, metric: str, error: str, steps_per_unit: int, round_to) -> None:
    if not (isinstance(target_ratio, (int, float)) and 0 < target_ratio < 1):
        raise OptionError(f"target_ratio must be in (0, 1) (the fraction of {metric} to keep), "
                          f"got {target_ratio!r}")
    if metric not in METRICS:
        raise OptionError(f"unknown metric {metric!r}; choose one of {', '.join(METRICS)}")
    if error not in ERRORS:
        raise OptionError(f"unknown error {error!r}; choose one of {', '.join(ERRORS)}")
    if steps_per_unit < 1:
        raise OptionError(f"steps_per_unit must be at least 1, got {steps_per_unit}")
    if not isinstance(round_to, int) or round_to < 1:
        raise OptionError(f"round_to must be a positive integer (channels kept and ranks are multiples "
                          f"of it), got {round_to!r}")


def _check_reachable(graph: Graph, candidates, settings, metric: str, target_ratio: float,
                     original: int, method: str, fractions: Sequence[float], round_to: int) -> None:
    """A BudgetError giving the floor, if every unit at its deepest setting misses the target."""
    floor_model = PlanCost(graph, candidates)
    for index, options in enumerate(settings):
        floor_model.set(index, options[-1])
    floor = floor_model.estimate(metric)
    if floor <= target_ratio * original:
        return
    widths = "channel counts" if method == "remove_filters" else "ranks"
    raise BudgetError(
        f"target {metric} <= {target_ratio:g} x {original:,} = {target_ratio * original:,.0f} is out "
        f"of reach for {method}: compressing every unit as far as allowed ({max(fractions):g} of its "
        f"channels or rank removed" + (f", {widths} at multiples of round_to={round_to}" if round_to > 1
                                       else "")
        + f") leaves about {floor:,.0f} ({floor / original:.3f} of the original); raise "
        f"target_ratio{', lower round_to' if round_to > 1 else ''} or allow more with fractions=")


@dataclass(frozen=True, eq=False)
class _Search:
    """What both searches share: the units, their settings and error curves, and how to apply
    a plan (a setting index per unit) with the real pass."""

    graph: Graph
    method: str
    candidates: list
    settings: list
    errors: list
    sensitivity: Sensitivity
    batches: list

    def plan(self, state) -> list[int]:
        return [options[j] for options, j in zip(self.settings, state, strict=True)]

    def path(self, metric: str, target: float | None) -> list[tuple[int, ...]]:
        return greedy_path(self.graph, self.candidates, self.settings, self.errors, metric, target)

    def apply(self, state) -> tuple[Graph, list[str]]:
        return _apply(self.graph, self.method, self.candidates, self.sensitivity, self.plan(state),
                      self.batches)


def _search_static(search: _Search, metric: str, target: float, original: float):
    """MACs or parameters: the greedy to the estimated target, applied and counted with
    `qc.cost`; an optimistic estimate is corrected by lowering its target by the miss."""
    estimate_target = target
    for _ in range(4):
        state = search.path(metric, estimate_target)[-1]
        compressed, notes = search.apply(state)
        reached = cost(compressed).macs if metric == "macs" else cost(compressed).params
        if reached <= target:
            return state, compressed, notes
        estimate_target -= reached - target  # the estimate was optimistic by this much
    raise BudgetError(f"target {metric} <= {target:,.0f} not met: the closest plan found has "
                      f"{reached:,} ({reached / original:.3f} of the original)")


def _search_latency(search: _Search, target_ratio: float, original: float, inputs, repeats: int,
                    threads: int):
    """Measured latency: the greedy to the end with MACs as the cost, then the shortest prefix
    of its moves whose measured latency meets the target, by bisection."""
    target = target_ratio * original
    path = search.path("latency", None)
    deepest, deepest_notes = search.apply(path[-1])
    fastest = eager_latency(deepest, inputs, repeats, threads=threads)
    if fastest > target:
        raise BudgetError(
            f"target latency <= {target_ratio:g} x {original * 1e3:.3f} ms is out of reach for "
            f"{search.method}: compressing every unit as far as allowed measures "
            f"{fastest * 1e3:.3f} ms ({fastest / original:.3f} of the original)")
    # path[0] (the original) misses the target by definition, path[-1] meets it.
    low, high, timed = 0, len(path) - 1, {len(path) - 1: (deepest, fastest, deepest_notes)}
    while high - low > 1:
        middle = (low + high) // 2
        candidate, candidate_notes = search.apply(path[middle])
        seconds = eager_latency(candidate, inputs, repeats, threads=threads)
        if seconds <= target:
            high, timed[middle] = middle, (candidate, seconds, candidate_notes)
        else:
            low = middle
    compressed, latency, notes = timed[high]
    return path[high], compressed, notes, latency


def _readable(unit, kept: int, kind: str) -> float:
    """The unit's interpolated error in the error's own units (not the additive form)."""
    value = unit.additive_error_at(kept, kind)
    return float(np.sqrt(value)) if kind == "relative_l2" else value
