"""convert_to_winograd: F(2x2, 3x3) and F(4x4, 3x3) keep the function to float32 tolerance
(1e-5 and 1e-4 of the output's magnitude: F(4x4)'s transform constants reach 8 and 1/24),
fail loudly naming a conv they cannot rewrite, and the transforms are exact in float64."""

from __future__ import annotations

import re

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

import qcompiler as qc
from qcompiler.numerics import winograd

TOLERANCE = {2: 1e-5, 4: 1e-4}


class Net(nn.Module):
    def __init__(self, bias: bool = True, padding: int = 1):
        super().__init__()
        self.a = nn.Conv2d(3, 8, 3, padding=padding, bias=bias)
        self.b = nn.Conv2d(8, 5, 3, padding=0)
        self.strided = nn.Conv2d(5, 4, 3, stride=2)
        self.depthwise = nn.Conv2d(4, 4, 3, padding=1, groups=4)

    def forward(self, x):
        return self.depthwise(self.strided(self.b(torch.relu(self.a(x)))))


def _graph(**kwargs):
    torch.manual_seed(0)
    return qc.trace(Net(**kwargs).eval(), (torch.randn(2, 3, 13, 11),))


@pytest.mark.parametrize("tile", winograd.TILES)
@pytest.mark.parametrize("bias, padding", [(True, 1), (False, 0)])
def test_winograd_keeps_the_function_to_float32_tolerance(tile, bias, padding):
    graph = _graph(bias=bias, padding=padding)
    original = qc.to_torch(graph.copy())
    result = qc.passes.convert_to_winograd(tile=tile)(graph)
    graph.verify()
    assert result.modified and [n for n in result.notes if "Winograd" in n] == [
        f"%a: Winograd F({tile}x{tile}, 3x3)", f"%b: Winograd F({tile}x{tile}, 3x3)"]
    assert any("%strided" in n and "stride is [2, 2]" in n for n in result.notes)
    assert any("%depthwise" in n and "groups=4" in n for n in result.notes)
    assert sum(n.op == "conv2d" for n in graph) == 2 + 2 * 2  # two kept, two transforms each
    for seed in range(3):
        x = torch.randn(4, 3, 13, 11, generator=torch.Generator().manual_seed(seed))
        expected, actual = original(x), qc.to_torch(graph)(x)
        error = (actual - expected).abs().max() / expected.abs().max()
        assert error < TOLERANCE[tile], error


@pytest.mark.parametrize("layer, reason", [
    ("strided", "its stride is [2, 2], not [1, 1]"),
    ("depthwise", "it is grouped (groups=4); only groups=1 is rewritten"),
])
def test_a_named_conv_it_cannot_rewrite_is_refused_and_the_graph_is_untouched(layer, reason):
    graph = _graph()
    before = str(graph)
    with pytest.raises(qc.PassError, match=rf"convert_to_winograd: cannot rewrite node %{layer} "
                                           rf"\(conv2d\).*: {re.escape(reason)}"):
        qc.passes.convert_to_winograd(layers=("a", layer))(graph)
    assert str(graph) == before


def test_bad_tile_and_nothing_to_rewrite():
    with pytest.raises(qc.OptionError, match=r"tile must be one of \(2, 4\).*got 3"):
        qc.passes.convert_to_winograd(tile=3)
    graph = _graph()
    result = qc.passes.convert_to_winograd(ignore=("a", "b"))(graph)  # only ineligible convs left
    assert not result.modified


@pytest.mark.parametrize("tile", winograd.TILES)
def test_transforms_are_exact_in_float64(tile):
    rng = np.random.default_rng(tile)
    x, weight = rng.normal(size=(2, 3, 9, 7)), rng.normal(size=(4, 3, 3, 3))
    for padding in (0, 1, 2):
        expected = F.conv2d(torch.from_numpy(x), torch.from_numpy(weight), padding=padding).numpy()
        np.testing.assert_allclose(winograd.winograd_conv(x, weight, tile, padding), expected,
                                   rtol=0, atol=1e-12)


@pytest.mark.parametrize("tile, bound", [(2, 512), (4, 12800)])
def test_the_transformed_input_bound_is_reached(tile, bound):
    bt, _, _ = winograd.matrices(tile)
    assert winograd.transformed_input_bound(tile) == bound
    # The worst tile: each entry 128 with the sign of the row and column of B^T that peak.
    i, j = np.unravel_index(np.argmax(np.outer(np.abs(bt).sum(1), np.abs(bt).sum(1))), (tile + 2,) * 2)
    tile_values = 128 * np.outer(np.sign(bt[i]), np.sign(bt[j]))
    assert np.abs(bt @ tile_values @ bt.T).max() == bound
