"""Importance criteria: each score checked against an independent computation (a double loop,
torch's own fake-quantizer, a hand-worked example), plus the ratio -> kept-count arithmetic."""

import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from qcompiler.numerics import importance


def test_l1_and_l2_norms_of_rows():
    rows = np.array([[3.0, -4.0], [0.0, 0.0], [1.0, 1.0]])
    np.testing.assert_allclose(importance.l1_norms(rows), [7.0, 0.0, 2.0])
    np.testing.assert_allclose(importance.l2_norms(rows), [5.0, 0.0, math.sqrt(2)])


def test_rows_must_be_two_dimensional():
    with pytest.raises(ValueError, match=r"one row per channel \(a 2-D array\), got shape \(3,\)"):
        importance.l1_norms(np.ones(3))


def test_geometric_median_distances_match_a_double_loop():
    rows = np.random.default_rng(0).normal(size=(7, 5))
    expected = [sum(np.linalg.norm(rows[i] - rows[j]) for j in range(7)) for i in range(7)]
    np.testing.assert_allclose(importance.geometric_median_distances(rows), expected, rtol=1e-9)


def test_fpgm_scores_the_filter_at_the_median_lowest():
    # Four filters around a fifth at their centre: the centre is the most replaceable one.
    rows = np.array([[1.0, 0], [-1, 0], [0, 1], [0, -1], [0, 0]])
    scores = importance.geometric_median_distances(rows)
    assert scores.argmin() == 4
    np.testing.assert_allclose(scores[4], 4.0)  # four unit distances


def test_batchnorm_scales_are_absolute_gammas():
    np.testing.assert_array_equal(importance.batchnorm_scales([-2.0, 0.5]), [2.0, 0.5])


def test_mean_abs_activations_equal_the_mean_over_all_batches_at_once():
    generator = np.random.default_rng(1)
    batches = [generator.normal(size=(2, 3, 4, 4)), generator.normal(size=(2, 3, 4, 4))]
    expected = np.abs(np.concatenate(batches)).mean(axis=(0, 2, 3))
    np.testing.assert_allclose(importance.mean_abs_activations(batches, axis=1), expected)
    with pytest.raises(ValueError, match="at least one batch"):
        importance.mean_abs_activations([], axis=1)


@pytest.mark.parametrize("per_channel", [True, False])
def test_int8_quantization_matches_torch_fake_quantize(per_channel):
    scales = np.array([[0.01], [1], [3], [0.1], [2], [5]])
    rows = (np.random.default_rng(2).normal(size=(6, 10)) * scales).astype(np.float32)
    ours = importance.int8_quantized(rows, per_channel)
    peak = np.abs(rows).max(axis=1) if per_channel else np.full(6, np.abs(rows).max())
    expected = torch.fake_quantize_per_channel_affine(
        torch.from_numpy(rows), torch.from_numpy((peak / 127).astype(np.float32)),
        torch.zeros(6, dtype=torch.int32), 0, -127, 127)
    # torch works in float32, we in float64: equal up to float32 rounding of the same grid point.
    np.testing.assert_allclose(ours, expected.numpy(), rtol=1e-6, atol=1e-6 * np.abs(rows).max())


def test_int8_angles():
    representable = np.array([[127.0, -64.0, 1.0]])  # already on the int8 grid: nothing lost
    assert importance.int8_angles(representable)[0] == pytest.approx(0.0, abs=1e-7)
    # Per tensor, a channel 1000x smaller than the largest quantizes to zero: nothing survives.
    rows = np.array([[100.0, -50.0], [0.01, 0.02]])
    np.testing.assert_allclose(importance.int8_angles(rows, per_channel=False)[1], math.pi / 2)
    assert importance.int8_angles(np.zeros((1, 3)))[0] == 0.0


def test_quantization_aware_score_formula_by_hand():
    # cos(theta) = 1 for grid values, so s_i = |w_i| * |v_i| (one producer, one reader).
    producer = np.array([[127.0, 0.0], [0.0, 127.0]])
    reader_columns = np.array([[3.0, 4.0], [1.0, 0.0]])  # |v| = 5 and 1
    scores = importance.quantization_aware_scores([producer], [reader_columns])
    np.testing.assert_allclose(scores, [1.0 * 1.0, 1.0 * 0.2])  # each factor divided by its max
    # No reader: the producer factor alone.
    np.testing.assert_allclose(importance.quantization_aware_scores([producer]), [1.0, 1.0])
    with pytest.raises(ValueError, match="at least one producer"):
        importance.quantization_aware_scores([])


def test_quantization_aware_score_prefers_channels_that_survive_int8():
    # Per tensor, the third row sets the step to 100/127 ~ 0.79. Rows 0 and 1 have about the same
    # norm, but row 1 keeps a quarter of its energy in entries below half a step, which int8 drops.
    rows = np.array([[1.0, 1.0, 1.0, 1.0], [1.9, 0.3, 0.3, 0.3], [100.0, 0.0, 0.0, 0.0]])
    angles = importance.int8_angles(rows, per_channel=False)
    assert angles[0] == pytest.approx(0.0, abs=1e-12) and angles[1] > 0.2
    scores = importance.quantization_aware_scores([rows], per_channel=False)
    assert scores[1] < scores[0]
    assert importance.l2_norms(rows)[1] == pytest.approx(importance.l2_norms(rows)[0], rel=0.02)


def test_aggregate_normalises_each_vector_by_its_maximum():
    total = importance.aggregate([np.array([1.0, 2.0]), np.array([30.0, 10.0]), np.zeros(2)])
    np.testing.assert_allclose(total, [0.5 + 1.0, 1.0 + 1 / 3])
    with pytest.raises(ValueError, match="differ in length"):
        importance.aggregate([np.ones(2), np.ones(3)])


@pytest.mark.parametrize("channels, ratio, per_channel, round_to, expected", [
    (16, 0.0, 1, None, 16),
    (16, 0.3, 1, None, 11),     # removes round(4.8) = 5
    (16, 0.3, 1, 8, 8),         # 11 -> nearest multiple of 8
    (64, 0.3, 1, 8, 48),        # removes 19 -> 45 -> 48
    (4, 0.3, 8, 16, 4),         # heads of 8: 16-wide needs an even head count; 3 -> 4 (all)
    (6, 0.5, 8, 16, 4),         # 3 heads -> 2 or 4 -> round(1.5) = 2 multiples -> 4
    (5, 0.3, 1, 8, 5),          # cannot reach a multiple of 8: keep all
    (1, 0.6, 1, None, 0),       # the caller turns 0 into an error
])
def test_kept_count(channels, ratio, per_channel, round_to, expected):
    assert importance.kept_count(channels, ratio, per_channel, round_to) == expected


@pytest.mark.parametrize("ratio", [-0.1, 1.0, 1.5])
def test_kept_count_rejects_ratios_outside_zero_one(ratio):
    with pytest.raises(ValueError, match=r"ratio must be in \[0, 1\)"):
        importance.kept_count(8, ratio)


@settings(max_examples=200, deadline=None)
@given(channels=st.integers(1, 300), ratio=st.floats(0, 0.99), per_channel=st.sampled_from([1, 2, 8, 64]),
       round_to=st.sampled_from([None, 2, 4, 8, 16]))
def test_kept_count_is_a_multiple_or_everything(channels, ratio, per_channel, round_to):
    kept = importance.kept_count(channels, ratio, per_channel, round_to)
    assert 0 <= kept <= channels
    if round_to is not None and kept != channels:
        assert kept > 0 and (kept * per_channel) % round_to == 0
    if ratio == 0:
        assert kept == channels


def test_lowest_breaks_ties_by_index():
    np.testing.assert_array_equal(importance.lowest(np.array([2.0, 1.0, 1.0, 0.5]), 2), [1, 3])
    np.testing.assert_array_equal(importance.lowest(np.array([1.0, 1.0, 1.0]), 2), [0, 1])
