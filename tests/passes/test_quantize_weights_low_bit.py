"""quantize_weights_low_bit: the weights become the quantizer's output (and nothing else
changes), ignored layers stay, bad options are refused; straight-through fine-tuning keeps
the weights low-bit while letting signs change."""

import numpy as np
import pytest
import torch

import qcompiler as qc
from qcompiler.errors import OptionError
from qcompiler.examples.models import digits_cnn
from qcompiler.numerics import low_bit
from qcompiler.passes import fold_batchnorm, quantize_weights_low_bit


@pytest.fixture(scope="module")
def digits():
    model, example = digits_cnn(batch=4)
    return fold_batchnorm(qc.trace(model, example)).graph


def weights_of(graph):
    return {node.inputs[1].name: node.inputs[1].data for node in graph if node.op in ("conv2d", "linear")}


@pytest.mark.parametrize("scheme", low_bit.SCHEMES)
def test_weights_become_the_quantizer_output_except_ignored_layers(digits, scheme):
    before = weights_of(digits)
    result = quantize_weights_low_bit(scheme=scheme, bits=3, ignore=("classifier",))(digits.copy())
    assert result.modified
    for name, weight in weights_of(result.graph).items():
        if name == "classifier.weight":
            np.testing.assert_array_equal(weight, before[name])
        else:
            np.testing.assert_array_equal(weight, low_bit.quantize(before[name], scheme, 3))
    again = quantize_weights_low_bit(scheme=scheme, bits=3, ignore=("classifier",))(result.graph.copy())
    assert not again.modified  # the quantizers are idempotent


@pytest.mark.parametrize("options, message", [
    ({"scheme": "octal"}, "unknown scheme 'octal'; choose one of binary, ternary, power_of_two"),
    ({"scheme": "power_of_two", "bits": 1}, r"bits must be an int in \[2, 8\]"),
    ({"ignore": "classifier"}, "ignore must be a tuple of names"),
])
def test_bad_options(options, message):
    with pytest.raises(OptionError, match=message):
        quantize_weights_low_bit(**options)


def test_straight_through_finetune_keeps_weights_ternary_and_moves_signs(digits):
    configured = quantize_weights_low_bit(scheme="ternary", ignore=("classifier",))
    projections = configured.projections(digits)
    assert "classifier.weight" not in projections and len(projections) == 5
    quantized = configured(digits.copy()).graph
    generator = torch.Generator().manual_seed(0)
    data = [(torch.randn(16, 1, 8, 8, generator=generator), torch.randint(0, 10, (16,), generator=generator))
            for _ in range(4)]
    tuned = qc.finetune(digits, data, epochs=3, lr=5e-2, project_weights=projections, progress=False)
    moved = False
    for name, weight in weights_of(tuned.graph).items():
        if name in projections:
            np.testing.assert_array_equal(weight, low_bit.ternarize(weight)[0])  # still ternary
            assert all(len(set(row.tolist()) - {0.0}) <= 2 for row in weight.reshape(len(weight), -1))
            moved |= not np.array_equal(np.sign(weight), np.sign(weights_of(quantized)[name]))
    assert moved  # latent weights crossed the threshold: codes changed, not only the scales
    # The module returned runs the projected weights too.
    with torch.no_grad():
        np.testing.assert_allclose(tuned.module(data[0][0]).numpy(),
                                   qc.to_torch(tuned.graph)(data[0][0]).numpy(), rtol=1e-5, atol=1e-5)


def test_project_weights_naming_an_unknown_weight_is_refused(digits):
    with pytest.raises(OptionError, match="project_weights names nonexistent.weight"):
        qc.finetune(digits, [(torch.randn(2, 1, 8, 8), torch.tensor([0, 1]))],
                    project_weights={"nonexistent.weight": low_bit.binarize}, progress=False)
