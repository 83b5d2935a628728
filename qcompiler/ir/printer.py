"""Deterministic SSA text for graphs: the printer behind `str(graph)` (the text form and
its parser are described in `qcompiler.ir.text`). It reads graphs, values and qparams by
their attributes and imports none of them, so `Graph` can print itself without a cycle."""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:  # annotations only: graph.py imports this module for Graph.__str__
    from qcompiler.ir.graph import Graph, Value

INLINE_LIMIT = 16

_QPARAM_FIELDS = ("bits", "signed", "axis", "narrow_range")


def _format_literal(value) -> str:
    # Passes often compute attributes with numpy; print them as the Python values they equal.
    if isinstance(value, (np.generic, np.ndarray)):
        value = value.tolist()
    if isinstance(value, float):
        if not np.isfinite(value):
            return f"float('{value}')"
        return repr(value)
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(_format_literal(v) for v in value) + "]"
    return repr(value)


def format_attrs(attrs: dict) -> str:
    if not attrs:
        return ""
    return " {" + ", ".join(f"{k}={_format_literal(attrs[k])}" for k in sorted(attrs)) + "}"


def _format_number(x: np.generic) -> str:
    """Shortest text that reads back to the same number at the array's own precision."""
    if isinstance(x, np.floating):
        return str(x) if np.isfinite(x) else f"float('{x}')"
    return repr(x.item())


def _format_numbers(array: np.ndarray) -> str:
    return "[" + ", ".join(_format_number(x) for x in np.asarray(array).reshape(-1)) + "]"


def format_type(value: Value) -> str:
    text = value.type_str
    q = value.qparams
    if q is not None:
        fields = ", ".join(f"{k}={_format_literal(getattr(q, k))}" for k in _QPARAM_FIELDS)
        text += (f" q({fields}, scale={_format_numbers(q.scale)}, "
                 f"zero_point={_format_numbers(q.zero_point)})")
    return text


def print_graph(graph: Graph, *, external_constants: bool = False) -> str:
    """The text form; `external_constants` prints every constant's data as `external`."""
    inputs = ", ".join(f"%{v.name}: {format_type(v)}" for v in graph.inputs)
    lines = [f"graph {graph.name}({inputs}) {{"]
    for value in graph.constants:
        if external_constants:
            body = "external"
        elif value.numel <= INLINE_LIMIT:
            body = f"dense<{_format_numbers(value.data)}>"
        else:
            body = f"sha1:{value.digest()}"
        lines.append(f"  %{value.name} = const {body} : {format_type(value)}")
    for node in graph:
        outs = ", ".join(f"%{v.name}" for v in node.outputs)
        args = ", ".join("_" if v is None else f"%{v.name}" for v in node.inputs)
        types = ", ".join(format_type(v) for v in node.outputs)
        lines.append(f"  {outs} = {node.op}({args}){format_attrs(node.attrs)} : {types}")
    lines.append("  return " + ", ".join(f"%{v.name}" for v in graph.outputs))
    lines.append("}")
    return "\n".join(lines) + "\n"
