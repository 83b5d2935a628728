"""Channel importance criteria for structured pruning (pure numpy).

Every criterion scores the channels of one tensor: `rows` is a 2-D array with one
row per channel (a filter flattened, or several slices of one channel
concatenated) and the result is one non-negative score per row, larger meaning
more important. Channels with the lowest scores are removed first.

- `l1_norms`, `l2_norms`: magnitude of the filter (Li et al. 2017, "Pruning
  Filters for Efficient ConvNets", use L1).
- `geometric_median_distances`: FPGM (He et al. 2019, "Filter Pruning via
  Geometric Median for Deep Convolutional Neural Networks Acceleration", eq. 6).
  The filters closest to the geometric median of the layer are the most
  replaceable by the others; the paper approximates the median by the filter
  minimising the summed distance to all others, so the score of filter i is
  `sum_j |F_i - F_j|_2`, and the smallest sums go first.
- `batchnorm_scales`: |gamma| of the batch norm after the layer (Liu et al. 2017,
  "Learning Efficient Convolutional Networks through Network Slimming").
- `mean_abs_activations`: the data-driven criterion, mean |activation| of the
  channel over calibration data (Hu et al. 2016 use the zero fraction; the mean
  magnitude is the simplest relative).
- `quantization_aware_scores`: how much of a channel's signal survives int8.
  With `Q` the symmetric int8 quantizer of a producer filter row `w_i` (narrow
  range [-127, 127], scale max|w_i|/127 per channel, or max|W|/127 per tensor),
  the angle `theta_i = arccos(<w_i, Q(w_i)> / (|w_i| |Q(w_i)|))` measures the
  direction int8 loses. The channel reaches the network only through the next
  layer's columns `v_i = W_next[:, i]` that read it, so the score is

      s_i = cos(theta_i) * |w_i|_2 * |v_i|_2

  the magnitude of the channel's path through the next layer, discounted by the
  part of its filter direction that int8 does not preserve. With several
  producers (a residual stream) or readers, the producer factors are summed
  after normalising each tensor's values by their maximum, and so are the reader
  factors; a group with no reader layer uses 1 for that factor.

  For binary networks `Q` is the binary (or ternary, power-of-two) quantizer of
  `qcompiler.numerics.low_bit` (`low_bit_angles`): the thesis's quantization-aware
  pruning angle, where a filter that binarizes badly carries little of its direction.

`aggregate` combines per-tensor scores into a group score: each tensor's scores
are divided by their maximum (so tensors of different scale weigh the same) and
summed. `kept_count` turns a ratio into a channel count honouring `round_to`.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence

import numpy as np

from qcompiler.numerics import low_bit


def _rows(rows: np.ndarray) -> np.ndarray:
    rows = np.asarray(rows, np.float64)
    if rows.ndim != 2:
        raise ValueError(f"expected one row per channel (a 2-D array), got shape {rows.shape}")
    return rows


def l1_norms(rows: np.ndarray) -> np.ndarray:
    return np.abs(_rows(rows)).sum(axis=1)


def l2_norms(rows: np.ndarray) -> np.ndarray:
    return np.linalg.norm(_rows(rows), axis=1)


def geometric_median_distances(rows: np.ndarray) -> np.ndarray:
    """FPGM: the summed Euclidean distance of each row to every row (He et al. 2019, eq. 6)."""
    rows = _rows(rows)
    squared = (rows * rows).sum(axis=1)
    # |a - b|^2 = |a|^2 + |b|^2 - 2 a.b; clip the rounding error below zero.
    gram = squared[:, None] + squared[None, :] - 2.0 * rows @ rows.T
    np.fill_diagonal(gram, 0.0)  # exactly 0, not the cancellation residue
    return np.sqrt(np.maximum(gram, 0.0)).sum(axis=1)


def batchnorm_scales(gamma: np.ndarray) -> np.ndarray:
    return np.abs(np.asarray(gamma, np.float64))


def mean_abs_activations(batches: Iterable[np.ndarray], axis: int) -> np.ndarray:
    """Mean |x| per channel of `axis`, over every other axis of every batch."""
    total, count = None, 0
    for batch in batches:
        batch = np.moveaxis(np.abs(np.asarray(batch, np.float64)), axis, 0)
        flat = batch.reshape(batch.shape[0], -1)
        total = flat.sum(axis=1) if total is None else total + flat.sum(axis=1)
        count += flat.shape[1]
    if total is None:
        raise ValueError("mean_abs_activations needs at least one batch")
    return total / count


def int8_quantized(rows: np.ndarray, per_channel: bool = True) -> np.ndarray:
    """Symmetric narrow-range int8 quantize-dequantize of each row (or of the whole tensor)."""
    rows = _rows(rows)
    peak = np.abs(rows).max(axis=1, keepdims=True) if per_channel else np.abs(rows).max(keepdims=True)
    scale = np.where(peak > 0, peak / 127.0, 1.0)
    return np.clip(np.round(rows / scale), -127, 127) * scale


def quantization_angles(rows: np.ndarray, quantized: np.ndarray) -> np.ndarray:
    """The angle (radians) between each row and its quantized version; pi/2 for a row that
    quantizes to zero (nothing of its direction survives), 0 for a zero row."""
    rows = _rows(rows)
    quantized = np.asarray(quantized, np.float64).reshape(rows.shape)
    norms = np.linalg.norm(rows, axis=1) * np.linalg.norm(quantized, axis=1)
    cosine = np.divide((rows * quantized).sum(axis=1), norms, out=np.zeros(len(rows)),
                       where=norms > 0)
    angles = np.arccos(np.clip(cosine, -1.0, 1.0))
    angles[np.linalg.norm(rows, axis=1) == 0] = 0.0
    return angles


def int8_angles(rows: np.ndarray, per_channel: bool = True) -> np.ndarray:
    """`quantization_angles` to the int8 quantization of the rows."""
    return quantization_angles(rows, int8_quantized(_rows(rows), per_channel))


def low_bit_angles(rows: np.ndarray, scheme: str, bits: int = 4) -> np.ndarray:
    """`quantization_angles` to the binary / ternary / power-of-two version of each row
    (`qcompiler.numerics.low_bit`, one alpha per row): the quantization-aware pruning angle
    of binary networks. A binary kernel keeps only the signs, so its angle is
    arccos(|w|_1 / (sqrt(n) |w|_2)): 0 for a kernel of equal magnitudes, larger the more
    its magnitudes differ."""
    rows = _rows(rows)
    return quantization_angles(rows, low_bit.quantize(rows, scheme, bits))


def quantization_aware_scores(producer_rows: Sequence[np.ndarray],
                              reader_columns: Sequence[np.ndarray] = (),
                              per_channel: bool = True, scheme: str = "int8") -> np.ndarray:
    """s_i = (sum over producers of cos(theta_i) |w_i|, each normalised) *
    (sum over readers of |v_i|, each normalised); see the module docstring. `scheme`:
    "int8", or a low-bit scheme ("binary", "ternary", "power_of_two") for theta."""
    if not producer_rows:
        raise ValueError("quantization_aware_scores needs at least one producer weight")

    def angles(rows):
        return int8_angles(rows, per_channel) if scheme == "int8" else low_bit_angles(rows, scheme)

    producer = aggregate([np.cos(angles(rows)) * l2_norms(rows) for rows in producer_rows])
    if not reader_columns:
        return producer
    return producer * aggregate([l2_norms(columns) for columns in reader_columns])


def aggregate(scores: Sequence[np.ndarray]) -> np.ndarray:
    """Sum of the score vectors, each divided by its maximum (an all-zero vector adds 0)."""
    if not scores:
        raise ValueError("aggregate needs at least one score vector")
    total = np.zeros(len(scores[0]))
    for score in scores:
        score = np.asarray(score, np.float64)
        if score.shape != total.shape:
            raise ValueError(f"score vectors differ in length: {score.shape} vs {total.shape}")
        peak = score.max()
        if peak > 0:
            total += score / peak
    return total


def kept_count(channels: int, ratio: float, per_channel: int = 1, round_to: int | None = None) -> int:
    """How many of `channels` to keep when removing `ratio` of them: the removed count is
    `ratio * channels` rounded to the nearest integer (ties to even, Python's `round`), then
    `rounded_kept` applies `round_to`.
    May return 0; the caller decides whether that is an error."""
    if not 0 <= ratio < 1:
        raise ValueError(f"ratio must be in [0, 1), got {ratio}")
    return rounded_kept(channels, channels - int(round(ratio * channels)), per_channel, round_to)


def rounded_kept(channels: int, kept: int, per_channel: int = 1, round_to: int | None = None) -> int:
    """`kept` adjusted so that the kept width (`kept * per_channel` elements along the tensor
    axis, e.g. heads times head size) is a multiple of `round_to`: the nearest multiple, at
    least one, never above `channels` (a group that cannot reach a multiple keeps all)."""
    if round_to is None or round_to <= 1 or kept >= channels:
        return kept
    step = round_to // math.gcd(round_to, per_channel)  # channels per multiple of round_to
    rounded = max(step, step * int(round(kept / step)))
    return channels if rounded > channels else rounded


def lowest(scores: np.ndarray, count: int) -> np.ndarray:
    """Indices of the `count` lowest scores, ties broken by index (stable)."""
    order = np.argsort(np.asarray(scores, np.float64), kind="stable")
    return np.sort(order[:count])
