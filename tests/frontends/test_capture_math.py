"""Capture of the ops real networks add to the CNN core (casts, comparisons and masks,
elementwise math, reductions, recurrent layers): each captured graph, run by `qc.to_torch`,
computes what the module computes (float32 near 1e-5; bool and integer outputs exactly), and
holds the IR ops the mapping promises."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import qcompiler as qc
from qcompiler.errors import UnsupportedOpError

MASK = torch.tensor([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1]])


class Lambda(nn.Module):
    def __init__(self, function):
        super().__init__()
        self.function = function

    def forward(self, *inputs):
        return self.function(*inputs)


def x_like(seed, shape=(2, 3, 5)):
    return torch.randn(shape, generator=torch.Generator().manual_seed(seed))


# name -> (module, inputs from a seed, IR ops the graph must hold)
CASES = {
    "cast_to_bool": (Lambda(lambda m: m.to(torch.bool)), lambda s: (MASK,), {"cast"}),
    "hf_mask_bias": (Lambda(lambda x, m: x + (1.0 - m[:, None, :].to(torch.float32))
                            * torch.finfo(torch.float32).min), lambda s: (x_like(s), MASK),
                     {"cast", "sub", "mul", "add"}),
    "compare_scalar": (Lambda(lambda x: x > 0.5), lambda s: (x_like(s),), {"gt"}),
    "compare_int_with_float": (Lambda(lambda m: m > 0.5), lambda s: (MASK,), {"gt"}),
    "compare_tensors": (Lambda(lambda x: (x <= x.flip(-1)) | (x == 0)), lambda s: (x_like(s),),
                        {"le", "eq", "logical_or"}),
    "logical_not": (Lambda(lambda m: ~(m == 0)), lambda s: (MASK,), {"eq", "logical_not"}),
    "where": (Lambda(lambda x: torch.where(x > 0, x, 0.1 * x)), lambda s: (x_like(s),),
              {"gt", "where"}),
    "masked_fill": (Lambda(lambda x, m: x.masked_fill(m[:, None, :] == 0, -1e4)),
                    lambda s: (x_like(s), MASK), {"eq", "where"}),
    "sum": (Lambda(lambda x: x.sum(-1) + x.sum()), lambda s: (x_like(s),), {"sum"}),
    "abs": (Lambda(torch.abs), lambda s: (x_like(s),), {"abs"}),
    "pow": (Lambda(lambda x: x.pow(2) + x ** 3 + x.square()), lambda s: (x_like(s),), {"pow"}),
    "sqrt_rsqrt": (Lambda(lambda x: x.abs().sqrt() + (x.abs() + 1).rsqrt()),
                   lambda s: (x_like(s),), {"sqrt", "rsqrt"}),
    "exp_log": (Lambda(lambda x: torch.exp(x) + torch.log(x.abs() + 1)), lambda s: (x_like(s),),
                {"exp", "log"}),
    "erf_reciprocal": (Lambda(lambda x: torch.erf(x) + torch.reciprocal(x.abs() + 1)),
                       lambda s: (x_like(s),), {"erf", "reciprocal"}),
    "max_dim": (Lambda(lambda x: x.max(dim=1).values + x.amin(dim=1)), lambda s: (x_like(s),),
                {"amax", "amin"}),
    "max_dim_indices": (Lambda(lambda x: x.max(dim=1)), lambda s: (x_like(s),), {"amax", "argmax"}),
    "argmax": (Lambda(lambda x: x.argmax(-1) + x.argmax()), lambda s: (x_like(s),), {"argmax"}),
    "std_var": (Lambda(lambda x: x.std(dim=-1) + x.var(dim=-1, unbiased=False)),
                lambda s: (x_like(s),), {"var", "sqrt"}),
    "normalize": (Lambda(lambda x: F.normalize(x, dim=-1)), lambda s: (x_like(s),),
                  {"vector_norm", "clamp", "expand", "div"}),
    "prelu_per_channel": (nn.PReLU(3, init=0.1), lambda s: (x_like(s),), {"prelu"}),
    "prelu_one_slope": (nn.PReLU(), lambda s: (x_like(s),), {"prelu"}),
    "leaky_relu": (nn.LeakyReLU(0.1), lambda s: (x_like(s),), {"leaky_relu"}),
    "elu_selu_celu": (Lambda(lambda x: F.elu(x) + F.selu(x) + F.celu(x, 0.5)),
                      lambda s: (x_like(s),), {"elu"}),
    "mish_softplus": (Lambda(lambda x: F.mish(x) + F.softplus(x, beta=2.0)),
                      lambda s: (x_like(s),), {"mish", "softplus"}),
    "lstm_cell": (nn.LSTMCell(5, 4), lambda s: (x_like(s, (2, 5)),), {"linear", "sigmoid", "tanh"}),
    "gru_cell": (nn.GRUCell(5, 4), lambda s: (x_like(s, (2, 5)),), {"linear", "sigmoid", "tanh"}),
    "lstm_two_layers": (nn.LSTM(5, 4, num_layers=2, batch_first=True), lambda s: (x_like(s),),
                        {"linear", "sigmoid", "tanh", "mul", "add"}),
    "gru_bidirectional": (nn.GRU(5, 4, batch_first=True, bidirectional=True),
                          lambda s: (x_like(s),), {"linear", "sigmoid", "tanh", "concat"}),
    "rnn": (nn.RNN(5, 4), lambda s: (x_like(s),), {"linear", "tanh"}),
}


def _flat(outputs):
    if isinstance(outputs, torch.Tensor):
        return [outputs]
    return [leaf for item in outputs for leaf in _flat(item)]


@pytest.mark.parametrize("name", sorted(CASES))
def test_captured_graph_computes_what_the_module_does(name):
    module, make_inputs, expected_ops = CASES[name]
    module.eval()
    graph = qc.trace(module, make_inputs(0))
    assert expected_ops <= {node.op for node in graph}, str(graph)
    emitted = qc.to_torch(graph, trainable=False)
    for seed in (0, 1, 2):
        inputs = make_inputs(seed)
        with torch.no_grad():
            wants, gots = _flat(module(*inputs)), _flat(emitted(*inputs))
        assert len(wants) == len(gots)
        for want, got in zip(wants, gots, strict=True):
            assert got.dtype == want.dtype and got.shape == want.shape
            if want.is_floating_point():
                torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
            else:
                assert torch.equal(got, want)


def test_unused_indices_of_max_are_not_computed():
    graph = qc.trace(Lambda(lambda x: x.max(dim=1).values).eval(), (x_like(0),))
    assert {node.op for node in graph} == {"amax"}


@pytest.mark.parametrize(("function", "message"), [
    (lambda x: x ** x, r"aten\.pow\.Tensor_Tensor .*only a tensor raised to a constant number has "
                       r"an IR op .*rewrite base \*\* y as torch\.exp\(y \* math\.log\(base\)\)"),
    (lambda x: torch.maximum(x, -x), r"aten\.maximum\.default .*: the IR has no mapping for it; write "
                                     r"torch\.where\(a > b, a, b\)"),
    (lambda x: F.log_softmax(x, -1), r"aten\.log_softmax\.int .*write torch\.log\(torch\.softmax"),
    (lambda x: F.logsigmoid(x), r"log_sigmoid.*softplus"),
    (lambda x: x.min(dim=1).indices, r"the indices of min\(dim\) have no IR op; use "
                                     r"torch\.argmax\(-x, dim\)"),
    (lambda x: F.hardshrink(x), r"aten\.hardshrink\.default .*: the IR has no mapping for it; the "
                                r"nearest supported ops are hard"),
    (lambda x: x.sinh(), r"aten\.sinh\.default .*: the IR has no mapping for it; rewrite that part "
                         r"of the model with supported ops \(docs/ops\.md lists them\)"),
])
def test_unsupported_ops_say_what_to_do(function, message):
    with pytest.raises(UnsupportedOpError, match=message) as raised:
        qc.trace(Lambda(function).eval(), (x_like(0),))
    assert "The IR ops are" not in str(raised.value)
