"""The ONNX graph being written: one onnx-graphsurgeon tensor per IR value (see the package
docstring; the walk is `model.py`, the quantizers `qdq.py`, the float ops `op_rules.py`)."""

from __future__ import annotations

import numpy as np

from qcompiler.errors import OnnxExportError, import_optional
from qcompiler.ir import Graph, Value
from qcompiler.ir.dims import Dim
from qcompiler.ir.dtypes import DTYPES


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
