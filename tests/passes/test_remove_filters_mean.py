"""remove_filters(compensate_with="mean"): a removed channel is replaced by its calibration
mean (folded into the next layer's bias), which the test computes independently in torch;
on a batch-normed network it is closer to the original than the zeroed-filter constant;
`channel_scores` is the ranking the pass removes by."""

import numpy as np
import pytest
import torch
from torch import nn

import qcompiler as qc
from qcompiler.compression.channel_scores import channel_scores
from qcompiler.compression.dependency import dependency_groups
from qcompiler.ir import structurally_equal
from qcompiler.passes import remove_filters


class ConvBnLinear(nn.Module):
    """conv -> BN -> ReLU6 -> 1x1 conv -> ReLU -> global mean -> linear. The first conv's
    pre-BN outputs have large means, so act(BN(0)) is far from what the channels carry."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.conv1 = nn.Conv2d(3, 8, 3, padding=1)
        self.bn = nn.BatchNorm2d(8)
        self.conv2 = nn.Conv2d(8, 6, 1, bias=False)
        self.head = nn.Linear(6, 4)
        with torch.no_grad():
            self.conv1.bias.uniform_(2.0, 4.0)
            self.bn.running_mean.copy_(self.conv1.bias + 0.1)
            self.bn.running_var.uniform_(0.2, 1.0)
            self.bn.weight.uniform_(0.5, 2.0)
            self.bn.bias.uniform_(0.5, 2.0)

    def hidden(self, x):
        return torch.clamp(self.bn(self.conv1(x)), 0, 6)

    def forward(self, x, replace=None):
        h = self.hidden(x)
        if replace is not None:  # (channels, values): the channels replaced by constants
            h = h.clone()
            h[:, replace[0]] = replace[1].view(1, -1, 1, 1)
        return self.head(torch.relu(self.conv2(h)).mean(dim=(2, 3)))


def setup():
    model = ConvBnLinear().eval()
    generator = torch.Generator().manual_seed(1)
    calibration = [torch.randn(4, 3, 6, 6, generator=generator) for _ in range(2)]
    test = torch.randn(5, 3, 6, 6, generator=generator)
    return model, qc.trace(model, (calibration[0],)), calibration, test


def test_mean_compensation_equals_replacing_the_channels_by_their_calibration_mean():
    model, graph, calibration, test = setup()
    removed = torch.tensor([1, 4, 6])
    with torch.no_grad():
        means = torch.cat([model.hidden(b) for b in calibration]).mean(dim=(0, 2, 3))
        want = model(test, (removed, means[removed]))
    mask = np.ones(8, bool)
    mask[removed.numpy()] = False
    result = remove_filters(masks={"conv1": mask}, compensate_with="mean",
                            calibration_data=calibration)(graph.copy())
    assert result.modified
    assert result.graph.values["conv1.weight"].shape[0] == 5
    with torch.no_grad():
        got = qc.to_torch(result.graph)(test)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)


def test_mean_is_closer_to_the_original_than_the_zeroed_filter_constant():
    model, graph, calibration, test = setup()
    with torch.no_grad():
        reference = model(test)
    errors = {}
    for how in ("constant", "mean"):
        pruned = remove_filters(ratio=0.4, compensate_with=how, calibration_data=calibration)(graph.copy())
        with torch.no_grad():
            errors[how] = float((qc.to_torch(pruned.graph)(test) - reference).norm())
    assert errors["mean"] < 0.5 * errors["constant"]


def test_mean_without_compensation_needs_no_data():
    _, graph, _, _ = setup()
    # Nothing to measure without compensation: no data needed, no error, and the same result
    # as removing the channels without compensation by the other constant.
    configured = remove_filters(ratio=0.4, compensate_with="mean", compensate_bias=False)
    result = configured(graph.copy())
    assert result.modified
    plain = remove_filters(ratio=0.4, compensate_bias=False)(graph.copy())
    assert structurally_equal(result.graph, plain.graph)


@pytest.mark.parametrize("criterion", ["l1", "fpgm", "activation"])
def test_channel_scores_are_the_ranking_the_pass_removes_by(criterion):
    _, graph, calibration, _ = setup()
    groups = [g for g in dependency_groups(graph) if g.prunable]
    scores = channel_scores(graph, groups, criterion, calibration)
    assert set(scores) == {g.name for g in groups}
    pruned = remove_filters(ratio=0.25, criterion=criterion, calibration_data=calibration)(graph.copy())
    masks = {}
    for group in groups:  # the two lowest-scoring channels of each group
        masks[group.name] = np.ones(group.num_channels, bool)
        masks[group.name][np.argsort(scores[group.name], kind="stable")[:2]] = False
    chosen = remove_filters(masks=masks)(graph.copy())
    assert pruned.notes == chosen.notes
    for value in chosen.graph.constants:
        np.testing.assert_array_equal(pruned.graph.values[value.name].data, value.data)


def test_channel_scores_reject_an_unknown_criterion():
    _, graph, _, _ = setup()
    with pytest.raises(ValueError, match="unknown criterion 'l3'"):
        channel_scores(graph, dependency_groups(graph), "l3")
