"""Backends: where an IR graph goes to run (torch today; interpreter, TVM and ONNX follow)."""

from qcompiler.backends import torch  # noqa: F401  (qc.backends.torch.to_torch)
