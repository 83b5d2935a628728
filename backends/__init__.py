"""Backends: where an IR graph goes to run (torch today; interpreter, TVM and ONNX follow)."""

from qcompiler.backends import (
    interpreter,  # noqa: F401  (qc.backends.interpreter.run)
    torch,  # noqa: F401  (qc.backends.torch.to_torch)
)
