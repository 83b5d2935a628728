"""Where a 1-bit activation may go: the layer order binary networks need.

A sign keeps information only if what it reads is centred by a batch norm right before it
(XNOR-Net, Rastegari et al. 2016, §3.3 and Fig. 3: BatchNorm -> BinActiv -> BinConv ->
Pool): the batch norm's shift is the learned threshold. Three orders break that:

- a non-negative value (relu, relu6, clamp with min >= 0) before the sign: sign(x) = +1
  everywhere, the layer after it sees a constant;
- no batch norm at all between the previous layer and the sign: the threshold is fixed at
  zero and the sign of a biased conv output is mostly one value;
- an average pooling (or anything else that mixes values) between the sign and the binary
  layer: the layer's input is no longer +-1, so it cannot run as XNOR-popcount.

Max pooling, reshapes and other ops that only move values commute with sign, so they may
sit on either side. `binary_order_problems` lists the violations, each naming the nodes.
"""

from __future__ import annotations

from qcompiler.ir import Node, Value
from qcompiler.ir.edit import is_relu6, is_relu_like, moves_values_only
from qcompiler.ir.ops import WEIGHTED_OPS


def _non_negative(node: Node) -> bool:
    if is_relu_like(node) or is_relu6(node):
        return True
    low = node.attrs.get("min") if node.op == "clamp" else None
    return isinstance(low, (int, float)) and low >= 0


def through_moves(value: Value) -> tuple[Value, list[Node]]:
    """Walk back from `value` over ops that only move values; (first other value, passed)."""
    passed = []
    while value.producer is not None and moves_values_only(value.producer):
        passed.append(value.producer)
        value = value.producer.inputs[0]
    return value, passed


def sign_input_problem(value: Value, reader: str) -> str | None:
    """Why a sign reading `value` would lose information (None if a batch norm feeds it,
    through value-moving ops only). `reader` names what reads it, for the message."""
    source, passed = through_moves(value)
    producer = source.producer
    via = "".join(f" through %{n.name} ({n.op})" for n in passed)
    if producer is None:
        return (f"{reader} reads %{source.name}{via}, a graph input or constant, with no batch norm "
                "before it: a 1-bit activation needs the order batch_norm -> sign (XNOR-Net §3.3)")
    if producer.op == "batch_norm":
        return None
    if _non_negative(producer):
        return (f"{reader} reads %{source.name}{via} from {producer.describe()}, which is never "
                "negative, so sign() would be +1 everywhere; put the sign between the batch norm "
                "and the activation (batch_norm -> sign) instead")
    return (f"{reader} reads %{source.name}{via} from {producer.describe()}, not from a batch norm: "
            "a 1-bit activation needs the order batch_norm -> sign (the batch norm sets the "
            "threshold); binarize before folding batch norms")


def binary_order_problems(graph) -> list[str]:
    """Every violation of the binary layer order (module docstring) in `graph`'s sign nodes."""
    problems = []
    for node in graph:
        if node.op != "sign":
            continue
        problem = sign_input_problem(node.inputs[0], node.describe())
        if problem is not None:
            problems.append(problem)
        for reader in _readers(node.output):
            if reader.op in WEIGHTED_OPS and reader.inputs[0] is not node.output:
                chain = _path(reader.inputs[0], node.output)
                if chain:
                    problems.append(f"{node.describe()} reaches {reader.describe()} through "
                                    f"{chain}, which does not only move values, so the layer's "
                                    "input is not +-1 and it cannot run as XNOR-popcount")
    return problems


def _readers(value: Value) -> list[Node]:
    """The weighted layers that read `value`, directly or through any single-input ops."""
    found, frontier = [], list(value.users)
    while frontier:
        node = frontier.pop()
        if node.op in WEIGHTED_OPS:
            found.append(node)
        elif len([v for v in node.inputs if v is not None and not v.is_constant]) == 1:
            frontier.extend(user for out in node.outputs for user in out.users)
    return found


def _path(value: Value, start: Value) -> str:
    """The value-mixing ops on the way back from `value` to `start` (empty if none)."""
    mixing = []
    while value is not start and value.producer is not None:
        if not moves_values_only(value.producer):
            mixing.append(f"%{value.producer.name} ({value.producer.op})")
        value = value.producer.inputs[0]
    return ", ".join(reversed(mixing))
