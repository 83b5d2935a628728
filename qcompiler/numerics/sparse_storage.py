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
huffman`). The codebook holds the shared values at the weight's own width, or at 16 bits
where every one of them is exactly a float16; one codebook for the weight, or one per row
(output channel, per-channel clustering) where that is smaller.
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


def codebook_entry_bits(distinct: np.ndarray, itemsize_bits: int) -> int:
    """Bits one codebook entry takes: 16 where every shared value is exactly a float16 (a
    half-precision codebook then loses nothing: `cluster_weights(codebook="f16")` rounds
    the centroids so), else the weight's own width."""
    distinct = np.asarray(distinct)
    if itemsize_bits > 16 and np.issubdtype(distinct.dtype, np.floating) and distinct.size:
        with np.errstate(over="ignore"):
            if np.array_equal(distinct.astype(np.float16).astype(distinct.dtype), distinct):
                return 16
    return itemsize_bits


def _value_bits(values: np.ndarray, extra_zeros: int, itemsize_bits: int,
                rows: np.ndarray | None = None) -> tuple[int, int, int]:
    """(fixed bits, Huffman bits with table, codebook bits) of the stored values (`values`
    plus `extra_zeros` filler zeros): indices into a codebook of the distinct values, or the
    raw values where that is no larger (more than MAX_SHARED distinct values, or a tensor too
    small for a codebook to pay: then no codebook). With `rows` (each value's row), also
    one codebook per row (per-channel clustering) where that is smaller."""
    distinct, counts = np.unique(values, return_counts=True)
    if extra_zeros:
        if (distinct == 0).any():
            counts[np.flatnonzero(distinct == 0)[0]] += extra_zeros
        else:
            distinct, counts = np.append(distinct, 0), np.append(counts, extra_zeros)
    total = int(counts.sum())
    raw = total * itemsize_bits
    options = [(raw, raw, 0)]
    if len(distinct) <= MAX_SHARED:
        histogram = dict(enumerate(counts.tolist()))
        book = len(distinct) * codebook_entry_bits(distinct, itemsize_bits)
        options.append((total * bit_width(len(distinct)),
                        huffman.encoded_bits(histogram) + huffman.table_bits(histogram), book))
    if rows is not None and len(values):
        options.append(_per_row_value_bits(values, rows, extra_zeros, itemsize_bits))
    # The raw values where a codebook does not pay; else the cheaper codebook layout.
    return min(options, key=lambda o: (o[1] + o[2], o[0] + o[2]))


def _per_row_value_bits(values: np.ndarray, rows: np.ndarray, extra_zeros: int,
                        itemsize_bits: int) -> tuple[int, int, int]:
    """`_value_bits` with one codebook per row: index 0 means zero (no codebook entry), index
    i > 0 the row's i-th smallest distinct nonzero value; one Huffman table for all rows."""
    nonzero = values != 0
    # Distinct (row, value) pairs, sorted by row then value; each value's pair index.
    pairs, inverse = np.unique(np.stack([rows[nonzero].astype(np.float64), values[nonzero]]),
                               axis=1, return_inverse=True)
    per_row = np.bincount(pairs[0].astype(np.int64))
    if per_row.max(initial=0) > MAX_SHARED:
        raw = (len(values) + extra_zeros) * itemsize_bits
        return raw, raw, 0
    first = np.concatenate([[0], np.cumsum(per_row)])[pairs[0].astype(np.int64)]
    rank = np.arange(pairs.shape[1]) - first + 1  # 1-based rank of each pair in its row
    symbols = np.zeros(len(values), np.int64)
    symbols[nonzero] = rank[np.ravel(inverse)]
    counts = np.bincount(symbols)
    counts[0] += extra_zeros
    histogram = {k: int(c) for k, c in enumerate(counts.tolist()) if c}
    total = len(values) + extra_zeros
    book = pairs.shape[1] * codebook_entry_bits(values[nonzero], itemsize_bits)
    fixed = total * bit_width(int(per_row.max(initial=0)) + int(counts[0] > 0))
    return fixed, huffman.encoded_bits(histogram) + huffman.table_bits(histogram), book


def dense_bits(weight: np.ndarray) -> LayerBits:
    rows = _rows(weight)
    row_ids = np.repeat(np.arange(rows.shape[0]), rows.shape[1])
    fixed, coded, book = _value_bits(rows.ravel(), 0, weight.dtype.itemsize * 8, row_ids)
    return LayerBits("dense", weight.size, 0, fixed, 0, book, coded, 0)


def sparse_bits(weight: np.ndarray, relative_bits: int) -> LayerBits:
    histogram, fillers, per_row = relative_gaps(weight, relative_bits)
    row_ids, columns = np.nonzero(_rows(weight))
    fixed, coded, book = _value_bits(_rows(weight)[row_ids, columns], fillers,
                                     weight.dtype.itemsize * 8, row_ids)
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
