"""docs/onnx.md's example runs (its own asserts check its claims)."""

import re
from pathlib import Path

import pytest

pytest.importorskip("onnxruntime")

DOC = Path(__file__).resolve().parents[3] / "docs" / "onnx.md"


def test_onnx_doc_example_runs():
    blocks = re.findall(r"```python\n(.*?)```", DOC.read_text(), re.DOTALL)
    assert blocks
    namespace: dict = {}
    for block in blocks:
        exec(compile(block, str(DOC), "exec"), namespace)
