"""remove_filters with the saliency criteria (OBD, first-order Taylor): the channels removed are
those with the lowest summed weight saliency of their filter rows and reader columns."""

import numpy as np
import pytest
import torch

from qcompiler.compression.saliency import weight_saliency
from qcompiler.ir import Graph
from qcompiler.passes import remove_filters


def small_classifier(seed=0) -> Graph:
    """conv (6 channels) -> relu -> global pool -> flatten -> linear: one prunable group."""
    rng = np.random.default_rng(seed)
    graph = Graph("small")
    x = graph.add_input("x", (4, 2, 5, 5))
    w1 = graph.add_constant("conv.weight", rng.standard_normal((6, 2, 3, 3)).astype(np.float32))
    b1 = graph.add_constant("conv.bias", rng.standard_normal(6).astype(np.float32))
    y = graph.add_node("conv2d", [x, w1, b1], {"stride": [1, 1], "padding": [1, 1], "dilation": [1, 1],
                                               "groups": 1}, name="conv").output
    r = graph.add_node("relu", [y], {}, name="relu").output
    p = graph.add_node("adaptive_avg_pool2d", [r], {"output_size": [1, 1]}, name="pool").output
    f = graph.add_node("flatten", [p], {"start_dim": 1, "end_dim": -1}, name="flatten").output
    w2 = graph.add_constant("fc.weight", rng.standard_normal((3, 6)).astype(np.float32))
    graph.outputs = [graph.add_node("linear", [f, w2, None], {}, name="fc").output]
    return graph.verify()


@pytest.mark.parametrize("criterion", ["obd", "taylor"])
def test_the_lowest_saliency_channels_go(criterion):
    graph = small_classifier()
    generator = torch.Generator().manual_seed(0)
    data = [(torch.randn(4, 2, 5, 5, generator=generator), torch.randint(0, 3, (4,), generator=generator))
            for _ in range(3)]
    weights = [graph.values[n] for n in ("conv.weight", "fc.weight")]
    scores = weight_saliency(graph, weights, criterion, data)
    conv_rows = scores["conv.weight"].reshape(6, -1).sum(axis=1)
    fc_columns = scores["fc.weight"].sum(axis=0)
    # Per member normalised by its maximum, then summed (how every criterion aggregates).
    channel = conv_rows / conv_rows.max() + fc_columns / fc_columns.max()
    expected_kept = np.sort(np.argsort(channel)[2:])
    original = graph.values["conv.weight"].data.copy()
    remove_filters(ratio=1 / 3, criterion=criterion, calibration_data=data, compensate_bias=False)(graph)
    graph.verify()
    np.testing.assert_array_equal(graph.values["conv.weight"].data, original[expected_kept])


def test_saliency_criteria_need_calibration_data():
    with pytest.raises(ValueError, match="remove_filters: criterion 'taylor' needs calibration_data"):
        remove_filters(ratio=0.3, criterion="taylor")
