"""recalibrate_batchnorm: each batch norm gets the mean and variance of the input the
graph computes for it, earlier batch norms already recalibrated (what torch gives with
one layer at a time in training mode); bad data leaves the graph untouched."""

import copy

import pytest
import torch
from torch import nn

import qcompiler as qc
from qcompiler.errors import QCompilerError
from qcompiler.passes import recalibrate_batchnorm


def model() -> nn.Module:
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(),
                        nn.Conv2d(8, 6, 3, padding=1), nn.BatchNorm2d(6), nn.ReLU(),
                        nn.Flatten(), nn.Linear(6 * 5 * 5, 4), nn.BatchNorm1d(4))
    for module in net.modules():  # statistics that do not describe the data
        if isinstance(module, nn.modules.batchnorm._BatchNorm):
            module.running_mean.normal_(0, 2)
            module.running_var.uniform_(0.1, 5)
            module.weight.data.uniform_(0.5, 1.5)
            module.bias.data.normal_(0, 0.5)
    return net.eval()


def torch_reference(net: nn.Module, data: torch.Tensor) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Each batch norm in turn in training mode over all of `data` at once (later ones see
    the earlier ones recalibrated); torch keeps the unbiased variance, made population."""
    net = copy.deepcopy(net)
    norms = [m for m in net.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    statistics = []
    for norm in norms:
        norm.reset_running_stats()
        norm.momentum = None
        norm.train()
        with torch.no_grad():
            inputs = []
            handle = norm.register_forward_hook(lambda m, args, out, seen=inputs: seen.append(args[0]))
            net(data)
            handle.remove()
        norm.eval()
        count = inputs[0].numel() // inputs[0].shape[1]
        statistics.append((norm.running_mean.clone(), norm.running_var * (count - 1) / count))
    return statistics


def statistics_of(graph: qc.Graph) -> list[tuple[torch.Tensor, torch.Tensor]]:
    return [(torch.from_numpy(n.inputs[3].data), torch.from_numpy(n.inputs[4].data))
            for n in graph if n.op == "batch_norm"]


def test_matches_torch_layer_by_layer_training_mode():
    net = model()
    data = torch.randn(64, 3, 5, 5) * 1.5 + 0.3
    graph = qc.trace(net, (data[:16],))
    # Streamed in four batches of the traced size; torch sees all 64 at once.
    result = recalibrate_batchnorm(graph, calibration_data=list(data.split(16)), progress=False)
    assert result.modified
    graph.verify()
    expected = torch_reference(net, data)
    assert len(statistics_of(graph)) == len(expected) == 3
    for (mean, variance), (torch_mean, torch_variance) in zip(statistics_of(graph), expected, strict=True):
        torch.testing.assert_close(mean, torch_mean, rtol=1e-4, atol=2e-4)  # float32 paths
        torch.testing.assert_close(variance, torch_variance, rtol=1e-4, atol=2e-4)


def test_recalibrated_graph_normalises_its_data():
    """On the data it was estimated from, each batch norm's input, normalised with the new
    statistics, has mean 0 and variance 1 per channel: the graph's outputs then equal
    the affine parameters' shift and scale of a standardised input."""
    net = model()
    data = torch.randn(32, 3, 5, 5) * 3 - 1
    graph = qc.Pipeline([recalibrate_batchnorm(calibration_data=[data], progress=False)]).run(
        qc.trace(net, (data,)))
    with torch.no_grad():
        logits = qc.to_torch(graph)(data)
    last = [n for n in graph if n.op == "batch_norm"][-1]
    weight, bias = (torch.from_numpy(v.data) for v in last.inputs[1:3])
    standardised = (logits - bias) / weight
    torch.testing.assert_close(standardised.mean(0), torch.zeros(4), atol=1e-4, rtol=0)
    torch.testing.assert_close(standardised.var(0, unbiased=False), torch.ones(4), atol=1e-3, rtol=0)


def test_graph_without_batch_norm_is_unchanged():
    net = nn.Sequential(nn.Linear(4, 3)).eval()
    graph = qc.trace(net, (torch.randn(2, 4),))
    before = str(graph)
    result = recalibrate_batchnorm(graph, calibration_data=[torch.randn(2, 4)])
    assert not result.modified
    assert result.notes == ["no batch_norm node: nothing to recalibrate"]
    assert str(graph) == before


@pytest.mark.parametrize("data, message", [
    ([], "recalibrate_batchnorm: calibration_data is empty; give at least one batch (a tensor, "
         "or a tuple with one tensor per graph input)"),
    (iter([torch.randn(8, 3, 5, 5)]),
     "recalibrate_batchnorm reads calibration_data once per batch norm: give a re-iterable (a "
     "list of batches, a DataLoader), not an iterator or generator"),
])
def test_bad_data_is_refused_and_graph_untouched(data, message):
    graph = qc.trace(model(), (torch.randn(8, 3, 5, 5),))
    before = str(graph)
    with pytest.raises(QCompilerError) as error:
        recalibrate_batchnorm(graph, calibration_data=data)
    assert str(error.value) == message
    assert str(graph) == before


def test_non_finite_data_is_refused_and_graph_untouched():
    graph = qc.trace(model(), (torch.randn(8, 3, 5, 5),))
    before = str(graph)
    bad = torch.randn(8, 3, 5, 5)
    bad[0, 0, 0, 0] = float("nan")
    # The first batch norm is estimated from good data, the error comes later: nothing is kept.
    with pytest.raises(QCompilerError, match="contains NaN or Inf"):
        recalibrate_batchnorm(graph, calibration_data=[torch.randn(8, 3, 5, 5), bad])
    assert str(graph) == before
