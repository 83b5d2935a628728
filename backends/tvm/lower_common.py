"""What every op's Relax lowering shares: the lowering state (`Lowering`: the block builder
and the Relax expression of each IR value), constants, shapes, the TVM dtype names and
pooling geometry. The op lowerings are in `lower_integer.py` and `lower_float.py`, the
driver in `lower.py`.

Shapes are static: the IR records every value's shape. (A symbolic batch dimension follows
once the IR has one; the lowerings read shapes only through `shape_of`.)
"""

from __future__ import annotations

import functools
import re
from collections.abc import Callable

import numpy as np
from tvm import relax

from qcompiler.backends.tvm.errors import LoweringError
from qcompiler.backends.tvm.kernels import INT_DTYPES
from qcompiler.ir import Node, Value

TVM_DTYPES = {**INT_DTYPES, "f32": "float32", "f16": "float16", "f64": "float64", "bool": "bool"}
FLOAT_DTYPES = ("f32", "f16", "f64")


class Lowering:
    """The state of one lowering: the block builder and the Relax expression of every IR
    value seen so far."""

    def __init__(self, builder: relax.BlockBuilder, signed_operands: bool):
        self.builder = builder
        # Multiply uint8 inputs of weighted ops as int8 (ARM: sdot takes int8 x int8).
        self.signed_operands = signed_operands
        self.exprs: dict[str, relax.Expr] = {}
        self.functions: dict[str, list[str]] = {}

    def __getitem__(self, value: Value | None) -> relax.Expr:
        if value is None:
            raise KeyError("absent optional input")
        if value.name not in self.exprs:
            if not value.is_constant:
                raise LoweringError(f"value %{value.name} is used before it is computed")
            self.exprs[value.name] = constant(value.data)
        return self.exprs[value.name]

    def emit_te(self, node: Node, compute: Callable, *args: relax.Expr, **options) -> relax.Var:
        """Emit `compute(*te_tensors, **options)` as a PrimFunc named after the node."""
        name = "k_" + re.sub(r"[^A-Za-z0-9_]", "_", node.name)
        var = self.builder.emit_te(functools.partial(compute, **options), *args,
                                   primfunc_name_hint=name)
        function = var_function_name(self.builder, var)
        self.functions.setdefault(function, []).append(node.name)
        return var

    def emit(self, expr: relax.Expr) -> relax.Var:
        return self.builder.emit(expr)


def constant(array) -> relax.Expr:
    """A Relax constant of exactly this array's dtype (relax.const alone turns int64 into
    int32 and float64 into float32)."""
    array = np.ascontiguousarray(array)
    return relax.const(array, str(array.dtype))


def var_function_name(builder: relax.BlockBuilder, var: relax.Var) -> str:
    call = builder.lookup_binding(var)
    return call.args[0].name_hint if call is not None else "?"


def shape_of(value: Value) -> list[int]:
    return [int(d) for d in value.shape]


def scalar(attrs: dict, key: str) -> int:
    return int(attrs[key])


def pool_geometry(node: Node, attrs: dict) -> dict:
    """kernel_size, stride, padding (and dilation) as lists of one int per spatial axis."""
    spatial = len(node.inputs[0].shape) - 2
    geometry = {}
    for key in ("kernel_size", "stride", "padding", "dilation"):
        if key not in attrs:
            continue
        value = attrs[key]
        if key == "stride" and (value is None or value == []):
            value = attrs["kernel_size"]  # torch: stride defaults to the kernel size
        geometry[key] = [int(v) for v in (value if isinstance(value, list | tuple) else [value] * spatial)]
    return geometry
