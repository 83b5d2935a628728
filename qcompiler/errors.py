"""Exceptions raised by qcompiler. Each message names the node, option or file at fault
and says what to do about it."""


class QCompilerError(Exception):
    """Base class of every error qcompiler raises on purpose."""


class CaptureError(QCompilerError):
    """A model could not be captured into the IR (untraceable, training mode, bad inputs)."""


class UnsupportedOpError(CaptureError):
    """The model uses an op the IR has no mapping for."""


class VerificationError(QCompilerError):
    """A graph broke an IR invariant (structure, op signature, dtype or shape)."""


class PassError(QCompilerError):
    """A pass failed; the message names the pass and the passes that ran before it."""


class ParseError(QCompilerError):
    """IR text could not be parsed; the message gives the line."""


class LoadError(QCompilerError):
    """A saved graph file (`qc.load`) cannot be read: missing, truncated, corrupted, not a
    qcompiler graph, or written in a newer format. The message names the file."""


class OnnxImportError(LoadError):
    """An ONNX file (`qc.load_onnx`) cannot be imported: not a readable ONNX model, an opset
    outside the supported range, a broken graph (cycle, dangling input, missing initializer,
    absurd shape) or missing external data. The message names the file, and the node where
    there is one."""


class OnnxUnsupportedOpError(OnnxImportError, UnsupportedOpError):
    """An ONNX model uses an op (or an op's attribute value) the importer has no mapping for;
    the message names the node, the op and its opset."""


class OnnxExportError(QCompilerError):
    """A graph cannot be written as ONNX: an op or quantization without an ONNX (QDQ) form, or
    an uncalibrated or integer graph. The message names the node and what to do."""


class QuantizationError(QCompilerError):
    """Quantization cannot proceed: an invalid QuantConfig, bad calibration data, NaN/Inf
    in weights or activations, or a graph whose fake-quant nodes are not calibrated."""


class CalibrationDataError(QuantizationError, PassError):
    """Calibration data that does not fit the graph: no batch, a batch with the wrong number,
    shape or dtype of tensors, or NaN/Inf in an input. Quantization and compression passes
    read calibration data alike, so it is both a QuantizationError and a PassError."""


class IntegerOnlyError(QCompilerError):
    """An integer-only graph would hold (or holds) float arithmetic inside its integer region:
    an op without an integer form, lowered or run in strict mode. The message names the node."""


class BudgetError(QCompilerError):
    """A compression budget (`qc.search_budget`) cannot be met by the chosen method."""


class OptionError(QCompilerError, ValueError, TypeError):
    """An option of a pass or of a workflow (`qc.quantize`, `qc.finetune`, `qc.search_budget`,
    `qc.sensitivity_analysis`, `qc.Pipeline`...) has a value or a type it cannot take; the
    message names the option and what it accepts. It is a ValueError and a TypeError too, as
    the errors these checks raised before it existed."""


class OutputPathError(OptionError):
    """An output path that cannot be written: its directory is missing (qcompiler does not
    create directories) or is a file, it is not writable, or the path is a directory. Checked
    before the work that produces the output starts."""


class InputError(QCompilerError, ValueError):
    """An input given to a backend (the integer interpreter) does not fit the graph: wrong
    count, shape or dtype, or NaN / Inf where the graph quantizes it."""


class MissingDependencyError(QCompilerError, ImportError):
    """A feature needs an optional package that is not installed; the message names the
    package and the pip extra that installs it."""


def import_optional(module: str, extra: str, purpose: str):
    """Import `module` (an optional dependency) or raise MissingDependencyError saying how to
    install it: `pip install "qcompiler[<extra>]"` (from a checkout: `pip install -c
    constraints.txt -e ".[<extra>]"`)."""
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError as error:
        raise MissingDependencyError(
            f"{purpose} needs the package '{module.split('.')[0]}', which is not installed "
            f"({error}); install qcompiler's '{extra}' extra: pip install -c constraints.txt "
            f"-e \".[{extra}]\" from a checkout, or pip install \"qcompiler[{extra}]\"") from None


class BinaryLayerOrderError(PassError):
    """1-bit activations were asked for where the layer order loses their information (a
    sign after a relu, without a batch norm before it, or an averaging op between the sign
    and its binary layer); the message names the nodes."""
