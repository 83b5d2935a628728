"""`qcompiler export MODEL --format onnx -o F` and the other commands on `model.onnx`."""

from __future__ import annotations

from io import StringIO

import numpy as np
import pytest
import torch

import qcompiler as qc
from qcompiler import cli
from qcompiler.examples import models

pytest.importorskip("onnxruntime")


def run(argv) -> tuple[int, str]:
    out = StringIO()
    return cli.main(argv, out=out), out.getvalue()


def test_export_float_and_quantized_then_inspect_and_run(tmp_path, capsys):
    float_path, qdq_path = tmp_path / "digits.onnx", tmp_path / "digits_qdq.onnx"
    code, out = run(["export", "digits_cnn", "--format", "onnx", "-o", str(float_path)])
    assert code == 0 and f"wrote {float_path} (float ONNX, opset 17" in out
    model, inputs = models.digits_cnn()
    with torch.no_grad():
        expected = model(*inputs).numpy()
    got = qc.to_torch(qc.load_onnx(float_path))(*inputs).detach().numpy()
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-5)

    code, out = run(["export", "digits_cnn", "-o", str(qdq_path), "--quantize"])
    assert code == 0 and "(QDQ ONNX, opset 17" in out
    assert any(n.op == "fake_quant" for n in qc.load_onnx(qdq_path))

    code, out = run(["inspect", str(float_path), "--lines", "2"])
    assert code == 0 and f"loaded ONNX model {float_path} (float graph DigitsCNN): 18 nodes" in out
    assert "conv2d" in out
    code, out = run(["run", str(qdq_path)])  # a QDQ file is lowered as it is, not re-quantized
    assert code == 0 and "interpreter" in out and "0 step(s)" in out
    assert "Traceback" not in capsys.readouterr().err


def test_export_a_saved_graph(tmp_path):
    model, inputs = models.digits_cnn()
    quantized = qc.quantize(model, [inputs], bias_correction=False, progress=False)
    saved = qc.save(quantized, tmp_path / "digits.qc")
    code, out = run(["export", str(saved), "-o", str(tmp_path / "digits.onnx")])
    assert code == 0 and "QDQ ONNX" in out
    code, _ = run(["export", str(saved), "-o", str(tmp_path / "again.onnx"), "--quantize"])
    assert code == 2


def test_bad_onnx_file_is_one_message(tmp_path, capsys):
    path = tmp_path / "broken.onnx"
    path.write_bytes(b"\x08\x07garbage")
    code, _ = run(["inspect", str(path)])
    error = capsys.readouterr().err
    assert code == 2
    assert error.startswith(f"qcompiler: error: {path}: not an ONNX model") and "Traceback" not in error
    code, _ = run(["export", "digits_cnn", "-o", str(tmp_path / "missing" / "x.onnx")])
    assert code == 2 and "directory" in capsys.readouterr().err
