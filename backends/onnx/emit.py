"""The graph walk of ONNX export: IR values to onnx-graphsurgeon tensors, the quantizers to
QuantizeLinear / DequantizeLinear, and the checked ModelProto (see the package docstring).
The float ops are written by the rules in `backends.onnx.op_rules`."""

from __future__ import annotations

import numpy as np

from qcompiler.errors import OnnxExportError, import_optional
from qcompiler.ir import Graph, Node, Value
from qcompiler.ir.dims import Dim
from qcompiler.ir.dtypes import DTYPES
from qcompiler.numerics.integer_params import quantize_bias
from qcompiler.numerics.quant import quant_range, quantize
from qcompiler.quantization.quantizers import find_uncalibrated

# The opset written (see the package docstring for why 17).
OPSET = 17
# The opsets `to_model` accepts: the rules below are written for 17 (ReduceMean's axes
# attribute, Split's input) and hold unchanged through 17.
SUPPORTED_OPSETS = (17,)
_PRODUCER = "qcompiler"


def _gs():
    return import_optional("onnx_graphsurgeon", "onnx", "ONNX export")


def dim_param(dim) -> int | str:
    """An IR dimension as ONNX writes it: an int, or a `dim_param` ("N", "N*4")."""
    return str(dim) if isinstance(dim, Dim) else int(dim)


class Emitter:
    """The ONNX graph being written: one gs tensor per IR value, the nodes in order."""

    def __init__(self, graph: Graph):
        self.gs = _gs()
        self.graph = graph
        self.tensors: dict[int, object] = {}  # id(IR value) -> gs tensor
        self.nodes: list = []
        self.names: set[str] = set(graph.values)

    def fresh(self, base: str) -> str:
        name, count = base, 1
        while name in self.names:
            name, count = f"{base}_{count}", count + 1
        self.names.add(name)
        return name

    def constant(self, base: str, array) -> object:
        return self.gs.Constant(self.fresh(base), np.ascontiguousarray(array))

    def ints(self, base: str, values) -> object:
        return self.constant(base, np.asarray(values, np.int64).reshape(-1))

    def scalar(self, base: str, value, dtype=np.float32) -> object:
        return self.constant(base, np.asarray(value, dtype))

    def tensor(self, value: Value | None):
        if value is None:
            return self.gs.Variable.empty()
        known = self.tensors.get(id(value))
        if known is None:
            if not value.is_constant:
                raise OnnxExportError(f"%{value.name} is used before it is defined")
            known = self.gs.Constant(value.name, np.ascontiguousarray(value.data))
            self.tensors[id(value)] = known
        return known

    def node(
        self,
        op_type: str,
        inputs: list,
        attrs: dict | None = None,
        *,
        name: str,
        outputs: int = 1,
        dtype=None,
    ) -> list:
        """Append a node; returns its output tensors (fresh variables named after `name`)."""
        results = [
            self.gs.Variable(self.fresh(name if i == 0 else f"{name}.{i}"), dtype=dtype)
            for i in range(outputs)
        ]
        self.nodes.append(
            self.gs.Node(op_type, self.fresh(f"{name}/{op_type}"), dict(attrs or {}), list(inputs), results)
        )
        return results

    def bind(self, value: Value, tensor) -> None:
        """`tensor` computes IR value `value`: name it so, type it (the IR knows the type)."""
        tensor.name = value.name
        tensor.dtype = DTYPES[value.dtype]
        tensor.shape = [dim_param(d) for d in value.shape]
        self.tensors[id(value)] = tensor


# ---- quantizers --------------------------------------------------------------------------


def _storage_dtype(node: Node) -> type:
    return np.int8 if node.attrs.get("signed", True) else np.uint8


def _qparam_constants(emitter: Emitter, node: Node):
    """The scale (f32) and zero point (int8/uint8) initializers of a fake_quant: scalars per
    tensor, [C] per channel."""
    scale, zero_point = node.inputs[1].data, node.inputs[2].data
    if node.attrs.get("axis") is None:
        scale, zero_point = scale.reshape(()), zero_point.reshape(())
    return (
        emitter.constant(f"{node.name}.scale", scale.astype(np.float32)),
        emitter.constant(f"{node.name}.zero_point", zero_point.astype(_storage_dtype(node))),
    )


def _axis(node: Node) -> dict:
    axis = node.attrs.get("axis")
    return {} if axis is None else {"axis": int(axis)}


def emit_fake_quant(emitter: Emitter, node: Node) -> object:
    """A weight (constant input): its integers as an int8/uint8 initializer read through
    DequantizeLinear, quantized here by the simulation's own rule, so they are the integers
    it represents. An activation: QuantizeLinear then DequantizeLinear, which is exactly the
    8-bit grid; fewer bits or a narrow range have no QDQ form on activations (the clamp
    would be lost), and are refused."""
    attrs = node.attrs
    bits, signed, narrow = attrs.get("bits", 8), attrs.get("signed", True), attrs.get("narrow_range", False)
    scale, zero_point = _qparam_constants(emitter, node)
    source = node.inputs[0]
    if source.is_constant:
        qmin, qmax = quant_range(bits, signed, narrow)
        if bits > 8:
            raise OnnxExportError(
                f"{node.describe()}: {bits}-bit weights have no 8-bit QDQ form; "
                "quantize with at most 8 weight bits to export"
            )
        integers = quantize(
            source.data, node.inputs[1].data, node.inputs[2].data, qmin, qmax, attrs.get("axis")
        )
        weight = emitter.constant(f"{node.name}.quantized", integers.astype(_storage_dtype(node)))
        return emitter.node("DequantizeLinear", [weight, scale, zero_point], _axis(node), name=node.name)[0]
    if bits != 8 or narrow:
        raise OnnxExportError(
            f"{node.describe()}: a {bits}-bit{' narrow-range' if narrow else ''} activation "
            "quantizer has no QDQ form (QuantizeLinear saturates to the full 8-bit range); "
            "export a graph quantized with 8-bit full-range activations (QuantConfig preset "
            "'int8')"
        )
    x = emitter.tensor(source)
    quantized = emitter.node(
        "QuantizeLinear",
        [x, scale, zero_point],
        _axis(node),
        name=f"{node.name}.q",
        dtype=_storage_dtype(node),
    )[0]
    return emitter.node("DequantizeLinear", [quantized, scale, zero_point], _axis(node), name=node.name)[0]


def emit_fake_quant_bias(emitter: Emitter, node: Node) -> object:
    """The int32 bias on the grid `s_in * s_w[c]` (the integers lowering stores), read
    through DequantizeLinear with that scale per channel on axis 0."""
    bias, input_scale, weight_scale = node.inputs
    if not (bias.is_constant and input_scale.is_constant and weight_scale.is_constant):
        raise OnnxExportError(
            f"{node.describe()}: a bias quantizer whose bias or scales are "
            "computed, not constants, has no QDQ form"
        )
    channels = bias.data.reshape(-1).shape[0]
    integers, saturated = quantize_bias(bias.data, input_scale.data, weight_scale.data, channels)
    step = np.float64(input_scale.data.reshape(-1)[0]) * np.broadcast_to(
        np.asarray(weight_scale.data, np.float64).reshape(-1), (channels,)
    )
    return emitter.node(
        "DequantizeLinear",
        [
            emitter.constant(f"{node.name}.quantized", integers.astype(np.int32)),
            emitter.constant(f"{node.name}.scale", step.astype(np.float32)),
            emitter.constant(f"{node.name}.zero_point", np.zeros(channels, np.int32)),
        ],
        {"axis": 0},
        name=node.name,
    )[0]


# ---- the model --------------------------------------------------------------------------------


def _check_exportable(graph: Graph) -> None:
    integer = [node for node in graph if node.op in _INTEGER_OPS]
    if integer:
        raise OnnxExportError(
            f"{integer[0].describe()}: graph {graph.name} is an integer graph (after "
            "qc.lower_to_integer); QDQ ONNX is the fake-quant form of a model: export the "
            "graph qc.quantize returned, before lowering"
        )
    uncalibrated = find_uncalibrated(graph)
    if uncalibrated:
        raise OnnxExportError(
            f"{uncalibrated[0].describe()} has no calibrated scale (NaN): "
            "calibrate the graph first (qc.quantize)"
        )


def _integer_ops() -> frozenset[str]:
    from qcompiler.ir.ops import ops_where

    return ops_where(category="integer") | {"quantize", "dequantize"}


_INTEGER_OPS = _integer_ops()


def to_model(graph: Graph, *, opset: int = OPSET):
    """The ONNX ModelProto of `graph` (float or calibrated fake-quant), checked with
    onnx.checker and strict full shape inference."""
    from qcompiler.backends.onnx.op_rules import emit_op

    onnx = import_optional("onnx", "onnx", "ONNX export")
    if opset not in SUPPORTED_OPSETS:
        raise OnnxExportError(
            f"opset {opset} is not supported for export; qcompiler writes "
            f"opset {OPSET} (see qcompiler.backends.onnx)"
        )
    graph.verify()
    _check_exportable(graph)
    emitter = Emitter(graph)
    gs = emitter.gs
    inputs = []
    for value in graph.inputs:
        variable = gs.Variable(value.name, DTYPES[value.dtype], [dim_param(d) for d in value.shape])
        emitter.tensors[id(value)] = variable
        inputs.append(variable)
    for node in graph:
        if node.op == "fake_quant":
            results = [emit_fake_quant(emitter, node)]
        elif node.op == "fake_quant_bias":
            results = [emit_fake_quant_bias(emitter, node)]
        else:
            results = emit_op(emitter, node)
        for value, tensor in zip(node.outputs, results, strict=True):
            emitter.bind(value, tensor)
    outputs = []
    for value in graph.outputs:
        tensor = emitter.tensor(value)
        if value in graph.inputs or value.is_constant or tensor in outputs:
            # ONNX outputs are node outputs with distinct names: pass such values through
            # an Identity (a graph returning its input, a constant, or one value twice).
            tensor = emitter.node("Identity", [tensor], name=f"{value.name}.output")[0]
            tensor.dtype, tensor.shape = DTYPES[value.dtype], [dim_param(d) for d in value.shape]
        outputs.append(tensor)
    exported = gs.Graph(nodes=emitter.nodes, inputs=inputs, outputs=outputs, name=graph.name, opset=opset)
    model = gs.export_onnx(exported, do_type_check=True)
    model.producer_name = _PRODUCER
    model.ir_version = min(model.ir_version, 8)  # readable by onnxruntime >= 1.13 (IR 8 = opset 17)
    try:
        onnx.checker.check_model(model, full_check=True)
        model = onnx.shape_inference.infer_shapes(model, check_type=True, strict_mode=True)
    except Exception as error:
        raise OnnxExportError(
            f"the ONNX form of graph {graph.name} fails onnx.checker: "
            f"{str(error).strip().splitlines()[0]} (a bug in qcompiler's ONNX "
            "export; please report it)"
        ) from None
    return model
