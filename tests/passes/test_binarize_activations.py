"""binarize_activations: the BN -> sign order, its errors naming the nodes (graph untouched),
and the quantization-aware pruning angle as a criterion of remove_filters and sparsify_weights."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

import qcompiler as qc
from qcompiler.compression.binary_order import binary_order_problems
from qcompiler.examples.models import digits_cnn
from qcompiler.ir.low_bit_ops import sign


class Block(nn.Module):
    def __init__(self, middle: nn.Module):
        super().__init__()
        self.first = nn.Conv2d(1, 4, 3, padding=1)
        self.middle = middle
        self.second = nn.Conv2d(4, 4, 3, padding=1)

    def forward(self, x):
        return self.second(self.middle(self.first(x)))


def _graph(middle: nn.Module):
    model = Block(middle).eval()
    return qc.trace(model, (torch.randn(2, 1, 6, 6),))


class Sign(nn.Module):
    def forward(self, x):
        return torch.where(x >= 0, 1.0, -1.0)


def _same_as(graph, middle_with_sign: nn.Module, source: Block):
    reference = Block(middle_with_sign).eval()
    reference.load_state_dict(source.state_dict(), strict=False)
    x = torch.randn(3, 1, 6, 6)
    torch.testing.assert_close(qc.to_torch(graph)(x), reference(x), rtol=1e-5, atol=1e-5)


def test_replaces_the_activation_after_a_batch_norm_and_keeps_max_pooling():
    torch.manual_seed(0)
    model = Block(nn.Sequential(nn.BatchNorm2d(4), nn.ReLU(), nn.MaxPool2d(2))).eval()
    graph = qc.trace(model, (torch.randn(2, 1, 6, 6),))
    result = qc.passes.binarize_activations(layers=("second",))(graph)
    assert result.modified
    assert [n.op for n in graph] == ["conv2d", "batch_norm", "sign", "max_pool2d", "conv2d"]
    assert binary_order_problems(graph) == []
    _same_as(graph, nn.Sequential(nn.BatchNorm2d(4), Sign(), nn.MaxPool2d(2)), model)
    assert not qc.passes.binarize_activations(layers=("second",))(graph).modified  # idempotent


def test_inserts_a_sign_after_a_batch_norm_without_activation():
    torch.manual_seed(0)
    model = Block(nn.BatchNorm2d(4)).eval()
    graph = qc.trace(model, (torch.randn(2, 1, 6, 6),))
    qc.passes.binarize_activations(layers=("second",))(graph)
    assert [n.op for n in graph] == ["conv2d", "batch_norm", "sign", "conv2d"]
    assert next(n for n in graph if n.op == "sign").name == "second.input_sign"
    _same_as(graph, nn.Sequential(nn.BatchNorm2d(4), Sign()), model)


@pytest.mark.parametrize("middle, message", [
    (nn.ReLU(), r"node %second \(conv2d\).* reads %middle from node %middle \(relu\).*, which is "
                r"never negative, so sign\(\) would be \+1 everywhere; put the sign between the "
                r"batch norm and the activation"),
    (nn.Identity(), r"node %second \(conv2d\).* reads %first from node %first \(conv2d\).*, not from a "
                    r"batch norm: a 1-bit activation needs the order batch_norm -> sign"),
    (nn.Sequential(nn.BatchNorm2d(4), nn.ReLU(), nn.AvgPool2d(2)),
     r"reads %middle.2 from node %middle.2 \(avg_pool2d\).*, not from a batch norm"),
])
def test_a_wrong_layer_order_is_reported_naming_the_nodes_and_the_graph_is_untouched(middle, message):
    graph = _graph(middle)
    before = str(graph)
    with pytest.raises(qc.BinaryLayerOrderError, match=message):
        qc.passes.binarize_activations(layers=("second",))(graph)
    assert str(graph) == before


def test_the_first_layer_reading_the_image_is_refused():
    graph = _graph(nn.BatchNorm2d(4))
    with pytest.raises(qc.BinaryLayerOrderError, match=r"node %first \(conv2d\).* reads %x, a graph "
                                                       r"input or constant"):
        qc.passes.binarize_activations()(graph)


def test_order_check_names_an_averaging_op_between_sign_and_layer():
    graph = _graph(nn.Sequential(nn.BatchNorm2d(4), nn.AvgPool2d(2)))
    norm = next(n for n in graph if n.op == "batch_norm")
    node = graph.add_node("sign", [norm.output], name="bn.sign", before=norm.output.users[0])
    pool = next(n for n in graph if n.op == "avg_pool2d")
    pool.replace_input(norm.output, node.output)
    problems = binary_order_problems(graph)
    assert len(problems) == 1
    assert "node %bn.sign (sign)" in problems[0] and "through %middle.1 (avg_pool2d)" in problems[0]
    assert "cannot run as XNOR-popcount" in problems[0]


def test_binarized_digits_cnn_trains_through_the_sign():
    model, example = digits_cnn(batch=8)
    graph = qc.trace(model, example)
    qc.passes.binarize_activations(ignore=("features.0.0", "classifier"))(graph)
    assert sum(n.op == "sign" for n in graph) == 4 and binary_order_problems(graph) == []
    module = qc.to_torch(graph)
    x = torch.randn(8, 1, 8, 8)
    module(x).square().sum().backward()
    grads = [p.grad for p in module.parameters() if p.grad is not None]
    assert grads and all(torch.isfinite(g).all() for g in grads)
    assert any(g.abs().sum() > 0 for g in grads)
    assert sign(torch.tensor([0.0])).item() == 1.0


def _pruned_per_channel(criterion: str) -> np.ndarray:
    model, example = digits_cnn()
    graph = qc.trace(model, example)
    weight = next(n for n in graph if n.name == "features.2").inputs[1]
    data = np.ones_like(weight.data)  # 32 kernels of 16 equal weights: binary, angle 0
    data[1] = 1.05
    data[1, 0] = 10.0  # one outlier: the kernel's binary version is far from it (cos 0.6)
    weight.data = data
    qc.passes.sparsify_weights(15 / data.size, scope="global", criterion=criterion,
                               layers=("features.2",))(graph)
    return (weight.data == 0).reshape(len(data), -1).sum(axis=1)


def test_angle_criterion_prunes_the_kernel_binarization_serves_worst():
    # Magnitude prunes 1.0s (anywhere but kernel 1); the angle score 1.05 * 0.6 ranks kernel
    # 1's small weights lowest, so they go first.
    assert _pruned_per_channel("magnitude")[1] == 0
    by_angle = _pruned_per_channel("binary_angle")
    assert by_angle[1] == 15 and by_angle.sum() == 15
    model, example = digits_cnn()
    result = qc.passes.remove_filters(ratio=0.5, criterion="quantization_binary")(qc.trace(model, example))
    assert result.modified
    with pytest.raises(qc.OptionError, match="unknown criterion 'binary'"):
        qc.passes.sparsify_weights(0.5, criterion="binary")
