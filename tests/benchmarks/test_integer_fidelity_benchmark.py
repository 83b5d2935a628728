"""The integer fidelity benchmark's quick run: every model measured, the exact simulation equal
to the interpreter, and the interpreter's throughput on MobileNetV2 reported."""

import importlib.util
import json
import math
from pathlib import Path

import pytest

BENCHMARK = Path(__file__).resolve().parents[2] / "benchmarks" / "integer_fidelity.py"


@pytest.mark.slow
def test_quick_run_reports_every_model_and_an_exact_simulation(tmp_path):
    spec = importlib.util.spec_from_file_location("integer_fidelity", BENCHMARK)
    integer_fidelity = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(integer_fidelity)
    assert integer_fidelity.main(["--quick", "--out", str(tmp_path)]) == 0
    payload = json.loads((tmp_path / "integer_fidelity_quick.json").read_text())
    assert payload["command"] == "python benchmarks/integer_fidelity.py --quick"
    outputs = payload["results"]["Interpreter vs fake-quant simulation (outputs)"]
    models = [row["model"].split(" ")[0] for row in outputs]
    assert models[:3] == ["digits_cnn", "resnet_style", "bert_style"]
    for row in outputs:
        assert row["float64 outputs differing"] == 0 and row["float64 max steps"] == 0, row
        assert row["float64 top-1 interpreter=simulation"] == 1, row
        # The float32 simulation: each op, fed the simulation's integers, is within one step
        # of the integer kernel, and rarely off at all (measured 2-3e-6 of the elements, one
        # step of float32 accumulation at a rounding boundary; 1e-4 leaves a 30x margin).
        assert row["float32 per-op max steps"] <= 1, row
        assert row["float32 per-op differing"] < 1e-4, row
    digits = payload["results"]["Digits accuracy (labelled test split)"][0]
    assert digits["accuracy interpreter %"] == digits["accuracy simulation float64 %"]
    if "mobilenet_v2" in models:  # the pretrained weights package is installed
        speed = payload["results"]["Interpreter throughput"][0]
        assert math.isfinite(speed["images/s"]) and speed["images/s"] > 0
