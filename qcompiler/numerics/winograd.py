"""Winograd minimal filtering F(m x m, 3 x 3) (Lavin & Gray 2016, "Fast Algorithms for
Convolutional Neural Networks", §4, with their transform matrices).

A 3x3 convolution (cross-correlation, as torch computes it) of one (m + 2) x (m + 2) input
tile d with one kernel g gives an m x m output tile

    Y = A^T [ (G g G^T) * (B^T d B) ] A          (* elementwise)

so each output tile costs (m + 2)^2 multiplies in the transformed domain instead of 9 m^2:
2.25x fewer for F(2x2, 3x3), 4x fewer for F(4x4, 3x3). Summed over input channels, the
elementwise product becomes, per transformed position xi, a matrix product
M[xi] = U[xi] (K x C) @ V[xi] (C x tiles).

Numerics. The transforms are exact in real arithmetic but not in float32: F(4x4)'s
matrices hold 4, 5, 8 and 1/24, so rounding errors grow by roughly their magnitudes
(measured by `relative_error` and the benchmark). In integers, V = B^T d B of an int8
tile needs wider numbers: |V| <= (sum_i |B_i|)^2 * 128 per entry (`transformed_input_bound`:
2^9 for F(2x2), 2^13.6 for F(4x4)), and G holds fractions, so U = G g G^T is an integer
only after scaling G by 2 (F(2x2)) or 24 (F(4x4)); squeezing V and U back into 8 bits is
a second quantization in the Winograd domain (`quantized_winograd`).
"""

from __future__ import annotations

import numpy as np

# (B^T, G, A^T) in float64, by output tile size m.
_MATRICES = {
    2: (np.array([[1, 0, -1, 0], [0, 1, 1, 0], [0, -1, 1, 0], [0, 1, 0, -1]], np.float64),
        np.array([[1, 0, 0], [0.5, 0.5, 0.5], [0.5, -0.5, 0.5], [0, 0, 1]], np.float64),
        np.array([[1, 1, 1, 0], [0, 1, -1, -1]], np.float64)),
    4: (np.array([[4, 0, -5, 0, 1, 0], [0, -4, -4, 1, 1, 0], [0, 4, -4, -1, 1, 0],
                  [0, -2, -1, 2, 1, 0], [0, 2, -1, -2, 1, 0], [0, 4, 0, -5, 0, 1]], np.float64),
        np.array([[1 / 4, 0, 0], [-1 / 6, -1 / 6, -1 / 6], [-1 / 6, 1 / 6, -1 / 6],
                  [1 / 24, 1 / 12, 1 / 6], [1 / 24, -1 / 12, 1 / 6], [0, 0, 1]], np.float64),
        np.array([[1, 1, 1, 1, 1, 0], [0, 1, -1, 2, -2, 0], [0, 1, 1, 4, 4, 0],
                  [0, 1, -1, 8, -8, 1]], np.float64)),
}
TILES = tuple(sorted(_MATRICES))


def matrices(m: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(B^T, G, A^T) of F(m x m, 3 x 3)."""
    if m not in _MATRICES:
        raise ValueError(f"Winograd F({m}x{m}, 3x3) is not available; output tiles are {TILES}")
    return _MATRICES[m]


def transformed_weight(weight: np.ndarray, m: int) -> np.ndarray:
    """U = G g G^T for every kernel: [K, C, 3, 3] -> [(m+2)^2, K, C] (xi-major), float64."""
    _, g, _ = matrices(m)
    u = np.einsum("ia,kcab,jb->ijkc", g, np.asarray(weight, np.float64), g)
    return u.reshape(-1, *weight.shape[:2])


def input_transform_kernel(m: int, channels: int) -> np.ndarray:
    """The depthwise conv weight [C (m+2)^2, 1, m+2, m+2] whose output channel c (m+2)^2 +
    i (m+2) + j at a tile is (B^T d B)[i, j] of that channel's tile d."""
    bt, _, _ = matrices(m)
    t = m + 2
    single = np.einsum("ia,jb->ijab", bt, bt).reshape(t * t, 1, t, t)
    return np.tile(single, (channels, 1, 1, 1))


def output_transform_kernel(m: int, out_channels: int) -> np.ndarray:
    """The grouped 1x1 conv weight [K m^2, (m+2)^2, 1, 1] whose output channel k m^2 + u m + v
    is (A^T M A)[u, v] of that output channel's transformed tile M."""
    _, _, at = matrices(m)
    t = m + 2
    single = np.einsum("ui,vj->uvij", at, at).reshape(m * m, t * t, 1, 1)
    return np.tile(single, (out_channels, 1, 1, 1))


def tiles(size: int, m: int) -> int:
    """How many m-wide output tiles cover `size` outputs."""
    return -(-size // m)


def transformed_input_bound(m: int, input_bound: int = 128) -> int:
    """The largest |(B^T d B)[i, j]| over tiles d with |d| <= input_bound: the width integer
    Winograd needs for its transformed input (int8 inputs: 512 for F(2x2), 12,800 for F(4x4))."""
    bt, _, _ = matrices(m)
    row = np.abs(bt).sum(axis=1)
    return int(np.outer(row, row).max() * input_bound)


def winograd_conv(x: np.ndarray, weight: np.ndarray, m: int, padding: int = 0,
                  quantize_bits: int | None = None, dtype=np.float64) -> np.ndarray:
    """The Winograd convolution [N, C, H, W] * [K, C, 3, 3] (stride 1), computed in `dtype`;
    with `quantize_bits`, the transformed input V and weight U are each rounded to a signed
    grid of that many bits (per tensor, symmetric), as an 8-bit Winograd-domain kernel would
    store them. For measuring, not for running graphs."""
    bt, _, at = matrices(m)
    t = m + 2
    x = np.pad(np.asarray(x, dtype), ((0, 0), (0, 0), (padding, padding), (padding, padding)))
    outs = x.shape[2] - 2, x.shape[3] - 2
    nh, nw = tiles(outs[0], m), tiles(outs[1], m)
    x = np.pad(x, ((0, 0), (0, 0), (0, nh * m + 2 - x.shape[2]), (0, nw * m + 2 - x.shape[3])))
    windows = np.lib.stride_tricks.sliding_window_view(x, (t, t), axis=(2, 3))[:, :, ::m, ::m]
    v = np.einsum("ia,nchwab,jb->ijnchw", bt.astype(dtype), windows, bt.astype(dtype))
    u = transformed_weight(weight, m).reshape(t, t, *weight.shape[:2]).astype(dtype)
    if quantize_bits is not None:
        v, u = _round_to_grid(v, quantize_bits), _round_to_grid(u, quantize_bits)
    product = np.einsum("ijkc,ijnchw->ijnkhw", u, v)
    y = np.einsum("ui,ijnkhw,vj->nkhuwv", at.astype(dtype), product, at.astype(dtype))
    y = y.reshape(y.shape[0], y.shape[1], nh * m, nw * m)
    return y[:, :, :outs[0], :outs[1]]


def _round_to_grid(values: np.ndarray, bits: int) -> np.ndarray:
    top = (1 << (bits - 1)) - 1
    scale = np.abs(values).max() / top if np.abs(values).max() > 0 else 1.0
    return np.clip(np.round(values / scale), -top, top) * scale
