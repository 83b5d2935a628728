"""qcompiler: capture a model into a small IR, compress it with passes, run it on backends."""

from qcompiler import backends, passes
from qcompiler.backends.torch import to_torch
from qcompiler.errors import (
    CaptureError,
    ParseError,
    PassError,
    QCompilerError,
    UnsupportedOpError,
    VerificationError,
)
from qcompiler.ir import Graph, Node, QParams, Value
from qcompiler.pipeline import PassResult, Pipeline
from qcompiler.text import parse

__all__ = [
    "CaptureError", "Graph", "Node", "ParseError", "PassError", "PassResult", "Pipeline",
    "QCompilerError", "QParams", "UnsupportedOpError", "Value", "VerificationError",
    "backends", "parse", "passes", "to_torch",
]
