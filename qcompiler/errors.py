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
