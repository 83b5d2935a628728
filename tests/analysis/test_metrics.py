"""Fidelity metrics against hand-computed cases and an independent torch computation."""

import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from qcompiler.analysis.metrics import (
    accuracy,
    confident_mask,
    confident_top1_agreement,
    fidelity,
    mean_kl_divergence,
    top1_agreement,
    topk_containment,
)

REFERENCE = np.array([[5.0, 1.0, 0.0, -1.0],    # class 0, confident
                      [0.1, 0.0, 0.2, 0.0],     # class 2, not confident
                      [0.0, 4.0, 0.0, 0.0]])    # class 1, confident


def test_top1_agreement_counts_matching_argmax():
    candidate = np.array([[4.0, 1.0, 0.0, 0.0],   # agrees
                          [0.3, 0.0, 0.2, 0.0],   # disagrees
                          [0.0, 4.0, 5.0, 0.0]])  # disagrees
    assert top1_agreement(REFERENCE, candidate) == pytest.approx(1 / 3)
    assert top1_agreement(REFERENCE, REFERENCE) == 1.0


def test_topk_containment_checks_reference_class_in_candidate_top_k():
    # The reference's class 0 is ranked 1st, 3rd and 4th (last) in the three rows.
    reference = np.array([[9.0, 0, 0, 0]] * 3)
    candidate = np.array([[4.0, 3, 2, 1], [2.0, 4, 3, 1], [1.0, 4, 3, 2]])
    assert topk_containment(reference, candidate, k=1) == pytest.approx(1 / 3)
    assert topk_containment(reference, candidate, k=3) == pytest.approx(2 / 3)
    assert topk_containment(reference, candidate, k=4) == 1.0
    with pytest.raises(ValueError, match="k must be in 1..4"):
        topk_containment(reference, candidate, k=5)


def test_kl_is_zero_for_equal_distributions_and_matches_a_hand_value():
    assert mean_kl_divergence(REFERENCE, REFERENCE + 3.0) == pytest.approx(0.0, abs=1e-12)
    # Two classes, p = (0.5, 0.5), q = softmax(log 3, 0) = (0.75, 0.25):
    # KL = 0.5 log(0.5/0.75) + 0.5 log(0.5/0.25) = 0.5 log(4/3).
    value = mean_kl_divergence([[0.0, 0.0]], [[math.log(3.0), 0.0]])
    assert value == pytest.approx(0.5 * math.log(4 / 3), rel=1e-12)


@settings(max_examples=30, deadline=None)
@given(arrays(np.float64, (5, 7), elements=st.floats(-20, 20)),
       arrays(np.float64, (5, 7), elements=st.floats(-20, 20)))
def test_kl_matches_torch_and_is_nonnegative(reference, candidate):
    expected = torch.nn.functional.kl_div(torch.log_softmax(torch.from_numpy(candidate), 1),
                                          torch.log_softmax(torch.from_numpy(reference), 1),
                                          reduction="batchmean", log_target=True).item()
    value = mean_kl_divergence(reference, candidate)
    assert value >= -1e-12
    assert value == pytest.approx(expected, rel=1e-9, abs=1e-12)


def test_confident_subset_uses_reference_probability_above_threshold():
    assert confident_mask(REFERENCE).tolist() == [True, False, True]
    candidate = np.array([[0.0, 1.0, 0.0, 0.0],   # confident row, disagrees
                          [0.0, 0.0, 9.0, 0.0],   # not confident: ignored
                          [0.0, 4.0, 0.0, 0.0]])  # confident row, agrees
    assert confident_top1_agreement(REFERENCE, candidate) == pytest.approx(0.5)
    assert math.isnan(confident_top1_agreement(np.zeros((2, 4)), np.zeros((2, 4))))


def test_fidelity_collects_every_metric():
    reference = np.hstack([REFERENCE, np.full((3, 2), -9.0)])  # six classes, so top-5 exists
    candidate = reference.copy()
    candidate[2, 1] = -20.0  # row 2 (confident, class 1) now ranks class 1 last
    result = fidelity(torch.tensor(reference), torch.tensor(candidate))
    assert result == {"top1_agreement": pytest.approx(2 / 3), "top5_containment": pytest.approx(2 / 3),
                      "mean_kl": pytest.approx(mean_kl_divergence(reference, candidate)),
                      "confident_top1_agreement": 0.5, "confident_count": 2, "count": 3}
    assert result["mean_kl"] > 0


def test_fidelity_with_few_classes_takes_a_smaller_k():
    result = fidelity(REFERENCE, REFERENCE, k=3)
    assert result["top3_containment"] == 1.0
    assert result["confident_count"] == 2 and result["count"] == 3


def test_accuracy_is_the_fraction_of_correct_argmax():
    assert accuracy(REFERENCE, np.array([0, 2, 0])) == pytest.approx(2 / 3)
    assert accuracy(torch.tensor(REFERENCE), torch.tensor([0, 2, 1])) == 1.0
    with pytest.raises(ValueError, match=r"labels must have shape \(3,\)"):
        accuracy(REFERENCE, np.array([0, 1]))


def test_shape_errors_name_the_problem():
    with pytest.raises(ValueError, match="differ in shape"):
        top1_agreement(np.zeros((2, 3)), np.zeros((2, 4)))
    with pytest.raises(ValueError, match=r"must be a non-empty \[N, classes\] array"):
        top1_agreement(np.zeros(3), np.zeros(3))
