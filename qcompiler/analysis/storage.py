"""Compressed storage size of a graph's weights, in the shape of Deep Compression's tables
(Han et al. 2016, Table 2 and 3: weights kept after pruning (P), bits per weight after
clustering (P+Q) and after Huffman coding (P+Q+H), index bits, compression rate).

`storage_report(graph)` reads the weights as they are: a weight with few distinct values
(after `cluster_weights`) is stored as indices into a codebook of them, a weight with zeros
(after `sparsify_weights`) in the sparse relative-index format where that is smaller than
the dense one (`qcompiler.numerics.sparse_storage`: the format, the fillers, the codes).
Each weighted layer's weight and bias (inputs 1 and 2 of conv / linear) gets a row (a
codebook only where it is smaller than the raw values); every other constant a node reads
(batch-norm statistics, shapes) is stored as it is, at its dtype. Shared
constants are counted once. The baseline is every constant at its stored dtype (float32 for
a float graph): what `qc.cost(graph).weight_bytes` counts.

`compressed_energy` prices a compressed graph with the cost model's per-operation table
(`qcompiler.analysis.cost`, Horowitz 2014): the weights are read from DRAM in their
Huffman-coded size instead of dense, and the MACs of zero weights are skipped, as
zero-skipping hardware does (EIE, Han et al. 2016b); decoding the codebook and the sparse
indices is not priced, so this is the best case such hardware reaches, not what a dense CPU
kernel does (on which zeros cost as much as any weight).

Nothing is run and the graph is not changed.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from qcompiler.analysis.cost import HOROWITZ_45NM, EnergyModel, cost, node_macs
from qcompiler.analysis.units import format_bytes
from qcompiler.ir import DTYPES, Graph
from qcompiler.ir.ops import WEIGHTED_OPS
from qcompiler.numerics import sparse_storage
from qcompiler.numerics.sparse_storage import LayerBits


@dataclass(frozen=True)
class WeightStorage:
    name: str  # the weight's value name
    numel: int
    nonzero: int
    distinct: int  # distinct nonzero values
    original_bits: int
    fixed: LayerBits  # the cheaper format with fixed-width fields (P+Q)
    coded: LayerBits  # the cheaper format with Huffman-coded fields (P+Q+H)

    @property
    def density(self) -> float:
        return self.nonzero / self.numel


@dataclass(frozen=True)
class StorageReport:
    weights: tuple[WeightStorage, ...]
    other_bits: int  # biases and the other constants, stored as they are
    original_bits: int  # every constant at its stored dtype

    @property
    def fixed_bits(self) -> int:
        return sum(w.fixed.fixed_total for w in self.weights) + self.other_bits

    @property
    def huffman_bits(self) -> int:
        return sum(w.coded.huffman_total for w in self.weights) + self.other_bits

    @property
    def original_bytes(self) -> int:
        return _bytes(self.original_bits)

    @property
    def fixed_bytes(self) -> int:
        return _bytes(self.fixed_bits)

    @property
    def huffman_bytes(self) -> int:
        return _bytes(self.huffman_bits)

    @property
    def fixed_ratio(self) -> float:
        return self.original_bits / self.fixed_bits

    @property
    def huffman_ratio(self) -> float:
        return self.original_bits / self.huffman_bits

    def table(self) -> str:
        """Per-weight table shaped like Deep Compression's Table 2, then totals."""
        header = ("weight", "weights", "kept (P)", "shared", "layout", "value bits (P+Q)",
                  "value bits (P+Q+H)", "index bits (P+Q)", "index bits (P+Q+H)",
                  "rate (P+Q)", "rate (P+Q+H)")
        body = []
        for w in self.weights:
            entries_fixed, entries_coded = max(w.fixed.entries, 1), max(w.coded.entries, 1)
            body.append((w.name, str(w.numel), f"{100 * w.density:.1f}%", str(w.distinct),
                         f"{w.fixed.layout}/{w.coded.layout}",
                         f"{(w.fixed.value_bits + w.fixed.codebook_bits) / entries_fixed:.2f}",
                         f"{(w.coded.value_bits_huffman + w.coded.codebook_bits) / entries_coded:.2f}",
                         f"{w.fixed.position_bits / entries_fixed:.2f}",
                         f"{w.coded.position_bits_huffman / entries_coded:.2f}",
                         f"{w.original_bits / w.fixed.fixed_total:.1f}x",
                         f"{w.original_bits / w.coded.huffman_total:.1f}x"))
        body.append(("other constants", "", "", "", "", "", "", "", "",
                     format_bytes(_bytes(self.other_bits)), ""))
        body.append(("total", "", "", "", "", "", "", "", "",
                     f"{self.fixed_ratio:.1f}x", f"{self.huffman_ratio:.1f}x"))
        widths = [max(len(row[i]) for row in [header, *body]) for i in range(len(header))]
        lines = ["  ".join(c.ljust(wd) if i == 0 else c.rjust(wd)
                           for i, (c, wd) in enumerate(zip(row, widths, strict=True))).rstrip()
                 for row in [header, *body]]
        return "\n".join(lines + [f"{format_bytes(self.original_bytes)} -> "
                                  f"{format_bytes(self.fixed_bytes)} (P+Q), "
                                  f"{format_bytes(self.huffman_bytes)} (P+Q+H)"])

    def __str__(self) -> str:
        return self.table()


def _bytes(bits: int) -> int:
    return -(-bits // 8)


def weight_storage(name: str, weight: np.ndarray) -> WeightStorage:
    """The storage of one weight: the cheaper of dense and sparse (every relative-index width
    from 1 to 8 bits tried), separately for fixed-width and Huffman-coded fields."""
    weight = np.asarray(weight)
    nonzero = weight[weight != 0]
    dense = sparse_storage.dense_bits(weight)
    sparse = [sparse_storage.sparse_bits(weight, b) for b in range(1, 9)]
    fixed = min([dense, *sparse], key=lambda o: o.fixed_total)
    coded = min([dense, *sparse], key=lambda o: o.huffman_total)
    return WeightStorage(name, weight.size, len(nonzero), len(np.unique(nonzero)),
                         weight.size * weight.dtype.itemsize * 8, fixed, coded)


def storage_report(graph: Graph) -> StorageReport:
    """The storage of `graph`'s constants (see the module docstring)."""
    weights, other, seen = [], 0, set()
    original = 0
    for node in graph:
        for index, value in enumerate(node.inputs):
            if value is None or not value.is_constant or id(value) in seen:
                continue
            seen.add(id(value))
            bits = value.numel * DTYPES[value.dtype].itemsize * 8
            original += bits
            is_float = np.issubdtype(np.asarray(value.data).dtype, np.floating)
            if node.op in WEIGHTED_OPS and index in (1, 2) and is_float:
                weights.append(weight_storage(value.name, value.data))
            else:
                other += bits
    return StorageReport(tuple(weights), other, original)


def compressed_energy(graph: Graph, report: StorageReport | None = None,
                      energy_model: EnergyModel = HOROWITZ_45NM) -> dict[str, float]:
    """Energy estimate (pJ per sample) of `graph` stored as `report` says (default: its own
    storage report) on zero-skipping hardware (module docstring): compute, weights, activations
    and their total, beside the dense figure."""
    report = report or storage_report(graph)
    dense = cost(graph, energy_model)
    density = {w.name: w.density for w in report.weights}
    skipped = 0.0
    for node in graph:
        weight = node.inputs[1] if node.op in WEIGHTED_OPS and len(node.inputs) > 1 else None
        if weight is None or weight.name not in density:
            continue
        kind = "fp32" if weight.dtype in ("f32", "f64") else "int8"
        skipped += node_macs(node) * (1 - density[weight.name]) * (
            energy_model.add_pj[kind] + energy_model.mult_pj[kind])
    compute = dense.compute_energy_pj - skipped
    weights = report.huffman_bits / 32 * energy_model.dram_word_pj
    return {"dense_pj": dense.energy_pj, "compute_pj": compute, "weights_pj": weights,
            "activations_pj": dense.activation_energy_pj,
            "total_pj": compute + weights + dense.activation_energy_pj}
