"""Per-channel codebooks and half-precision codebooks of cluster_weights, and their storage."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import qcompiler as qc
from qcompiler.analysis.storage import storage_report
from qcompiler.examples.models import digits_cnn


def _graph():
    model, example = digits_cnn()
    graph = qc.trace(model, example)
    qc.passes.fold_batchnorm(graph)
    return graph


@settings(max_examples=10, deadline=None)
@given(st.integers(1, 4))
def test_per_channel_clustering_never_exceeds_two_to_the_bits_values_a_channel(bits):
    graph = _graph()
    qc.passes.cluster_weights(bits=bits, per_channel=True, layers=("features.2", "classifier"))(graph)
    for name in ("features.2", "classifier"):
        rows = graph.values[name].producer.inputs[1].data
        rows = rows.reshape(rows.shape[0], -1)
        assert max(len(np.unique(row[row != 0])) for row in rows) <= 2 ** bits


def test_per_channel_codebooks_fit_channels_of_different_ranges_better():
    rng = np.random.default_rng(0)
    weight = (rng.normal(size=(16, 64)) * np.geomspace(0.01, 10, 16)[:, None]).astype(np.float32)

    def clustered_error(per_channel: bool) -> float:
        graph = qc.Graph("one")
        x = graph.add_input("x", (2, 64))
        w = graph.add_constant("fc.weight", weight.copy())
        graph.outputs = [graph.add_node("linear", [x, w, None], name="fc").output]
        qc.passes.cluster_weights(bits=4, per_channel=per_channel)(graph)
        difference = graph.values["fc.weight"].data - weight
        rows = np.linalg.norm(difference, axis=1) / np.linalg.norm(weight, axis=1)
        return float(rows.max())  # the worst channel's relative error

    # 16 levels for 64 normal values: about 10% in every channel with its own codebook; one
    # codebook spends its levels on the widest channels and zeroes the narrow ones.
    assert clustered_error(True) < 0.15
    assert clustered_error(False) > 0.9


def test_half_precision_codebook_is_exact_in_float16_and_counted_at_16_bits():
    full, half = _graph(), _graph()
    qc.passes.cluster_weights(bits=4)(full)
    qc.passes.cluster_weights(bits=4, codebook="f16")(half)
    weight = half.values["features.6"].producer.inputs[1].data
    np.testing.assert_array_equal(weight.astype(np.float16).astype(np.float32), weight)
    saved = storage_report(full).huffman_bits - storage_report(half).huffman_bits
    books = sum(w.coded.codebook_bits for w in storage_report(full).weights if w.distinct <= 16)
    assert saved > 0 and saved >= books // 2 - 16 * 8  # each 32-bit entry became 16 bits
    x = torch.randn(4, 1, 8, 8)
    torch.testing.assert_close(qc.to_torch(half)(x), qc.to_torch(full)(x), rtol=0.05, atol=0.05)
    with pytest.raises(qc.OptionError, match="unknown codebook 'f8'; choose one of f32, f16"):
        qc.passes.cluster_weights(codebook="f8")
