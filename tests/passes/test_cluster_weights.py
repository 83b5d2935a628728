"""cluster_weights: at most 2^bits shared values per weight, zeros kept, the function equal to
the graph with the clustered weights, bad input refused with the graph untouched; the
storage report prices the result; fine-tuning with preserve_sharing keeps the sharing."""

import numpy as np
import pytest
import torch
from oracles import run

import qcompiler as qc
from qcompiler.analysis.storage import compressed_energy, storage_report
from qcompiler.errors import OptionError, PassError
from qcompiler.examples.models import digits_cnn
from qcompiler.passes import cluster_weights, fold_batchnorm, sparsify_weights


@pytest.fixture(scope="module")
def digits():
    model, example = digits_cnn(batch=4)
    return fold_batchnorm(qc.trace(model, example)).graph, example


def wiring(graph):
    return [(n.name, n.op, [v.name if v is not None else None for v in n.inputs]) for n in graph]


def weights_of(graph):
    return {node.inputs[1].name: node.inputs[1].data for node in graph if node.op in ("conv2d", "linear")}


@pytest.mark.parametrize("bits", [2, 3, 5])
@pytest.mark.parametrize("init", ["linear", "density", "random"])
def test_each_weight_keeps_at_most_2_to_the_bits_values(digits, bits, init):
    graph, example = digits
    before = weights_of(graph)
    result = cluster_weights(bits=bits, init=init)(graph.copy())
    assert result.modified
    for name, weight in weights_of(result.graph).items():
        assert len(np.unique(weight)) <= 2 ** bits
        assert weight.dtype == before[name].dtype and weight.shape == before[name].shape
    # Only constants changed: the same nodes read the same value names.
    assert wiring(result.graph) == wiring(graph)
    error = [np.linalg.norm(weights_of(result.graph)[n] - w) / np.linalg.norm(w) for n, w in before.items()]
    assert max(error) < {2: 0.6, 3: 0.3, 5: 0.1}[bits]


def test_clustering_error_falls_with_bits(digits):
    graph, example = digits
    reference = run(graph, *example)[0]
    errors = [float((run(cluster_weights(bits=b)(graph.copy()).graph, *example)[0] - reference).norm())
              for b in (2, 3, 4, 5, 6)]
    assert all(a > b for a, b in zip(errors, errors[1:], strict=False)), errors


def test_pruned_zeros_stay_zero_and_are_not_clustered(digits):
    graph, _ = digits
    pruned = sparsify_weights(sparsity=0.7)(graph.copy()).graph
    zeros = {n: w == 0 for n, w in weights_of(pruned).items()}
    clustered = cluster_weights(bits=3)(pruned).graph
    for name, weight in weights_of(clustered).items():
        np.testing.assert_array_equal(weight == 0, zeros[name])  # no new zeros, none lost
        assert len(np.unique(weight[weight != 0])) <= 8


def test_clustering_twice_changes_nothing(digits):
    graph, _ = digits
    once = cluster_weights(bits=3)(graph.copy()).graph
    again = cluster_weights(bits=3)(once.copy())
    assert not again.modified
    for name, weight in weights_of(again.graph).items():
        np.testing.assert_array_equal(weight, weights_of(once)[name])


def test_bias_bits_clusters_biases_too(digits):
    graph, _ = digits
    result = cluster_weights(bits=4, bias_bits=2)(graph.copy()).graph
    for node in result:
        if node.op in ("conv2d", "linear") and node.inputs[2] is not None:
            assert len(np.unique(node.inputs[2].data)) <= 4


@pytest.mark.parametrize("options, message", [
    ({"bits": 0}, r"bits must be an int in \[1, 8\] \(2 to 256 shared values\), got 0"),
    ({"bits": 9}, r"bits must be an int in \[1, 8\]"),
    ({"bits": 4, "bias_bits": 12}, r"cluster_weights \(bias_bits\): bits must be an int in \[1, 8\]"),
    ({"init": "kmeans++"}, "unknown init 'kmeans\\+\\+'; choose one of linear, density, random"),
    ({"layers": "features.2"}, "layers must be a tuple of names"),
])
def test_bad_options_are_refused_at_construction(options, message):
    with pytest.raises(OptionError, match=message):
        cluster_weights(**options)


def test_a_layer_with_fewer_weights_than_centroids_is_refused_and_the_graph_untouched(digits):
    graph = digits[0].copy()
    text = str(graph)
    before = {n: w.copy() for n, w in weights_of(graph).items()}
    # classifier.weight has 640 entries, features.0.0 has 144: 8 bits (256 values) is too many.
    with pytest.raises(PassError, match=r"weight %features\.0\.0\.weight\.folded \(of %features\.0\.0\) "
                       r"has 144 nonzero entries, fewer than the 256 shared values of 8 bits: "
                       r"lower the bits or add the layer to ignore"):
        cluster_weights(bits=8)(graph)
    assert str(graph) == text
    for name, weight in weights_of(graph).items():
        np.testing.assert_array_equal(weight, before[name])


def test_unknown_layer_name_is_refused(digits):
    with pytest.raises(PassError, match="no layer is named 'feature.2'"):
        cluster_weights(bits=2, layers=("feature.2",))(digits[0].copy())


def test_quantized_graph_is_refused(digits):
    graph, example = digits
    quantized = qc.quantize(graph, [example[0]])
    with pytest.raises(PassError, match="cluster_weights rewrites float graphs"):
        cluster_weights(bits=4)(quantized)


def test_ignore_and_layers_select(digits):
    graph, _ = digits
    result = cluster_weights(bits=2, layers=("classifier",))(graph.copy()).graph
    after = weights_of(result)
    for name, weight in weights_of(graph).items():
        if name == "classifier.weight":
            assert len(np.unique(after[name])) <= 4
        else:
            np.testing.assert_array_equal(after[name], weight)


def test_storage_report_prices_pruned_clustered_weights(digits):
    graph, _ = digits
    dense = storage_report(graph)
    assert dense.original_bits == qc.cost(graph).weight_bytes * 8
    assert dense.huffman_ratio == pytest.approx(1.0, abs=0.01)  # nothing to gain on raw floats
    compressed = cluster_weights(bits=3)(sparsify_weights(sparsity=0.8)(graph.copy()).graph).graph
    report = storage_report(compressed)
    assert report.fixed_ratio > 5 and report.huffman_bits <= report.fixed_bits + 8 * 64
    row = next(w for w in report.weights if w.name == "features.6.weight.folded")
    assert row.fixed.layout == "sparse" and row.distinct <= 8
    assert row.density == pytest.approx(0.2, abs=0.01)
    assert "rate (P+Q+H)" in report.table()
    energy = compressed_energy(compressed, report)
    assert energy["total_pj"] < energy["dense_pj"]


def test_finetune_with_preserve_sharing_keeps_zeros_and_shared_values(digits):
    graph, example = digits
    compressed = cluster_weights(bits=3)(sparsify_weights(sparsity=0.6)(graph.copy()).graph).graph
    generator = torch.Generator().manual_seed(0)
    data = [(torch.randn(8, 1, 8, 8, generator=generator), torch.randint(0, 10, (8,), generator=generator))
            for _ in range(4)]
    tuned = qc.finetune(compressed, data, epochs=2, lr=1e-2, preserve_sharing=True, progress=False).graph
    plain = qc.finetune(compressed, data, epochs=2, lr=1e-2, progress=False).graph
    changed = False
    for name, weight in weights_of(tuned).items():
        original = weights_of(compressed)[name]
        np.testing.assert_array_equal(weight == 0, original == 0)
        # Entries that shared a value still share one (the centroid moved as a whole).
        for value in np.unique(original[original != 0]):
            assert len(np.unique(weight[original == value])) == 1
        assert len(np.unique(weight[weight != 0])) <= 8
        changed |= not np.array_equal(weight, original)
    assert changed  # the centroids did train
    assert any(len(np.unique(w)) > 9 for w in weights_of(plain).values())  # without it, sharing goes
