"""MetaSchedule tuning seeded with our schedules (backends/tvm/tuning.py, `qcompiler tune`).

Fast: the budget and database options' errors (zero or unparseable budget; missing, corrupt
or other-target database, from the library and the CLI). Slow (each tuning call starts
worker processes that import TVM, and measures every kernel): a small int8 model tuned for
seconds keeps our schedule as a record and a choice, a tuned schedule forced into the
choices is applied and stays bit for bit the interpreter's, the budget is kept, and tuning
measures through an RPC tracker on loopback."""

from __future__ import annotations

import json
import time

import numpy as np
import pytest
import torch

pytest.importorskip("tvm")

import qcompiler as qc  # noqa: E402
from qcompiler.backends.tvm import tuning, tuning_db  # noqa: E402
from qcompiler.cli import main  # noqa: E402
from qcompiler.cli_models import UsageError  # noqa: E402
from qcompiler.cli_tune import parse_budget  # noqa: E402


class ConvPair(torch.nn.Module):
    """Two int8 convolutions (our blocked, tensorized kernels) and a generic epilogue."""

    def __init__(self):
        super().__init__()
        self.c1 = torch.nn.Conv2d(16, 32, 3, padding=1)
        self.c2 = torch.nn.Conv2d(32, 16, 1)

    def forward(self, x):
        return self.c2(torch.relu(self.c1(x)))


@pytest.fixture(scope="module")
def graph():
    torch.manual_seed(0)
    config = qc.QuantConfig.preset(qc.backends.tvm.quant_preset("host"))
    quantized = qc.quantize(ConvPair().eval(), [torch.randn(1, 16, 14, 14) for _ in range(4)],
                            config=config, progress=False)
    return qc.lower_to_integer(quantized, target=qc.backends.tvm.lowering_target("host"))


def _lowered(graph):
    """(the lowered graph, its legalized module, the host's target) as `tune` sees them."""
    from qcompiler.backends.tvm.lower import lower_graph
    from qcompiler.backends.tvm.plan import plan_graph
    from qcompiler.backends.tvm.target import resolve_target

    spec = resolve_target("host")
    static = graph.at_batch(1)
    lowered = lower_graph(static, spec.arch, plan_graph(static, spec.isa))
    return lowered, tuning_db.legalized(lowered.module, spec.tvm_target()), spec.tvm_target()


# ---- fast: options and database errors ----------------------------------------------------


@pytest.mark.parametrize(("text", "seconds"), [("90", 90), ("90s", 90), ("10m", 600), ("1.5h", 5400)])
def test_budgets_parse(text, seconds):
    assert parse_budget(text) == seconds


@pytest.mark.parametrize(("text", "message"), [("0", "--budget '0' is zero"), ("0m", "is zero"),
                                               ("ten", "--budget 'ten' is not a duration"),
                                               ("-5m", "is not a duration"), ("5 min", "not a duration")])
def test_bad_budgets_name_the_option(text, message):
    with pytest.raises(UsageError, match=message):
        parse_budget(text)


def test_a_zero_budget_is_refused_by_the_library(graph, tmp_path):
    with pytest.raises(qc.OptionError, match="--budget must be a positive duration, got 0 s"):
        tuning.tune(graph, "host", budget_s=0, database=tmp_path / "db", batch=1)
    assert not (tmp_path / "db").exists()


def _fake_database(directory, target: str, kernels=None, workloads: str = ""):
    directory.mkdir()
    (directory / "database_workload.json").write_text(workloads)
    (directory / "database_tuning_record.json").write_text("")
    (directory / "choices.json").write_text(json.dumps({"target": target, "kernels": kernels or {}}))
    return directory


def test_a_missing_database_names_the_option(tmp_path):
    with pytest.raises(qc.backends.tvm.TuningDatabaseError,
                       match=f"--db {tmp_path / 'nowhere'}: no such directory"):
        tuning_db.read_choices(tmp_path / "nowhere")
    with pytest.raises(qc.backends.tvm.TuningDatabaseError, match="is not a tuning database"):
        tuning_db.read_choices(tmp_path)


def test_a_corrupt_database_names_the_file(tmp_path):
    directory = _fake_database(tmp_path / "db", "llvm")
    (directory / "choices.json").write_text('{"target": "llvm", "kern')
    with pytest.raises(qc.backends.tvm.TuningDatabaseError, match="choices.json is corrupt"):
        tuning_db.read_choices(directory)


def test_a_database_of_another_target_is_refused_by_build(tmp_path):
    from qcompiler.backends.tvm.target import resolve_target

    host = str(resolve_target("host").tvm_target())
    directory = _fake_database(tmp_path / "db", host)
    graph = qc.trace(torch.nn.ReLU().eval(), (torch.randn(1, 4),))
    qc.backends.tvm.build(graph, "host", batch=1, database=directory)  # the same target: fine
    with pytest.raises(qc.backends.tvm.TuningDatabaseError, match="was tuned for target .* not .*"
                       "use a database tuned with the same --target"):
        qc.backends.tvm.build(graph, "x86-avx2", batch=1, database=directory)


def test_tuning_into_a_database_of_another_target_or_a_foreign_directory_is_refused(graph, tmp_path):
    from qcompiler.backends.tvm.target import resolve_target

    directory = _fake_database(tmp_path / "db", str(resolve_target("host").tvm_target()))
    with pytest.raises(qc.backends.tvm.TuningDatabaseError, match="was tuned for target"):
        tuning.tune(graph, "x86-avx2", budget_s=10, database=directory, batch=1)
    (tmp_path / "photos").mkdir()
    (tmp_path / "photos" / "cat.jpg").write_bytes(b"")
    with pytest.raises(qc.backends.tvm.TuningDatabaseError, match="photos is not a tuning database"):
        tuning.tune(graph, "host", budget_s=10, database=tmp_path / "photos", batch=1)


def test_the_database_variable_is_named_when_it_is_where_the_directory_came_from(tmp_path, monkeypatch):
    monkeypatch.setenv("QCOMPILER_TUNING_DB", str(tmp_path / "gone"))
    graph = qc.trace(torch.nn.ReLU().eval(), (torch.randn(1, 4),))
    with pytest.raises(qc.backends.tvm.TuningDatabaseError,
                       match=r"\$QCOMPILER_TUNING_DB .*gone: no such directory"):
        qc.backends.tvm.build(graph, "host", batch=1)


def test_corrupt_records_are_named_when_a_build_needs_them(graph, tmp_path):
    """A choice to use a tuned schedule whose records do not load."""
    lowered, module, target = _lowered(graph)
    _, workload, _ = next(tuning_db.kernels_of(lowered, module))
    choices = {tuning_db.workload_key(workload): {"use": "tuned", "trace": "0"}}
    directory = _fake_database(tmp_path / "db", str(target), choices, "[garbage\n")
    with pytest.raises(qc.backends.tvm.TuningDatabaseError, match="its records do not load"):
        qc.backends.tvm.build(graph, "host", batch=1, database=directory)


@pytest.mark.parametrize(("argv", "message"), [
    (["tune", "digits_cnn", "--budget", "0", "--db", "DB"], "--budget '0' is zero"),
    (["tune", "digits_cnn", "--budget", "soon", "--db", "DB"], "--budget 'soon' is not a duration"),
    (["tune", "digits_cnn", "--budget", "1m", "--db", "DB", "--rpc", "127.0.0.1:9"], "--rpc needs --key"),
    (["compile", "digits_cnn", "--db", "DB", "-o", "OUT"], "--db DB: no such directory"),
])
def test_cli_errors_name_the_option(argv, message, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert main(argv) == 2
    assert message in capsys.readouterr().err


# ---- slow: tuning for real --------------------------------------------------------------


@pytest.fixture(scope="module")
def tuned(graph, tmp_path_factory):
    directory = tmp_path_factory.mktemp("tuning") / "db"
    seen = []
    start = time.monotonic()
    report = tuning.tune(graph, "host", budget_s=60, database=directory, batch=1,
                         trials_per_round=4, progress=lambda r: seen.append(r.trials))
    return report, directory, seen, time.monotonic() - start


@pytest.mark.slow
def test_tuning_keeps_the_budget_and_our_schedules(graph, tuned):
    report, directory, seen, seconds = tuned
    # The whole call: ours measured, the search, the confirmation (about one batch over).
    assert seconds < 60 + 30, seconds
    assert report.trials > 0 and seen == sorted(seen) and seen[-1] == report.trials
    assert all(k.ours_ms is not None for k in report.kernels)
    choices = json.loads((directory / "choices.json").read_text())
    assert set(choices["kernels"]) == {k.key for k in report.kernels}
    for kernel in report.kernels:
        choice = choices["kernels"][kernel.key]
        # A tuned schedule is chosen only if it measured faster than ours.
        assert (choice["use"] == "tuned") == kernel.use_tuned
        if kernel.use_tuned:
            assert kernel.tuned_ms < kernel.ours_ms
    # Our schedules are records of the database: the search starts from them.
    db = tuning_db.open_database(directory)
    lowered, module, _ = _lowered(graph)
    for name, workload, schedule in tuning_db.kernels_of(lowered, module):
        ours = tuning_db.trace_id(tuning_db.ours_schedule(workload, schedule).trace)
        records = db.get_top_k(db.commit_workload(tuning_db.as_module(workload)), 1000)
        assert ours in {tuning_db.trace_id(r.trace) for r in records}, name


@pytest.mark.slow
def test_a_tuned_build_is_bit_exact_and_applies_the_tuned_schedule(graph, tuned, tmp_path):
    """Whichever won the measurements, force the best tuned schedule of a tuned kernel into
    the choices: the build applies it (its kernel changes) and stays the interpreter's."""
    import shutil

    import tvm_ffi

    _, directory, _, _ = tuned
    forced = tmp_path / "db"
    shutil.copytree(directory, forced)
    lowered, module, target = _lowered(graph)
    db = tuning_db.open_database(forced)
    choices = json.loads((forced / "choices.json").read_text())
    replaced = []
    for name, workload, schedule in tuning_db.kernels_of(lowered, module):
        record = tuning_db.best_tuned(db, workload, tuning_db.ours_schedule(workload, schedule).trace)
        if record is not None:
            choice = choices["kernels"][tuning_db.workload_key(workload)]
            choice.update(use="tuned", trace=tuning_db.trace_id(record.trace))
            replaced.append(name)
    assert replaced, "the search measured no schedule of its own"
    (forced / "choices.json").write_text(json.dumps(choices))
    applied = tuning_db.apply_database(lowered, target, forced)
    for name in replaced:
        assert not tvm_ffi.structural_equal(applied[name], module[name]), name
    ours = qc.backends.tvm.build(graph, "host", batch=1)
    for build in (qc.backends.tvm.build(graph, "host", batch=1, database=directory),
                  qc.backends.tvm.build(graph, "host", batch=1, database=forced)):
        for seed in range(3):
            x = np.random.default_rng(seed).standard_normal((1, 16, 14, 14)).astype(np.float32)
            expected = qc.backends.interpreter.run(graph, x)
            assert np.array_equal(build.run(x), expected)
            assert np.array_equal(ours.run(x), expected)


@pytest.fixture(scope="module")
def device():
    """A tracker and one RPC server under the key "tune", on loopback."""
    from rpc_loopback import loopback

    with loopback() as fleet:
        fleet.start_server("tune")
        fleet.wait_free("tune", 1)
        yield fleet


@pytest.mark.slow
def test_tuning_through_an_rpc_tracker_on_loopback(graph, device, tmp_path):
    start = time.monotonic()
    report = tuning.tune(graph, "host", budget_s=60, database=tmp_path / "db", batch=1,
                         rpc=device.tracker, key="tune", trials_per_round=4, timeout=60)
    assert time.monotonic() - start < 60 + 45
    assert all(k.ours_ms is not None for k in report.kernels)  # measured on the device
    assert report.trials > 0
    assert json.loads((tmp_path / "db" / "choices.json").read_text())["kernels"]
    x = np.random.default_rng(0).standard_normal((1, 16, 14, 14)).astype(np.float32)
    build = qc.backends.tvm.build(graph, "host", batch=1, database=tmp_path / "db")
    assert np.array_equal(build.run(x), qc.backends.interpreter.run(graph, x))


@pytest.mark.slow
def test_tuning_with_an_unknown_key_fails_at_once(graph, device, tmp_path):
    start = time.monotonic()
    with pytest.raises(qc.backends.tvm.NoDeviceError, match="no device under key 'other'"):
        tuning.tune(graph, "host", budget_s=60, database=tmp_path / "db", batch=1,
                    rpc=device.tracker, key="other")
    assert time.monotonic() - start < 20


@pytest.mark.slow
def test_cli_tune_then_compile_with_the_database(tmp_path, capsys):
    database, output = tmp_path / "db", tmp_path / "out"
    assert main(["tune", "digits_cnn", "--budget", "45s", "--db", str(database)]) == 0
    text = capsys.readouterr().out
    assert "ours ms" in text and "tuned ms" in text and "outputs identical" in text
    assert main(["compile", "digits_cnn", "--db", str(database), "-o", str(output)]) == 0
    assert (output / "model.so").is_file()
    before = json.loads((database / "choices.json").read_text())["kernels"]
    # Again into the same directory: extended, its choices kept for what is not searched again.
    assert main(["tune", "digits_cnn", "--budget", "30s", "--db", str(database)]) == 0
    assert set(before) <= set(json.loads((database / "choices.json").read_text())["kernels"])


@pytest.mark.slow
def test_cli_tune_through_an_rpc_tracker(device, tmp_path, capsys):
    argv = ["tune", "digits_cnn", "--budget", "40s", "--db", str(tmp_path / "db"),
            "--rpc", device.tracker, "--key", "tune"]
    assert main(argv) == 0
    text = capsys.readouterr().out
    assert f"on devices 'tune' at {device.tracker}" in text and "outputs identical" in text


@pytest.mark.slow
def test_tuning_for_aarch64_on_the_qemu_rpc_server(tmp_path):
    """Cross-compiled tuning: aarch64 kernels built here, measured on an ARM device (our
    session server under qemu-aarch64; its timings mean nothing, the plumbing does), and the
    build with the database runs there bit for bit the interpreter's."""
    import shutil

    from rpc_loopback import loopback

    from qcompiler.backends.tvm import aarch64, remote

    missing = [tool for tool in (aarch64.CROSS_CXX, aarch64.QEMU) if shutil.which(tool) is None]
    if missing:
        pytest.fail(f"install the aarch64 toolchain first: {', '.join(missing)} (.ci/run does)")
    torch.manual_seed(0)
    target = "aarch64-dotprod"
    config = qc.QuantConfig.preset(qc.backends.tvm.quant_preset(target))
    quantized = qc.quantize(ConvPair().eval(), [torch.randn(1, 16, 14, 14) for _ in range(4)],
                            config=config, progress=False)
    graph = qc.lower_to_integer(quantized, target=qc.backends.tvm.lowering_target(target))
    with pytest.raises(qc.backends.tvm.TargetError, match="tune them on devices of that architecture"):
        tuning.tune(graph, target, budget_s=60, database=tmp_path / "local", batch=1)
    with loopback() as fleet:
        fleet.start_aarch64_server("arm")
        fleet.wait_free("arm", 1)
        report = tuning.tune(graph, target, budget_s=90, database=tmp_path / "db", batch=1,
                             rpc=fleet.tracker, key="arm", trials_per_round=2, timeout=120)
        assert all(k.ours_ms is not None for k in report.kernels)  # each measured on the device
        compiled = qc.backends.tvm.build(graph, target, batch=1, database=tmp_path / "db")
        x = np.random.default_rng(3).standard_normal((1, 16, 14, 14)).astype(np.float32)
        fleet.wait_free("arm", 1)
        outputs = remote.run(compiled, x, tracker=fleet.tracker, key="arm", timeout=120)
    expected = qc.backends.interpreter.run(graph, x)
    assert all(np.array_equal(a, b) for a, b in zip(_tuple(outputs), _tuple(expected), strict=True))
    assert json.loads((tmp_path / "db" / "choices.json").read_text())["kernels"]


def _tuple(value):
    return value if isinstance(value, tuple | list) else (value,)
