"""qcompiler: capture a model into a small IR, compress it with passes, run it on backends."""

from qcompiler import backends, passes
from qcompiler.analysis.cost import cost
from qcompiler.backends.torch import to_torch
from qcompiler.budget import BudgetError, BudgetResult, search_budget
from qcompiler.errors import (
    BinaryLayerOrderError,
    CalibrationDataError,
    CaptureError,
    InputError,
    IntegerOnlyError,
    LoadError,
    MissingDependencyError,
    OnnxExportError,
    OnnxImportError,
    OnnxUnsupportedOpError,
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
from qcompiler.frontends.onnx import load_onnx
from qcompiler.frontends.torch_export.capture import trace
from qcompiler.ir import Graph, Node, QParams, Value
from qcompiler.ir.pipeline import PassResult, Pipeline
from qcompiler.ir.serialize import load, save
from qcompiler.ir.text import parse
from qcompiler.mixed_precision import MixedPrecisionResult, search_mixed_precision
from qcompiler.quantization.config import QOverride, QScheme, QuantConfig
from qcompiler.quantization.config_io import load_config, save_config
from qcompiler.quantization.sensitivity import SensitivityReport, sensitivity_analysis
from qcompiler.quantize import lower_to_integer, quantize, search_smoothing_alpha
from qcompiler.report import write_report

__all__ = [
    "search_smoothing_alpha", "search_mixed_precision", "MixedPrecisionResult", "save_config",
    "load_config",
    "CaptureError", "Graph", "Node", "ParseError", "PassError", "PassResult", "Pipeline",
    "QCompilerError", "QParams", "UnsupportedOpError", "Value", "VerificationError",
    "CalibrationDataError", "InputError", "IntegerOnlyError", "LoadError", "MissingDependencyError",
    "BinaryLayerOrderError", "OptionError", "OutputPathError", "QuantizationError",
    "OnnxExportError", "OnnxImportError", "OnnxUnsupportedOpError", "load_onnx",
    "backends", "cost", "load", "parse", "passes", "save", "to_torch", "trace",
    "QOverride", "QScheme", "QuantConfig", "quantize",
    "lower_to_integer",
    "BudgetError", "BudgetResult", "search_budget", "FinetuneResult", "finetune",
    "SensitivityReport", "sensitivity_analysis", "write_report",
]
