"""The lowering driver and its public state (`qcompiler.quantization.lowering`,
`lowering_state`): the pass is a thin wrapper of `lower`."""

import pytest
import torch

import qcompiler as qc
from qcompiler.examples.models import digits_cnn
from qcompiler.ir import structurally_equal
from qcompiler.ir.edit import moves_values_only
from qcompiler.ir.ops import OPS
from qcompiler.quantization.lowering import FALLBACK_OPS, lower, lower_with_origins
from qcompiler.quantization.lowering_state import LoweringState


@pytest.fixture(scope="module")
def quantized():
    model, inputs = digits_cnn(batch=2)
    generator = torch.Generator().manual_seed(0)
    batches = [torch.randn(inputs[0].shape, generator=generator) for _ in range(2)]
    return qc.quantize(model, batches, bias_correction=False, progress=False)


def test_lower_is_what_the_pass_returns(quantized):
    state = lower(quantized)
    result = qc.passes.lower_to_integer(quantized)
    assert structurally_equal(state.new, result.graph) and state.notes == result.notes
    # Every float op lowered: integer ops, and value-moving ops on the integers.
    assert all(OPS[node.op].category in ("integer", "quant") or moves_values_only(node)
               for node in state.new)


def test_origins_name_integer_values_of_the_activation_fake_quants(quantized):
    state, origins = lower_with_origins(quantized)
    activation_fqs = {n.output.name for n in quantized if n.op == "fake_quant"
                      and not n.inputs[0].is_constant}
    assert set(origins) == activation_fqs
    assert all(state.new.values[name].dtype in ("u8", "i8") for name in origins.values())


def test_ops_without_a_rule_fall_back():
    assert FALLBACK_OPS == {"softmax", "layer_norm", "batch_norm", "conv_transpose2d", "resize",
                            "var", "vector_norm"}


def test_the_state_checks_the_target(quantized):
    with pytest.raises(ValueError, match="unknown target 'arm'; valid targets: generic, x86, aarch64"):
        LoweringState(quantized, "arm", strict=True)
