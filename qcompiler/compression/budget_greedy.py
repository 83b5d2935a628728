"""The budget search's allocation (`qc.search_budget`, steps 2-3): which setting (channels
kept or rank) each unit may take, the error curves made convex, and the greedy walk from the
untouched graph towards the target, least added error per unit of cost saved first."""

from __future__ import annotations

from collections.abc import Sequence

from qcompiler.compression.budget_cost import PlanCost
from qcompiler.compression.budget_sensitivity import Candidate


def unit_settings(unit: Candidate, steps_per_unit: int, round_to: int = 1) -> list[int]:
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


def greedy_path(graph, candidates, settings, errors, metric, target) -> list[tuple[int, ...]]:
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
        path.append(back_off(model, state, settings, errors, metric, target))
    return path


def back_off(model, state, settings, errors, metric, target) -> tuple[int, ...]:
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
