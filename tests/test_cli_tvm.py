"""The TVM commands of the command line: `qcompiler compile` writes a model directory that
`qcompiler run DIR` runs (bit for bit the interpreter's outputs), `qcompiler bench` prints a
latency, the demo's TVM section reports bit-exactness and a latency table, and bad input is
one message with exit code 1 or 2."""

from __future__ import annotations

import io
import json
import re

import numpy as np
import pytest

pytest.importorskip("tvm")

import qcompiler as qc  # noqa: E402
from qcompiler import cli  # noqa: E402


def run(argv: list[str]) -> tuple[int, str]:
    out = io.StringIO()
    code = cli.main(argv, out=out)
    return code, out.getvalue()


@pytest.fixture(scope="module")
def compiled_digits(tmp_path_factory):
    directory = tmp_path_factory.mktemp("cli") / "digits"
    code, out = run(["compile", "digits_cnn", "--target", "host", "-o", str(directory)])
    assert code == 0, out
    return directory, out


def test_compile_writes_library_and_manifest(compiled_digits):
    directory, out = compiled_digits
    preset = qc.backends.tvm.quant_preset("host")
    assert f"int8 preset {preset!r} (qc.backends.tvm.quant_preset('host'))" in out
    assert re.search(rf"^wrote {re.escape(str(directory))}: model.so \(\d+ kB\) and manifest.json$", out,
                     re.MULTILINE)
    assert "  input x: f32[4, 1, 8, 8]\n" in out
    manifest = json.loads((directory / "manifest.json").read_text())
    assert manifest["target"]["name"] == "host" and manifest["graph"] == "DigitsCNN"


def test_run_on_a_directory_runs_the_compiled_model(compiled_digits, tmp_path):
    directory, _ = compiled_digits
    x = np.random.default_rng(0).standard_normal((4, 1, 8, 8)).astype(np.float32)
    np.save(tmp_path / "x.npy", x)
    code, out = run(["run", str(directory), "--input", str(tmp_path / "x.npy"),
                     "--output", str(tmp_path / "y.npy")])
    assert code == 0
    assert re.search(r"^output %classifier\.fq\.dequantize: float32\[4, 10\], first values \[", out,
                     re.MULTILINE)
    assert np.array_equal(np.load(tmp_path / "y.npy"), qc.backends.tvm.load(directory).run(x))


def test_run_with_the_wrong_number_of_inputs_is_a_usage_error(compiled_digits, tmp_path, capsys):
    directory, _ = compiled_digits
    np.save(tmp_path / "x.npy", np.zeros((4, 1, 8, 8), np.float32))
    code, _ = run(["run", str(directory), "--input", str(tmp_path / "x.npy"),
                   "--input", str(tmp_path / "x.npy")])
    assert code == 2
    assert capsys.readouterr().err == (f"qcompiler: error: {directory} takes 1 input(s), 2 --input "
                                       "file(s) given\n")


def test_run_on_a_corrupted_directory_is_one_message(compiled_digits, tmp_path, capsys):
    import shutil

    damaged = tmp_path / "damaged"
    shutil.copytree(compiled_digits[0], damaged)
    (damaged / "manifest.json").write_text("{")
    code, _ = run(["run", str(damaged)])
    assert code == 1
    error = capsys.readouterr().err
    assert error.startswith(f"qcompiler: ArtifactError: {damaged / 'manifest.json'} is corrupted: "
                            "not valid JSON") and "Traceback" not in error


def test_compile_for_an_unknown_target_lists_the_valid_ones(tmp_path, capsys):
    code, _ = run(["compile", "digits_cnn", "--target", "riscv", "-o", str(tmp_path / "m")])
    assert code == 2
    assert capsys.readouterr().err == (
        "qcompiler: error: unknown target 'riscv'; valid targets: host, x86, x86-avx2, x86-avx512, "
        "x86-vnni, aarch64, aarch64-dotprod\n")


def test_compile_with_a_preset_the_target_cannot_take_is_refused(tmp_path, capsys):
    code, _ = run(["compile", "digits_cnn", "--target", "x86-avx2", "--preset", "int8",
                   "-o", str(tmp_path / "m")])
    assert code == 1
    error = capsys.readouterr().err
    assert error.startswith("qcompiler: WeightRangeError: target x86-avx2 (avx2) computes int8 layers "
                            "exactly only with weights in [-64, 63]")
    assert "qc.QuantConfig.preset('int8-avx2')" in error
    assert not (tmp_path / "m").exists()


def test_bench_prints_the_latency_of_the_tvm_build():
    code, out = run(["bench", "digits_cnn", "--backend", "tvm", "--repeat", "3", "--profile"])
    assert code == 0
    assert re.search(r"^TVM INT8 \(host, untuned\): \d+\.\d\d ms \(min \d+\.\d\d, max \d+\.\d\d\) per call, "
                     r"batch 4, median of 3 rounds$", out, re.MULTILINE)
    # function, ms, share, GOPS, % of the int8 peak, the kernel that ran, nodes
    assert re.search(r"^k_features_\S+ +\d+\.\d{3} +\d+\.\d% +\d+\.\d +\d+\.\d%  conv_int8_\w+ +features\.",
                     out, re.MULTILINE)


def test_run_model_on_tvm_agrees_with_the_interpreter():
    code, out = run(["run", "digits_cnn", "--backend", "tvm"])
    assert code == 0
    assert "  vs interpreter: 0 of 40 elements differ\n" in out


def test_demo_tvm_section_is_bit_exact_and_times_every_engine():
    import torch

    threads = torch.get_num_threads()
    code, out = run(["demo", "--model", "digits_cnn", "--lines", "1", "--images", "8", "--rounds", "2"])
    assert code == 0
    section = out[out.index("== TVM backend"):]
    assert re.search(r"^CPU: .+; x86_64, SIMD level (avx2|avx512|vnni|generic) \(", section, re.MULTILINE)
    assert re.search(r"^TVM vs interpreter on 2 evaluation batches: 0 of 80 outputs differ \(bit-exact\)$",
                     section, re.MULTILINE)
    for engine in ("torch eager FP32", "onnxruntime FP32", "onnxruntime INT8 (QDQ u8/s8 per-channel)",
                   "TVM FP32 (ours, untuned)", "TVM INT8 (ours, untuned)", "integer interpreter (numpy)"):
        assert re.search(rf"^  {re.escape(engine)} +\d+\.\d\d ms  \(", section, re.MULTILINE), engine
    assert "latency, batch 4, 2 threads, median of 2 rounds (min-max):" in section
    assert torch.get_num_threads() == threads  # timed at 2 threads, then restored
