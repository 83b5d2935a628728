"""Capture a torch.nn.Module with torch.export into an IR graph (`trace`)."""

from qcompiler.frontends.torch_export.capture import trace  # noqa: F401
