"""ONNX export checked in onnxruntime (the oracle, STYLE.md habit 8): a float export computes
what torch computes (1e-4), a QDQ export what our fake-quant simulation computes (one
quantization step), the file passes onnx.checker with strict shape inference, and what
cannot be exported is refused by name."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import qcompiler as qc
from qcompiler.examples import models

onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")

MODELS = ("resnet_style", "mobilenet_v2", "bert_style", "audio_conv1d", "digits_cnn")


def ort_run(path, inputs, *, optimize: bool = True) -> list[np.ndarray]:
    """onnxruntime's outputs. optimize=False runs every node as written (QDQ pairs in float,
    the reference meaning of the file); True lets onnxruntime fuse QDQ into int8 kernels."""
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    if not optimize:
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    feeds = {i.name: np.asarray(x) for i, x in zip(session.get_inputs(), inputs, strict=True)}
    return session.run(None, feeds)


@pytest.mark.parametrize("name", MODELS)
def test_float_export_matches_torch_in_onnxruntime(name, builtin_stages, tmp_path):
    model, inputs, graph, _, _ = builtin_stages(name)
    path = qc.backends.onnx.export(graph, tmp_path / "model.onnx")
    for batch in (1, 3):  # the symbolic batch: one file runs at any batch size
        generator = torch.Generator().manual_seed(batch)
        x = tuple(
            torch.randn(batch, *t.shape[1:], generator=generator)
            if t.is_floating_point()
            else torch.randint(0, int(t.max()) + 1, (batch, *t.shape[1:]), generator=generator)
            for t in inputs
        )
        with torch.no_grad():
            expected = model(*x)
        got = ort_run(path, [t.numpy() for t in x])[0]
        np.testing.assert_allclose(got, expected.numpy(), rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("name", MODELS)
def test_qdq_export_matches_simulation_within_one_step(name, builtin_stages, tmp_path):
    _, inputs, _, quantized, _ = builtin_stages(name)
    path = qc.backends.onnx.export(quantized, tmp_path / "model_qdq.onnx")
    with torch.no_grad():
        expected = qc.to_torch(quantized)(*inputs).numpy()
    step = float(quantized.outputs[0].qparams.scale.max())
    got = ort_run(path, [t.numpy() for t in inputs], optimize=False)[0]
    # QuantizeLinear rounds half to even where the simulation rounds requantization points
    # half up (docs/integer-spec.md, section 3): a tie can move one value one step.
    assert np.abs(got - expected).max() <= step * 1.001


def test_qdq_file_structure(builtin_stages, tmp_path):
    """Per-channel int8 weights through DequantizeLinear on axis 0, int32 biases with scale
    s_in * s_w, uint8 activations as configured, the batch a dim_param, opset 17."""
    _, _, _, quantized, _ = builtin_stages("digits_cnn")
    path = qc.backends.onnx.export(quantized, tmp_path / "digits.onnx")
    model = onnx.load(str(path))
    onnx.checker.check_model(model, full_check=True)
    assert [(o.domain, o.version) for o in model.opset_import] == [("", 17)]
    assert model.graph.input[0].type.tensor_type.shape.dim[0].dim_param == "N"
    initializers = {i.name: onnx.numpy_helper.to_array(i) for i in model.graph.initializer}
    dequantize = [n for n in model.graph.node if n.op_type == "DequantizeLinear"]
    weight = next(n for n in dequantize if n.input[0] == "features.0.0.weight.folded.fq.quantized")
    assert initializers[weight.input[0]].dtype == np.int8
    assert {a.name: a.i for a in weight.attribute} == {"axis": 0}
    assert initializers[weight.input[1]].shape == (16,)
    bias = next(n for n in dequantize if n.input[0] == "features.0.0.bias.fq.quantized")
    assert initializers[bias.input[0]].dtype == np.int32
    input_scale = quantized.values["x.fq.scale"].data[0]
    weight_scale = quantized.values["features.0.0.weight.folded.fq.scale"].data
    np.testing.assert_array_equal(
        initializers[bias.input[1]],
        (np.float64(input_scale) * weight_scale.astype(np.float64)).astype(np.float32),
    )
    activation = next(n for n in model.graph.node if n.op_type == "QuantizeLinear")
    assert initializers[activation.input[2]].dtype == np.uint8


def test_integer_graph_is_refused(builtin_stages, tmp_path):
    _, _, _, _, integer = builtin_stages("digits_cnn")
    with pytest.raises(
        qc.OnnxExportError, match="is an integer graph .* export the graph qc.quantize returned"
    ):
        qc.backends.onnx.export(integer, tmp_path / "x.onnx")
    assert not (tmp_path / "x.onnx").exists()


def test_low_bit_activations_are_refused_by_node(tmp_path):
    model, inputs = models.digits_cnn()
    config = qc.QuantConfig(activation=qc.QScheme(bits=6, signed=False))
    quantized = qc.quantize(model, [inputs], config=config, bias_correction=False, progress=False)
    with pytest.raises(qc.OnnxExportError, match=r"node %x\.fq \(fake_quant\).*6-bit activation"):
        qc.backends.onnx.export(quantized, tmp_path / "x.onnx")


def test_output_path_checked_first(builtin_stages, tmp_path):
    _, _, graph, _, _ = builtin_stages("digits_cnn")
    with pytest.raises(qc.OutputPathError, match="does not exist"):
        qc.backends.onnx.export(graph, tmp_path / "missing" / "x.onnx")


def test_write_is_atomic(builtin_stages, tmp_path, monkeypatch):
    """A failure while writing leaves the previous file and no temporary one."""
    _, _, graph, _, _ = builtin_stages("digits_cnn")
    path = tmp_path / "model.onnx"
    path.write_bytes(b"previous")

    def fail(*args):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr("qcompiler.ir.serialize.os.replace", fail)
    with pytest.raises(qc.OutputPathError, match="No space left"):
        qc.backends.onnx.export(graph, path)
    assert path.read_bytes() == b"previous"
    assert [p.name for p in tmp_path.iterdir()] == ["model.onnx"]
