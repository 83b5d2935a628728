"""The ONNX agreement benchmark on a few crops writes every pair of executions it promises,
each with an agreement in [0, 1], and the command that reproduces it."""

import json

import pytest


@pytest.mark.slow
def test_small_run_measures_every_pair(tmp_path, run_benchmark):
    pytest.importorskip("onnxruntime")
    from qcompiler.examples.models import pretrained_weights_path

    if pretrained_weights_path() is None:
        pytest.skip("the pretrained MobileNetV2 weights package is not installed")
    argv = ["--images", "16", "--calibration", "16", "--threads", "1", "--results-dir", str(tmp_path)]
    assert run_benchmark("onnx_agreement", argv) == 0
    payload = json.loads((tmp_path / "onnx_agreement.json").read_text())
    rows = payload["results"]["Pairs of executions"]
    pairs = {(row["execution A"], row["execution B"]): row["top-1 agreement"] for row in rows}
    assert len(pairs) == 12 and all(0.0 <= value <= 1.0 for value in pairs.values())
    assert ("onnxruntime INT8, our file", "our float32 simulation") in pairs
    assert ("onnxruntime INT8, its file", "onnxruntime, its file as written") in pairs
    assert payload["command"] == "python benchmarks/onnx_agreement.py " + " ".join(argv)
