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


# ---- recognising low-bit weights, and their integer grids ----------------------------------------


def is_power_of_two(magnitude: np.ndarray) -> np.ndarray:
    """Elementwise: the (positive, finite) magnitude is exactly 2^n for an integer n."""
    mantissa, _ = np.frexp(np.asarray(magnitude, np.float64))
    return mantissa == 0.5


def scheme_of(weight: np.ndarray) -> str | None:
    """Which low-bit scheme's values `weight` holds, per output channel (axis 0) up to a
    per-channel scale: "binary" (one magnitude a channel, no zeros), "ternary" (one
    magnitude and zeros), "power_of_two" (every nonzero magnitude a power of two times the
    channel's scale), or None (a float weight)."""
    rows = np.abs(_channels(weight))
    nonzero = rows != 0
    if not nonzero.any() or not np.isfinite(rows).all():
        return None
    top = rows.max(axis=1, keepdims=True)
    if ((rows == top) | ~nonzero).all():
        return "binary" if nonzero.all() else "ternary"
    # Ratios to the channel's largest: a per-channel scale (a folded batch norm) keeps them.
    if is_power_of_two((rows / np.where(top > 0, top, 1.0))[nonzero]).all():
        return "power_of_two"
    return None


# A weight counts as low-bit (for the integer grids and the XNOR / shift layers) only with
# at least this many entries a channel and two distinct magnitudes: a tiny or constant
# weight (a [C, 1] linear, a test's all-0.5 weight) holds such values by accident.
MIN_ENTRIES_PER_CHANNEL = 4


def is_low_bit_weight(weight: np.ndarray) -> bool:
    """Whether `weight` is a layer weight a low-bit quantizer produced (`scheme_of`, with
    enough entries and distinct magnitudes that it is not an accident)."""
    weight = np.asarray(weight)
    if weight.ndim < 2 or weight.size // weight.shape[0] < MIN_ENTRIES_PER_CHANNEL:
        return False
    magnitudes = np.unique(np.abs(weight[weight != 0]))
    return magnitudes.size >= 2 and scheme_of(weight) is not None


def integer_grid(weight: np.ndarray, qmax: int) -> np.ndarray | None:
    """Per-channel weight scales that put a low-bit weight on integers that are powers of two:
    scale = max|w| / 2^p with 2^p the largest power of two <= qmax, so a binary or ternary
    weight becomes +-2^p (and 0) and a power-of-two weight +-2^(p - j), exactly, and an
    integer kernel multiplies by shifting. None if `weight` is not low-bit
    (`is_low_bit_weight`) or a channel
    spans more than p + 1 powers of two (its smallest values would not be integers)."""
    if not is_low_bit_weight(weight) or qmax < 1:
        return None
    rows = np.abs(_channels(weight))
    top = rows.max(axis=1)
    levels = 2.0 ** np.floor(np.log2(qmax))
    smallest = np.where(rows > 0, rows, np.inf).min(axis=1)
    if (smallest < top / levels).any():
        return None
    return np.where(top > 0, top / levels, 1.0).astype(np.float32)


def shift_codes(weight_q: np.ndarray) -> np.ndarray | None:
    """int8 codes of an integer weight whose entries are 0 or +-2^e: 0, or +-(e + 1). None if
    some entry is not."""
    w = np.asarray(weight_q, np.int64)
    magnitude = np.abs(w)
    if (magnitude[magnitude != 0] & (magnitude[magnitude != 0] - 1)).any():
        return None
    exponent = np.log2(np.maximum(magnitude, 1)).astype(np.int64)
    return np.where(w == 0, 0, np.sign(w) * (exponent + 1)).astype(np.int8)


def decode_shift_codes(codes: np.ndarray) -> np.ndarray:
    """The int64 weight that shift codes stand for (0: zero, +-(e + 1): +-2^e)."""
    codes = np.asarray(codes, np.int64)
    return np.sign(codes) * np.left_shift(1, np.maximum(np.abs(codes) - 1, 0))


def pack_signs(weight_q: np.ndarray) -> np.ndarray:
    """One sign bit a weight (1 = negative), packed eight to a byte (little bit order) along
    the flattened axes after the first: u8 [C_out, ceil(K / 8)]."""
    flat = (np.asarray(weight_q) < 0).reshape(weight_q.shape[0], -1).astype(np.uint8)
    return np.packbits(flat, axis=1, bitorder="little")


def unpack_signs(bits: np.ndarray, shape) -> np.ndarray:
    """The +-1 weight (int64) of `pack_signs`'s bits, in `shape`."""
    count = int(np.prod(shape[1:]))
    flat = np.unpackbits(np.asarray(bits, np.uint8), axis=1, count=count, bitorder="little")
    return (1 - 2 * flat.astype(np.int64)).reshape(shape)
