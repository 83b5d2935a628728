"""ONNX export: `qc.backends.onnx.export(graph, "model.onnx")` (docs/onnx.md).

A float graph becomes the ONNX ops that compute it; a fake-quant graph becomes QDQ ONNX,
the form onnxruntime, TensorRT, OpenVINO and NPU SDKs take: every activation `fake_quant`
a QuantizeLinear / DequantizeLinear pair, every weight an int8 initializer read through
DequantizeLinear (per-channel `axis` for per-channel weights), every `fake_quant_bias` an
int32 initializer through DequantizeLinear with scale `s_in * s_w`. A symbolic batch
becomes the `dim_param` "N" of the inputs and outputs. Integer graphs (after
`lower_to_integer`) are not exported: QDQ is the fake-quant form, export that.

Opset: `OPSET` (17), chosen on purpose. It is the newest opset that the deployment
toolchains users feed QDQ files to (TensorRT 8.6+, OpenVINO 2023+, onnxruntime 1.13+,
the NPU SDKs built on them) all read; it has per-axis QuantizeLinear (13), HardSwish (14)
and LayerNormalization (17). Gelu (20) is written as its erf / tanh formula.

The file is checked with `onnx.checker` (full check, with strict shape inference) before
it is written, and written atomically: a temporary file in the target directory renamed
into place, so a failure never leaves a half-written model.
"""

from __future__ import annotations

import os
from pathlib import Path

from qcompiler.analysis.report_render import check_output_path
from qcompiler.backends.onnx.model import OPSET, to_model
from qcompiler.errors import OnnxExportError, OutputPathError
from qcompiler.ir import Graph
from qcompiler.ir.serialize import write_bytes_atomically

__all__ = ["OPSET", "OnnxExportError", "export", "to_model"]


def export(graph: Graph, path: str | os.PathLike, *, opset: int = OPSET) -> Path:
    """Write `graph` (float or calibrated fake-quant) to `path` as an ONNX model, checked
    with onnx.checker and full shape inference; returns the path. OnnxExportError names a node
    that has no ONNX form (and what to do); OutputPathError a path that cannot be written
    (checked before the work starts)."""
    path = check_output_path(path, "ONNX")
    model = to_model(graph, opset=opset)
    try:
        write_bytes_atomically(path, model.SerializeToString())
    except OSError as error:
        raise OutputPathError(f"writing {path} failed: {error.strerror or error}") from error
    return path
