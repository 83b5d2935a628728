"""The extreme-compression benchmark's quick mode runs end to end and writes rows whose sizes
agree with the storage report's arithmetic."""

import importlib.util
import json
import sys
from pathlib import Path

import pytest
import torch

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "extreme_compression.py"


@pytest.mark.slow
def test_quick_mode_writes_consistent_json(tmp_path, monkeypatch):
    spec = importlib.util.spec_from_file_location("extreme_compression_benchmark", SCRIPT)
    benchmark = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, spec.name, benchmark)
    spec.loader.exec_module(benchmark)
    threads = torch.get_num_threads()
    try:
        assert benchmark.main(["--quick", "--results-dir", str(tmp_path)]) == 0
    finally:
        torch.set_num_threads(threads)
    payload = json.loads((tmp_path / "extreme_compression_quick.json").read_text())
    rows = payload["results"]["digits CNN"]
    original = rows[0]
    assert original["method"] == "original" and original["ratio_fixed"] == pytest.approx(1.0, abs=0.01)
    for row in rows[1:]:
        assert row["ratio_fixed"] == pytest.approx(original["size_bytes_fixed"] / row["size_bytes_fixed"],
                                                   rel=0.01)
        assert 0 <= row["after_ft"] <= 100
        if row.get("sparsity"):
            assert row["effective_macs"] == pytest.approx(row["macs"] * (1 - row["sparsity"]), rel=0.05)
    mobilenet = next(iter(v for k, v in payload["results"].items() if k.startswith("MobileNetV2")))
    assert mobilenet[0]["ratio_huffman"] > 6  # 4-bit indices against 32-bit floats
    assert (tmp_path / "extreme_compression_quick.md").read_text().count("rate (P+Q+H)") >= 3
