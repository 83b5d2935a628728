"""Budget search: choose how far to compress each layer so the graph meets a target.

    result = qc.search_budget(graph, calibration_batches, target_ratio=0.7, metric="macs",
                              method="remove_filters", criterion="l1")
    print(result)          # the plan: per group/layer channels or rank, MACs before/after, error
    smaller = result.graph

`target_ratio` is the fraction of the original to keep: 0.7 means 30% fewer MACs
(`metric="macs"`), parameters (`"params"`, counted as `qc.cost` counts them) or
measured latency (`"latency"`: torch eager of `qc.to_torch(graph)`, median of
repeats at a fixed thread count, `eager_latency`).

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
from qcompiler.errors import BudgetError  # noqa: F401  (re-exported: qcompiler.budget.BudgetError)
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


def _settings(unit: Candidate, steps_per_unit: int, round_to: int = 1) -> list[int]:
    """Channels kept / ranks the greedy may choose, untouched (the full size) first. With
    `round_to`, channel counts and ranks are multiples of it (as `remove_filters(round_to=)`
    keeps channels), never below the deepest measured setting and never above the largest
    rank that saves MACs: a unit with no such multiple stays whole."""
    step = max(1, -(-unit.size // steps_per_unit))
    deepest = min(unit.measured)
    first = unit.size - step if unit.kind == "channels" else max(unit.measured)
    settings = [unit.size] + list(range(first, deepest - 1, -step)) + \
        ([deepest] if (first - deepest) % step else [])
    if round_to == 1:
        return settings
    rounded = {-(-kept // round_to) * round_to for kept in settings[1:]}
    highest = unit.size - 1 if unit.kind == "channels" else max(unit.measured)
    return [unit.size] + sorted((k for k in rounded if deepest <= k <= highest), reverse=True)


def convex_errors(sizes: Sequence[int], errors: Sequence[float]) -> list[float]:
    """`errors` (additive form, at settings `sizes`: channels kept or ranks, untouched
    first with error 0) raised where needed so that the error added per channel (or rank)
    removed never falls as more is removed.

    Channels go least important first, so the true damage grows at least linearly; a
    curve that flattens says the output error has saturated (a relative L2 error near 1
    means the output is already destroyed), not that more removal is cheap. Taken at
    face value, a saturated unit looks like the cheapest place to put all the compression
    (measured on the pretrained MobileNetV2: the greedy removed 56% of a residual stream)."""
    raised = [float(errors[0])]
    slope = 0.0
    for j in range(1, len(sizes)):
        removed = sizes[j - 1] - sizes[j]
        slope = max(slope, (errors[j] - errors[j - 1]) / removed if removed > 0 else 0.0)
        raised.append(max(float(errors[j]), raised[-1] + slope * removed))
    return raised


def _greedy(graph, candidates, settings, errors, metric, target) -> list[tuple[int, ...]]:
    """The sequence of plans (a setting index per unit) the greedy passes through, until the
    estimated cost is at most `target` (None: until no move is left)."""
    model = PlanCost(graph, candidates)
    state = [0] * len(candidates)
    path = [tuple(state)]
    while target is None or model.estimate(metric) > target:
        current = model.estimate(metric)
        moves = []  # (added error, saving, unit, setting index)
        for u, options in enumerate(settings):
            for j in range(state[u] + 1, len(options)):
                saving = model.saving(u, options[j], metric)
                if saving > 0:
                    moves.append((max(errors[u][j] - errors[u][state[u]], 0.0), saving, u, j))
        if not moves:
            break
        choice = min(moves, key=lambda move: move[0] / move[1])
        if target is not None and current - choice[1] <= target:
            # The most efficient move reaches the target; of the moves that reach it, the one
            # adding the least error (at most the efficient move's) lands closest to the mark.
            # Only now: a reaching move taken earlier puts all the compression on whichever
            # unit can reach the target alone, however sensitive it is.
            choice = min((m for m in moves if current - m[1] <= target), key=lambda m: (m[0], m[1]))
        _, _, u, j = choice
        state[u] = j
        model.set(u, settings[u][j])
        path.append(tuple(state))
    if target is not None and model.estimate(metric) <= target:
        path.append(_back_off(model, state, settings, errors, metric, target))
    return path


def _back_off(model, state, settings, errors, metric, target) -> tuple[int, ...]:
    """Undo compression the target does not need: while some unit can go back one setting
    with the estimate still at most `target`, move the one that removes the most error."""
    state = list(state)
    while True:
        best = None
        for u, j in enumerate(state):
            if j == 0:
                continue
            back = settings[u][j - 1]
            if model.estimate(metric) - model.saving(u, back, metric) <= target:
                gain = errors[u][j] - errors[u][j - 1]
                if best is None or gain > best[0]:
                    best = (gain, u)
        if best is None:
            return tuple(state)
        state[best[1]] -= 1
        model.set(best[1], settings[best[1]][state[best[1]]])


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
    if not (isinstance(target_ratio, (int, float)) and 0 < target_ratio < 1):
        raise ValueError(f"target_ratio must be in (0, 1) (the fraction of {metric} to keep), "
                         f"got {target_ratio!r}")
    if metric not in METRICS:
        raise ValueError(f"unknown metric {metric!r}; choose one of {', '.join(METRICS)}")
    if error not in ERRORS:
        raise ValueError(f"unknown error {error!r}; choose one of {', '.join(ERRORS)}")
    if steps_per_unit < 1:
        raise ValueError(f"steps_per_unit must be at least 1, got {steps_per_unit}")
    if not isinstance(round_to, int) or round_to < 1:
        raise ValueError(f"round_to must be a positive integer (channels kept and ranks are multiples "
                         f"of it), got {round_to!r}")
    candidates = candidate_units(graph, method, fractions)
    if not candidates:
        raise BudgetError(f"{method} finds nothing to compress in graph {graph.name}")
    settings = [_settings(unit, steps_per_unit, round_to) for unit in candidates]
    report = cost(graph)
    before = {"macs": report.macs, "params": report.params}

    floor_model = PlanCost(graph, candidates)
    for index, options in enumerate(settings):
        floor_model.set(index, options[-1])
    if metric != "latency" and floor_model.estimate(metric) > target_ratio * before[metric]:
        deepest = max(fractions)
        widths = "channel counts" if method == "remove_filters" else "ranks"
        raise BudgetError(
            f"target {metric} <= {target_ratio:g} x {before[metric]:,} = "
            f"{target_ratio * before[metric]:,.0f} is out of reach for {method}: compressing every "
            f"unit as far as allowed ({deepest:g} of its channels or rank removed"
            + (f", {widths} at multiples of round_to={round_to}" if round_to > 1 else "")
            + f") leaves about {floor_model.estimate(metric):,.0f} "
            f"({floor_model.estimate(metric) / before[metric]:.3f} of the original); raise "
            f"target_ratio{', lower round_to' if round_to > 1 else ''} or allow more with fractions=")

    batches = input_batches(calibration_data, graph)
    if sensitivity is None:
        sensitivity = measure_sensitivity(graph, batches, method, criterion, fractions, error,
                                          compensation)
    elif (sensitivity.method, sensitivity.error) != (method, error) or \
            (method == "remove_filters" and (sensitivity.criterion, sensitivity.compensation)
             != (criterion, compensation)) or \
            [u.name for u in sensitivity.units] != [c.name for c in candidates] or \
            [u.measured for u in sensitivity.units] != [c.measured for c in candidates]:
        raise ValueError("the given sensitivity was measured for another graph, method, criterion, "
                         "error, fractions or compensation; measure it with the same options")
    errors = [convex_errors(options, [unit.additive_error_at(k, error) for k in options])
              for unit, options in zip(sensitivity.units, settings, strict=True)]

    def plan(state):
        return [options[j] for options, j in zip(settings, state, strict=True)]

    notes: list[str] = []
    if metric == "latency":
        inputs = tuple(latency_inputs if latency_inputs is not None else batches[0])
        before["latency_s"] = eager_latency(graph, inputs, latency_repeats, threads=threads)
        path = _greedy(graph, candidates, settings, errors, metric, None)
        deepest, deepest_notes = _apply(graph, method, candidates, sensitivity, plan(path[-1]),
                                              batches)
        fastest = eager_latency(deepest, inputs, latency_repeats, threads=threads)
        target = target_ratio * before["latency_s"]
        if fastest > target:
            raise BudgetError(
                f"target latency <= {target_ratio:g} x {before['latency_s'] * 1e3:.3f} ms is out of "
                f"reach for {method}: compressing every unit as far as allowed measures "
                f"{fastest * 1e3:.3f} ms ({fastest / before['latency_s']:.3f} of the original)")
        # Bisection for the shortest prefix of the greedy's moves that meets the target;
        # path[0] (the original) misses it by definition, path[-1] meets it.
        low, high, timed = 0, len(path) - 1, {len(path) - 1: (deepest, fastest, deepest_notes)}
        while high - low > 1:
            middle = (low + high) // 2
            candidate_graph, candidate_notes = _apply(graph, method, candidates, sensitivity,
                                                      plan(path[middle]), batches)
            seconds = eager_latency(candidate_graph, inputs, latency_repeats, threads=threads)
            if seconds <= target:
                high, timed[middle] = middle, (candidate_graph, seconds, candidate_notes)
            else:
                low = middle
        state, (compressed, latency, notes) = path[high], timed[high]
    else:
        target = estimate_target = target_ratio * before[metric]
        for _ in range(4):
            state = _greedy(graph, candidates, settings, errors, metric, estimate_target)[-1]
            compressed, notes = _apply(graph, method, candidates, sensitivity, plan(state), batches)
            reached = cost(compressed).macs if metric == "macs" else cost(compressed).params
            if reached <= target:
                break
            estimate_target -= reached - target  # the estimate was optimistic by this much
        else:
            raise BudgetError(f"target {metric} <= {target:,.0f} not met: the closest plan found has "
                              f"{reached:,} ({reached / before[metric]:.3f} of the original)")

    final = cost(compressed)
    after = {"macs": final.macs, "params": final.params}
    if metric == "latency":
        after["latency_s"] = latency
    measured = output_error(run_batches(graph, batches), run_batches(compressed, batches), error)
    choices = tuple(
        UnitChoice(unit.name, unit.kind, unit.size, kept, _unit_macs(unit, report),
                   _unit_macs(unit, final), _readable(unit_sensitivity, kept, error))
        for unit, unit_sensitivity, kept in zip(candidates, sensitivity.units, plan(state), strict=True))
    return BudgetResult(compressed, method, sensitivity.criterion, metric, target_ratio, choices,
                        before, after, measured, error, sensitivity, tuple(notes))


def _readable(unit, kept: int, kind: str) -> float:
    """The unit's interpolated error in the error's own units (not the additive form)."""
    value = unit.additive_error_at(kept, kind)
    return float(np.sqrt(value)) if kind == "relative_l2" else value
