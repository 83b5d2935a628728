"""Placement of fake_quant nodes: where an integer runtime quantizes, and nowhere else."""

import numpy as np
import pytest
import torch

import qcompiler as qc
from qcompiler.errors import QuantizationError
from qcompiler.examples import models
from qcompiler.ir import Graph, structurally_equal
from qcompiler.ir.text import parse
from qcompiler.passes import fold_batchnorm, insert_fake_quant
from qcompiler.quantization.calibrate import calibrate
from qcompiler.quantization.config import QOverride, QScheme, QuantConfig
from qcompiler.quantization.quantizers import find_uncalibrated

CONV = {"stride": [1, 1], "padding": [1, 1], "dilation": [1, 1]}



def traced(factory, **kwargs) -> Graph:
    model, inputs = factory(**kwargs)
    return fold_batchnorm(qc.trace(model, inputs)).graph


@pytest.fixture(scope="module")
def resnet():
    return traced(models.resnet_style, batch=1)


@pytest.fixture(scope="module")
def mobilenet():
    return traced(models.mobilenet_v2, batch=1, resolution=32)


@pytest.fixture(scope="module")
def bert():
    return traced(models.bert_style, batch=1, tokens=8)


def producer_op(value):
    return None if value.producer is None else value.producer.op


def quantized_by(value):
    """The fake_quant node that produces `value`, looking through value-moving ops."""
    while value.producer is not None and value.producer.op in ("reshape", "flatten", "permute",
                                                                 "transpose", "slice"):
        value = value.producer.inputs[0]
    return value.producer if producer_op(value) == "fake_quant" else None


def check_common_placement(float_graph: Graph, config=None):
    result = insert_fake_quant(float_graph.copy(), config=config)
    graph = result.graph.verify()
    assert result.modified
    layers = [n for n in graph if n.op in ("conv2d", "linear")]
    for node in graph:
        if node.op in ("relu", "clamp"):  # never a fake_quant between a layer and its activation
            assert producer_op(node.inputs[0]) != "fake_quant", node.describe()
        if node.op in ("conv2d", "linear"):
            weight_fq = node.inputs[1].producer
            assert weight_fq.op == "fake_quant" and weight_fq.inputs[0].is_constant
            assert quantized_by(node.inputs[0]) is not None, node.describe()
            if len(node.inputs) > 2 and node.inputs[2] is not None:  # int32 bias grid s_in * s_w
                bias_fq = node.inputs[2].producer
                assert bias_fq.op == "fake_quant_bias" and bias_fq.inputs[0].is_constant
                assert bias_fq.inputs[1] is quantized_by(node.inputs[0]).inputs[1]
                assert bias_fq.inputs[2] is weight_fq.inputs[1]
        if node.op == "add":  # residual adds: both inputs and the output (after a fused relu)
            assert all(quantized_by(v) is not None for v in node.inputs), node.describe()
            out = node.output
            if out.users[0].op in ("relu", "clamp"):
                out = out.users[0].output
            assert [u.op for u in out.users] == ["fake_quant"], node.describe()
    for value in graph.inputs:
        if value.dtype == "f32":
            assert [u.op for u in value.users] == ["fake_quant"]
    assert all(producer_op(v) == "fake_quant" for v in graph.outputs)
    weight_fqs = [n for n in graph if n.op == "fake_quant" and n.inputs[0].is_constant
                  and any(u.op in ("conv2d", "linear") for u in n.output.users)]
    assert len(weight_fqs) == len(layers)
    # Uncalibrated until calibration: detectable, and refused when run.
    assert set(map(id, find_uncalibrated(graph))) == {id(n) for n in graph if n.op == "fake_quant"}
    return graph


def test_resnet_placement(resnet):
    graph = check_common_placement(resnet)
    weight_fq = graph.values["conv1"].producer.inputs[1].producer
    assert weight_fq.attrs == {"axis": 0, "bits": 8, "signed": True, "narrow_range": True,
                               "symmetric": True, "rounding": "half_to_even"}
    relu_fq = graph.values["relu"].users[0]
    # The conv's integer form requantizes its accumulator there: round half up.
    assert relu_fq.attrs == {"axis": None, "bits": 8, "signed": False, "narrow_range": False,
                             "symmetric": False, "rounding": "half_up"}
    assert graph.values["x"].users[0].attrs["rounding"] == "half_to_even"  # graph boundary
    assert relu_fq.inputs[1].shape == (1,) and np.isnan(relu_fq.inputs[1].data).all()
    # The pooled value is requantized (averaging makes new values); flatten keeps it.
    assert producer_op(graph.values["flatten"].producer.inputs[0]) == "fake_quant"


def test_mobilenet_v2_placement(mobilenet):
    graph = check_common_placement(mobilenet)
    relu6 = [n for n in graph if n.op == "clamp"]
    assert relu6 and all(producer_op(n.inputs[0]) == "conv2d" for n in relu6)
    assert all([u.op for u in n.output.users] == ["fake_quant"] for n in relu6)
    # Depthwise weights are per channel too (axis 0 has one filter per channel).
    depthwise = [n for n in graph if n.op == "conv2d" and n.attrs["groups"] > 1]
    assert depthwise and all(n.inputs[1].producer.attrs["axis"] == 0 for n in depthwise)


def test_bert_placement(bert):
    graph = check_common_placement(bert)
    ops = {n.name: n for n in graph}
    assert producer_op(ops["layers.0.softmax"].output.users[0].output) == "fake_quant"
    for node in graph:  # value-moving ops keep their input's quantization: no fake_quant after
        if node.op in ("reshape", "permute", "transpose", "slice"):
            assert all(u.op != "fake_quant" for u in node.output.users), node.describe()
    # The integer token ids are not quantized; the constant operands of binary ops are.
    assert graph.inputs[0].dtype == "i64" and graph.inputs[0].users[0].op == "embedding"
    assert producer_op(ops["layers.0.div"].inputs[1]) == "fake_quant"
    assert producer_op(ops["add"].inputs[1]) == "fake_quant"  # the position embeddings


def two_branch_concat() -> Graph:
    g = Graph()
    x = g.add_input("x", (1, 2, 4, 4))
    rng = np.random.default_rng(0)
    branches = []
    for name, gain in (("a", 1.0), ("b", 5.0)):
        w = g.add_constant(f"{name}.weight", (rng.standard_normal((3, 2, 3, 3)) * gain).astype(np.float32))
        branches.append(g.add_node("conv2d", [x, w], CONV, name=name).output)
    cat = g.add_node("concat", branches, {"dim": 1}, name="cat")
    g.outputs = [g.add_node("reshape", [cat.output], {"shape": [1, 96]}, name="flat").output]
    return g


def test_concat_inputs_share_the_output_qparams():
    result = insert_fake_quant(two_branch_concat())
    graph = result.graph.verify()
    cat = graph.values["cat"].producer
    fq_a, fq_b = (v.producer for v in cat.inputs)
    assert fq_a.op == fq_b.op == "fake_quant"
    assert fq_a.inputs[1] is fq_b.inputs[1] and fq_a.inputs[2] is fq_b.inputs[2]
    assert "concat %cat: %a.fq, %b.fq share one scale and zero point" in result.notes
    # No fake_quant of the concat output (it is already on the shared grid), and none after
    # the reshape: the graph output is quantized through value-moving ops.
    assert [u.op for u in cat.output.users] == ["reshape"]
    data = [torch.randn(1, 2, 4, 4) for _ in range(3)]
    calibrated = calibrate(graph, data, QuantConfig(activation_observer="minmax"), progress=False)
    qa, qb = (v.producer.output.qparams for v in calibrated.values["cat"].producer.inputs)
    assert qa == qb
    # The shared range is the range of the whole concat output (branch b dominates).
    float_graph = two_branch_concat()
    outputs = [qc.to_torch(float_graph)(x).detach().numpy() for x in data]
    hi = max(o.max() for o in outputs)
    assert qa.scale[0] == pytest.approx((hi - min(min(o.min() for o in outputs), 0)) / 255, rel=1e-6)


def test_exclusions_keep_nodes_float(resnet):
    config = QuantConfig(exclude_nodes=["layers.0.conv2"], exclude_op_types=["adaptive_avg_pool2d"])
    graph = insert_fake_quant(resnet.copy(), config=config).graph.verify()
    conv = graph.values["layers.0.conv2"].producer
    assert producer_op(conv.inputs[1]) != "fake_quant"  # no weight fake_quant
    # The float output is quantized where the (integer) add reads it, as it must be.
    [requantize] = conv.output.users
    assert requantize.op == "fake_quant" and [u.op for u in requantize.output.users] == ["add"]
    pool = graph.values["pool"].producer
    # Value-moving ops (flatten) stay float on float input; the linear quantizes what it reads.
    assert [u.op for u in pool.output.users] == ["flatten"]
    assert producer_op(graph.values["fc"].producer.inputs[0]) == "fake_quant"


def test_overrides_and_per_tensor_weights(resnet):
    config = QuantConfig(weight=QScheme(8, symmetric=True, narrow_range=True),
                         node_overrides={"fc": QOverride(weight=QScheme(4, symmetric=True),
                                                         activation=QScheme(16))})
    graph = insert_fake_quant(resnet.copy(), config=config).graph
    assert graph.values["conv1"].producer.inputs[1].producer.attrs["axis"] is None
    fc = graph.values["fc"].producer
    assert fc.inputs[1].producer.attrs["bits"] == 4
    assert fc.output.users[0].attrs["bits"] == 16


def test_grouped_conv_transpose_falls_back_to_per_tensor_and_shared_weights_once():
    g = Graph()
    x = g.add_input("x", (1, 4, 4, 4))
    w = g.add_constant("up.weight", np.ones((4, 2, 2, 2), np.float32))
    up = g.add_node("conv_transpose2d", [x, w], {"stride": [2, 2], "padding": [0, 0], "dilation": [1, 1],
                                                "groups": 2, "output_padding": [0, 0]}, name="up")
    shared = g.add_constant("fc.weight", np.ones((3, 8), np.float32))
    flat = g.add_node("reshape", [up.output], {"shape": [32, 8]}, name="flat")
    fc1 = g.add_node("linear", [flat.output, shared], name="fc1")
    fc2 = g.add_node("linear", [flat.output, shared], name="fc2")
    g.outputs = [g.add_node("add", [fc1.output, fc2.output], name="sum").output]
    result = insert_fake_quant(g)
    graph = result.graph.verify()
    assert graph.values["up"].producer.inputs[1].producer.attrs["axis"] is None
    assert any("grouped conv_transpose2d" in note for note in result.notes)
    assert graph.values["fc1"].producer.inputs[1] is graph.values["fc2"].producer.inputs[1]


def test_refuses_to_quantize_twice_and_checks_config_names(resnet):
    once = insert_fake_quant(resnet.copy()).graph
    with pytest.raises(QuantizationError, match=r"graph ResNetStyle already has fake_quant nodes "
                                                r"\(node %x.fq \(fake_quant\)\); insert_fake_quant "
                                                "quantizes a float graph once"):
        insert_fake_quant(once)
    with pytest.raises(QuantizationError, match="QuantConfig.exclude_nodes names 'layers.0.conv_2', "
                                                "which is not a node or input of graph ResNetStyle; "
                                                "did you mean 'layers.0.conv2'"):
        insert_fake_quant(resnet.copy(), config=QuantConfig(exclude_nodes=["layers.0.conv_2"]))


def test_nothing_to_quantize_reports_unmodified():
    g = Graph()
    ids = g.add_input("ids", (2, 3), "i64")
    g.outputs = [g.add_node("reshape", [ids], {"shape": [6]}).output]
    before = str(g)
    result = insert_fake_quant(g)
    assert not result.modified and str(result.graph) == before


def test_uncalibrated_graph_is_refused_when_run_and_text_round_trips():
    g = Graph()
    x = g.add_input("x", (1, 2))
    w = g.add_constant("w", np.eye(2, dtype=np.float32))
    g.outputs = [g.add_node("linear", [x, w], name="fc").output]
    graph = insert_fake_quant(g).graph
    with pytest.raises(QuantizationError,
                       match=r"qc.to_torch needs a calibrated graph, but node %\S+ \(fake_quant\)"):
        qc.to_torch(graph)
    assert structurally_equal(parse(str(graph)), graph)  # NaN scales and attrs print and parse
    calibrated = calibrate(graph, [torch.ones(1, 2)])
    assert structurally_equal(parse(str(calibrated)), calibrated)  # so do qparams


def test_concat_of_a_float_and_a_quantized_value_quantizes_both_to_shared_qparams():
    graph = insert_fake_quant(two_branch_concat(), config=QuantConfig(exclude_nodes=["b"])).graph
    cat = graph.values["cat"].producer
    fq_a, fq_b = (v.producer for v in cat.inputs)
    assert fq_b.op == "fake_quant" and fq_b.inputs[0] is graph.values["b"]
    assert fq_b.inputs[0].producer.inputs[1].producer is None  # b's weight stays float
    assert fq_a.inputs[1] is fq_b.inputs[1]
