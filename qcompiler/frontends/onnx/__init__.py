"""ONNX import: `qc.load_onnx("model.onnx")` (docs/onnx.md)."""

from qcompiler.frontends.onnx.load import load_onnx

__all__ = ["load_onnx"]
