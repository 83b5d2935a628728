"""Automatic mixed precision: the plan meets its budget, more budget buys less noise, an
impossible budget is a clear error, and the chosen QuantConfig saves, loads and reproduces
the quantized graph."""

import pytest
import torch
from torch import nn

import qcompiler as qc
from qcompiler.analysis.model_size import stored_bytes
from qcompiler.mixed_precision import measure_precision_sensitivity


@pytest.fixture(scope="module")
def mlp():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(32, 128), nn.GELU(), nn.Linear(128, 32), nn.LayerNorm(32),
                          nn.Linear(32, 64), nn.GELU(), nn.Linear(64, 8)).eval()
    batches = [torch.randn(8, 32) for _ in range(2)]
    return qc.trace(model, (batches[0],)), batches


@pytest.fixture(scope="module")
def sensitivity(mlp):
    graph, batches = mlp
    return measure_precision_sensitivity(graph, batches, config="int8", bias_correction=False,
                                         progress=False)


def test_plans_meet_their_budgets_and_more_budget_buys_less_noise(mlp, sensitivity):
    graph, _ = mlp
    fp32 = stored_bytes(graph)
    results = [sensitivity.plan(size_ratio=ratio) for ratio in (0.2, 0.3, 0.6)]
    noises = []
    for ratio, result in zip((0.2, 0.3, 0.6), results, strict=True):
        assert stored_bytes(result.quantized) / fp32 == pytest.approx(result.measured_ratio)
        assert result.measured_ratio <= ratio + 0.01, str(result)
        noises.append(sum(row.noise[row.choice] for row in result.layers))
    assert noises[0] > noises[1] > noises[2]
    assert {row.choice for row in results[0].layers} <= {"w4", "w8"}
    assert "| layer | choice |" in str(results[1])


def test_the_config_is_readable_savable_and_reproduces_the_graph(mlp, sensitivity, tmp_path):
    graph, batches = mlp
    result = sensitivity.plan(size_ratio=0.3)
    path = qc.save_config(result.config, tmp_path / "mixed.json")
    loaded = qc.load_config(path)
    assert loaded == result.config
    assert '"node_overrides"' in path.read_text()
    again = qc.quantize(graph, batches, config=loaded, bias_correction=False)
    assert str(again) == str(result.quantized)


def test_impossible_budgets_name_the_option(mlp):
    graph, batches = mlp
    with pytest.raises(qc.BudgetError, match=r"size_ratio=0.05\) is below what 4-bit weights on "
                                             r"every linear layer reach \(0\.1\d\d of FP32\)"):
        qc.search_mixed_precision(graph, batches, size_ratio=0.05, config="int8")
    with pytest.raises(qc.OptionError, match="exactly one budget"):
        qc.search_mixed_precision(graph, batches)
    with pytest.raises(qc.OptionError, match=r"latency_ratio=2\): a fraction in \(0, 1\]"):
        qc.search_mixed_precision(graph, batches, latency_ratio=2)


def test_a_latency_budget_keeps_float_layers_within_it(mlp, sensitivity):
    result = sensitivity.plan(latency_ratio=0.4)
    assert result.measured_ratio <= 0.4 + 1e-9
    assert result.estimated_ratio == pytest.approx(result.measured_ratio, rel=1e-6)
