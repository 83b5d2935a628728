"""The extreme-compression benchmark's quick mode runs end to end and writes rows whose sizes
agree with the storage report's arithmetic."""

import json

import pytest


@pytest.mark.slow
def test_quick_mode_writes_consistent_json(tmp_path, run_benchmark):
    assert run_benchmark("extreme_compression", ["--quick", "--results-dir", str(tmp_path)]) == 0
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
