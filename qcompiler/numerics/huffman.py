"""Huffman coding of symbol histograms (Huffman 1952), as the last stage of Deep Compression
(Han et al. 2016, §4): cluster indices and sparse relative indices are far from uniform, so a
prefix code with shorter words for frequent symbols stores them in fewer bits.

`code_lengths` builds the code with a heap (merge the two lightest subtrees until one is
left; a symbol's code length is its depth). The size of a canonical Huffman code's table is
its code lengths only (decoders rebuild the words from them, as DEFLATE does), so
`table_bits` charges each symbol one length field.
"""

from __future__ import annotations

import heapq
import math
from collections.abc import Mapping


def code_lengths(counts: Mapping[object, int]) -> dict[object, int]:
    """Symbol -> Huffman code length in bits, for the symbols with a positive count. A lone
    symbol gets a 1-bit code (a stream still needs one bit per symbol to be counted)."""
    present = [(count, symbol) for symbol, count in counts.items() if count > 0]
    if not present:
        return {}
    if len(present) == 1:
        return {present[0][1]: 1}
    # Heap entries: (weight, tie-breaker, symbols in the subtree); the tie-breaker keeps the
    # build deterministic and never compares symbols.
    heap = [(count, order, [symbol]) for order, (count, symbol) in enumerate(present)]
    heapq.heapify(heap)
    lengths = {symbol: 0 for _, symbol in present}
    order = len(heap)
    while len(heap) > 1:
        weight_a, _, symbols_a = heapq.heappop(heap)
        weight_b, _, symbols_b = heapq.heappop(heap)
        for symbol in symbols_a + symbols_b:
            lengths[symbol] += 1  # every symbol under the merged node goes one level deeper
        heapq.heappush(heap, (weight_a + weight_b, order, symbols_a + symbols_b))
        order += 1
    return lengths


def encoded_bits(counts: Mapping[object, int]) -> int:
    """Bits of the Huffman-coded stream: sum over symbols of count x code length."""
    lengths = code_lengths(counts)
    return sum(counts[symbol] * length for symbol, length in lengths.items())


def table_bits(counts: Mapping[object, int]) -> int:
    """Bits of the canonical code's table: one length field per present symbol, wide enough
    for the longest code."""
    lengths = code_lengths(counts)
    if not lengths:
        return 0
    return len(lengths) * max(1, math.ceil(math.log2(max(lengths.values()) + 1)))
