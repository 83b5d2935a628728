"""SmoothQuant's per-channel migration scales (Xiao et al. 2023, eq. 4), pure numpy.

A linear layer y = x W^T is unchanged by dividing input channel j of x by s_j and
multiplying column j of W by s_j. Transformer activations have a few channels with
outliers 10-100x the rest, which set an 8-bit per-tensor step; weights are easy. The
scales move part of that difficulty into the weights:

    s_j = max|x_j|^alpha / max|W_:,j|^(1 - alpha)

alpha = 0 leaves the activations alone; alpha = 1 makes every activation channel's range
1 and puts it all into the weights; the paper uses 0.5 for most models (0.75-0.85 for
GLM-130B and others with larger outliers). Where several layers read the same input
(query, key and value), max|W_:,j| is taken over all of them, since one s serves all.
Channels whose activation or weight is all zero get s = 1 (nothing to migrate, and a
zero would make the division infinite); scales are clamped to [1e-5, 1e5].
"""

from __future__ import annotations

import numpy as np


def smoothing_scales(activation_max, weight_max, alpha: float) -> np.ndarray:
    """s (float64 [C]) from max|x_j| over calibration data and max|W_:,j| over the layers."""
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"alpha must be in [0, 1], got {alpha}")
    activation_max = np.abs(np.asarray(activation_max, np.float64))
    weight_max = np.abs(np.asarray(weight_max, np.float64))
    if activation_max.shape != weight_max.shape or activation_max.ndim != 1:
        raise ValueError(f"activation_max {activation_max.shape} and weight_max {weight_max.shape} "
                         "must both be [C]")
    live = (activation_max > 0) & (weight_max > 0)
    scales = np.ones_like(activation_max)
    scales[live] = activation_max[live] ** alpha / weight_max[live] ** (1.0 - alpha)
    return np.clip(scales, 1e-5, 1e5)


def weight_column_max(weights) -> np.ndarray:
    """max|W_:,j| over the rows of every [out, in] weight in `weights` (they share inputs)."""
    return np.max(np.stack([np.abs(np.asarray(w, np.float64)).max(axis=0) for w in weights]), axis=0)
