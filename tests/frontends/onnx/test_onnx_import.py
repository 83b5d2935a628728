"""Whole models through ONNX: export then import gives the original function (float: 1e-5;
QDQ: bit-exact after lowering, on the interpreter); torch.onnx.export files import to what
torch computes; onnxruntime's own QDQ files (quantize_static) import as calibrated
fake-quant graphs whose lowering runs bit-exact with our exact simulation of them."""

from __future__ import annotations

import logging

import numpy as np
import pytest
import torch

import qcompiler as qc
from qcompiler.examples import models
from qcompiler.quantization.quantizers import fake_quant_nodes

pytest.importorskip("onnxruntime")
from onnx_cases import ort_run  # noqa: E402
from oracles import assert_same_function  # noqa: E402

MODELS = ("resnet_style", "mobilenet_v2", "bert_style", "audio_conv1d", "digits_cnn")


@pytest.mark.parametrize("name", MODELS)
def test_float_round_trip(name, builtin_stages, tmp_path):
    _, inputs, graph, _, _ = builtin_stages(name)
    imported = qc.load_onnx(qc.backends.onnx.export(graph, tmp_path / "model.onnx"))
    assert [v.shape for v in imported.inputs] == [v.shape for v in graph.inputs]  # N survives
    assert_same_function(graph, imported, inputs=[inputs])


def _quantizer(node) -> tuple:
    q = node.output.qparams
    return (node.inputs[0].is_constant, str(sorted(node.attrs.items())), q.scale.tobytes(),
            q.zero_point.tobytes(), q.bits, q.signed, str(q.axis), q.narrow_range)


@pytest.mark.parametrize("name", MODELS)
def test_qdq_round_trip_is_bit_exact_after_lowering(name, builtin_stages, tmp_path):
    _, inputs, _, quantized, integer = builtin_stages(name)
    imported = qc.load_onnx(qc.backends.onnx.export(quantized, tmp_path / "model.onnx"))
    # The quantizers come back with the same attributes and qparams.
    assert sorted(map(_quantizer, fake_quant_nodes(imported))) == \
        sorted(map(_quantizer, fake_quant_nodes(quantized)))
    strict = name != "bert_style"  # layer_norm and softmax stay float islands
    lowered = qc.lower_to_integer(imported, strict=strict)
    arrays = [x.numpy() for x in inputs]
    expected = qc.backends.interpreter.run(integer, *arrays, strict=strict)
    np.testing.assert_array_equal(qc.backends.interpreter.run(lowered, *arrays, strict=strict), expected)


@pytest.mark.parametrize("name", ["resnet_style", "bert_style", "digits_cnn"])
def test_torch_onnx_export_imports_to_the_torch_function(name, tmp_path):
    model, inputs = getattr(models, name)()
    path = tmp_path / "model.onnx"
    torch.onnx.export(model, inputs, str(path), dynamo=False, opset_version=17, input_names=["x"],
                      dynamic_axes={"x": {0: "batch"}})
    graph = qc.load_onnx(path)
    assert str(graph.inputs[0].shape[0]) == "N"
    with torch.no_grad():
        expected = model(*inputs)
        got = qc.to_torch(graph)(*inputs)
    np.testing.assert_allclose(got.numpy(), expected.numpy(), rtol=1e-5, atol=1e-5)
    if name == "bert_style":  # torch.onnx writes gelu as its erf formula; it imports as gelu
        assert [node.op for node in graph].count("gelu") == 2 and not any(n.op == "erf" for n in graph)


class _Reader:
    def __init__(self, batches):
        self.batches = iter([{"x": b} for b in batches])

    def get_next(self):
        return next(self.batches, None)


@pytest.mark.parametrize("per_channel", [False, True])
def test_onnxruntime_quantize_static_imports_calibrated(per_channel, tmp_path):
    """onnxruntime's QDQ file of the digits CNN (MobileNetV2: the slow test_onnx_pretrained.py):
    imported, lowered, the interpreter equals our exact (float64) simulation of the imported
    graph bit for bit, and onnxruntime's reference run of its own file within one output step."""
    quantization = pytest.importorskip("onnxruntime.quantization")
    model, inputs = models.digits_cnn()
    float_path, qdq_path = tmp_path / "float.onnx", tmp_path / "qdq.onnx"
    torch.onnx.export(model, inputs, str(float_path), dynamo=False, opset_version=17, input_names=["x"],
                      dynamic_axes={"x": {0: "batch"}})
    generator = torch.Generator().manual_seed(0)
    batches = [torch.randn(inputs[0].shape, generator=generator).numpy() for _ in range(3)]
    logging.getLogger().setLevel(logging.ERROR)  # quantize_static's advice to pre-process
    quantization.quantize_static(str(float_path), str(qdq_path), _Reader(batches),
                                 quant_format=quantization.QuantFormat.QDQ, per_channel=per_channel,
                                 activation_type=quantization.QuantType.QUInt8,
                                 weight_type=quantization.QuantType.QInt8)
    graph = qc.load_onnx(qdq_path)
    weights = [n for n in fake_quant_nodes(graph) if n.inputs[0].is_constant]
    assert weights and all((n.attrs["axis"] == 0) == per_channel for n in weights)
    assert any(n.op == "fake_quant_bias" for n in graph)
    integer = qc.lower_to_integer(graph)
    x = inputs[0]
    ours = qc.backends.interpreter.run(integer, x.numpy())
    with torch.no_grad():
        exact = qc.to_torch(graph, exact=True)(x.double()).numpy()
    np.testing.assert_array_equal(ours, exact)
    step = float(graph.outputs[0].qparams.scale.max())
    assert np.abs(ort_run(qdq_path, {"x": x.numpy()})[0] - ours).max() <= step * 1.001


def test_imported_graph_runs_the_float_pipeline_and_ptq(tmp_path):
    """After import, the canonical clean-up (BN folding) and PTQ apply unchanged."""
    from qcompiler.pipelines import canonical_float_pipeline

    model, inputs = models.resnet_style()
    path = tmp_path / "model.onnx"
    # Without constant folding the batch norms stay in the file, for the pipeline to fold.
    torch.onnx.export(model, inputs, str(path), dynamo=False, opset_version=17, input_names=["x"],
                      dynamic_axes={"x": {0: "batch"}}, do_constant_folding=False)
    graph = qc.load_onnx(path)
    assert any(node.op == "batch_norm" for node in graph)
    folded = canonical_float_pipeline().run(graph)
    assert not any(node.op == "batch_norm" for node in folded)
    assert_same_function(graph, folded, inputs=[inputs], scale_relative=True)
    quantized = qc.quantize(folded, [inputs], bias_correction=False, progress=False)
    assert fake_quant_nodes(quantized)
