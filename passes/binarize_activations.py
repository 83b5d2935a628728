"""1-bit activations: the inputs of the chosen layers become sign(x) (BinaryNet / XNOR-Net).

    %a = batch_norm(...)                       %a = batch_norm(...)
    %r = relu(%a)                  ->          %s = sign(%a)
    %y = conv2d(%r, %w)                        %y = conv2d(%s, %w)

For each selected layer, what it reads must come from a batch norm (through ops that only
move values, e.g. max pooling, which commutes with sign): the batch norm sets the
threshold (`qcompiler.compression.binary_order`). An activation between the batch norm
and the layer (relu, relu6) is replaced by the sign, which is XNOR-Net's order
(BatchNorm -> BinActiv -> BinConv, Rastegari et al. 2016, Fig. 3); a sign after it would
be +1 everywhere. `sign` trains with the straight-through estimator (`qcompiler.ir.low_bit_ops`).

With binary weights (`quantize_weights_low_bit(scheme="binary")`) on the same layers,
`qc.quantize` then `qc.lower_to_integer` run them as XNOR-popcount (docs/integer-spec.md,
section 13). Binary networks keep the first layer's input (the image) and usually the last
layer in full precision: name them in `ignore` or leave them out of `layers`.

Options: `layers` / `ignore` (names or fnmatch patterns of weighted layers).

Requires: a float graph with its batch norms (binarize before folding them). Preserves:
shapes, names of everything it does not replace. Changes the function (binarizes).
Errors, raised before the graph changes: `qc.BinaryLayerOrderError` listing every layer
whose input does not come from a batch norm, naming the nodes in the way; an activation
replaced by the sign that other nodes also read (they would change too).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from qcompiler.compression.binary_order import sign_input_problem, through_moves
from qcompiler.compression.layer_weights import check_layer_options
from qcompiler.errors import BinaryLayerOrderError
from qcompiler.ir import Graph, Node, Value
from qcompiler.ir.edit import require_float_graph, select_layers
from qcompiler.ir.ops import OPS, WEIGHTED_OPS
from qcompiler.ir.pipeline import PassResult


def _replaced_activation(x: Value) -> Node | None:
    """The activation that reads a batch norm's output and feeds `x` (through ops that only
    move values, such as max pooling): the node that becomes the sign."""
    source, _ = through_moves(x)
    producer = source.producer
    if producer is None or OPS[producer.op].category != "activation" or producer.op == "sign":
        return None
    return producer if sign_input_problem(producer.inputs[0], "") is None else None


@dataclass(frozen=True)
class binarize_activations:  # lower case: with its options it reads like a function call
    """The configured 1-bit activation pass (see the module docstring)."""

    in_place: ClassVar[bool] = True  # rewrites the graph it is given

    layers: tuple[str, ...] | None = None
    ignore: tuple[str, ...] = ()

    def __post_init__(self):
        check_layer_options("binarize_activations", self.layers, self.layers, self.ignore)

    def __call__(self, graph: Graph) -> PassResult:
        require_float_graph(graph, "binarize_activations")
        selected = select_layers(graph, sorted(WEIGHTED_OPS), self.layers, self.ignore,
                                 "binarize_activations")
        replace: dict[int, Node] = {}
        insert: list[Node] = []
        problems = []
        for layer in selected:
            x = layer.inputs[0]
            source, _ = through_moves(x)
            if source.producer is not None and source.producer.op == "sign":
                continue  # already binary
            activation = _replaced_activation(x)
            if activation is not None:
                _, passed = through_moves(x)  # max pooling etc. between it and the layer
                others = [u for u in activation.output.users if u not in selected and u not in passed]
                if others or activation.output in graph.outputs:
                    readers = ", ".join(u.describe() for u in others) or "the graph output"
                    problems.append(f"{layer.describe()}: its input activation {activation.describe()} "
                                    f"would become a sign, but {readers} read(s) it too; binarize "
                                    "those as well or give this layer its own activation")
                replace[id(activation)] = activation
                continue
            problem = sign_input_problem(x, layer.describe())
            if problem is not None:
                problems.append(problem)
            else:
                insert.append(layer)
        if problems:
            raise BinaryLayerOrderError("binarize_activations: " + "; ".join(problems))
        notes = []
        for activation in replace.values():
            sign = graph.add_node("sign", [activation.inputs[0]], name=f"{activation.name}.sign",
                                  before=activation, source=activation.source)
            graph.replace_all_uses(activation.output, sign.output)
            graph.remove_node(activation)
            notes.append(f"{activation.describe()} replaced by %{sign.name}")
        for layer in insert:
            x = layer.inputs[0]
            sign = graph.add_node("sign", [x], name=f"{layer.name}.input_sign", before=layer,
                                  source=layer.source)
            layer.replace_input(x, sign.output)
            notes.append(f"%{sign.name} inserted before {layer.describe()}")
        return PassResult(graph, bool(notes), notes)
