"""MetaSchedule tuning (backends/tvm/tuning.py): a seconds-scale budget on a tiny integer model
measures trials into the database directory; a later build applies it (the kernels change)
and its outputs stay bit for bit the interpreter's. Slow: each batch of trials starts worker
processes that import TVM."""

from __future__ import annotations

import numpy as np
import pytest
import torch

pytest.importorskip("tvm")

from test_tvm_remote import TwoHeads  # noqa: E402

import qcompiler as qc  # noqa: E402
from qcompiler.backends.tvm import tuning  # noqa: E402

pytestmark = pytest.mark.slow


def test_a_tuned_build_applies_the_database_and_stays_bit_exact(tmp_path):
    import tvm

    from qcompiler.backends.tvm.lower import lower_graph
    from qcompiler.backends.tvm.target import resolve_target

    torch.manual_seed(0)
    config = qc.QuantConfig.preset(qc.backends.tvm.quant_preset("host"))
    quantized = qc.quantize(TwoHeads().eval(), [torch.randn(1, 3, 8, 8) for _ in range(4)],
                            config=config, progress=False)
    graph = qc.lower_to_integer(quantized, target=qc.backends.tvm.lowering_target("host"))
    seen = []
    report = tuning.tune(graph, "host", budget_s=30, database=tmp_path / "db", batch=1,
                         trials_per_round=4, progress=lambda r: seen.append(r.trials))
    assert report.trials > 0 and seen and any(t.best_ms is not None for t in report.tasks)
    assert (tmp_path / "db" / "database_tuning_record.json").stat().st_size > 0

    spec = resolve_target("host")
    module = lower_graph(graph.at_batch(1), spec.arch).module
    plain = tuning.legalized(module, spec.tvm_target())
    tuned_module = tuning.apply_database(module, spec.tvm_target(), tmp_path / "db")
    assert not tvm.ir.structural_equal(plain, tuned_module)

    tuned = qc.backends.tvm.build(graph, "host", batch=1, database=tmp_path / "db")
    for seed in range(3):
        x = np.random.default_rng(seed).standard_normal((1, 3, 8, 8)).astype(np.float32)
        expected = qc.backends.interpreter.run(graph, x)
        assert all(np.array_equal(a, b) for a, b in zip(tuned.run(x), expected, strict=True))


def test_a_missing_database_is_named(tmp_path):
    from qcompiler.backends.tvm.lower import lower_graph
    from qcompiler.backends.tvm.target import resolve_target

    graph = qc.trace(torch.nn.ReLU().eval(), (torch.randn(1, 4),)).at_batch(1)
    spec = resolve_target("host")
    with pytest.raises(qc.backends.tvm.TVMBackendError, match="is not a tuning database"):
        tuning.apply_database(lower_graph(graph, spec.arch).module, spec.tvm_target(), tmp_path)
