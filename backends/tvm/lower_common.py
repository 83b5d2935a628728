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

from qcompiler.backends.tvm import blocked
from qcompiler.backends.tvm.errors import LoweringError
from qcompiler.backends.tvm.kernels import INT_DTYPES
from qcompiler.backends.tvm.plan import Blocked, Plan
from qcompiler.backends.tvm.schedules import schedule_elementwise
from qcompiler.ir import Node, Value

TVM_DTYPES = {**INT_DTYPES, "f32": "float32", "f16": "float16", "f64": "float64", "bool": "bool"}
FLOAT_DTYPES = ("f32", "f16", "f64")


class Lowering:
    """The state of one lowering: the block builder, the Relax expression of every IR value
    seen so far (plain layout, and blocked where the plan put it), and the schedule of every
    kernel that has one."""

    def __init__(self, builder: relax.BlockBuilder, signed_operands: bool, plan: Plan | None = None):
        self.builder = builder
        # Multiply uint8 inputs of weighted ops as int8 (ARM: sdot takes int8 x int8).
        self.signed_operands = signed_operands
        self.plan = plan  # None: every node through the generic kernels (schedules=False)
        self.exprs: dict[str, relax.Expr] = {}
        self.blocked_forms: dict[str, tuple[relax.Expr, Blocked]] = {}
        self.functions: dict[str, list[str]] = {}
        self.schedules: dict[str, Callable] = {}  # PrimFunc name -> schedule(Schedule)

    def __getitem__(self, value: Value | None) -> relax.Expr:
        """The plain-layout expression of `value` (converted from its blocked form if it has
        only that one)."""
        if value is None:
            raise KeyError("absent optional input")
        if value.name not in self.exprs and value.name in self.blocked_forms:
            self.exprs[value.name] = self._to_plain(value)
        if value.name not in self.exprs:
            if not value.is_constant:
                raise LoweringError(f"value %{value.name} is used before it is computed")
            self.exprs[value.name] = constant(value.data)
        return self.exprs[value.name]

    def blocked(self, value: Value, block: int | None = None) -> tuple[relax.Expr, Blocked]:
        """The blocked expression of `value` and its layout, with channel block `block` (by
        default the one it has, or the plan's default): converted from the plain layout
        (or re-blocked through it) when it has no such form."""
        have = self.blocked_forms.get(value.name)
        if have is not None and block in (None, have[1].block):
            return have
        plain = self[value]
        layout = self.plan.default_layout(value, block)
        fill = 0.0 if value.dtype == "f32" else layout.offset + _zero_point(value)
        expr = self.emit_te(f"layout_{value.name}", blocked.to_blocked, plain, block=layout.block,
                            blocks=layout.blocks, fill=fill, offset=layout.offset, dtype=layout.dtype,
                            schedule=schedule_elementwise)
        if have is None:
            self.blocked_forms[value.name] = (expr, layout)
        return expr, layout

    def set_blocked(self, value: Value, expr: relax.Expr, layout: Blocked) -> None:
        self.blocked_forms[value.name] = (expr, layout)

    def _to_plain(self, value: Value) -> relax.Expr:
        expr, layout = self.blocked_forms[value.name]
        dtype = TVM_DTYPES[value.dtype]
        convert = blocked.flat_to_plain if layout.flat else blocked.to_plain
        return self.emit_te(f"layout_{value.name}", convert, expr, channels=layout.channels,
                            offset=layout.offset, dtype=dtype, schedule=schedule_elementwise)

    def emit_te(self, node: Node | str, compute: Callable, *args: relax.Expr,
                schedule: Callable | None = None, **options) -> relax.Var:
        """Emit `compute(*te_tensors, **options)` as a PrimFunc named after the node (or the
        label), to be scheduled by `schedule(s_tir.Schedule)` when given."""
        label = node if isinstance(node, str) else node.name
        name = "k_" + re.sub(r"[^A-Za-z0-9_]", "_", label)
        var = self.builder.emit_te(functools.partial(compute, **options), *args,
                                   primfunc_name_hint=name)
        function = var_function_name(self.builder, var)
        self.functions.setdefault(function, []).append(label)
        if schedule is not None:
            self.schedules[function] = schedule
        return var

    def emit(self, expr: relax.Expr) -> relax.Var:
        return self.builder.emit(expr)


def _zero_point(value: Value) -> int:
    """The zero point of an integer value (0 when it has no quantization parameters)."""
    if value.qparams is None:
        return 0
    return int(np.asarray(value.qparams.zero_point).reshape(-1)[0])


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
