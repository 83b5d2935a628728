"""The weights that the weight-level compression passes (`sparsify_weights`,
`cluster_weights`) rewrite: input 1 of the selected weighted layers, each once however many
layers share it, with the reasons others are left alone."""

from __future__ import annotations

from collections.abc import Iterable

from qcompiler.errors import OptionError
from qcompiler.ir import Graph, Value
from qcompiler.ir.edit import select_layers, why_not_float_constant
from qcompiler.ir.ops import WEIGHTED_OPS


def layer_weights(graph: Graph, layers: Iterable[str] | None, ignore: Iterable[str], pass_name: str,
                  input_index: int = 1) -> tuple[list[Value], list[str]]:
    """(weights, notes): the float constant weights (`input_index=2`: biases) of the layers
    `layers` names (fnmatch patterns; every weighted layer if None) minus `ignore`, in graph
    order; notes say which selected layers were skipped and why. Unknown names raise
    PassError (`select_layers`)."""
    weights: dict[int, Value] = {}
    notes: list[str] = []
    for node in select_layers(graph, sorted(WEIGHTED_OPS), layers, tuple(ignore), pass_name):
        weight = node.inputs[input_index] if len(node.inputs) > input_index else None
        if weight is None:
            continue
        problem = why_not_float_constant(weight, pass_name)
        if problem is not None:
            notes.append(f"%{node.name} skipped: its weight %{weight.name} {problem}")
            continue
        weights.setdefault(id(weight), weight)
    return list(weights.values()), notes


def check_layer_options(pass_name: str, first_option, layers, ignore) -> None:
    """The option checks every weight-level pass shares: a graph given where the options go
    (`cluster_weights(graph)`), and `layers` / `ignore` given as one string."""
    if isinstance(first_option, Graph):
        raise OptionError(f"{pass_name} takes options, not a graph: run {pass_name}(...)(graph), "
                          "or put it in a Pipeline")
    for option, names in (("layers", layers), ("ignore", ignore)):
        if isinstance(names, str):
            raise OptionError(f"{pass_name}: {option} must be a tuple of names, got the string "
                              f"{names!r}")
