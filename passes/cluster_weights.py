"""Weight sharing: replace each layer's weights by the nearest of 2^bits shared values.

    %y = conv2d(%x, %w, %b)    ->    %y = conv2d(%x, %w', %b)    w' = centroids[index(w)]

Per weight, one-dimensional k-means over its nonzero entries (Han et al. 2016, "Deep
Compression", §3; the math and the three initialisations "linear", "density", "random"
are in `qcompiler.numerics.clustering`). Zeros left by pruning (`sparsify_weights`) stay
zero and are not stored by the sparse format, so clustering after pruning spends its
centroids on the surviving weights. The graph keeps float weights holding at most 2^bits
distinct nonzero values: it runs everywhere a float graph runs, and
`qcompiler.analysis.storage.storage_report` prices it as b-bit indices plus a codebook
(Huffman-coded as well). Fine-tune the centroids with `qc.finetune(...,
preserve_sharing=True)`: weights that share a value move together, zeros stay zero.

Options: `bits` in [1, 8]; `bias_bits` (None: biases stay as they are; else each layer's
bias gets its own codebook of 2^bias_bits values: on a small network the float biases can
outweigh the clustered weights); `per_channel` (one codebook per output channel instead of
per weight: after batch-norm folding, channels of one layer span very different ranges, as
per-channel int8 quantization knows; a channel with at most 2^bits distinct values keeps
them); `codebook` ("f32", or "f16": the shared values rounded to float16, so the storage
report counts a 16-bit codebook; run the pass again after a centroid fine-tune, which moves
them off the float16 grid); `init`; `seed` (for "random"); `layers` / `ignore` (layer
names or fnmatch patterns: node names, weight names, module paths).

Requires: a float graph (cluster before quantizing). Preserves: structure, names, shapes,
dtypes; changes the function by the clustering error (notes give each layer's relative
error). Errors, raised before the graph is touched: bits outside [1, 8] or another bad
option (at construction); a selected weight with fewer nonzero entries than 2^bits
(name the layer in `ignore` or lower `bits`); an unknown layer name.

Known limits: batch-norm parameters are not clustered (fold batch norms first
so their scale is in the clustered weights).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import numpy as np

from qcompiler.compression.layer_weights import check_layer_options, layer_weights
from qcompiler.errors import OptionError, PassError
from qcompiler.ir import Graph
from qcompiler.ir.edit import require_float_graph
from qcompiler.ir.pipeline import PassResult
from qcompiler.numerics import clustering


@dataclass(frozen=True)
class cluster_weights:  # lower case: with its options it reads like a function call
    """The configured weight-clustering pass (see the module docstring)."""

    in_place: ClassVar[bool] = True  # rewrites the graph it is given

    bits: int = 4
    init: str = "linear"
    seed: int = 0
    bias_bits: int | None = None  # also cluster each layer's bias, to 2^bias_bits values
    per_channel: bool = False
    codebook: str = "f32"
    layers: tuple[str, ...] | None = None
    ignore: tuple[str, ...] = ()

    def __post_init__(self):
        check_layer_options("cluster_weights", self.bits, self.layers, self.ignore)
        clustering.check_bits(self.bits)
        if self.bias_bits is not None:
            clustering.check_bits(self.bias_bits, "cluster_weights (bias_bits)")
        if self.codebook not in clustering.CODEBOOKS:
            raise OptionError(f"cluster_weights: unknown codebook {self.codebook!r}; choose one of "
                              f"{', '.join(clustering.CODEBOOKS)}")
        if self.init not in clustering.INITS:
            raise OptionError(f"cluster_weights: unknown init {self.init!r}; choose one of "
                              f"{', '.join(clustering.INITS)}")

    def __call__(self, graph: Graph) -> PassResult:
        require_float_graph(graph, "cluster_weights")
        weights, notes = layer_weights(graph, self.layers, self.ignore, "cluster_weights")
        bits = {weight.name: self.bits for weight in weights}
        if self.bias_bits is not None:
            biases, bias_notes = layer_weights(graph, self.layers, self.ignore, "cluster_weights", 2)
            weights, notes = weights + biases, notes + bias_notes
            bits.update({bias.name: self.bias_bits for bias in biases})
        per_channel = {weight.name for weight in weights if self.per_channel and weight.data.ndim > 1}
        for weight in weights:
            nonzero = int(np.count_nonzero(weight.data))
            centroids = 2 ** bits[weight.name]
            if nonzero < centroids and weight.name not in per_channel:
                readers = ", ".join(f"%{user.name}" for user in weight.users)
                raise PassError(f"cluster_weights: weight %{weight.name} (of {readers}) has "
                                f"{nonzero} nonzero entries, fewer than the {centroids} shared "
                                f"values of {bits[weight.name]} bits: lower the bits or add the "
                                "layer to ignore")
        # Everything above only reads the graph; from here on it changes.
        modified = False
        for weight in weights:
            original = weight.data
            if weight.name in per_channel:
                clustered = clustering.cluster_rows(original, bits[weight.name], self.init, self.seed)
            else:
                clustered, _ = clustering.cluster_nonzero(original, bits[weight.name], self.init, self.seed)
            clustered = clustering.round_codebook(clustered, self.codebook)
            if np.array_equal(clustered, original):
                continue
            modified = True
            error = np.linalg.norm(clustered - original) / max(np.linalg.norm(original), 1e-30)
            weight.data = clustered  # a new array: graph copies share the old one
            distinct = len(np.unique(clustered[clustered != 0]))
            shared = (f"{distinct} shared values" if weight.name not in per_channel else
                      f"{distinct} shared values in {len(clustered)} per-channel codebooks")
            notes.append(f"%{weight.name}: {shared}, relative error {error:.3g}")
        return PassResult(graph, modified, notes)
