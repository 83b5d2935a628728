"""The ONNX node walk: onnx-graphsurgeon's view of a checked model (`load.py`) into an IR
graph, one rule of `op_rules.RULES` a node (what the tensors map to: `importer.py`)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from qcompiler.errors import OnnxImportError, QCompilerError
from qcompiler.frontends.onnx.checks import MAX_ELEMENTS
from qcompiler.frontends.onnx.importer import Importer, ir_name
from qcompiler.frontends.onnx.op_rules import RULES
from qcompiler.frontends.onnx.patterns import recognize_activations
from qcompiler.ir import Graph
from qcompiler.ir.dims import BATCH, shape_at
from qcompiler.ir.dtypes import DTYPES, NUMPY_TO_DTYPE

# ---- the walk -------------------------------------------------------------------------------------


def _input_shape(importer: Importer, variable, index: int) -> tuple:
    shape = variable.shape
    if shape is None:
        raise OnnxImportError(
            f"{importer.where}: graph input '{variable.name}' has no shape; give "
            "it one in the file (e.g. with onnx.tools.update_model_dims)"
        )
    dims = []
    for axis, dim in enumerate(shape):
        if isinstance(dim, int) and dim >= 0 and not (axis == 0 and dim == 0):
            dims.append(dim)
        elif axis == 0:
            dims.append(BATCH)
        else:
            raise OnnxImportError(
                f"{importer.where}: graph input '{variable.name}' has a symbolic or unknown "
                f"dimension {dim!r} on axis {axis}; the IR's only symbolic dimension is the "
                "leading batch: fix the others in the file (onnx.tools.update_model_dims)"
            )
    count = int(np.prod(shape_at(dims, 1), dtype=np.float64))
    if count > MAX_ELEMENTS:
        raise OnnxImportError(
            f"{importer.where}: graph input '{variable.name}' has shape "
            f"{list(shape)}, more than {MAX_ELEMENTS} elements"
        )
    return tuple(dims)


def convert(model, order: list[int], opset: int, *, where: str, name: str | None) -> Graph:
    importer = Importer(model, opset, where, name)
    gs = importer.gs
    try:
        imported = gs.import_onnx(model)
    except Exception as error:
        raise OnnxImportError(
            f"{where}: onnx-graphsurgeon cannot read the model: "
            f"{str(error).splitlines()[0] if str(error) else type(error).__name__}"
        ) from None
    initializers = {t.name for t in model.graph.initializer}
    for index, variable in enumerate(imported.inputs):
        if variable.name in initializers:
            continue
        dtype = variable.dtype
        try:
            ir_dtype = NUMPY_TO_DTYPE[np.dtype(dtype)]
        except (TypeError, KeyError):
            raise OnnxImportError(
                f"{where}: graph input '{variable.name}' has type {dtype}, which "
                f"the IR has no dtype for ({', '.join(DTYPES)})"
            ) from None
        importer.env[variable.name] = importer.graph.add_input(
            ir_name(variable.name), _input_shape(importer, variable, index), ir_dtype
        )
    for position in order:
        node = imported.nodes[position]
        importer.node = node
        if node.domain not in (None, "", "ai.onnx"):
            raise importer.unsupported(
                f"op domain '{node.domain}' is not imported (only the default ONNX domain is)"
            )
        rule = RULES.get(node.op)
        if rule is None:
            raise importer.unsupported(
                f"op {node.op} has no IR mapping; the importer reads {', '.join(sorted(RULES))}"
            )
        try:
            rule(importer)
        except QCompilerError:
            raise
        except (
            ValueError,
            TypeError,
            IndexError,
            KeyError,
            AttributeError,
            OverflowError,
            ZeroDivisionError,
            np.exceptions.AxisError,
        ) as error:
            # Inputs or attributes the rule cannot make sense of (a malformed file: a scale of
            # the wrong length, an axis out of range, a name that is not text).
            raise importer.fail(
                f"cannot be imported: its inputs or attributes do not fit the op "
                f"({type(error).__name__}: {str(error).splitlines()[0] if str(error) else ''})"
            ) from None
    for variable in imported.outputs:
        item = importer.env.get(variable.name)
        if item is None:
            raise OnnxImportError(f"{where}: graph output '{variable.name}' is not computed")
        importer.node = _OutputMarker(variable.name)
        value = importer.as_value(item, variable.name)
        importer.graph.outputs.append(value)
    _remove_unused(importer.graph)
    recognize_activations(importer.graph)
    return importer.graph


def _remove_unused(graph: Graph) -> None:
    """Drop what the walk made but no output needs (a weight quantizer a Gemm re-made
    transposed, the QuantizeLinear side of shape arithmetic)."""
    outputs = {id(v) for v in graph.outputs}
    for node in graph.reversed():
        if not any(v.users or id(v) in outputs for v in node.outputs):
            graph.remove_node(node)
    graph.remove_unused_constants()


@dataclass
class _OutputMarker:
    """Stands for the current node when the graph outputs are resolved (for messages)."""

    tensor: str
    op: str = "graph output"
    inputs: tuple = ()
    outputs: tuple = ()

    @property
    def name(self) -> str:
        return self.tensor
