"""Backends: where an IR graph goes to run (torch, the integer interpreter, TVM, ONNX).
`tvm` imports TVM only when it builds or loads a model, `onnx` onnx-graphsurgeon only when it
exports one."""

from qcompiler.backends import (
    interpreter,  # noqa: F401  (qc.backends.interpreter.run)
    onnx,  # noqa: F401  (qc.backends.onnx.export)
    torch,  # noqa: F401  (qc.backends.torch.to_torch)
    tvm,  # noqa: F401  (qc.backends.tvm.build)
)
