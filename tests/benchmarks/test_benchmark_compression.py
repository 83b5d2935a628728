"""The compression benchmark's quick mode runs end to end and writes consistent results."""

import json
import math

import pytest


@pytest.mark.slow
def test_quick_mode_writes_consistent_json(tmp_path, run_benchmark):
    assert run_benchmark("compression", ["--quick", "--results-dir", str(tmp_path)]) == 0

    payload = json.loads((tmp_path / "compression_quick.json").read_text())
    assert payload["command"] == "python benchmarks/compression.py --quick"
    assert payload["machine"]["cpu"] and payload["machine"]["torch_threads"] == 1
    sections = payload["results"]
    models = [name for name in sections if name not in ("Targets", "Kernel time by channel count")]
    assert len(models) == 3
    kernels = sections["Kernel time by channel count"]
    assert len(kernels) == 4 and all(row["c=64"] == 1.0 and row["c=64 ms"] > 0 and row["c=8"] > 0
                                     for row in kernels)
    for name in models:
        rows = sections[name]
        assert rows[0]["method"] == "original" and rows[0]["macs_ratio"] == 1.0
        compressed = [row for row in rows[1:] if "error" not in row]
        assert {row["target_macs_ratio"] for row in compressed} >= {0.7, 0.5}
        for row in compressed:
            # The budget search meets its MAC target, within one step of the coarsest unit.
            assert row["target_macs_ratio"] - 0.05 <= row["macs_ratio"] <= row["target_macs_ratio"]
            assert row["latency_b1_ms"] > 0 and row["latency_b1_compressed_ms"] > 0
            assert math.isclose(row["latency_b1_ratio"],
                                row["latency_b1_compressed_ms"] / row["latency_b1_ms"], rel_tol=1e-9)
            quality = [key for key in row if key.startswith(("before_ft_", "after_ft_"))]
            assert quality and all(isinstance(row[key], float) for key in quality)
    digits = sections[models[0]]
    # The digits CNN's batch norms are re-estimated between the search and the fine-tune.
    assert all(isinstance(row["recalibrated_accuracy_pct"], float)
               for row in digits[1:] if "error" not in row)
    mobilenet = [row for row in sections[models[2]][1:] if "error" not in row]
    assert all(row["latency_b1_224px_ms"] > 0 for row in mobilenet)  # also timed at its native size
    assert any("b1 224px latency" in check["target"] for check in sections["Targets"])
    assert {row["criterion"] for row in digits[1:]} >= {"l1", "l2", "fpgm", "bn_scale", "activation",
                                                          "quantization", "-"}
    assert sections["Targets"] and all(isinstance(c["met"], bool) for c in sections["Targets"])
    markdown = (tmp_path / "compression_quick.md").read_text()
    assert "## Targets" in markdown and "TVM FP32 build does not exist yet" in markdown
