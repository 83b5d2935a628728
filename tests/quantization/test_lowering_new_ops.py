"""The ops real networks add (elementwise math, casts and masks, comparisons, where,
reductions, PReLU, recurrent cells), each behind a conv in a small model: quantized, lowered
and run by the integer interpreter, they equal the float64 fake-quant simulation bit for bit
(docs/integer-spec.md, section 12), with the integer form the spec gives them (lookup tables,
qmean, selects and comparisons on integers), or as the reported float fall back where they
have none (var, vector_norm)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

import qcompiler as qc
from qcompiler.backends.interpreter import run
from qcompiler.backends.simulation_agreement import compare_with_simulation
from qcompiler.errors import IntegerOnlyError
from qcompiler.pipelines import ptq_steps

MASK = torch.tensor([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1]])


class AfterConv(nn.Module):
    """conv1d (so the op reads a quantized activation), then `function(y, *rest)`."""

    def __init__(self, function, channels: int = 3):
        super().__init__()
        self.conv = nn.Conv1d(3, channels, 1)
        self.function = function

    def forward(self, x, *rest):
        return self.function(self.conv(x), *rest)


def batches(with_mask: bool, count: int = 4):
    generator = torch.Generator().manual_seed(0)
    return [(torch.randn(2, 3, 5, generator=generator), MASK) if with_mask
            else torch.randn(2, 3, 5, generator=generator) for _ in range(count)]


# name -> (function after the conv, takes the mask, integer ops the lowered graph must hold)
INTEGER_CASES = {
    "abs": (torch.abs, False, {"qlookup"}),
    "exp": (torch.exp, False, {"qlookup"}),
    "log": (lambda y: torch.log(y.abs() + 0.5), False, {"qlookup"}),
    "erf": (torch.erf, False, {"qlookup"}),
    "sqrt": (lambda y: torch.sqrt(y.abs()), False, {"qlookup"}),
    "rsqrt": (lambda y: torch.rsqrt(y.abs() + 0.5), False, {"qlookup"}),
    "pow": (lambda y: y.pow(2), False, {"qlookup"}),
    "leaky_relu": (lambda y: F.leaky_relu(y, 0.1), False, {"qlookup"}),
    "elu": (F.elu, False, {"qlookup"}),
    "mish": (F.mish, False, {"qlookup"}),
    "prelu_per_channel": (nn.PReLU(3, init=0.2), False, {"qlookup"}),
    "sum": (lambda y: y.sum(-1), False, {"qmean"}),
    "max_dim": (lambda y: y.max(dim=1).values + y.amin(dim=2, keepdim=True).mean(dim=1), False,
                {"amax", "amin"}),
    "argmax": (lambda y: y.argmax(-1), False, {"argmax"}),
    "compare_constant": (lambda y: (y > 0.25).float() * y, False, {"qlookup", "qmul"}),
    "where": (lambda y: torch.where(y > 0, y, 0.1 * y), False, {"qlookup", "where"}),
    "where_constant": (lambda y: torch.where(y > 0, y, 0.0), False, {"where"}),
    "mask_cast": (lambda y, m: y * m[:, None, :].to(torch.float32), True, {"qmul"}),
    "mask_compare": (lambda y, m: torch.where(m[:, None, :] == 0, 0.0, y), True, {"eq", "where"}),
    "cast_to_bool": (lambda y: torch.where(y.relu().bool(), 1.0, y), False, {"qlookup", "where"}),
}


@pytest.mark.parametrize("name", sorted(INTEGER_CASES))
def test_lowered_op_equals_the_float64_simulation(name):
    function, with_mask, integer_ops = INTEGER_CASES[name]
    model = AfterConv(function).eval()
    data = batches(with_mask)
    inputs = data[0] if with_mask else (data[0],)
    quantized = qc.quantize(model, data, example_inputs=inputs, progress=False)
    integer = qc.lower_to_integer(quantized)  # strict: no float arithmetic inside
    assert integer_ops <= {node.op for node in integer}, str(integer)
    for batch in data:
        batch = batch if with_mask else (batch,)
        agreement = compare_with_simulation(quantized, batch, precision="float64")
        assert all(output.differing == 0 for output in agreement.outputs), agreement.outputs


@pytest.mark.parametrize(("function", "fallbacks"), [
    (lambda y: y.std(-1), "var"),
    (lambda y: F.normalize(y, dim=-1), "vector_norm"),
])
def test_ops_without_an_integer_form_are_reported_float_fall_backs(function, fallbacks):
    model = AfterConv(function).eval()
    quantized = qc.quantize(model, batches(False), progress=False)
    with pytest.raises(IntegerOnlyError, match=rf"\({fallbacks}\) at .* cannot be lowered to integer ops: "
                                               rf"{fallbacks} has no integer form"):
        qc.lower_to_integer(quantized)
    result = qc.passes.lower_to_integer(quantized, strict=False)
    assert any(f"({fallbacks}: {fallbacks} has no integer form" in note for note in result.notes)
    agreement = compare_with_simulation(quantized, (batches(False)[1],), strict=False,
                                        precision="float64")
    assert all(output.differing == 0 for output in agreement.outputs)


def test_a_minus_infinity_mask_saturates_to_the_lowest_level():
    """masked_fill(-inf) before softmax: the infinity quantizes to the lowest level of the
    shared range (as torch's fake_quant clamps it), calibration leaves it out of the range and
    says so, and the interpreter equals the simulation."""
    model = AfterConv(lambda y, m: y.masked_fill(m[:, None, :] == 0, float("-inf")).softmax(-1))
    data = batches(True)
    pipeline = qc.Pipeline(ptq_steps(data))
    quantized, records = pipeline.run_with_report(qc.trace(model.eval(), data[0]))
    notes = [note for record in records if record.name == "calibrate" for note in record.notes]
    assert any("infinite value(s) (a mask filled with -inf?) saturate to the ends of its range"
               in note for note in notes), notes
    integer = qc.lower_to_integer(quantized, strict=False)  # softmax runs in float
    exact = qc.to_torch(quantized, exact=True)
    for batch in data:
        with torch.no_grad():
            expected = exact(*batch).numpy()
        assert np.isfinite(expected).all()
        np.testing.assert_array_equal(run(integer, *batch, strict=False), expected)


def test_lstm_cell_lowers_to_integers():
    """nn.LSTMCell unrolls into linear layers, sigmoid / tanh tables and integer products."""
    model = nn.Sequential(nn.LSTMCell(6, 4)).eval()
    generator = torch.Generator().manual_seed(0)
    data = [torch.randn(3, 6, generator=generator) for _ in range(4)]
    quantized = qc.quantize(model, data, progress=False)
    integer = qc.lower_to_integer(quantized)
    assert {"qlinear", "qlookup", "qmul", "qadd"} <= {node.op for node in integer}
    for batch in data:
        agreement = compare_with_simulation(quantized, (batch,), precision="float64")
        assert all(output.differing == 0 for output in agreement.outputs)
