"""Low-rank factorisations of layer weights, and rank selection (pure numpy).

Every factorisation here rests on the truncated SVD: for a matrix `M = U S V^T`,
keeping the `r` largest singular values gives the best rank-`r` approximation in
the Frobenius norm, with squared error `sum(s[r:]**2)` (Eckart and Young 1936).
The square root of `S` goes to each factor (`M ~ (U_r S_r^1/2)(S_r^1/2 V_r^T)`)
so both factors have the same dynamic range, which matters when they are
quantized later.

- **linear** `W (out, in)`: `W ~ B A` with `A (r, in)` then `B (out, r)`.
- **channel** (Zhang et al. 2016, "Accelerating very deep convolutional
  networks", the "k x k conv to d' filters then 1 x 1" form): the conv weight
  reshaped to `C_out x (C_in kh kw)`; a k x k conv to `r` channels, then a 1 x 1
  conv to `C_out`. A linear layer is the 1 x 1, spatially trivial case.
- **spatial** (Jaderberg et al. 2014, "Speeding up convolutional neural
  networks with low rank expansions", scheme 2): the weight reshaped to
  `(C_in kh) x (C_out kw)` with `M[(c, i), (n, j)] = W[n, c, i, j]`; a kh x 1
  conv to `r` channels, then a 1 x kw conv to `C_out`.
- **Tucker-2** (Kim et al. 2016, "Compression of deep convolutional neural
  networks for fast and low power mobile applications"): truncated HOSVD along
  the two channel modes (De Lathauwer et al. 2000); a 1 x 1 conv `C_in -> r_in`,
  a kh x kw core conv `r_in -> r_out`, a 1 x 1 conv `r_out -> C_out`.

Factors are computed in float64 and returned in the weight's dtype.
"""

from __future__ import annotations

import heapq
import math
from collections.abc import Sequence

import numpy as np


def singular_values(matrix: np.ndarray) -> np.ndarray:
    """Singular values of a 2-D array, largest first, in float64."""
    return np.linalg.svd(np.asarray(matrix, np.float64), compute_uv=False)


def resolve_rank(rank: int | float, full_rank: int) -> int:
    """An int rank as is; a float in (0, 1] as that fraction of `full_rank`, rounded up.

    Raises ValueError for a rank below 1, a fraction outside (0, 1] or an int above
    the full rank."""
    if isinstance(rank, bool) or not isinstance(rank, (int, float)):
        raise ValueError(f"rank must be an int >= 1 or a fraction in (0, 1], got {rank!r}")
    if isinstance(rank, float):
        if not 0.0 < rank <= 1.0:
            raise ValueError(f"a fractional rank must be in (0, 1], got {rank}")
        # The tiny slack keeps e.g. 0.3 * 10 = 3.0000000000000004 from rounding up to 4.
        return max(1, math.ceil(rank * full_rank - 1e-9))
    if rank < 1:
        raise ValueError(f"rank must be at least 1, got {rank}")
    if rank > full_rank:
        raise ValueError(f"rank {rank} is above the full rank {full_rank}")
    return rank


def retained_energy(values: np.ndarray, rank: int) -> float:
    """Fraction of the squared Frobenius norm kept by the `rank` largest singular values."""
    squares = np.asarray(values, np.float64) ** 2
    total = squares.sum()
    return 1.0 if total == 0.0 else float(squares[:rank].sum() / total)


def retained_energy_curve(values: np.ndarray) -> np.ndarray:
    """`retained_energy(values, r)` for r = 1..len(values), as one array (index r - 1)."""
    squares = np.asarray(values, np.float64) ** 2
    total = squares.sum()
    if total == 0.0:
        return np.ones(len(squares))
    kept = np.cumsum(squares) / total
    kept[-1] = 1.0  # the cumulative sum may round to just below 1
    return kept


def rank_for_energy(values: np.ndarray, energy: float) -> int:
    """The smallest rank whose singular values keep at least `energy` (in (0, 1]) of the
    squared Frobenius norm."""
    if not 0.0 < energy <= 1.0:
        raise ValueError(f"energy must be in (0, 1], got {energy}")
    kept = retained_energy_curve(values)
    # A relative slack so that energy=1.0 does not demand the rounding noise of zero values.
    return int(np.searchsorted(kept, energy * (1.0 - 1e-12))) + 1


def svd(matrix: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The thin SVD `(u, s, vt)` of a 2-D array, in float64."""
    return np.linalg.svd(np.asarray(matrix, np.float64), full_matrices=False)


def truncated_svd(matrix: np.ndarray, rank: int, decomposition=None) -> tuple[np.ndarray, np.ndarray]:
    """`(left (m, r), right (r, n))` with `left @ right` the best rank-`r` approximation.

    `decomposition` is the matrix's `svd(matrix)` if the caller has it already (an SVD of
    a large layer takes seconds; choosing a rank needs it too)."""
    matrix = np.asarray(matrix)
    full_rank = min(matrix.shape)
    if not 1 <= rank <= full_rank:
        raise ValueError(f"rank {rank} is outside 1..{full_rank} for a {matrix.shape} matrix")
    u, s, vt = svd(matrix) if decomposition is None else decomposition
    root = np.sqrt(s[:rank])
    return u[:, :rank] * root, root[:, None] * vt[:rank]


# ---- linear and channel decomposition ----------------------------------------------------


def channel_matrix(weight: np.ndarray) -> np.ndarray:
    """A linear or conv weight `(C_out, C_in, *kernel)` as `C_out x (C_in * prod(kernel))`."""
    return weight.reshape(weight.shape[0], -1)


def channel_full_rank(weight_shape: Sequence[int]) -> int:
    return min(weight_shape[0], math.prod(weight_shape[1:]))


def channel_decomposition_macs(weight_shape: Sequence[int], output_positions: int, rank: int) -> int:
    """MACs of a layer (weight [C_out, C_in, *kernel], `output_positions` output positions per
    channel) decomposed by the channel method at `rank`: a k x k conv (or linear) to `rank`
    channels, then a 1 x 1 conv (linear) to C_out, both at the output positions."""
    return rank * output_positions * (math.prod(weight_shape[1:]) + weight_shape[0])


def channel_factors(weight: np.ndarray, rank: int, decomposition=None
                    ) -> tuple[np.ndarray, np.ndarray]:
    """`(first (r, C_in, *kernel), second (C_out, r, 1, ...))`: the first layer keeps the
    kernel, the second is a 1 x 1 (or, for a linear weight, an `(out, r)` matrix).
    `decomposition`: `svd(channel_matrix(weight))` if already computed."""
    left, right = truncated_svd(channel_matrix(weight), rank, decomposition)
    first = right.reshape((rank, *weight.shape[1:]))
    second = left.reshape((weight.shape[0], rank) + (1,) * (weight.ndim - 2))
    return first.astype(weight.dtype), second.astype(weight.dtype)


def channel_reconstruct(first: np.ndarray, second: np.ndarray) -> np.ndarray:
    """The weight of one layer equivalent to `first` then `second` (for tests and checks)."""
    out, rank = second.shape[:2]
    product = second.reshape(out, rank).astype(np.float64) @ first.reshape(rank, -1)
    return product.reshape((out, *first.shape[1:]))


# ---- spatial decomposition ---------------------------------------------------------------


def spatial_matrix(weight: np.ndarray) -> np.ndarray:
    """A conv2d weight `(C_out, C_in, kh, kw)` as `(C_in kh) x (C_out kw)`,
    `M[(c, i), (n, j)] = W[n, c, i, j]` (Jaderberg et al. 2014, sec. 3.2)."""
    c_out, c_in, kh, kw = weight.shape
    return weight.transpose(1, 2, 0, 3).reshape(c_in * kh, c_out * kw)


def spatial_full_rank(weight_shape: Sequence[int]) -> int:
    c_out, c_in, kh, kw = weight_shape
    return min(c_in * kh, c_out * kw)


def spatial_factors(weight: np.ndarray, rank: int, decomposition=None
                    ) -> tuple[np.ndarray, np.ndarray]:
    """`(vertical (r, C_in, kh, 1), horizontal (C_out, r, 1, kw))`.
    `decomposition`: `svd(spatial_matrix(weight))` if already computed."""
    c_out, c_in, kh, kw = weight.shape
    left, right = truncated_svd(spatial_matrix(weight), rank, decomposition)
    vertical = left.T.reshape(rank, c_in, kh, 1)
    horizontal = right.reshape(rank, c_out, kw).transpose(1, 0, 2).reshape(c_out, rank, 1, kw)
    return vertical.astype(weight.dtype), horizontal.astype(weight.dtype)


def spatial_reconstruct(vertical: np.ndarray, horizontal: np.ndarray) -> np.ndarray:
    """`W[n, c, i, j] = sum_k horizontal[n, k, 0, j] * vertical[k, c, i, 0]`."""
    return np.einsum("nkj,kci->ncij", horizontal[:, :, 0, :].astype(np.float64),
                     vertical[:, :, :, 0].astype(np.float64))


# ---- Tucker-2 ------------------------------------------------------------------------------


def input_channel_matrix(weight: np.ndarray) -> np.ndarray:
    """The mode-1 unfolding of a conv weight: `C_in x (C_out * prod(kernel))`."""
    return np.moveaxis(weight, 1, 0).reshape(weight.shape[1], -1)


def tucker2_full_ranks(weight_shape: Sequence[int]) -> tuple[int, int]:
    """(output-mode, input-mode) ranks at which a Tucker-2 factorisation is exact."""
    kernel = math.prod(weight_shape[2:])
    return (min(weight_shape[0], weight_shape[1] * kernel),
            min(weight_shape[1], weight_shape[0] * kernel))


def tucker2_factors(weight: np.ndarray, rank_out: int, rank_in: int, decompositions=None
                    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """`(input projection (r_in, C_in, 1, ..), core (r_out, r_in, *kernel),
    output projection (C_out, r_out, 1, ..))` by truncated HOSVD. `decompositions`:
    the SVDs of `channel_matrix(weight)` and `input_channel_matrix(weight)` if computed."""
    full_out, full_in = tucker2_full_ranks(weight.shape)
    if not (1 <= rank_out <= full_out and 1 <= rank_in <= full_in):
        raise ValueError(f"Tucker-2 ranks ({rank_out}, {rank_in}) are outside "
                         f"1..{full_out} x 1..{full_in} for a weight of shape {weight.shape}")
    w = weight.astype(np.float64)
    if decompositions is None:
        decompositions = svd(channel_matrix(w)), svd(input_channel_matrix(w))
    u_out = decompositions[0][0][:, :rank_out]
    u_in = decompositions[1][0][:, :rank_in]
    # core = W x_0 U_out^T x_1 U_in^T; W ~ core x_0 U_out x_1 U_in. Two tensordots, not one
    # einsum: a plain einsum over all four indices at once is quartic in the channels.
    core = np.moveaxis(np.tensordot(np.tensordot(u_out, w, axes=([0], [0])), u_in,
                                    axes=([1], [0])), -1, 1)
    ones = (1,) * (weight.ndim - 2)
    first = u_in.T.reshape((rank_in, weight.shape[1], *ones))
    last = u_out.reshape((weight.shape[0], rank_out, *ones))
    return first.astype(weight.dtype), core.astype(weight.dtype), last.astype(weight.dtype)


def tucker2_reconstruct(first: np.ndarray, core: np.ndarray, last: np.ndarray) -> np.ndarray:
    u_in = first.reshape(first.shape[0], first.shape[1]).astype(np.float64)
    u_out = last.reshape(last.shape[0], last.shape[1]).astype(np.float64)
    partial = np.tensordot(u_out, core.astype(np.float64), axes=([1], [0]))  # (o, s, ...)
    return np.moveaxis(np.tensordot(partial, u_in, axes=([1], [0])), -1, 1)


# ---- choosing ranks under a MAC budget --------------------------------------------------------


def allocate_to_budget(candidate_macs: Sequence[np.ndarray], candidate_losses: Sequence[np.ndarray],
                       original_macs: Sequence[int], budget: float) -> list[int | None]:
    """Pick one candidate per layer (or None: keep the layer as it is) so that the total
    MACs fall to `budget`, losing as little as possible.

    Layer `l` costs `original_macs[l]` with loss 0 as it is, or `candidate_macs[l][j]`
    with loss `candidate_losses[l][j]` (e.g. the relative energy dropped by a rank).
    Greedy: repeatedly take the move, over all layers, with the least loss added per
    MAC saved; a move may jump over several candidates, so a layer whose first
    cheaper rank saves little but whose later ranks save much is not starved. The
    last move saves just enough, at the least loss. Stops at the budget, or when
    nothing is cheaper; the caller compares the total with the budget.
    """
    count = len(original_macs)
    chosen: list[int | None] = [None] * count
    current_macs = [float(m) for m in original_macs]
    current_loss = [0.0] * count
    macs = [np.asarray(m, np.float64) for m in candidate_macs]
    losses = [np.asarray(x, np.float64) for x in candidate_losses]

    def best_move(layer: int):
        saving = current_macs[layer] - macs[layer]
        cheaper = saving > 0
        if not cheaper.any():
            return None
        price = np.where(cheaper, (losses[layer] - current_loss[layer]) / np.where(cheaper, saving, 1),
                         np.inf)
        best = np.flatnonzero(price == price.min())
        target = int(best[np.argmax(saving[best])])  # ties: the larger saving
        return float(price[target]), layer, target

    heap = [move for layer in range(count) if (move := best_move(layer)) is not None]
    heapq.heapify(heap)
    total = sum(current_macs)
    while heap and total > budget:
        _, layer, target = heapq.heappop(heap)
        excess = total - budget
        if current_macs[layer] - macs[layer][target] > excess:
            # This move overshoots the budget: any candidate saving just enough will do, so
            # take the one that loses least (the greedy step alone would waste MACs).
            enough = np.flatnonzero(current_macs[layer] - macs[layer] >= excess)
            target = int(enough[np.argmin(losses[layer][enough])])
        total -= current_macs[layer] - macs[layer][target]
        current_macs[layer] = float(macs[layer][target])
        current_loss[layer] = float(losses[layer][target])
        chosen[layer] = target
        if (move := best_move(layer)) is not None:
            heapq.heappush(heap, move)
    return chosen
