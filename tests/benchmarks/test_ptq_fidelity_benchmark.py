"""The PTQ fidelity benchmark's quick run writes every variant with finite metrics."""

import json
import math
import sys
from pathlib import Path

import pytest

BENCHMARKS = Path(__file__).resolve().parents[2] / "benchmarks"


@pytest.mark.slow
def test_quick_benchmark_reports_every_variant(tmp_path):
    pytest.importorskip("skimage")
    pytest.importorskip("sklearn")
    from qcompiler.examples.models import pretrained_weights_path

    if pretrained_weights_path() is None:
        pytest.skip("pretrained MobileNetV2 weights not installed")
    sys.path.insert(0, str(BENCHMARKS))
    try:
        import ptq_fidelity
    finally:
        sys.path.remove(str(BENCHMARKS))

    assert ptq_fidelity.main(["--quick", "--threads", "2", "--results-dir", str(tmp_path)]) == 0
    payload = json.loads((tmp_path / "ptq_fidelity_quick.json").read_text())
    assert (tmp_path / "ptq_fidelity_quick.md").is_file()
    assert payload["settings"]["threads"] == 2 and payload["machine"]["torch_threads"] == 2
    mobilenet, observers, digits, targets = payload["results"].values()
    expected = ["FP32", *(variant.label for variant in ptq_fidelity.VARIANTS)]
    assert [row["variant"] for row in mobilenet] == expected
    assert [row["variant"] for row in digits] == expected
    # The observer table: the preset's per-channel row, then one row per other observer.
    assert [row["variant"] for row in observers] == [
        "W8A8 per-channel", *(variant.label for variant in ptq_fidelity.OBSERVER_VARIANTS)]
    assert all(row["status"] == "ok" and math.isfinite(row["mean_kl"]) for row in observers)
    for row in mobilenet:
        if row["status"].startswith("not run:"):  # only a missing AdaRound may be skipped
            assert row["key"].endswith("adaround")
            continue
        # "ok", or "suspect: ..." when a step left the graph unchanged: measured either way.
        assert row["status"] == "ok" or row["status"].startswith("suspect: same graph as")
        for name in ("top1_agreement", "top5_containment", "mean_kl", "confident_top1_agreement"):
            assert math.isfinite(row[name]), (row["variant"], name)
        # Every variant still classifies like FP32 far above chance (1 in 1000): measured
        # 0.44-0.78 top-1 agreement and KL 0.12-1.5 nats on the 32 quick crops; a broken
        # quantizer gives near 0 and several nats (log 1000 = 6.9 for a uniform guess).
        assert row["top1_agreement"] > 0.25 and row["mean_kl"] < 3.0, row
    fp32 = mobilenet[0]
    assert fp32["top1_agreement"] == 1.0 and fp32["mean_kl"] == pytest.approx(0.0, abs=1e-9)
    # Digits (labelled): measured FP32 97.5%, every W8A8 variant the same, W4A8 96.7-96.9%.
    reference = digits[0]["accuracy_pct"]
    assert reference > 90
    for row in digits[1:]:
        if row["status"] == "ok":
            assert row["accuracy_pct"] > reference - (1.0 if row["preset"].startswith("int8") else 3.0), row
    assert all(isinstance(row["met"], bool) for row in targets)
