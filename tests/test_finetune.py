"""finetune: a short fine-tune recovers accuracy lost to pruning; the returned graph holds
exactly the trained module's weights; fake-quant graphs train through the straight-through
estimator with their scales fixed; distillation follows Hinton et al. 2015; bad input raises."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import qcompiler as qc
from qcompiler.examples.datasets import accuracy, train_digits_cnn
from qcompiler.finetune import distillation_loss, finetune
from qcompiler.passes import remove_filters


@pytest.fixture(scope="module")
def digits():
    model, split = train_digits_cnn(epochs=8, seed=0)
    graph = qc.trace(model, (split.train_images[:8],))
    pruned = remove_filters(ratio=0.35)(graph.copy()).graph
    return graph, pruned, split


def loader(split, seed=0, labels=True, batch_size=64):
    tensors = (split.train_images, split.train_labels) if labels else (split.train_images,)
    generator = torch.Generator().manual_seed(seed)
    data = torch.utils.data.TensorDataset(*tensors)
    batches = torch.utils.data.DataLoader(data, batch_size=batch_size, shuffle=True, generator=generator)
    return batches if labels else [b[0] for b in batches]


def test_accuracy(graph, split) -> float:
    with torch.no_grad():
        return accuracy(qc.to_torch(graph)(split.test_images), split.test_labels)


test_accuracy.__test__ = False  # a helper, not a test


def test_short_finetune_after_pruning_half_the_macs_raises_accuracy(digits):
    graph, pruned, split = digits
    assert qc.cost(pruned).macs <= 0.5 * qc.cost(graph).macs
    original = {v.name: v.data.copy() for v in pruned.constants}
    before = test_accuracy(pruned, split)
    result = finetune(pruned, loader(split), epochs=2, lr=3e-3, teacher=graph, progress=False)
    after = test_accuracy(result.graph.verify(), split)
    assert after >= before + 20, (before, after)
    assert result.epoch_losses[-1] < result.epoch_losses[0]
    # The input graph is untouched; the result has the same structure with new weights.
    assert all(np.array_equal(v.data, original[v.name]) for v in pruned.constants)
    assert [(n.op, n.name) for n in result.graph] == [(n.op, n.name) for n in pruned]
    assert {n: v.shape for n, v in result.graph.values.items()} == \
        {n: v.shape for n, v in pruned.values.items()}
    changed = [n for n, v in result.graph.values.items() if v.is_constant
               and not np.array_equal(v.data, pruned.values[n].data)]
    assert "classifier.weight" in changed


def test_returned_graph_computes_what_the_trained_module_computes(digits):
    _, pruned, split = digits
    result = finetune(pruned, loader(split), epochs=1, lr=1e-3, progress=False)
    x = split.test_images[:64]
    with torch.no_grad():
        expected, got = result.module(x), qc.to_torch(result.graph)(x)
    torch.testing.assert_close(got, expected, rtol=0, atol=0)


def test_fake_quant_graph_trains_weights_and_keeps_its_scales(digits):
    graph, pruned, split = digits
    quantized = qc.quantize(pruned, list(split.train_images[:128].split(8)))
    before = test_accuracy(quantized, split)
    result = finetune(quantized, loader(split), epochs=1, lr=1e-3, teacher=graph, progress=False)
    after = test_accuracy(result.graph.verify(), split)
    assert after > before + 10, (before, after)
    for node in quantized:
        if node.op == "fake_quant":
            for constant in node.inputs[1:]:
                assert np.array_equal(result.graph.values[constant.name].data, constant.data)
    weight = next(n.inputs[0].name for n in quantized if n.op == "fake_quant" and n.inputs[0].is_constant)
    assert not np.array_equal(result.graph.values[weight].data, quantized.values[weight].data)
    x = split.test_images[:64]
    with torch.no_grad():
        torch.testing.assert_close(qc.to_torch(result.graph)(x), result.module(x), rtol=0, atol=0)


def test_distillation_alone_moves_the_student_towards_the_teacher(digits):
    graph, pruned, split = digits
    x = split.test_images

    def kl_to_teacher(student):
        with torch.no_grad():
            return float(distillation_loss(qc.to_torch(student)(x), qc.to_torch(graph)(x), 1.0))

    result = finetune(pruned, loader(split, labels=False), epochs=1, lr=3e-3, teacher=graph,
                      temperature=2.0, progress=False)
    assert kl_to_teacher(result.graph) < 0.5 * kl_to_teacher(pruned)


def test_distillation_loss_is_t_squared_times_the_kl_of_softened_outputs():
    generator = torch.Generator().manual_seed(0)
    student, teacher = torch.randn(5, 7, generator=generator), torch.randn(5, 7, generator=generator)
    temperature = 3.0
    p, q = F.softmax(teacher / temperature, 1), F.softmax(student / temperature, 1)
    expected = (p * (p.log() - q.log())).sum(1).mean() * temperature ** 2
    torch.testing.assert_close(distillation_loss(student, teacher, temperature), expected)


def test_unlabelled_batches_without_teacher_raise(digits):
    _, pruned, split = digits
    with pytest.raises(ValueError, match="no labels and no teacher was given"):
        finetune(pruned, loader(split, labels=False), progress=False)


def test_batch_of_the_wrong_arity_raises(digits):
    _, pruned, split = digits
    batch = (split.train_images[:8], split.train_labels[:8], split.train_labels[:8])
    with pytest.raises(ValueError, match=r"has 3 item\(s\); the graph takes 1 input"):
        finetune(pruned, [batch], progress=False)


def test_integer_graph_cannot_be_finetuned(digits):
    _, pruned, split = digits
    quantized = qc.quantize(pruned, list(split.train_images[:64].split(8)))
    integer = qc.lower_to_integer(quantized)
    with pytest.raises(qc.QCompilerError, match="no learnable float weights"):
        finetune(integer, loader(split), progress=False)


@pytest.mark.parametrize("options, message", [
    ({"epochs": 0}, "epochs must be a positive int"),
    ({"lr": 0.0}, "lr must be positive"),
    ({"alpha": 1.5}, r"alpha must be in \[0, 1\]"),
    ({"temperature": -1.0}, "temperature must be positive"),
])
def test_bad_options_raise(digits, options, message):
    _, pruned, split = digits
    with pytest.raises(ValueError, match=message):
        finetune(pruned, loader(split), progress=False, **options)
