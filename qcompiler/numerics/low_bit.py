"""Binary, ternary and power-of-two weights: the extreme quantizers, per output channel.

Each returns the quantized weight in float (the values a low-bit kernel reconstructs), so a
graph holding it simulates the low-bit network exactly; the integer parts (signs, ternary
codes, exponents) are what a kernel would store.

- binary (XNOR-Net, Rastegari et al. 2016, eq. 2-3): W ~ alpha B with B = sign(W) (sign(0)
  = +1) and alpha = mean |W| over the channel, the least-squares optimal scale for B.
- ternary (TWN, Li & Liu 2016, eq. 9-10): T = sign(W) where |W| > Delta, else 0, with the
  approximate optimal threshold Delta = 0.7 mean |W| and alpha = mean |W| over the
  entries above it.
- power of two (INQ, Zhou et al. 2017, §2.1): each weight becomes the nearest of
  {0} U {+-2^n : n2 <= n <= n1}, with n1 = floor(log2(4 max|W| / 3)) and
  n2 = n1 + 1 - 2^(bits - 1) / 2 (bits counts a zero code and a sign): a multiply becomes
  a shift.

"Nearest" is in the linear domain: between 2^n and 2^(n+1) the boundary is 1.5 * 2^n, and
below 2^n2 the boundary to zero is 2^(n2 - 1). A tie goes to the larger magnitude.
"""

from __future__ import annotations

import numpy as np

from qcompiler.errors import OptionError

SCHEMES = ("binary", "ternary", "power_of_two")
TWN_THRESHOLD = 0.7


def _channels(weight: np.ndarray) -> np.ndarray:
    """The weight as [channels, -1] in float64 (axis 0: output channels)."""
    return np.asarray(weight, np.float64).reshape(weight.shape[0], -1)


def binarize(weight: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(quantized weight, alpha per channel)."""
    rows = _channels(weight)
    alpha = np.abs(rows).mean(axis=1)
    signs = np.where(rows >= 0, 1.0, -1.0)
    return (signs * alpha[:, None]).astype(weight.dtype).reshape(weight.shape), alpha


def ternarize(weight: np.ndarray, threshold: float = TWN_THRESHOLD) -> tuple[np.ndarray, np.ndarray]:
    """(quantized weight, alpha per channel); a channel of zeros stays zero."""
    rows = _channels(weight)
    delta = threshold * np.abs(rows).mean(axis=1, keepdims=True)
    kept = np.abs(rows) > delta
    counts = kept.sum(axis=1)
    alpha = np.where(counts > 0, (np.abs(rows) * kept).sum(axis=1) / np.maximum(counts, 1), 0.0)
    codes = np.sign(rows) * kept + 0.0  # + 0.0: no negative zeros
    return (codes * alpha[:, None]).astype(weight.dtype).reshape(weight.shape), alpha


def power_of_two_range(max_abs: np.ndarray, bits: int) -> tuple[np.ndarray, np.ndarray]:
    """(n1, n2) per channel: the largest and smallest exponents of the INQ code book."""
    if isinstance(bits, bool) or not isinstance(bits, int) or not 2 <= bits <= 8:
        raise OptionError(f"power-of-two weights: bits must be an int in [2, 8] (a sign, a zero "
                          f"code and at least one exponent), got {bits!r}")
    safe = np.where(max_abs > 0, max_abs, 1.0)
    n1 = np.floor(np.log2(4 * safe / 3))
    return n1, n1 + 1 - 2 ** (bits - 1) / 2


def power_of_two(weight: np.ndarray, bits: int = 4) -> tuple[np.ndarray, np.ndarray]:
    """(quantized weight, exponent per entry; the exponent is meaningless where the result
    is zero)."""
    rows = _channels(weight)
    n1, n2 = power_of_two_range(np.abs(rows).max(axis=1), bits)
    magnitude = np.abs(rows)
    # Nearest power in the linear domain: 2^n covers [0.75 * 2^n, 1.5 * 2^n).
    exponent = np.floor(np.log2(np.maximum(magnitude, 1e-300) / 0.75))
    exponent = np.clip(exponent, n2[:, None], n1[:, None])
    zero = magnitude < 2.0 ** (n2[:, None] - 1)
    values = np.where(zero, 0.0, np.sign(rows) * 2.0 ** exponent)
    return values.astype(weight.dtype).reshape(weight.shape), exponent.reshape(weight.shape)


def quantize(weight: np.ndarray, scheme: str, bits: int = 4) -> np.ndarray:
    """The weight quantized by the named scheme (module docstring)."""
    if scheme == "binary":
        return binarize(weight)[0]
    if scheme == "ternary":
        return ternarize(weight)[0]
    if scheme == "power_of_two":
        return power_of_two(weight, bits)[0]
    raise OptionError(f"unknown low-bit scheme {scheme!r}; choose one of {', '.join(SCHEMES)}")


def storage_bits(shape: tuple[int, ...], scheme: str, bits: int = 4) -> int:
    """Bits a low-bit kernel stores for a weight of `shape`: binary 1 bit an entry plus a
    float32 alpha per channel; ternary 2 bits an entry (three codes) plus alpha; power of two
    `bits` an entry plus an 8-bit top exponent n1 per channel."""
    entries, channels = int(np.prod(shape)), shape[0]
    per_entry, per_channel = {"binary": (1, 32), "ternary": (2, 32), "power_of_two": (bits, 8)}[scheme]
    return entries * per_entry + channels * per_channel
