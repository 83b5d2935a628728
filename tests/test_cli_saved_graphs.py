"""`qcompiler quantize MODEL -o model.qc` saves a graph, and the saved graph is a MODEL for the
other commands: the integers it runs are those of the graph it was saved from."""

import re
from io import StringIO

import numpy as np
import pytest

import qcompiler as qc
from qcompiler import cli
from qcompiler.cli_models import load_model


def run(argv) -> tuple[int, str]:
    out = StringIO()
    return cli.main(argv, out=out), out.getvalue()


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    """digits_cnn quantized (fake-quant) and lowered (integer), saved by the CLI."""
    directory = tmp_path_factory.mktemp("saved")
    fake_quant, integer = directory / "digits.qc", directory / "digits_int.qc"
    code, out = run(["quantize", "digits_cnn", "-o", str(fake_quant), "--calibration", "4"])
    assert code == 0, out
    assert re.search(r"calibrating on 4 seeded random inputs in 1 batch\(es\)", out)
    assert re.search(rf"wrote {re.escape(str(fake_quant))} \(\d+ kB, fake-quant graph DigitsCNN, "
                     r"\d+ nodes\)", out)
    code, out = run(["quantize", str(fake_quant), "--integer", "-o", str(integer)])
    assert code == 0, out
    assert "loaded saved fake-quant graph" in out and "integer graph DigitsCNN" in out
    return fake_quant, integer


def test_saved_graphs_are_what_the_cli_says(saved):
    fake_quant, integer = (qc.load(path) for path in saved)
    assert any(node.op == "fake_quant" for node in fake_quant)
    assert {node.op for node in integer} >= {"quantize", "qconv2d", "qlinear"}
    assert not integer.inputs[0].is_static  # the symbolic batch survives saving


def test_run_on_a_saved_graph_gives_the_integers_of_the_graph(saved):
    fake_quant_path, integer_path = saved
    code, out = run(["run", str(fake_quant_path)])
    assert code == 0, out
    assert "vs fake-quant simulation (exact): max 0 step(s), 0.00% of 10 elements differ" in out
    assert "vs float" not in out  # a saved fake-quant graph carries no float model
    code, out = run(["run", str(integer_path)])
    assert code == 0, out
    loaded = load_model(str(integer_path))
    expected = qc.backends.interpreter.run(loaded.graph, *[x.numpy() for x in loaded.example_inputs])
    printed = re.search(r"interpreter: \[([^\]]*)\]", out).group(1)
    np.testing.assert_allclose(np.array(printed.split(), np.float32), expected.reshape(-1)[:8],
                               atol=1e-4)


def test_inspect_reads_a_saved_graph(saved):
    code, out = run(["inspect", str(saved[1]), "--lines", "2"])
    assert code == 0
    assert out.startswith(f"loaded saved integer graph {saved[1]} (DigitsCNN): ")
    assert "graph DigitsCNN(%x: f32[N,1,8,8])" in out


@pytest.mark.parametrize("argv, message", [
    (["report", "{fake_quant}", "--out", "{tmp}/r.html"],
     "qcompiler report takes a torch model (a built-in name or path/to/file.py:factory), not a "
     "saved graph: saved fake-quant graph {fake_quant} (DigitsCNN)"),
    (["demo", "--model", "{integer}", "--float-only"], "qcompiler demo takes a torch model"),
    (["quantize", "{integer}", "-o", "{tmp}/again.qc"],
     "saved integer graph {integer} (DigitsCNN) is quantized already; nothing to do"),
    (["quantize", "{fake_quant}", "-o", "{tmp}/again.qc"],
     "is quantized already; add --integer to lower it to integers"),
    (["quantize", "digits_cnn", "-o", "{tmp}/missing/dir/m.qc"],
     "saved graph path {tmp}/missing/dir/m.qc: directory {tmp}/missing/dir does not exist"),
    (["inspect", "{tmp}/absent.qc"], "no such file: {tmp}/absent.qc"),
    (["inspect", "{tmp}/corrupt.qc"], "{tmp}/corrupt.qc"),
])
def test_bad_uses_of_saved_graphs_are_one_line_errors(saved, tmp_path, capsys, argv, message):
    (tmp_path / "corrupt.qc").write_bytes(saved[0].read_bytes()[:200])  # a truncated file
    names = {"fake_quant": saved[0], "integer": saved[1], "tmp": tmp_path}
    code, _ = run([part.format(**names) for part in argv])
    error = capsys.readouterr().err
    assert code == 2
    assert error.startswith("qcompiler: error: ") and error.count("\n") == 1
    assert message.format(**names) in error
    assert not (tmp_path / "again.qc").exists() and not (tmp_path / "missing").exists()


def test_compile_builds_a_saved_integer_graph_bit_exact_with_the_interpreter(saved, tmp_path):
    pytest.importorskip("tvm")
    code, out = run(["compile", str(saved[1]), "-o", str(tmp_path / "compiled")])
    assert code == 0, out
    compiled = qc.backends.tvm.load(tmp_path / "compiled")
    loaded = load_model(str(saved[1]))
    inputs = [x.numpy() for x in loaded.example_inputs]
    np.testing.assert_array_equal(compiled.run(*inputs),
                                  qc.backends.interpreter.run(loaded.graph, *inputs))
