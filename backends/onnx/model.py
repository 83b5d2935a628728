"""The ONNX model of a graph: the walk over its nodes and the checks of the result (see the
package docstring)."""

from __future__ import annotations

from qcompiler.backends.onnx.emit import Emitter, dim_param
from qcompiler.backends.onnx.op_rules import emit_op
from qcompiler.backends.onnx.qdq import emit_fake_quant, emit_fake_quant_bias
from qcompiler.errors import OnnxExportError, import_optional
from qcompiler.ir import Graph
from qcompiler.ir.dtypes import DTYPES
from qcompiler.ir.ops import ops_where
from qcompiler.quantization.quantizers import find_uncalibrated

# The opset written (see the package docstring for why 17).
OPSET = 17
# The opsets `to_model` accepts: the rules below are written for 17 (ReduceMean's axes
# attribute, Split's input) and hold unchanged through 17.
SUPPORTED_OPSETS = (17,)
_PRODUCER = "qcompiler"



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


_INTEGER_OPS = ops_where(category="integer") | {"quantize", "dequantize"}


def to_model(graph: Graph, *, opset: int = OPSET):
    """The ONNX ModelProto of `graph` (float or calibrated fake-quant), checked with
    onnx.checker and strict full shape inference."""
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
    exported.cleanup()  # a weight quantizer written transposed for MatMul leaves its unused twin
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
