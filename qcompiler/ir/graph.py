"""The qcompiler IR: a small typed graph of `Value`s and `Node`s.

A `Graph` holds its nodes in topological order in a doubly linked list, so
passes insert and remove nodes in O(1) while iterating (the torch.fx layout).
Weights are constant `Value`s that carry a numpy array and have no producer.
Every op name comes from the closed set in `qcompiler.ir.ops`; `Graph.verify`
checks structure, op arity, attributes, dtypes and shapes.

Text form (see `qcompiler.ir.text`): `str(graph)` prints deterministic SSA text,
`qcompiler.ir.text.parse` reads it back.
"""

from __future__ import annotations

import hashlib
import itertools
from collections.abc import Iterator, Sequence
from copy import deepcopy
from dataclasses import dataclass, field

import numpy as np

from qcompiler.ir.dims import DimLike, is_static, normalize_shape, shape_at
from qcompiler.ir.dtypes import DTYPES, FLOAT_DTYPES, dtype_of_array  # noqa: F401  (FLOAT_DTYPES: ir)
from qcompiler.ir.ops import infer_types
from qcompiler.ir.printer import print_graph
from qcompiler.ir.verify import type_key, verify_graph


@dataclass(frozen=True, eq=False)
class QParams:
    """Affine quantization parameters: real = scale * (q - zero_point).

    `axis` is None for per-tensor parameters, else the channel axis that the
    `scale` and `zero_point` vectors run along.
    """

    scale: np.ndarray
    zero_point: np.ndarray
    bits: int = 8
    signed: bool = True
    axis: int | None = None
    narrow_range: bool = False

    def __post_init__(self):
        object.__setattr__(self, "scale", np.atleast_1d(np.asarray(self.scale, np.float32)))
        object.__setattr__(self, "zero_point", np.atleast_1d(np.asarray(self.zero_point, np.int32)))

    @property
    def qmin(self) -> int:
        low = -(1 << (self.bits - 1)) if self.signed else 0
        return low + 1 if self.narrow_range else low

    @property
    def qmax(self) -> int:
        return (1 << (self.bits - 1)) - 1 if self.signed else (1 << self.bits) - 1

    def __eq__(self, other) -> bool:
        return (
            isinstance(other, QParams)
            and (self.bits, self.signed, self.axis, self.narrow_range)
            == (other.bits, other.signed, other.axis, other.narrow_range)
            and np.array_equal(self.scale, other.scale)
            and np.array_equal(self.zero_point, other.zero_point)
        )

    __hash__ = None


@dataclass(eq=False)
class Value:
    """A tensor in the graph: a graph input, a node output or a constant. Its shape holds ints
    and, for activations, symbolic `Dim`s such as the batch `N` (`qcompiler.ir.dims`)."""

    name: str
    shape: tuple[DimLike, ...]
    dtype: str = "f32"
    data: np.ndarray | None = None
    producer: Node | None = None
    users: list[Node] = field(default_factory=list)
    qparams: QParams | None = None

    @property
    def is_constant(self) -> bool:
        return self.data is not None

    @property
    def numel(self) -> int:
        """The element count; a symbolic shape has none (TypeError: use `numel_at`)."""
        if not is_static(self.shape):
            raise TypeError(f"%{self.name}: {self.type_str} has a symbolic shape; its element "
                            "count is numel_at(batch)")
        return int(np.prod(self.shape, dtype=np.int64))

    def numel_at(self, batch: int) -> int:
        """The element count with every symbolic dimension's symbol set to `batch`."""
        return int(np.prod(shape_at(self.shape, batch), dtype=np.int64))

    @property
    def is_static(self) -> bool:
        return is_static(self.shape)

    @property
    def type_str(self) -> str:
        return f"{self.dtype}[{','.join(str(d) for d in self.shape)}]"

    def digest(self) -> str:
        """A short content hash of a constant's data (shape and dtype included)."""
        if self.data is None:
            raise ValueError(f"value %{self.name} is not a constant")
        h = hashlib.sha1(self.type_str.encode())
        h.update(np.ascontiguousarray(self.data).tobytes())
        return h.hexdigest()[:16]

    def __repr__(self) -> str:
        kind = "const " if self.is_constant else ""
        return f"<Value {kind}%{self.name}: {self.type_str}>"


@dataclass(eq=False)
class Node:
    """One operation. `op` is a name from `qcompiler.ir.ops.OPS`."""

    op: str
    inputs: list[Value | None]
    outputs: list[Value]
    attrs: dict = field(default_factory=dict)
    # Where the node came from (file:line of the user's model), for error messages.
    source: str = ""
    graph: Graph | None = field(default=None, repr=False)
    _prev: Node | None = field(default=None, repr=False)
    _next: Node | None = field(default=None, repr=False)

    @property
    def name(self) -> str:
        """A node is named after its first output."""
        return self.outputs[0].name

    @property
    def output(self) -> Value:
        if len(self.outputs) != 1:
            raise ValueError(f"node {self.name} ({self.op}) has {len(self.outputs)} outputs")
        return self.outputs[0]

    def describe(self) -> str:
        where = f" at {self.source}" if self.source else ""
        return f"node %{self.name} ({self.op}){where}"

    def replace_input(self, old: Value, new: Value) -> None:
        for i, v in enumerate(self.inputs):
            if v is old:
                self.inputs[i] = new
                old.users.remove(self)
                new.users.append(self)

    def __repr__(self) -> str:
        return f"<Node %{self.name} = {self.op}>"


class Graph:
    """Topologically ordered nodes plus graph inputs, outputs and constants."""

    def __init__(self, name: str = "main"):
        self.name = name
        self.inputs: list[Value] = []
        self.outputs: list[Value] = []
        self.values: dict[str, Value] = {}
        self._head: Node | None = None
        self._tail: Node | None = None
        self._len = 0
        self._name_counters: dict[str, itertools.count] = {}
        # Memo of op type inference: type_key(op, inputs, attrs) -> output (shape, dtype)s.
        # Running an op on meta tensors costs 0.1-4 ms (torch's Python reference kernels);
        # graphs repeat a few layer signatures many times. Op semantics are fixed, so
        # entries never go stale and copies share the memo.
        self._inferred_types: dict[tuple, list[tuple[tuple[DimLike, ...], str]]] = {}

    # ---- values ---------------------------------------------------------------

    def unique_name(self, base: str) -> str:
        base = base or "v"
        if base not in self.values:
            return base
        counter = self._name_counters.setdefault(base, itertools.count(1))
        while True:
            candidate = f"{base}_{next(counter)}"
            if candidate not in self.values:
                return candidate

    def _register(self, value: Value) -> Value:
        if value.name in self.values:
            raise ValueError(f"value name %{value.name} is already used in graph {self.name}")
        self.values[value.name] = value
        return value

    def add_input(self, name: str, shape: Sequence[DimLike], dtype: str = "f32") -> Value:
        value = self._register(Value(self.unique_name(name), normalize_shape(shape), dtype))
        self.inputs.append(value)
        return value

    def add_constant(self, name: str, data, dtype: str | None = None) -> Value:
        array = np.asarray(data)
        if dtype is not None:
            array = array.astype(DTYPES[dtype], copy=False)
        elif array.dtype == np.float64:
            array = array.astype(np.float32)
        array = np.ascontiguousarray(array)
        return self._register(
            Value(self.unique_name(name), tuple(array.shape), dtype_of_array(array), data=array)
        )

    def new_value(self, name: str, shape: Sequence[DimLike], dtype: str = "f32") -> Value:
        return self._register(Value(self.unique_name(name), normalize_shape(shape), dtype))

    @property
    def constants(self) -> list[Value]:
        return [v for v in self.values.values() if v.is_constant]

    def remove_value(self, value: Value) -> None:
        if value.users or value in self.outputs or value in self.inputs:
            raise ValueError(f"cannot remove %{value.name}: it is still used")
        if self.values.get(value.name) is value:
            del self.values[value.name]

    # ---- nodes ----------------------------------------------------------------

    def __iter__(self) -> Iterator[Node]:
        node = self._head
        while node is not None:
            following = node._next
            yield node
            node = following

    def __len__(self) -> int:
        return self._len

    @property
    def nodes(self) -> list[Node]:
        return list(self)

    def reversed(self) -> Iterator[Node]:
        node = self._tail
        while node is not None:
            preceding = node._prev
            yield node
            node = preceding

    def _link(self, node: Node, before: Node | None) -> None:
        if node.graph is not None:
            raise ValueError(f"{node!r} is already in a graph")
        if before is not None and before.graph is not self:
            raise ValueError(f"cannot insert before {before.describe()}: it is not in graph {self.name}")
        node.graph = self
        if before is None:  # append
            node._prev, node._next = self._tail, None
            if self._tail is not None:
                self._tail._next = node
            else:
                self._head = node
            self._tail = node
        else:
            node._prev, node._next = before._prev, before
            if before._prev is not None:
                before._prev._next = node
            else:
                self._head = node
            before._prev = node
        self._len += 1

    def create_node(
        self,
        op: str,
        inputs: Sequence[Value | None],
        output_names: Sequence[str],
        output_types: Sequence[tuple[Sequence[DimLike], str]],
        attrs: dict | None = None,
        *,
        before: Node | None = None,
        source: str = "",
    ) -> Node:
        """Create a node with fresh output values; append it, or insert it before `before`."""
        outputs = [
            self.new_value(name, shape, dtype)
            for name, (shape, dtype) in zip(output_names, output_types, strict=True)
        ]
        node = Node(op, list(inputs), outputs, dict(attrs or {}), source=source)
        for value in outputs:
            value.producer = node
        for value in node.inputs:
            if value is not None:
                value.users.append(node)
        self._link(node, before)
        return node

    def add_node(self, op: str, inputs: Sequence[Value | None], attrs: dict | None = None,
                 *, name: str | None = None, before: Node | None = None, source: str = "") -> Node:
        """Create a single-output node whose output type is inferred from the op."""
        inputs, attrs = list(inputs), dict(attrs or {})
        key = type_key(op, inputs, attrs)
        types = self._inferred_types.get(key) if key is not None else None
        if types is None:
            types = infer_types(op, inputs, attrs)
            if key is not None:
                self._inferred_types[key] = types
        names = [name or op] + [f"{name or op}.{i}" for i in range(1, len(types))]
        return self.create_node(op, inputs, names, types, attrs, before=before, source=source)

    def remove_node(self, node: Node) -> None:
        """Unlink a node whose outputs are no longer used; its output values go too."""
        if node.graph is not self:
            raise ValueError(f"cannot remove {node.describe()}: it is not in graph {self.name}")
        for value in node.outputs:
            if value.users or value in self.outputs:
                raise ValueError(
                    f"cannot remove {node.describe()}: output %{value.name} is still used"
                )
        for value in node.inputs:
            if value is not None and node in value.users:
                value.users.remove(node)
        for value in node.outputs:
            self.remove_value(value)
        if node._prev is not None:
            node._prev._next = node._next
        else:
            self._head = node._next
        if node._next is not None:
            node._next._prev = node._prev
        else:
            self._tail = node._prev
        node._prev = node._next = node.graph = None
        self._len -= 1

    def replace_all_uses(self, old: Value, new: Value) -> None:
        """Point every user of `old` (and the graph outputs) at `new`.

        The node producing `new` is skipped: a node cannot consume its own output,
        and this is what inserting `new = f(old)` after `old` needs."""
        for user in list(old.users):
            if user is not new.producer:
                user.replace_input(old, new)
        self.outputs = [new if v is old else v for v in self.outputs]

    def remove_unused_constants(self) -> int:
        unused = [v for v in self.values.values() if v.is_constant and not v.users
                  and v not in self.outputs]
        for value in unused:
            del self.values[value.name]
        return len(unused)

    # ---- whole-graph views ------------------------------------------------------

    def verify(self) -> Graph:
        """Check structure, op signatures, dtypes, shapes and qparams; raise VerificationError
        listing every problem found. Returns the graph (for chaining)."""
        verify_graph(self)
        return self

    def to_networkx(self):
        """A networkx DiGraph view: one vertex per node (keyed by node name), plus
        vertices for graph inputs and constants; edges carry the value name."""
        import networkx as nx

        g = nx.DiGraph()
        for value in self.inputs:
            g.add_node(value.name, kind="input", value=value)
        for value in self.constants:
            g.add_node(value.name, kind="constant", value=value)
        for node in self:
            g.add_node(node.name, kind="node", op=node.op, node=node)
            for index, value in enumerate(node.inputs):
                if value is None:
                    continue
                source = value.producer.name if value.producer is not None else value.name
                g.add_edge(source, node.name, value=value.name, index=index)
        return g

    def copy(self) -> Graph:
        """A deep structural copy; constant arrays are shared (passes replace, never mutate)."""
        clone = Graph(self.name)
        clone._inferred_types = self._inferred_types
        mapping: dict[int, Value] = {}

        def copy_value(value: Value) -> Value:
            new = Value(value.name, value.shape, value.dtype, data=value.data, qparams=value.qparams)
            clone.values[new.name] = new
            mapping[id(value)] = new
            return new

        for value in self.inputs:
            clone.inputs.append(copy_value(value))
        for value in self.values.values():
            if value.is_constant:
                copy_value(value)
        for node in self:
            inputs = [None if v is None else mapping[id(v)] for v in node.inputs]
            outputs = [copy_value(v) for v in node.outputs]
            new = Node(node.op, inputs, outputs, deepcopy(node.attrs), source=node.source)
            for value in outputs:
                value.producer = new
            for value in inputs:
                if value is not None:
                    value.users.append(new)
            clone._link(new, None)
        clone.outputs = [mapping[id(v)] for v in self.outputs]
        return clone

    @property
    def is_static(self) -> bool:
        """Whether every value's shape is concrete (no symbolic batch)."""
        return all(value.is_static for value in self.values.values())

    def at_batch(self, batch: int) -> Graph:
        """A copy whose symbolic dimensions are concrete, every symbol set to `batch` (for a
        backend or an analysis that needs numbers; attributes already hold -1 for the batch, so
        only value types change). A static graph comes back as a copy unchanged."""
        if isinstance(batch, bool) or not isinstance(batch, int | np.integer) or batch < 1:
            raise ValueError(f"batch must be a positive int, got {batch!r}")
        clone = self.copy()
        clone._inferred_types = {}  # keys hold the symbolic types
        for value in clone.values.values():
            value.shape = shape_at(value.shape, int(batch))
        return clone

    def __str__(self) -> str:
        return print_graph(self)

    def __repr__(self) -> str:
        return f"<Graph {self.name}: {len(self)} nodes, {len(self.inputs)} inputs>"


def structurally_equal(a: Graph, b: Graph) -> bool:
    """Same text form: same nodes, ops, attributes, names, types, qparams and constant data."""
    return print_graph(a) == print_graph(b)

