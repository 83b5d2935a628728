"""The torch emitter: the module computes what the ops compute, by hand; weights are trainable."""

import operator

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from strategies import graphs, random_inputs

from qcompiler.backends.torch import to_torch
from qcompiler.ir import Graph

torch.manual_seed(0)


def _layer_norm(x, weight=None, bias=None, *, normalized_shape, eps=1e-5):
    dims = tuple(range(-len(normalized_shape), 0))
    mean = x.mean(dims, keepdim=True)
    var = ((x - mean) ** 2).mean(dims, keepdim=True)
    y = (x - mean) / torch.sqrt(var + eps)
    y = y if weight is None else y * weight
    return y if bias is None else y + bias


def _batch_norm(x, weight, bias, mean, var, *, eps=1e-5):
    shape = (1, -1) + (1,) * (x.dim() - 2)
    return (x - mean.reshape(shape)) / torch.sqrt(var.reshape(shape) + eps) * weight.reshape(shape) \
        + bias.reshape(shape)


def _softmax(x, *, dim):
    e = torch.exp(x - x.amax(dim, keepdim=True))
    return e / e.sum(dim, keepdim=True)


def _linear(x, weight, bias=None):
    y = x @ weight.T
    return y if bias is None else y + bias


# Each op written again from torch primitives or its textbook formula: an oracle that
# does not share `qcompiler.ir.ops` (where the emitter takes its functions from).
BY_HAND = {
    "conv2d": lambda x, w, b=None, *, stride, padding, dilation, groups=1:
        F.conv2d(x, w, b, stride=stride, padding=padding, dilation=dilation, groups=groups),
    "linear": _linear,
    "relu": lambda x: torch.where(x > 0, x, torch.zeros_like(x)),
    "clamp": lambda x, *, min=None, max=None: x.clamp(min=min, max=max),
    "gelu": lambda x, *, approximate="none": F.gelu(x, approximate=approximate),
    "add": operator.add,
    "mul": operator.mul,
    "softmax": _softmax,
    "concat": lambda *xs, dim: torch.cat(xs, dim=dim),
    "split": lambda x, *, axis, sizes: tuple(x.split(sizes, dim=axis)),
    "reshape": lambda x, *, shape: x.reshape(shape),
    "transpose": lambda x, *, dim0, dim1: x.transpose(dim0, dim1),
    "layer_norm": _layer_norm,
    "mean": lambda x, *, dim, keepdim=False: x.mean(dim, keepdim=keepdim),
    "batch_norm": _batch_norm,
    "flatten": lambda x, *, start_dim=0, end_dim=-1: x.flatten(start_dim, end_dim),
    "max_pool2d": lambda x, *, kernel_size, stride, padding, dilation, ceil_mode=False:
        F.max_pool2d(x, kernel_size, stride, padding, dilation, ceil_mode=ceil_mode),
    "avg_pool2d": lambda x, *, kernel_size, stride, padding, ceil_mode=False, count_include_pad=True:
        F.avg_pool2d(x, kernel_size, stride, padding, ceil_mode, count_include_pad),
    "adaptive_avg_pool2d": lambda x, *, output_size: F.adaptive_avg_pool2d(x, output_size),
    "resize": lambda x, *, size, mode="nearest", align_corners=None:
        F.interpolate(x, size=size, mode=mode, align_corners=align_corners),
}


def run_by_hand(graph: Graph, inputs, weights=None) -> list[torch.Tensor]:
    """Run the graph node by node with BY_HAND; `weights` overrides constants by name."""
    weights = weights or {}
    env = {id(v): t for v, t in zip(graph.inputs, inputs, strict=True)}
    for value in graph.constants:
        env[id(value)] = weights.get(value.name, torch.from_numpy(value.data.copy()))
    for node in graph:
        args = [None if v is None else env[id(v)] for v in node.inputs]
        while args and args[-1] is None:
            args.pop()
        result = BY_HAND[node.op](*args, **node.attrs)
        for value, tensor in zip(node.outputs, result if isinstance(result, tuple) else (result,),
                                 strict=True):
            env[id(value)] = tensor
    return [env[id(v)] for v in graph.outputs]


def _as_list(result):
    return list(result) if isinstance(result, tuple) else [result]


@settings(max_examples=30, deadline=None)
@given(graphs(special_floats=False, qparams=False))
def test_emitted_module_equals_running_each_op_by_hand(graph):
    inputs = random_inputs(graph, seed=1)
    expected = run_by_hand(graph, inputs)
    got = _as_list(to_torch(graph)(*inputs))
    assert len(got) == len(expected)
    for a, b in zip(got, expected, strict=True):
        # float32; the hand-written norms and softmax round differently from torch's kernels.
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)


def _conv_bn_net() -> Graph:
    rng = np.random.default_rng(0)
    f32 = lambda *shape: rng.standard_normal(shape).astype(np.float32)  # noqa: E731
    graph = Graph("net")
    x = graph.add_input("x", (2, 3, 6, 6))
    conv = graph.add_node("conv2d", [x, graph.add_constant("conv.weight", f32(4, 3, 3, 3)),
                                     graph.add_constant("conv.bias", f32(4))],
                          {"stride": [1, 1], "padding": [1, 1], "dilation": [1, 1]}, name="conv").output
    bn = graph.add_node("batch_norm", [conv, graph.add_constant("bn.weight", f32(4)),
                                       graph.add_constant("bn.bias", f32(4)),
                                       graph.add_constant("bn.running_mean", f32(4)),
                                       graph.add_constant("bn.running_var", np.abs(f32(4)) + 0.5)],
                        name="bn").output
    relu = graph.add_node("relu", [bn]).output
    pooled = graph.add_node("flatten", [graph.add_node("adaptive_avg_pool2d", [relu],
                                                       {"output_size": [1, 1]}).output], {"start_dim": 1})
    fc = graph.add_node("linear", [pooled.output, graph.add_constant("fc.weight", f32(5, 4)),
                                   graph.add_constant("fc.bias", f32(5))], name="fc").output
    norm = graph.add_node("layer_norm", [fc, graph.add_constant("ln.weight", f32(5)),
                                         graph.add_constant("ln.bias", f32(5))],
                          {"normalized_shape": [5]}, name="ln").output
    graph.outputs = [norm]
    return graph.verify()


def test_conv_bn_net_matches_by_hand_and_gradients_reach_every_weight():
    graph = _conv_bn_net()
    module = to_torch(graph)
    params = dict(module.named_parameters())
    assert sorted(params) == ["bn_bias", "bn_weight", "conv_bias", "conv_weight", "fc_bias", "fc_weight",
                              "ln_bias", "ln_weight"]
    # Running statistics are not learnable (and torch cannot differentiate through them).
    assert sorted(dict(module.named_buffers())) == ["bn_running_mean", "bn_running_var"]
    x = torch.randn(2, 3, 6, 6, generator=torch.Generator().manual_seed(0))
    loss = module(x).square().sum()
    loss.backward()
    # The oracle: the same loss by hand, differentiated with respect to leaf copies of the weights.
    leaves = {module.qc_names[name]: p.detach().clone().requires_grad_(True) for name, p in params.items()}
    expected_loss = run_by_hand(graph, [x], leaves)[0].square().sum()
    expected_loss.backward()
    torch.testing.assert_close(loss, expected_loss, rtol=1e-5, atol=1e-5)
    for name, param in params.items():
        assert param.grad is not None and param.grad.abs().sum() > 0, name
        torch.testing.assert_close(param.grad, leaves[module.qc_names[name]].grad, rtol=1e-4, atol=1e-5,
                                   msg=lambda m, name=name: f"{name}: {m}")  # grads sum many terms


def test_trainable_false_gives_buffers_only():
    graph = _conv_bn_net()
    module = to_torch(graph, trainable=False)
    assert list(module.parameters()) == []
    assert len(list(module.buffers())) == len(graph.constants) == 10
    x = torch.randn(2, 3, 6, 6)
    torch.testing.assert_close(module(x), to_torch(graph)(x), rtol=0, atol=0)


def test_embedding_table_is_trainable_and_indices_are_integers():
    graph = Graph()
    ids = graph.add_input("ids", (2, 3), "i64")
    table = graph.add_constant("emb.table", np.arange(20, dtype=np.float32).reshape(5, 4))
    graph.outputs = [graph.add_node("embedding", [ids, table]).output]
    module = to_torch(graph)
    ids_tensor = torch.tensor([[0, 1, 4], [4, 4, 2]])
    out = module(ids_tensor)
    torch.testing.assert_close(out, torch.from_numpy(table.data)[ids_tensor], rtol=0, atol=0)
    out.sum().backward()
    assert module.emb_table.grad[4].tolist() == [3.0] * 4 and module.emb_table.grad[3].tolist() == [0.0] * 4


def test_multi_output_graphs_return_a_tuple_in_output_order():
    graph = Graph()
    x = graph.add_input("x", (2, 5))
    first, second = graph.add_node("split", [x], {"axis": 1, "sizes": [2, 3]}, name="parts").outputs
    scale = graph.add_constant("scale", np.full((1, 3), 2.0, np.float32))
    doubled = graph.add_node("mul", [second, scale]).output
    graph.outputs = [doubled, first, x, scale]  # a graph input and a constant can be outputs too
    x_tensor = torch.randn(2, 5)
    got = to_torch(graph)(x_tensor)
    assert isinstance(got, tuple) and len(got) == 4
    expected = [x_tensor[:, 2:] * 2, x_tensor[:, :2], x_tensor, torch.full((1, 3), 2.0)]
    for a, b in zip(got, expected, strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=0)


def test_absent_optional_inputs():
    graph = Graph()
    x = graph.add_input("x", (2, 1, 4, 4))
    w = graph.add_constant("w", np.ones((2, 1, 3, 3), np.float32))
    conv = graph.add_node("conv2d", [x, w], {"stride": [1, 1], "padding": [1, 1], "dilation": [1, 1]})
    flat = graph.add_node("reshape", [conv.output], {"shape": [2, 32]}).output
    fc_w = graph.add_constant("fc.w", np.eye(32, dtype=np.float32)[:8])
    fc = graph.add_node("linear", [flat, fc_w, None]).output  # `_` as the last input
    b = graph.add_constant("ln.b", np.arange(8, dtype=np.float32))
    graph.outputs = [graph.add_node("layer_norm", [fc, None, b], {"normalized_shape": [8]}).output]
    assert "layer_norm(%linear, _, %ln.b)" in str(graph)
    x_tensor = torch.randn(2, 1, 4, 4)
    expected = F.layer_norm(F.linear(F.conv2d(x_tensor, torch.ones(2, 1, 3, 3), padding=1).reshape(2, 32),
                                     torch.eye(32)[:8]), [8], None, torch.arange(8.0))
    torch.testing.assert_close(to_torch(graph)(x_tensor), expected, rtol=1e-5, atol=1e-5)


def test_qc_names_map_attributes_back_to_ir_names():
    graph = Graph("names")
    x = graph.add_input("x", (1, 2))
    names = ["conv.weight", "0.bias", "training", "a.b", "a_b", "as", "lambda"]  # keywords too
    constants = [graph.add_constant(n, np.full((1, 2), i, np.float32)) for i, n in enumerate(names)]
    v = x
    for constant in constants:
        v = graph.add_node("add", [v, constant]).output
    graph.outputs = [v]
    module = to_torch(graph)
    assert module.qc_names == {"conv_weight": "conv.weight", "c_0_bias": "0.bias", "training_": "training",
                               "a_b": "a.b", "a_b_": "a_b", "as_": "as", "lambda_": "lambda"}
    for attribute, name in module.qc_names.items():
        np.testing.assert_array_equal(getattr(module, attribute).numpy(), graph.values[name].data)
    assert module.training is True  # the nn.Module flag was not overwritten by the constant
    torch.testing.assert_close(module(torch.zeros(1, 2)), torch.full((1, 2), 21.0), rtol=0, atol=0)
    keyword_node = Graph("keyword_node")
    y = keyword_node.add_input("if", (1, 2))
    keyword_node.outputs = [keyword_node.add_node("relu", [y], name="as").output]
    torch.testing.assert_close(to_torch(keyword_node)(-torch.ones(1, 2)), torch.zeros(1, 2))


@pytest.mark.parametrize("dtype", ["f16", "i32"])
def test_non_float32_constants_are_buffers_of_their_dtype(dtype):
    graph = Graph()
    x = graph.add_input("x", (3,), dtype)
    c = graph.add_constant("c", np.array([1, 2, 3]), dtype)
    graph.outputs = [graph.add_node("add", [x, c]).output]
    module = to_torch(graph)
    assert module.c.dtype == {"f16": torch.float16, "i32": torch.int32}[dtype]
    assert list(module.parameters()) == []


@pytest.mark.parametrize("exact", [False, True])
def test_torch_save_of_a_trained_module_loads_and_computes_the_same(builtin_stages, tmp_path, exact):
    """torch.fx would pickle the generated code and trace it again on load (a TraceError on the
    ops' own checks); the module pickles as IR text plus its current tensors instead."""
    _, inputs, _, quantized, _ = builtin_stages("digits_cnn")
    module = to_torch(quantized, exact=exact)
    optimizer = torch.optim.SGD(module.parameters(), lr=0.1)
    module(*inputs).square().mean().backward()
    optimizer.step()  # trained weights, not the graph's
    module.eval()
    torch.save(module, tmp_path / "module.pt")
    loaded = torch.load(tmp_path / "module.pt", weights_only=False)
    assert not loaded.training and loaded.qc_names == module.qc_names
    assert all(torch.equal(loaded.state_dict()[k], v) for k, v in module.state_dict().items())
    assert [name for name, _ in loaded.named_parameters()] == [name for name, _ in module.named_parameters()]
    x = torch.randn(5, *inputs[0].shape[1:])  # any batch size
    with torch.no_grad():
        assert torch.equal(loaded(x), module(x))
