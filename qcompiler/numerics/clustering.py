"""Weight sharing by one-dimensional k-means (Han et al. 2016, "Deep Compression", §3).

A layer's weights are replaced by the nearest of k = 2^b shared values (centroids), so each
weight is stored as a b-bit index into a codebook of k floats. k-means minimises the
within-cluster sum of squares  sum_i sum_{w in c_i} |w - c_i|^2  (Lloyd's algorithm: assign
each weight to its nearest centroid, move each centroid to the mean of its weights, repeat
until no assignment changes).

Initialisation matters (the paper's Fig. 4 and 5):
- "linear": centroids evenly spaced over [min, max]; keeps the few large weights, which
  matter most, represented (the paper's best);
- "density": evenly spaced in the cumulative distribution (quantiles), dense where the
  weights are;
- "random": k distinct weights drawn at random (Forgy).

Zeros left by pruning are not clustered: they stay exactly zero, and the sparse format
does not store them (`cluster_nonzero`).
"""

from __future__ import annotations

import numpy as np

from qcompiler.errors import OptionError

INITS = ("linear", "density", "random")
MAX_BITS = 8  # 256 centroids: beyond it an index costs as much as an int8 weight


CODEBOOKS = ("f32", "f16")


def check_bits(bits, owner: str = "cluster_weights") -> int:
    if isinstance(bits, bool) or not isinstance(bits, (int, np.integer)) or not 1 <= bits <= MAX_BITS:
        raise OptionError(f"{owner}: bits must be an int in [1, {MAX_BITS}] (2 to {2 ** MAX_BITS} "
                          f"shared values), got {bits!r}")
    return int(bits)


def initial_centroids(values: np.ndarray, k: int, init: str = "linear", seed: int = 0) -> np.ndarray:
    """k starting centroids for `values` (1-D) by the named initialisation (module docstring)."""
    values = np.asarray(values, np.float64).ravel()
    if init == "linear":
        return np.linspace(values.min(), values.max(), k)
    if init == "density":
        return np.quantile(values, (np.arange(k) + 0.5) / k)
    if init == "random":
        distinct = np.unique(values)
        chosen = np.random.default_rng(seed).choice(len(distinct), size=min(k, len(distinct)),
                                                    replace=False)
        return np.sort(distinct[chosen])
    raise OptionError(f"unknown clustering init {init!r}; choose one of {', '.join(INITS)}")


def assign(values: np.ndarray, centroids: np.ndarray) -> np.ndarray:
    """The index of the nearest centroid of each value (`centroids` sorted ascending; a tie
    goes to the lower centroid)."""
    midpoints = (centroids[1:] + centroids[:-1]) / 2
    return np.searchsorted(midpoints, values, side="left")


def kmeans_1d(values: np.ndarray, k: int, init: str = "linear", seed: int = 0,
              max_iterations: int = 100) -> tuple[np.ndarray, np.ndarray]:
    """(centroids, labels) of Lloyd's k-means on the 1-D `values`: at most k centroids
    (sorted; a centroid that loses all its values is dropped), and each value's centroid
    index. Needs at least k values."""
    values = np.asarray(values, np.float64).ravel()
    if len(values) < k:
        raise OptionError(f"k-means with {k} centroids needs at least {k} values, got {len(values)}")
    centroids = np.sort(initial_centroids(values, k, init, seed))
    labels = assign(values, centroids)
    for _ in range(max_iterations):
        counts = np.bincount(labels, minlength=len(centroids))
        sums = np.bincount(labels, weights=values, minlength=len(centroids))
        used = counts > 0
        centroids = np.sort(sums[used] / counts[used])
        new_labels = assign(values, centroids)
        if np.array_equal(new_labels, labels) and used.all():
            break
        labels = new_labels
    # Drop centroids no value chose (duplicates after the update), keeping labels dense.
    used = np.unique(labels)
    remap = np.full(len(centroids), -1)
    remap[used] = np.arange(len(used))
    return centroids[used], remap[labels]


def cluster_nonzero(weight: np.ndarray, bits: int, init: str = "linear", seed: int = 0
                    ) -> tuple[np.ndarray, np.ndarray]:
    """(clustered weight, centroids): the nonzero entries of `weight` replaced by the nearest
    of at most 2^bits k-means centroids; zeros stay zero. The result has the weight's dtype
    (a centroid is rounded to it once, so equal indices give equal stored values)."""
    flat = weight.ravel()
    nonzero = np.flatnonzero(flat)
    centroids, labels = kmeans_1d(flat[nonzero], 2 ** bits, init, seed)
    centroids = centroids.astype(weight.dtype)
    clustered = np.zeros_like(flat)
    clustered[nonzero] = centroids[labels]
    return clustered.reshape(weight.shape), centroids


def cluster_rows(weight: np.ndarray, bits: int, init: str = "linear", seed: int = 0) -> np.ndarray:
    """`cluster_nonzero` on each output channel (row of the weight reshaped to [C, -1]) with
    its own codebook: per-channel weight sharing. A row with at most 2^bits distinct nonzero
    values keeps them."""
    rows = weight.reshape(weight.shape[0], -1)
    clustered = rows.copy()
    for index, row in enumerate(rows):
        if len(np.unique(row[row != 0])) > 2 ** bits:
            clustered[index] = cluster_nonzero(row, bits, init, seed)[0]
    return clustered.reshape(weight.shape)


def round_codebook(weight: np.ndarray, codebook: str) -> np.ndarray:
    """The shared values rounded to the codebook's precision ("f32": unchanged; "f16": each
    value to the nearest float16, so a half-precision codebook stores them exactly)."""
    if codebook == "f32":
        return weight
    if codebook == "f16":
        return weight.astype(np.float16).astype(weight.dtype)
    raise OptionError(f"unknown codebook precision {codebook!r}; choose one of {', '.join(CODEBOOKS)}")


def share_by_value(weight: np.ndarray) -> np.ndarray:
    """Cluster labels read back from a weight: equal nonzero values share a label (0, 1, ...),
    zeros get -1. What fine-tuning keeps tied (`qc.finetune(preserve_sharing=True)`)."""
    flat = weight.ravel()
    labels = np.full(flat.shape, -1, np.int64)
    nonzero = flat != 0
    labels[nonzero] = np.unique(flat[nonzero], return_inverse=True)[1]
    return labels.reshape(weight.shape)
