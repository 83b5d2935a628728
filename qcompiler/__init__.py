"""qcompiler: capture a model into a small IR, compress it with passes, run it on backends."""

from qcompiler import backends, passes
from qcompiler.analysis.cost import cost
from qcompiler.backends.torch import to_torch
from qcompiler.budget import BudgetError, BudgetResult, search_budget
from qcompiler.errors import (
    CalibrationDataError,
    CaptureError,
    InputError,
    IntegerOnlyError,
    LoadError,
    MissingDependencyError,
    OptionError,
    OutputPathError,
    ParseError,
    PassError,
    QCompilerError,
    QuantizationError,
    UnsupportedOpError,
    VerificationError,
)
from qcompiler.finetune import FinetuneResult, finetune
from qcompiler.frontends.torch_export.capture import trace
from qcompiler.ir import Graph, Node, QParams, Value
from qcompiler.ir.pipeline import PassResult, Pipeline
from qcompiler.ir.serialize import load, save
from qcompiler.ir.text import parse
from qcompiler.quantization.config import QOverride, QScheme, QuantConfig
from qcompiler.quantization.sensitivity import SensitivityReport, sensitivity_analysis
from qcompiler.quantize import lower_to_integer, quantize
from qcompiler.report import write_report

__all__ = [
    "CaptureError", "Graph", "Node", "ParseError", "PassError", "PassResult", "Pipeline",
    "QCompilerError", "QParams", "UnsupportedOpError", "Value", "VerificationError",
    "CalibrationDataError", "InputError", "IntegerOnlyError", "LoadError", "MissingDependencyError",
    "OptionError", "OutputPathError", "QuantizationError",
    "backends", "cost", "load", "parse", "passes", "save", "to_torch", "trace",
    "QOverride", "QScheme", "QuantConfig", "quantize",
    "lower_to_integer",
    "BudgetError", "BudgetResult", "search_budget", "FinetuneResult", "finetune",
    "SensitivityReport", "sensitivity_analysis", "write_report",
]
