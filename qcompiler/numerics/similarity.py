"""Finding and merging redundant neurons (pure numpy).

A neuron of a conv or linear layer is its filter row `f = (w, b)` (weights
flattened, bias appended), acting on `(x, 1)`. If the activation after the layer
is positively homogeneous (`a(l z) = l a(z)` for `l > 0`: ReLU, the identity, and
max or average pooling after them), then two neurons with `f_j = l f_i` give
`a_j = l a_i`, so the next layer's `W[:, i] a_i + W[:, j] a_j` equals
`(W[:, i] + l W[:, j]) a_i` and neuron `j` can go. Near-duplicates are found by
the distance between unit-normalised filter rows, `|f_i/|f_i| - f_j/|f_j||`
(= sqrt(2 - 2 cos angle)), which is zero for exact positive multiples.

A cluster `C` is replaced by one neuron with filter `m * d` where `d` is the mean
unit direction of the cluster and `m` the mean norm, and outgoing weight
`sum_{j in C} (|f_j| / m) W[:, j]`: for identical filters that is the average
filter and the sum of the outgoing weights, and it is exact for any positive
multiples. A neuron whose filter and bias are all zero outputs a(0) = 0 and is
dropped. This is the neuron-merging step of Yvinec et al. 2021, "RED: Looking
for Redundancies for Data-Free Structured Compression of Deep Neural Networks".
"""

from __future__ import annotations

import numpy as np


def neuron_rows(weight: np.ndarray, bias: np.ndarray | None) -> np.ndarray:
    """One row per output neuron: the flattened filter with the bias appended (float64)."""
    rows = np.asarray(weight, np.float64).reshape(weight.shape[0], -1)
    if bias is not None:
        rows = np.concatenate([rows, np.asarray(bias, np.float64).reshape(-1, 1)], axis=1)
    return rows


def direction_distances(rows: np.ndarray) -> np.ndarray:
    """Pairwise distances between the unit-normalised rows; a zero row is at distance
    2 (the largest possible) from everything, itself included, so it never clusters."""
    norms = np.linalg.norm(rows, axis=1)
    live = norms > 0
    units = np.zeros_like(rows)
    units[live] = rows[live] / norms[live, None]
    cosine = np.clip(units @ units.T, -1.0, 1.0)
    distances = np.sqrt(np.maximum(2.0 - 2.0 * cosine, 0.0))
    distances[~live, :] = 2.0
    distances[:, ~live] = 2.0
    return distances


def cluster_neurons(rows: np.ndarray, *, threshold: float | None = None,
                    target_clusters: int | None = None) -> list[np.ndarray]:
    """Group the live (non-zero) rows into clusters of near-duplicates.

    Pairs are taken in order of increasing direction distance and two clusters are
    joined only when *every* pair across them is within that distance (complete
    linkage), so a cluster's diameter never exceeds the distance at which it formed
    and a chain of slightly different filters is not swept into one. With
    `threshold`, pairs up to that distance are taken; with `target_clusters`, pairs are
    taken until that many clusters (of live rows) are left. Returns the clusters as
    sorted index arrays, ordered by their first index; zero rows are in none.
    """
    if (threshold is None) == (target_clusters is None):
        raise ValueError("give exactly one of threshold and target_clusters")
    distances = direction_distances(rows)
    live = np.flatnonzero(np.linalg.norm(rows, axis=1) > 0)
    members: dict[int, list[int]] = {int(i): [int(i)] for i in live}
    owner = {int(i): int(i) for i in live}
    goal = 1 if target_clusters is None else max(1, target_clusters)
    if len(live) > 1 and len(members) > goal:
        first, second = np.triu_indices(len(live), k=1)
        first, second = live[first], live[second]
        pair_distances = distances[first, second]
        if threshold is not None:
            keep = pair_distances <= threshold
            first, second, pair_distances = first[keep], second[keep], pair_distances[keep]
        for k in np.argsort(pair_distances, kind="stable"):
            a, b = owner[int(first[k])], owner[int(second[k])]
            if a == b:
                continue
            if distances[np.ix_(members[a], members[b])].max() > pair_distances[k]:
                continue  # some pair across the two clusters is farther apart: not yet
            keep_id, gone_id = min(a, b), max(a, b)
            for index in members[gone_id]:
                owner[index] = keep_id
            members[keep_id].extend(members.pop(gone_id))
            if len(members) <= goal:
                break
    return [np.array(sorted(group)) for _, group in sorted(members.items())]


def merge_neurons(weight: np.ndarray, bias: np.ndarray | None, next_weight: np.ndarray,
                  clusters: list[np.ndarray]) -> tuple[np.ndarray, np.ndarray | None, np.ndarray]:
    """Replace each cluster of neurons by one (see the module docstring).

    `weight` is `(C, ...)` with neuron `c` in row `c`; `next_weight` is the consumer's
    weight `(C_next, C, ...)` with neuron `c`'s outgoing weights at `[:, c]`. Neurons in
    no cluster are dropped (their filters must be zero). Returns the new weight, bias
    and next weight, in the input dtypes, with the clusters in the given order.
    """
    rows = neuron_rows(weight, bias)
    norms = np.linalg.norm(rows, axis=1)
    outgoing = np.asarray(next_weight, np.float64)
    new_rows, new_outgoing = [], []
    for cluster in clusters:
        cluster_norms = norms[cluster]
        if (cluster_norms <= 0).any():
            raise ValueError(f"cluster {cluster.tolist()} contains a zero neuron")
        mean_norm = cluster_norms.mean()
        direction = (rows[cluster] / cluster_norms[:, None]).mean(axis=0)
        new_rows.append(mean_norm * direction)
        scale = cluster_norms / mean_norm
        new_outgoing.append(np.tensordot(outgoing[:, cluster], scale, axes=([1], [0])))
    merged_rows = np.stack(new_rows)
    filter_size = int(np.prod(weight.shape[1:], dtype=np.int64))
    new_weight = merged_rows[:, :filter_size].reshape((len(clusters), *weight.shape[1:]))
    new_bias = None if bias is None else merged_rows[:, filter_size].astype(bias.dtype)
    new_next = np.stack(new_outgoing, axis=1)
    return new_weight.astype(weight.dtype), new_bias, new_next.astype(next_weight.dtype)
