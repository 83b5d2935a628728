"""Weight clustering, Huffman coding and sparse storage: each checked against an independent
computation (brute-force nearest centroids, the merge-sum identity of Huffman codes, a
loop that writes the relative-index format entry by entry)."""

import heapq
import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from qcompiler.errors import OptionError
from qcompiler.numerics import clustering, huffman, sparse_storage, sparsity

finite = st.floats(-100, 100, allow_nan=False, width=32)


@settings(max_examples=60)
@given(hnp.arrays(np.float32, st.integers(1, 200), elements=finite), st.integers(1, 5),
       st.sampled_from(clustering.INITS))
def test_clustering_keeps_at_most_2_to_the_bits_nonzero_values_each_at_its_nearest_centroid(
        weight, bits, init):
    if np.count_nonzero(weight) < 2 ** bits:
        with pytest.raises(OptionError, match="needs at least"):
            clustering.cluster_nonzero(weight, bits, init)
        return
    clustered, centroids = clustering.cluster_nonzero(weight, bits, init)
    assert len(np.unique(clustered[clustered != 0])) <= 2 ** bits
    assert len(centroids) <= 2 ** bits
    np.testing.assert_array_equal(clustered[weight == 0], 0)  # pruned weights stay pruned
    # Each nonzero weight sits on its nearest centroid (brute force over all of them).
    nonzero = weight != 0
    nearest = centroids[np.argmin(np.abs(weight[nonzero, None].astype(np.float64)
                                         - centroids[None].astype(np.float64)), axis=1)]
    distance = np.abs(clustered[nonzero].astype(np.float64) - weight[nonzero])
    best = np.abs(nearest.astype(np.float64) - weight[nonzero])
    np.testing.assert_allclose(distance, best, rtol=0, atol=1e-4)


@settings(max_examples=40)
@given(hnp.arrays(np.float64, st.integers(4, 100), elements=st.floats(-10, 10)), st.integers(1, 3))
def test_kmeans_centroids_are_the_means_of_their_clusters(values, bits):
    k = 2 ** bits
    if len(values) < k:
        return
    centroids, labels = clustering.kmeans_1d(values, k)
    for index, centroid in enumerate(centroids):
        members = values[labels == index]
        assert len(members)  # no empty cluster is returned
        np.testing.assert_allclose(centroid, members.mean(), rtol=1e-9, atol=1e-9)


def test_linear_and_density_initialisations_by_hand():
    values = np.array([0.0, 1, 2, 3, 4, 5, 6, 7, 8, 100])
    np.testing.assert_allclose(clustering.initial_centroids(values, 3, "linear"), [0, 50, 100])
    # Quantiles at 1/6, 1/2, 5/6 of the distribution: dense where the values are.
    np.testing.assert_allclose(clustering.initial_centroids(values, 3, "density"),
                               np.quantile(values, [1 / 6, 1 / 2, 5 / 6]))
    random = clustering.initial_centroids(values, 3, "random", seed=1)
    assert set(random) <= set(values) and len(set(random)) == 3


@pytest.mark.parametrize("bits", [0, 9, 2.5, True, "4"])
def test_bits_out_of_range_are_refused(bits):
    with pytest.raises(OptionError, match=r"bits must be an int in \[1, 8\]"):
        clustering.check_bits(bits)


def test_share_by_value_labels_equal_values_alike_and_zeros_minus_one():
    labels = clustering.share_by_value(np.array([[0.5, 0.0], [0.5, -1.0]], np.float32))
    assert labels[0, 1] == -1
    assert labels[0, 0] == labels[1, 0] != labels[1, 1]


# ---- Huffman ------------------------------------------------------------------------------


def merge_cost(counts):
    """Total Huffman-coded bits by the merge-sum identity: every merge of two subtrees adds
    their weight once (each symbol below gets one more bit). Independent of the code build."""
    heap = [c for c in counts if c > 0]
    if len(heap) == 1:
        return heap[0]  # a lone symbol still costs one bit each
    heapq.heapify(heap)
    total = 0
    while len(heap) > 1:
        merged = heapq.heappop(heap) + heapq.heappop(heap)
        total += merged
        heapq.heappush(heap, merged)
    return total


@settings(max_examples=100)
@given(st.lists(st.integers(0, 1000), min_size=1, max_size=40).filter(any))
def test_huffman_size_equals_the_merge_sum_of_the_histogram(counts):
    histogram = dict(enumerate(counts))
    assert huffman.encoded_bits(histogram) == merge_cost(counts)
    lengths = huffman.code_lengths(histogram)
    # A complete prefix code: Kraft's sum is exactly 1 (or a lone 1-bit word).
    if len(lengths) > 1:
        assert sum(2.0 ** -n for n in lengths.values()) == pytest.approx(1.0)
    # Never worse than fixed width, never better than the entropy.
    total = sum(counts)
    assert huffman.encoded_bits(histogram) <= total * max(1, math.ceil(math.log2(len(lengths))))
    entropy = -sum(c * math.log2(c / total) for c in counts if c)
    assert huffman.encoded_bits(histogram) >= entropy - 1e-6


def test_huffman_by_hand():
    # a:5 b:2 c:1 d:1 -> merges 2 (c+d), 4 (b+cd), 9: lengths a1 b2 c3 d3, 5+4+3+3 = 15 bits.
    lengths = huffman.code_lengths({"a": 5, "b": 2, "c": 1, "d": 1})
    assert lengths == {"a": 1, "b": 2, "c": 3, "d": 3}
    assert huffman.encoded_bits({"a": 5, "b": 2, "c": 1, "d": 1}) == 15
    assert huffman.table_bits({"a": 5, "b": 2, "c": 1, "d": 1}) == 4 * 2  # lengths up to 3: 2 bits


# ---- sparse storage -----------------------------------------------------------------------


def written_entries(row, relative_bits):
    """The relative-index format of one row written entry by entry, as the paper's Fig. 2."""
    largest = 2 ** relative_bits - 1
    entries, previous = [], -1
    for position in np.flatnonzero(row):
        gap = position - previous - 1
        while gap > largest:
            entries.append((largest, 0.0))  # filler zero
            previous += largest + 1
            gap = position - previous - 1
        entries.append((gap, row[position]))
        previous = position
    return entries


@settings(max_examples=60)
@given(hnp.arrays(np.float32, st.tuples(st.integers(1, 6), st.integers(1, 40)),
                  elements=st.sampled_from([0.0, 0.0, 0.0, 0.5, -1.25, 2.0])), st.integers(1, 4))
def test_relative_index_histogram_matches_a_written_out_format(weight, relative_bits):
    entries = [e for row in weight for e in written_entries(row, relative_bits)]
    histogram, fillers, per_row = sparse_storage.relative_gaps(weight, relative_bits)
    expected = np.bincount([g for g, _ in entries], minlength=2 ** relative_bits)
    np.testing.assert_array_equal(histogram, expected)
    assert fillers == sum(1 for _, v in entries if v == 0)
    assert per_row.tolist() == [len(written_entries(row, relative_bits)) for row in weight]
    # The format decodes back to the weight.
    for row in weight:
        decoded, position = np.zeros_like(row), -1
        for gap, value in written_entries(row, relative_bits):
            position += gap + 1
            decoded[position] = value
        np.testing.assert_array_equal(decoded, row)


def test_sparse_bits_by_hand():
    # One row, 3 relative bits: nonzeros at 1 and 12 -> gaps 1, then 10 = filler (7) + 2.
    weight = np.zeros((1, 16), np.float32)
    weight[0, 1], weight[0, 12] = 0.1, -0.3  # not float16 values: a 32-bit codebook
    bits = sparse_storage.sparse_bits(weight, 3)
    assert (bits.entries, bits.fillers) == (3, 1)
    # 3 stored values {0.1, 0, -0.3}: raw 96 bits; one codebook {-0.3, 0, 0.1}: 3 x 2-bit
    # indices + 96 bits; the row's codebook {-0.3, 0.1} with index 0 for zero: 6 + 64 bits.
    assert (bits.value_bits, bits.codebook_bits) == (6, 64)
    weight[0, 12] = 0.1
    single = sparse_storage.sparse_bits(weight, 3)  # {0.1} and zero: 3 x 1 bit + 32
    assert (single.value_bits, single.codebook_bits) == (3, 32)
    assert bits.position_bits == 3 * 3 + 2  # relative indices + one row count of 3 (2 bits)


def test_dense_clustered_weight_costs_indices_and_codebook():
    weight = np.tile(np.array([0.2, -0.7, 1.1, 0.0], np.float32), 64)  # 256 entries, 4 values
    bits = sparse_storage.dense_bits(weight)
    # 2-bit indices; zero is index 0, not a codebook entry; 3 float32 entries.
    assert (bits.value_bits, bits.codebook_bits) == (256 * 2, 3 * 32)
    assert bits.value_bits_huffman == 256 * 2 + huffman.table_bits({i: 64 for i in range(4)})
    # Values that are exactly float16 are stored in a half-precision codebook.
    half = np.tile(np.array([0.25, -0.5, 1.0, 0.0], np.float32), 64)
    assert sparse_storage.dense_bits(half).codebook_bits == 3 * 16


def test_per_channel_codebooks_are_counted_per_row():
    rng = np.random.default_rng(0)
    books = rng.normal(size=(8, 4)).astype(np.float32)  # 8 rows, 4 values each, 32 distinct
    weight = np.take_along_axis(books, rng.integers(0, 4, (8, 64)), axis=1)
    bits = sparse_storage.dense_bits(weight)
    # Per row: 2-bit indices, 4 float32 entries; one codebook of 32 values would need 5 bits.
    assert (bits.value_bits, bits.codebook_bits) == (8 * 64 * 2, 8 * 4 * 32)
    assert sparse_storage.codebook_entry_bits(books, 32) == 32


# ---- sparsity -----------------------------------------------------------------------------


def test_gradual_schedule_is_zhu_and_gupta_eq1():
    schedule = sparsity.gradual_schedule(0.9, 4, initial=0.1)
    expected = [0.9 + (0.1 - 0.9) * (1 - t / 4) ** 3 for t in range(1, 5)]
    np.testing.assert_allclose(schedule, expected)
    assert schedule[-1] == pytest.approx(0.9)
    assert all(a < b for a, b in zip(schedule, schedule[1:], strict=False))


@pytest.mark.parametrize("value", [1.0, -0.1, 1.5, True])
def test_sparsity_out_of_range_is_refused(value):
    with pytest.raises(OptionError, match=r"sparsity must be a fraction in \[0, 1\)"):
        sparsity.check_sparsity(value, "sparsify_weights")


@settings(max_examples=50)
@given(st.lists(hnp.arrays(np.float64, st.integers(1, 30), elements=st.floats(0, 10)), min_size=1,
                max_size=4), st.floats(0, 0.99), st.sampled_from(["global", "local"]))
def test_pruned_masks_remove_the_lowest_fraction(scores, fraction, scope):
    masks = sparsity.pruned_masks(scores, fraction, scope)
    if scope == "local":
        for score, mask in zip(scores, masks, strict=True):
            assert mask.sum() == round(fraction * score.size)
            if mask.any() and (~mask).any():
                assert score[mask].max() <= score[~mask].min()
    else:
        flat_scores = np.concatenate(scores)
        flat_masks = np.concatenate(masks)
        assert flat_masks.sum() == round(fraction * flat_scores.size)
        if flat_masks.any() and (~flat_masks).any():
            assert flat_scores[flat_masks].max() <= flat_scores[~flat_masks].min()


def test_saliency_formulas_by_hand():
    np.testing.assert_allclose(sparsity.obd_saliency(np.array([2.0, -1]), np.array([0.5, 4])), [1.0, 2.0])
    np.testing.assert_allclose(sparsity.taylor_saliency(np.array([2.0, -1]),
                                                        [np.array([1.0, 1]), np.array([0.0, 3])]),
                               [4.0, 1 + 9])
