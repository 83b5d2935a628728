"""The low-rank factorisations and rank selection of qcompiler.numerics.low_rank."""

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from qcompiler.numerics import low_rank

SETTINGS = settings(max_examples=40, deadline=None)


def _weight(seed: int, shape) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal(shape).astype(np.float32)


def _relative_error(approx: np.ndarray, exact: np.ndarray) -> float:
    return float(np.linalg.norm(approx - exact) / np.linalg.norm(exact))


conv_shapes = st.tuples(st.integers(1, 6), st.integers(1, 6), st.integers(1, 4), st.integers(1, 4))


@SETTINGS
@given(shape=conv_shapes, seed=st.integers(0, 2**31))
def test_full_rank_factors_reconstruct_the_weight(shape, seed):
    weight = _weight(seed, shape)
    first, second = low_rank.channel_factors(weight, low_rank.channel_full_rank(shape))
    assert _relative_error(low_rank.channel_reconstruct(first, second), weight) < 1e-5
    vertical, horizontal = low_rank.spatial_factors(weight, low_rank.spatial_full_rank(shape))
    assert vertical.shape[1:] == (shape[1], shape[2], 1)
    assert horizontal.shape[::2] == (shape[0], 1)
    assert _relative_error(low_rank.spatial_reconstruct(vertical, horizontal), weight) < 1e-5
    factors = low_rank.tucker2_factors(weight, *low_rank.tucker2_full_ranks(shape))
    assert _relative_error(low_rank.tucker2_reconstruct(*factors), weight) < 1e-5


def test_linear_weight_factors_are_matrices():
    weight = _weight(0, (6, 9))
    first, second = low_rank.channel_factors(weight, 4)
    assert first.shape == (4, 9) and second.shape == (6, 4)
    assert first.dtype == second.dtype == np.float32


@SETTINGS
@given(shape=conv_shapes, seed=st.integers(0, 2**31), data=st.data())
def test_truncation_error_is_the_dropped_energy(shape, seed, data):
    """Eckart-Young: the squared error of the rank-r SVD is the sum of the dropped squared
    singular values (checked for both matricisations), and Tucker-2 stays within the HOSVD
    bound (the sum of both modes' dropped energy)."""
    weight = _weight(seed, shape).astype(np.float64)
    for matrix_of, factors_of, reconstruct, full in [
        (low_rank.channel_matrix, low_rank.channel_factors, low_rank.channel_reconstruct,
         low_rank.channel_full_rank(shape)),
        (low_rank.spatial_matrix, low_rank.spatial_factors, low_rank.spatial_reconstruct,
         low_rank.spatial_full_rank(shape)),
    ]:
        rank = data.draw(st.integers(1, full))
        values = low_rank.singular_values(matrix_of(weight))
        error = np.sum((reconstruct(*factors_of(weight, rank)) - weight) ** 2)
        assert error == pytest.approx(np.sum(values[rank:] ** 2), rel=1e-6, abs=1e-9)
    full_out, full_in = low_rank.tucker2_full_ranks(shape)
    rank_out, rank_in = data.draw(st.integers(1, full_out)), data.draw(st.integers(1, full_in))
    error = np.sum((low_rank.tucker2_reconstruct(
        *low_rank.tucker2_factors(weight, rank_out, rank_in)) - weight) ** 2)
    dropped = (np.sum(low_rank.singular_values(low_rank.channel_matrix(weight))[rank_out:] ** 2)
               + np.sum(low_rank.singular_values(low_rank.input_channel_matrix(weight))[rank_in:] ** 2))
    assert error <= dropped * (1 + 1e-9) + 1e-12


def test_spatial_matrix_layout():
    """M[(c, i), (n, j)] = W[n, c, i, j] (Jaderberg et al. 2014)."""
    weight = _weight(1, (4, 3, 2, 5))
    matrix = low_rank.spatial_matrix(weight)
    assert matrix.shape == (3 * 2, 4 * 5)
    assert matrix[1 * 2 + 1, 3 * 5 + 4] == weight[3, 1, 1, 4]


@SETTINGS
@given(values=st.lists(st.floats(0.0, 100.0), min_size=1, max_size=30), energy=st.floats(1e-6, 1.0))
def test_rank_for_energy_is_the_smallest_rank_keeping_the_energy(values, energy):
    values = np.sort(np.array(values))[::-1]
    rank = low_rank.rank_for_energy(values, energy)
    assert 1 <= rank <= len(values)
    if values.sum() > 0:
        assert low_rank.retained_energy(values, rank) >= energy * (1 - 1e-9)
        if rank > 1:
            assert low_rank.retained_energy(values, rank - 1) < energy


def test_full_energy_of_a_rank_deficient_matrix_is_its_rank():
    rng = np.random.default_rng(2)
    matrix = rng.standard_normal((8, 3)) @ rng.standard_normal((3, 10))
    assert low_rank.rank_for_energy(low_rank.singular_values(matrix), 1.0) == 3


@pytest.mark.parametrize("energy", [0.0, -0.1, 1.01, float("nan")])
def test_energy_outside_zero_one_is_refused(energy):
    with pytest.raises(ValueError, match=r"energy must be in \(0, 1\]"):
        low_rank.rank_for_energy(np.ones(3), energy)


def test_resolve_rank():
    assert low_rank.resolve_rank(3, 10) == 3
    assert low_rank.resolve_rank(0.3, 10) == 3  # not 4: 0.3 * 10 rounds to 3.0000000000000004
    assert low_rank.resolve_rank(0.01, 10) == 1
    assert low_rank.resolve_rank(1.0, 10) == 10
    with pytest.raises(ValueError, match="rank must be at least 1, got 0"):
        low_rank.resolve_rank(0, 10)
    with pytest.raises(ValueError, match="rank 11 is above the full rank 10"):
        low_rank.resolve_rank(11, 10)
    with pytest.raises(ValueError, match=r"a fractional rank must be in \(0, 1\], got 1.5"):
        low_rank.resolve_rank(1.5, 10)
    with pytest.raises(ValueError, match="rank must be an int"):
        low_rank.resolve_rank(True, 10)


def test_truncated_svd_refuses_a_rank_out_of_range():
    with pytest.raises(ValueError, match=r"rank 5 is outside 1..4 for a \(4, 6\) matrix"):
        low_rank.truncated_svd(np.ones((4, 6)), 5)


def test_allocation_meets_the_budget_and_cuts_the_redundant_layer_first():
    """Layer 0 has a fast-decaying spectrum (cheap to cut), layer 1 a flat one."""
    fast = np.array([10.0, 1.0, 0.1, 0.01, 0.001, 0.0001, 0.0, 0.0])
    flat = np.ones(8)
    per_rank = 10
    macs = [per_rank * np.arange(1, 9)] * 2
    losses = [np.array([1 - low_rank.retained_energy(s, r) for r in range(1, 9)]) for s in (fast, flat)]
    original = [80, 80]
    picks = low_rank.allocate_to_budget(macs, losses, original, budget=100)
    total = sum(o if p is None else m[p] for o, m, p in zip(original, macs, picks, strict=True))
    assert total <= 100
    # Rank 2 of the redundant layer loses ~1e-4 of its energy and alone meets the budget;
    # the flat layer would lose 1/8 per rank, so it stays whole.
    assert picks == [1, None]


def test_allocation_changes_nothing_when_the_budget_is_already_met():
    assert low_rank.allocate_to_budget([np.array([5, 10])], [np.array([0.5, 0.0])], [20],
                                       budget=20) == [None]


def test_allocation_stops_at_the_cheapest_candidates_when_the_budget_is_unreachable():
    picks = low_rank.allocate_to_budget([np.array([5, 10])], [np.array([0.5, 0.0])], [20], budget=1)
    assert picks == [0]


def test_the_last_move_saves_just_enough():
    """Greedy alone would cut this flat layer to rank 1; rank 4 (40 MACs) meets a budget of 45."""
    macs = [10 * np.arange(1, 9)]
    losses = [1 - np.arange(1, 9) / 8]
    assert low_rank.allocate_to_budget(macs, losses, [80], budget=45) == [3]
