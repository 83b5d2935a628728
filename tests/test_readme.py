"""The README's promises: its Python tour runs, its shell examples run, its links resolve,
and CI runs its two set-up commands verbatim (so the README cannot drift from what CI tests)."""

import os
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
README = (ROOT / "README.md").read_text()


def code_blocks(language: str) -> list[str]:
    return re.findall(rf"```{language}\n(.*?)```", README, re.DOTALL)


def test_python_tour_runs(capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # the files it writes (digits.qc, out/) stay out of the checkout
    namespace: dict = {}
    for block in code_blocks("python"):  # one tour in several blocks, run in order
        exec(compile(block, "README.md", "exec"), namespace)  # its own asserts check its claims
    assert "graph ResNetStyle(" in capsys.readouterr().out


def test_ci_runs_the_two_setup_commands_verbatim():
    install, tests = code_blocks("bash")[:2]
    ci_lines = (ROOT / ".ci" / "run").read_text().splitlines()
    assert install.strip() in ci_lines
    assert tests.strip() in ci_lines


def test_print_after_example_runs():
    (example,) = [block for block in code_blocks("bash") if "QC_PRINT_AFTER" in block]
    variable, _, command = example.strip().partition(" ")
    name, _, value = variable.partition("=")
    argv = command.split()
    argv[0] = str(Path(sys.executable).parent / "qcompiler")  # .venv/bin/qcompiler, wherever it is
    result = subprocess.run(argv, capture_output=True, text=True, timeout=300,
                            env={**os.environ, name: value})
    assert result.returncode == 0, result.stderr
    assert "// IR after fold_batchnorm (modified)\ngraph DigitsCNN(" in result.stderr
    assert "IR after eliminate_dead_code" not in result.stderr


def test_links_resolve():
    links = re.findall(r"\]\(([^)#]+)\)", README)
    assert links
    missing = [link for link in links if not (ROOT / link).exists()]
    assert missing == []
