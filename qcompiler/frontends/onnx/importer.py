"""What the ONNX node walk (`convert.py`) keeps: the IR graph being built and what each ONNX
tensor name stands for.

Each ONNX tensor name maps to one of:

- an IR `Value` (graph inputs, node outputs, constants once an op reads them as data);
- a numpy array known at import time: initializers, Constant nodes and the small integer
  arithmetic on shapes (Shape, Gather, Concat, Unsqueeze...) that exporters write around
  Reshape. Its entries are ints or `Dim`s (an object array) where a shape holds the
  symbolic batch, so `Reshape(x, Concat(Shape(x)[0], [-1]))` becomes `reshape [-1, C]`;
- `Quantized`: the int8/uint8 output of a QuantizeLinear, waiting for the
  DequantizeLinear that makes the pair a `fake_quant`;
- `QuantizedConstant`: a DequantizeLinear of an integer initializer: a weight (int8/uint8,
  a `fake_quant` on its real values) or a bias (int32, a `fake_quant_bias` where a layer
  reads it with the scales it was quantized with).

So a QDQ file imports as a calibrated fake-quant graph: `fake_quant` nodes with the
file's scales and zero points (as constants, and as the output's qparams), rounding
"half_up" after the ops whose integer form requantizes (as `insert_fake_quant` marks them).
The rules for each ONNX op are in `op_rules.py`.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import numpy as np

from qcompiler.errors import OnnxImportError, OnnxUnsupportedOpError, QCompilerError, import_optional
from qcompiler.frontends.onnx.checks import MAX_ELEMENTS, as_array
from qcompiler.ir import Graph, QParams, Value
from qcompiler.ir.dims import Dim, shape_at
from qcompiler.ir.dtypes import NUMPY_TO_DTYPE
from qcompiler.ir.ops import OPS

_BAD_NAME_CHARACTERS = re.compile(r"[^A-Za-z0-9_.:/\-]")


@dataclass
class Quantized:
    """The output of QuantizeLinear(x, scale, zero_point): integers only DequantizeLinear reads."""

    source: Value
    scale: np.ndarray
    zero_point: np.ndarray
    axis: int | None
    node: str


@dataclass
class QuantizedConstant:
    """DequantizeLinear of an integer initializer: `integers` with their scale and zero point."""

    integers: np.ndarray
    scale: np.ndarray
    zero_point: np.ndarray
    axis: int | None
    name: str

    @property
    def real(self) -> np.ndarray:
        shape = [1] * self.integers.ndim
        if self.axis is not None:
            shape[self.axis] = -1
        difference = self.integers.astype(np.int64) - self.zero_point.astype(np.int64).reshape(shape)
        if self.integers.dtype == np.int32:  # a bias: the step s_in * s_w is float64 in the IR
            return (difference * self.scale.astype(np.float64).reshape(shape)).astype(np.float32)
        return (difference.astype(np.float32) * self.scale.astype(np.float32).reshape(shape)).astype(
            np.float32
        )


def ir_name(text) -> str:
    if isinstance(text, bytes):
        text = text.decode("utf-8", "replace")
    return _BAD_NAME_CHARACTERS.sub("_", str(text)) or "v"


class Importer:
    def __init__(self, model, opset: int, where: str, name: str | None):
        self.gs = import_optional("onnx_graphsurgeon", "onnx", "ONNX import")
        self.model, self.opset, self.where = model, opset, where
        self.graph = Graph(ir_name(name or model.graph.name or "main"))
        self.env: dict[str, object] = {}
        self._materialized: dict[int, Value] = {}
        self._fake_quants: dict[int, Value] = {}
        self.node = None  # the ONNX node being converted, for messages

    # ---- messages -------------------------------------------------------------------------

    def describe(self, node=None) -> str:
        node = node or self.node
        label = f"'{node.name}' " if node.name else ""
        return f"{self.where}: node {label}({node.op}, opset {self.opset})"

    def fail(self, why: str) -> OnnxImportError:
        return OnnxImportError(f"{self.describe()}: {why}")

    def unsupported(self, why: str) -> OnnxUnsupportedOpError:
        return OnnxUnsupportedOpError(f"{self.describe()}: {why}")

    # ---- tensors ------------------------------------------------------------------------------

    def entry(self, tensor):
        """What an input tensor of the current node is (None for an omitted optional input)."""
        if tensor is None or not tensor.name and isinstance(tensor, self.gs.Variable):
            return None
        if tensor.name in self.env:
            return self.env[tensor.name]
        if isinstance(tensor, self.gs.Constant):
            array = self._constant_array(tensor)
            self.env[tensor.name] = array
            return array
        raise self.fail(f"reads '{tensor.name}', which is not defined")

    def _constant_array(self, tensor) -> np.ndarray:
        values = tensor._values if hasattr(tensor, "_values") else None
        proto = getattr(values, "tensor", None)
        if proto is not None:
            return as_array(proto, self.where)
        return np.asarray(tensor.values)

    def constant(self, index: int, required: bool = True):
        """Input `index` as a numpy array known at import time (None if omitted)."""
        inputs = self.node.inputs
        item = self.entry(inputs[index]) if index < len(inputs) else None
        if item is None:
            if required:
                raise self.fail(f"input {index} is required")
            return None
        if isinstance(item, QuantizedConstant):
            return item.real
        if not isinstance(item, np.ndarray):
            raise self.unsupported(
                f"input {index} ('{inputs[index].name}') must be a constant "
                "(an initializer or computed from constants and shapes) for "
                "the IR, which takes it as an attribute"
            )
        return item

    def ints(self, index: int, required: bool = True) -> list | None:
        array = self.constant(index, required)
        return None if array is None else [d if isinstance(d, Dim) else int(d) for d in array.reshape(-1)]

    def value(self, index: int) -> Value | None:
        inputs = self.node.inputs
        item = self.entry(inputs[index]) if index < len(inputs) else None
        return None if item is None else self.as_value(item, inputs[index].name)

    def as_value(self, item, name: str) -> Value:
        if isinstance(item, Value):
            return item
        if isinstance(item, Quantized):
            raise self.unsupported(
                f"reads the integers of QuantizeLinear node '{item.node}'; only "
                "DequantizeLinear may (integer tensors between nodes are not "
                "imported: the IR imports QDQ pairs)"
            )
        known = self._materialized.get(id(item))
        if known is not None:
            return known
        if isinstance(item, QuantizedConstant):
            value = self.weight_fake_quant(item)
        else:
            if item.dtype == object:
                raise self.unsupported(f"reads '{name}', a shape holding the symbolic batch, as data")
            if item.dtype not in NUMPY_TO_DTYPE:
                item = item.astype(np.float32 if item.dtype.kind == "f" else np.int64)
            value = self.graph.add_constant(ir_name(name), item)
        self._materialized[id(item)] = value
        return value

    def set_output(self, index: int, item) -> None:
        outputs = self.node.outputs
        if index < len(outputs) and outputs[index].name:
            self.env[outputs[index].name] = item

    # ---- IR nodes -----------------------------------------------------------------------------

    def emit(
        self, op: str, inputs: list, attrs: dict | None = None, *, tag: str = "", outputs: int = 1
    ) -> Value | list[Value]:
        """Add an IR node for the current ONNX node (named after its output) and return its
        output value(s)."""
        base = self.node.outputs[0].name if self.node.outputs and self.node.outputs[0].name else self.node.op
        name = ir_name(base + (f".{tag}" if tag else ""))
        try:
            node = self.graph.add_node(
                op, inputs, attrs, name=name, source=f"{self.node.name or self.node.op} ({self.node.op})"
            )
        except QCompilerError as error:
            raise self.fail(f"as IR op '{op}': {error}") from None
        for value in node.outputs:
            if np.prod(shape_at(value.shape, 1), dtype=np.float64) > MAX_ELEMENTS:
                raise self.fail(
                    f"its output {value.type_str} has more than {MAX_ELEMENTS} "
                    "elements; refused rather than allocated"
                )
        return node.outputs if outputs > 1 else node.outputs[0]

    def constant_value(self, name: str, array) -> Value:
        return self.graph.add_constant(ir_name(name), np.asarray(array))

    # ---- quantization ------------------------------------------------------------------------

    def fake_quant(
        self,
        source: Value,
        scale: np.ndarray,
        zero_point: np.ndarray,
        axis: int | None,
        signed: bool,
        *,
        narrow_range: bool = False,
        name: str | None = None,
    ) -> Value:
        """A calibrated fake_quant node on `source`, with the output's qparams."""
        scale = np.asarray(scale, np.float32).reshape(-1)
        zero_point = np.asarray(zero_point, np.int32).reshape(-1)
        if not (np.isfinite(scale).all() and (scale > 0).all()):
            raise self.fail(f"quantization scale {scale[:4].tolist()} is not finite and positive")
        base = ir_name(name or f"{source.name}.fq")
        producer = source.producer
        rounding = "half_up" if producer is not None and OPS[producer.op].requantizing else "half_to_even"
        symmetric = bool((zero_point == 0).all()) and signed
        attrs = {
            "axis": axis,
            "bits": 8,
            "signed": signed,
            "narrow_range": narrow_range,
            "symmetric": symmetric,
            "rounding": rounding,
        }
        inputs = [
            source,
            self.constant_value(f"{base}.scale", scale),
            self.constant_value(f"{base}.zero_point", zero_point),
        ]
        try:
            node = self.graph.add_node(
                "fake_quant",
                inputs,
                attrs,
                name=base,
                source=f"{self.node.name or self.node.op} ({self.node.op})",
            )
        except QCompilerError as error:
            raise self.fail(f"as a fake_quant: {error}") from None
        node.output.qparams = QParams(scale, zero_point, 8, signed, axis, narrow_range)
        return node.output

    def weight_fake_quant(self, item: QuantizedConstant, transpose: bool = False) -> Value:
        """A constant weight with the fake_quant its integers came from; `transpose` swaps a 2-D
        weight's axes (a MatMul or Gemm weight stored [in, out] becomes linear's [out, in])."""
        if item.integers.dtype == np.int32:  # a bias read as data: its real values
            return self.constant_value(item.name, item.real)
        real, axis = item.real, item.axis
        if transpose:
            real = np.ascontiguousarray(real.T)
            axis = None if axis is None else 1 - axis
        signed = item.integers.dtype == np.int8
        narrow = signed and bool((item.zero_point == 0).all()) and int(item.integers.min(initial=0)) >= -127
        weight = self.constant_value(item.name, real)
        return self.fake_quant(
            weight, item.scale, item.zero_point, axis, signed, narrow_range=narrow, name=f"{item.name}.fq"
        )

    def layer_bias(self, index: int, layer_input: Value, weight: Value) -> Value | None:
        """A layer's bias: the int32 bias of a QDQ file as `fake_quant_bias` reading the scale
        constants of the layer's input and weight quantizers, when its step is theirs."""
        inputs = self.node.inputs
        item = self.entry(inputs[index]) if index < len(inputs) else None
        if item is None:
            return None
        if isinstance(item, QuantizedConstant) and item.integers.dtype == np.int32:
            scales = _fake_quant_scale(layer_input), _fake_quant_scale(weight)
            bias = self.constant_value(item.name, item.real.reshape(-1))
            if None not in scales:
                step = np.float64(scales[0].data.reshape(-1)[0]) * scales[1].data.astype(np.float64)
                if np.allclose(np.broadcast_to(item.scale, step.shape), step, rtol=1e-6, atol=0):
                    return self.emit("fake_quant_bias", [bias, *scales], tag="bias")
            return bias
        return self.as_value(item, inputs[index].name)


def _fake_quant_scale(value: Value) -> Value | None:
    producer = value.producer
    if producer is None or producer.op != "fake_quant" or not producer.inputs[1].is_constant:
        return None
    return producer.inputs[1]
