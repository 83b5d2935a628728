"""How many bits a pruned, clustered weight takes in storage (Han et al. 2016, "Deep
Compression", §2 and §4, Fig. 2).

Sparse format: compressed sparse rows (one row per output channel, the weight reshaped to
[rows, -1]) whose column indices are stored *relative* to the previous stored entry of the
row, in `relative_bits` each. A gap larger than the widest relative index can say is bridged
by a filler entry holding zero (the paper's Fig. 2), so the stored entries are the nonzeros
plus the fillers; each carries a cluster index (or a raw value) and a relative index. Row
pointers are stored as per-row entry counts, each as wide as the largest count needs.

Dense format: every element stores its cluster index (zero is then a codebook entry).

Both are costed with fixed-width fields and with Huffman-coded fields (cluster indices and
relative indices coded separately, each with its canonical table; `qcompiler.numerics.
huffman`). The codebook holds the shared values at the weight's own width.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from qcompiler.numerics import huffman

MAX_SHARED = 256  # more distinct values than this: the weight is not clustered, values stored raw


@dataclass(frozen=True)
class LayerBits:
    """Storage of one weight in one format, in bits."""

    layout: str  # "dense" or "sparse"
    entries: int  # stored entries (sparse: nonzeros + fillers; dense: every element)
    fillers: int  # zero entries bridging long gaps (sparse)
    value_bits: int  # cluster index (or raw value) of each entry, fixed width, summed
    position_bits: int  # relative indices and row counts, fixed width
    codebook_bits: int
    value_bits_huffman: int  # Huffman-coded, tables included
    position_bits_huffman: int
    relative_bits: int = 0  # width of one relative index (sparse)

    @property
    def fixed_total(self) -> int:
        return self.value_bits + self.position_bits + self.codebook_bits

    @property
    def huffman_total(self) -> int:
        return self.value_bits_huffman + self.position_bits_huffman + self.codebook_bits


def bit_width(count: int) -> int:
    """Bits of an index into `count` symbols (at least 1)."""
    return max(1, math.ceil(math.log2(max(count, 1))))


def relative_gaps(weight: np.ndarray, relative_bits: int) -> tuple[np.ndarray, int, np.ndarray]:
    """(histogram of the relative indices, number of filler entries, entries per row) of the
    weight's nonzeros in the sparse format: gap = column - previous column - 1 within a row
    (the first counted from -1); a gap g above L = 2^relative_bits - 1 becomes g // (L + 1)
    fillers with relative index L and one entry with g % (L + 1)."""
    rows = _rows(weight)
    row_index, column = np.nonzero(rows)  # row-major: sorted by row, then column
    span = 2 ** relative_bits
    if len(column) == 0:
        return np.zeros(span, np.int64), 0, np.zeros(rows.shape[0], np.int64)
    previous = np.concatenate([[-1], column[:-1]])
    first_of_row = np.concatenate([[True], row_index[1:] != row_index[:-1]])
    previous[first_of_row] = -1
    gaps = column - previous - 1
    fillers = gaps // span
    histogram = np.bincount(gaps % span, minlength=span)
    histogram[span - 1] += int(fillers.sum())
    per_row = np.bincount(row_index, weights=fillers + 1, minlength=rows.shape[0]).astype(np.int64)
    return histogram, int(fillers.sum()), per_row


def _rows(weight: np.ndarray) -> np.ndarray:
    return weight.reshape(weight.shape[0], -1) if weight.ndim > 1 else weight.reshape(1, -1)


def _value_bits(values: np.ndarray, extra_zeros: int, itemsize_bits: int) -> tuple[int, int, int]:
    """(fixed bits, Huffman bits with table, codebook bits) of the stored values (`values`
    plus `extra_zeros` filler zeros): indices into a codebook of the distinct values, or the
    raw values where that is no larger (more than MAX_SHARED distinct values, or a tensor too
    small for a codebook to pay: then no codebook)."""
    distinct, counts = np.unique(values, return_counts=True)
    if extra_zeros:
        if (distinct == 0).any():
            counts[np.flatnonzero(distinct == 0)[0]] += extra_zeros
        else:
            distinct, counts = np.append(distinct, 0), np.append(counts, extra_zeros)
    total = int(counts.sum())
    raw = total * itemsize_bits
    if len(distinct) > MAX_SHARED:
        return raw, raw, 0
    histogram = dict(enumerate(counts.tolist()))
    book = len(distinct) * itemsize_bits
    fixed = total * bit_width(len(distinct))
    coded = huffman.encoded_bits(histogram) + huffman.table_bits(histogram)
    if raw <= fixed + book:
        return raw, raw, 0
    return fixed, coded, book


def dense_bits(weight: np.ndarray) -> LayerBits:
    fixed, coded, book = _value_bits(weight.ravel(), 0, weight.dtype.itemsize * 8)
    return LayerBits("dense", weight.size, 0, fixed, 0, book, coded, 0)


def sparse_bits(weight: np.ndarray, relative_bits: int) -> LayerBits:
    histogram, fillers, per_row = relative_gaps(weight, relative_bits)
    fixed, coded, book = _value_bits(weight[weight != 0], fillers, weight.dtype.itemsize * 8)
    rows_bits = len(per_row) * bit_width(int(per_row.max(initial=0)) + 1)
    entries = int(histogram.sum())
    gap_counts = dict(enumerate(histogram.tolist()))
    position_fixed = entries * relative_bits + rows_bits
    position_coded = huffman.encoded_bits(gap_counts) + huffman.table_bits(gap_counts) + rows_bits
    return LayerBits("sparse", entries, fillers, fixed, position_fixed, book, coded,
                     position_coded, relative_bits)


def best_sparse_bits(weight: np.ndarray, widths=range(1, 9), huffman_coded: bool = False) -> LayerBits:
    """The sparse storage with the relative-index width (from `widths`) that takes fewest bits."""
    options = [sparse_bits(weight, b) for b in widths]
    return min(options, key=lambda o: o.huffman_total if huffman_coded else o.fixed_total)
