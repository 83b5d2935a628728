"""Unstructured sparsity: which weights to zero, and how fast (Zhu & Gupta 2017).

Scores rank weights (larger is more important): magnitude |w| (Han et al. 2015), or a
saliency from `qcompiler.compression.saliency`. `pruned_masks` zeroes the lowest `sparsity`
fraction, over all weights together (scope "global": one threshold, so layers whose weights
matter less lose more) or within each weight (scope "local": every layer at `sparsity`).
Ties at the threshold are broken by position, so exactly round(sparsity * n) weights go.

The gradual schedule of Zhu & Gupta 2017 ("To prune, or not to prune", eq. 1) raises the
sparsity from s_i to s_f over n pruning steps, fast at first while redundancy is plentiful
and slowly at the end:  s_t = s_f + (s_i - s_f) (1 - t / n)^3,  t = 0 .. n,
with fine-tuning between the steps.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from qcompiler.errors import OptionError


def check_sparsity(sparsity, owner: str) -> float:
    if isinstance(sparsity, bool) or not isinstance(sparsity, (int, float)) or not 0 <= sparsity < 1:
        raise OptionError(f"{owner}: sparsity must be a fraction in [0, 1) (1.0 would remove every "
                          f"weight), got {sparsity!r}")
    return float(sparsity)


def gradual_schedule(final: float, steps: int, initial: float = 0.0) -> list[float]:
    """The sparsity after each of `steps` pruning steps (Zhu & Gupta 2017, eq. 1): `steps`
    values rising from just above `initial` to exactly `final`."""
    check_sparsity(final, "gradual_schedule")
    check_sparsity(initial, "gradual_schedule")
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
        raise OptionError(f"gradual_schedule: steps must be a positive int, got {steps!r}")
    if initial > final:
        raise OptionError(f"gradual_schedule: initial sparsity {initial} is above the final {final}")
    return [final + (initial - final) * (1 - t / steps) ** 3 for t in range(1, steps + 1)]


def pruned_masks(scores: Sequence[np.ndarray], sparsity: float, scope: str = "global"
                 ) -> list[np.ndarray]:
    """Boolean masks (True = zero this weight), one per score array, removing the lowest
    `sparsity` fraction by score, globally or per array (module docstring). Weights already
    zero count towards the fraction (they are the lowest-scored by magnitude)."""
    if scope == "local":
        return [_lowest_mask(np.asarray(s, np.float64).ravel(), sparsity).reshape(np.shape(s))
                for s in scores]
    if scope != "global":
        raise OptionError(f"scope must be 'global' or 'local', got {scope!r}")
    flat = np.concatenate([np.asarray(s, np.float64).ravel() for s in scores])
    mask = _lowest_mask(flat, sparsity)
    splits = np.cumsum([np.size(s) for s in scores])[:-1]
    return [m.reshape(np.shape(s)) for m, s in zip(np.split(mask, splits), scores, strict=True)]


def _lowest_mask(scores: np.ndarray, sparsity: float) -> np.ndarray:
    count = int(round(sparsity * scores.size))
    mask = np.zeros(scores.size, bool)
    if count:
        mask[np.argsort(scores, kind="stable")[:count]] = True
    return mask


def obd_saliency(weight: np.ndarray, hessian_diagonal: np.ndarray) -> np.ndarray:
    """Optimal Brain Damage (LeCun et al. 1990, eq. 6): the loss increase of zeroing one
    weight at a minimum, with the Hessian taken diagonal: s = h_kk w_k^2 / 2."""
    return 0.5 * np.asarray(hessian_diagonal, np.float64) * np.asarray(weight, np.float64) ** 2


def taylor_saliency(weight: np.ndarray, gradients: Sequence[np.ndarray]) -> np.ndarray:
    """First-order Taylor importance (Molchanov et al. 2019, eq. 8): the squared first-order
    change of the loss when a weight is zeroed, (g_k w_k)^2, summed over mini-batches (one
    gradient each)."""
    weight = np.asarray(weight, np.float64)
    return sum((np.asarray(g, np.float64) * weight) ** 2 for g in gradients)
