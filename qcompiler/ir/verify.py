"""`Graph.verify`: the IR invariants, checked in one pass over the graph.

Structure (topological order, unique registered names, producers, users lists
that mirror node inputs), value types (known dtypes, constant data matching its
type, qparams matching the shape they annotate) and op signatures (arity,
attributes, inferred output types, via `qcompiler.ir.ops.check_node`).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np

from qcompiler.errors import VerificationError
from qcompiler.ir.dims import Dim
from qcompiler.ir.dtypes import DTYPES, NUMPY_TO_DTYPE
from qcompiler.ir.ops import check_node

if TYPE_CHECKING:  # annotations only: graph.py imports this module for Graph.verify
    from qcompiler.ir.graph import Graph, Node, Value


def verify_graph(graph: Graph) -> None:
    """Check structure, op signatures, dtypes and shapes; raise VerificationError.

    Each node's recorded output types are compared with what its op infers on
    meta tensors (`qcompiler.ir.ops.check_node`, the single source of op semantics).
    That meta run is most of verify's cost, so it is skipped for a node whose op,
    input types and attributes the graph has inferred before with the same result.
    """
    problems: list[str] = []
    defined: set[int] = set()
    names: set[str] = set()
    uses: dict[int, list[Node]] = {}  # id(value) -> the nodes that read it, once per read
    for value in graph.inputs:
        if value.is_constant or value.producer is not None:
            problems.append(f"graph input %{value.name} must not be a constant or produced")
        if graph.values.get(value.name) is not value:
            problems.append(f"graph input %{value.name} is not registered in the graph's values")
        defined.add(id(value))
    for value in graph.values.values():
        problems.extend(_value_problems(value))
        if value.is_constant:
            defined.add(id(value))
    count = 0
    for node in graph:
        count += 1
        if not node.outputs:
            problems.append(f"a {node.op} node has no outputs")
            continue
        if node.graph is not graph:
            problems.append(f"{node.describe()} does not belong to this graph")
        for value in node.inputs:
            if value is None:
                continue
            uses.setdefault(id(value), []).append(node)
            if id(value) not in defined:
                problems.append(
                    f"{node.describe()} uses %{value.name} before it is defined "
                    "(graph not topologically sorted, or value not in graph)")
        for value in node.outputs:
            if value.producer is not node:
                problems.append(f"output %{value.name} of {node.describe()} has another producer")
            if value.name in names or graph.values.get(value.name) is not value:
                problems.append(f"value name %{value.name} is not unique or not registered")
            names.add(value.name)
            defined.add(id(value))
        # check_node runs the op on meta tensors; skip it when the graph's memo of inferred
        # types already vouches for these recorded types (see Graph._inferred_types).
        key = type_key(node.op, node.inputs, node.attrs)
        recorded = [(v.shape, v.dtype) for v in node.outputs]
        if key is not None and graph._inferred_types.get(key) == recorded:
            continue
        try:
            check_node(node)
        except VerificationError as error:
            problems.append(str(error))
        else:
            if key is not None:
                graph._inferred_types[key] = recorded
    if count != len(graph):
        problems.append(f"node list has {count} nodes but length says {len(graph)}")
    for value in graph.values.values():
        problems.extend(_users_problems(value, uses.get(id(value), []), graph))
    for value in graph.outputs:
        if id(value) not in defined:
            problems.append(f"graph output %{value.name} is not defined")
    if problems:
        shown = "\n  ".join(problems[:20])
        more = f"\n  ... and {len(problems) - 20} more" if len(problems) > 20 else ""
        raise VerificationError(f"graph {graph.name} failed verification:\n  {shown}{more}")


def _value_problems(value: Value) -> list[str]:
    """Type, constant-data and qparams invariants of one value."""
    problems = []
    shape_ok = isinstance(value.shape, tuple) and all(
        isinstance(d, Dim) or (isinstance(d, (int, np.integer)) and d >= 0) for d in value.shape)
    if not shape_ok:
        problems.append(f"%{value.name} has shape {value.shape!r}; expected a tuple of ints >= 0 "
                        "and symbolic Dims")
    if value.dtype not in DTYPES:
        problems.append(f"%{value.name} has unknown dtype {value.dtype!r}; known: {', '.join(DTYPES)}")
    if value.is_constant:
        if value.producer is not None:
            problems.append(f"constant %{value.name} has a producer")
        data = value.data
        data_dtype = NUMPY_TO_DTYPE.get(data.dtype, str(data.dtype))
        if tuple(data.shape) != value.shape or data_dtype != value.dtype:
            problems.append(f"constant %{value.name} data does not match {value.type_str}: "
                            f"the array is {data_dtype}{list(data.shape)}")
    q = value.qparams
    if q is not None and shape_ok:
        channels = q.scale.size
        if q.zero_point.size not in (1, channels):
            problems.append(f"qparams of %{value.name} have {channels} scales but "
                            f"{q.zero_point.size} zero points")
        rank = len(value.shape)
        if q.axis is None and channels != 1:
            problems.append(f"per-tensor qparams of %{value.name} have {channels} scales; "
                            "set axis for per-channel parameters")
        elif q.axis is not None and not -rank <= q.axis < rank:
            problems.append(f"qparams axis {q.axis} is out of range for %{value.name}: {value.type_str}")
        elif q.axis is not None and isinstance(value.shape[q.axis], Dim):
            problems.append(f"per-channel qparams of %{value.name} run along axis {q.axis} of "
                            f"{value.type_str}, whose size is symbolic")
        elif q.axis is not None and channels != value.shape[q.axis]:
            problems.append(f"per-channel qparams of %{value.name} have {channels} scales but axis "
                            f"{q.axis} of {value.type_str} has {value.shape[q.axis]} channels")
    return problems


def _users_problems(value: Value, readers: list[Node], graph: Graph) -> list[str]:
    """`value.users` must list exactly the nodes of `graph` that read it, once per read."""
    if len(value.users) == len(readers) and all(a is b for a, b in zip(value.users, readers, strict=True)):
        return []  # the common case: users were appended in node order
    listed = Counter(id(user) for user in value.users)
    reading = Counter(id(node) for node in readers)
    problems = []
    for user in {id(u): u for u in value.users}.values():
        if user.graph is not graph:
            problems.append(f"%{value.name} lists a user that is not in the graph: {user!r}")
        elif listed[id(user)] != reading[id(user)]:
            problems.append(f"users of %{value.name} list {user.describe()} {listed[id(user)]} "
                            f"time(s) but it reads the value {reading[id(user)]} time(s)")
    for node in {id(n): n for n in readers}.values():
        if id(node) not in listed:
            problems.append(f"{node.describe()} is missing from users of %{value.name}")
    return problems


def _attr_key(value):
    """A hashable stand-in for an attribute value that keeps 1, 1.0 and True apart.
    Raises TypeError for unhashable values (numpy arrays)."""
    if isinstance(value, dict):
        return ("dict", tuple((key, _attr_key(item)) for key, item in value.items()))
    if isinstance(value, (list, tuple)):
        return (type(value).__name__, tuple(_attr_key(item) for item in value))
    hash(value)
    return (type(value).__name__, value)


def type_key(op: str, inputs: Sequence[Value | None], attrs: dict) -> tuple | None:
    """Everything an op's output types depend on (op, input shapes and dtypes, attributes)
    as a hashable key; None when an attribute cannot be hashed."""
    try:
        key = (op, tuple(None if v is None else (v.shape, v.dtype) for v in inputs), _attr_key(attrs))
        hash(key)
    except TypeError:
        return None
    return key
