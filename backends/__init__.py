"""Backends: where an IR graph goes to run (torch, the integer interpreter, TVM; ONNX follows).
`tvm` imports TVM only when it builds or loads a model."""

from qcompiler.backends import (
    interpreter,  # noqa: F401  (qc.backends.interpreter.run)
    torch,  # noqa: F401  (qc.backends.torch.to_torch)
    tvm,  # noqa: F401  (qc.backends.tvm.build)
)
