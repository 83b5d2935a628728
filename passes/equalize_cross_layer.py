"""Cross-layer equalization: rescale the channels between consecutive layers so that
each channel's weight range is the same in both layers.

    %y = conv2d(%x, %w1, %b1)          %y = conv2d(%x, S^-1 %w1, S^-1 %b1)
    %r = relu(%y)                 ->    %r = relu(%y)
    %z = conv2d(%r, %w2, %b2)          %z = conv2d(%r, %w2 S, %b2)

with s_i = sqrt(r1_i / r2_i) (Nagel et al. 2019, "Data-Free Quantization Through
Weight Equalization and Bias Correction", sec. 4.1, eq. 11; the arithmetic is in
`qcompiler.numerics.equalization`). Per-tensor weight quantization then wastes
far fewer levels on channels with small ranges; this is what makes per-tensor
INT8 MobileNetV2 work.

Matched: chains of conv1d / conv2d (any groups, so depthwise layers too) or of
linear layers, where each layer's output reaches the next layer's data input
through positively homogeneous, channel-preserving ops only: nothing (identity),
ReLU (`relu`, `clamp(min=0)`), max / average pooling. f(x / s) = f(x) / s for s > 0
is exactly what makes the rescaling invisible. A chain conv -> dw conv -> conv
(MobileNetV2's inverted residual) is equalized as two pairs that share the
depthwise filters; the pairs are swept repeatedly until every scale is within
`tolerance` of 1 (at most `iterations` sweeps).

Not matched, with the reason in `PassResult.notes`:
- a tensor on the way has more than one user or is a graph output. A branch,
  residual add or concat would also see the rescaled channels, and the other
  consumer has no weights to compensate, so the function would change;
- ReLU6 (`clamp(0, 6)`), unless `replace_relu6=True`. ReLU6 is not positively
  homogeneous: min(x / s, 6) * s = min(x, 6 s), so the clip point would move per
  channel. With `replace_relu6=True` the ReLU6 nodes inside equalized chains
  become ReLU, as the paper does for MobileNetV2; that changes the function
  where activations exceed 6 (by design: only do it if you accept this);
- a batch norm on the way (run `fold_batchnorm` first), or any other op;
- a weight or bias that is not a constant, carries quantization parameters
  (equalize before quantizing), or is shared with another node (rescaling it
  would change the other user too);
- conv layers followed by linear layers (their channel axes differ), and
  conv_transpose2d (its weight layout is transposed; not implemented).

Requires: batch norms folded (`fold_batchnorm`), since the pass rescales weights
and biases but not batch-norm parameters. Preserves: the function (to float32
rounding; arithmetic is done in float64 and rounded once), shapes, dtypes and node
names. New weight and bias constants are created (`<old>.equalized`), as constants
are never modified in place; the old ones are removed when unused.

Use: `equalize_cross_layer(graph)` runs with the defaults and returns a
`PassResult`; `equalize_cross_layer(iterations=..., tolerance=..., replace_relu6=...)`
without a graph returns the configured pass (an `EqualizeCrossLayer`), so both
`Pipeline([equalize_cross_layer])` and `Pipeline([equalize_cross_layer(replace_relu6=True)])`
work.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from qcompiler.errors import OptionError
from qcompiler.ir import Graph, Node
from qcompiler.ir.edit import is_relu6, is_relu_like, optional_input, replace_constant, why_not_private
from qcompiler.ir.ops import OPS, OUT_IN_WEIGHTED_OPS
from qcompiler.ir.pipeline import PassResult
from qcompiler.numerics.equalization import ChainLayer, equalize_chain


@dataclass(frozen=True)
class EqualizeCrossLayer:
    """The configured cross-layer equalization pass (see the module docstring)."""

    iterations: int = 100
    tolerance: float = 1e-6
    replace_relu6: bool = False

    name: ClassVar[str] = "equalize_cross_layer"
    in_place: ClassVar[bool] = True  # rewrites the graph it is given

    def __post_init__(self):
        if self.iterations < 1:
            raise OptionError(f"equalize_cross_layer: iterations must be >= 1, got {self.iterations}")
        if not self.tolerance > 0:
            raise OptionError(f"equalize_cross_layer: tolerance must be > 0, got {self.tolerance}")

    def __call__(self, graph: Graph) -> PassResult:
        notes: list[str] = []
        successors: dict[int, tuple[Node, list[Node]]] = {}
        for node in graph:
            if node.op not in OUT_IN_WEIGHTED_OPS:
                continue
            found = _find_successor(graph, node, self.replace_relu6)
            if isinstance(found, str):
                notes.append(f"%{node.name} not equalized with the next layer: {found}")
            elif found is not None:
                successors[id(node)] = found
        following = {id(nxt) for nxt, _ in successors.values()}
        equalized_chains = 0
        for node in graph:
            if id(node) not in successors or id(node) in following:
                continue  # only start at the head of a chain
            chain, paths = [node], []
            while id(chain[-1]) in successors:
                nxt, path = successors[id(chain[-1])]
                chain.append(nxt)
                paths.extend(path)
            if self._equalize(graph, chain, paths, notes):
                equalized_chains += 1
        if equalized_chains:
            notes.insert(0, f"equalized {equalized_chains} chain(s)")
        return PassResult(graph, equalized_chains > 0, notes)

    def _equalize(self, graph: Graph, chain: list[Node], paths: list[Node], notes: list[str]) -> bool:
        layers = [ChainLayer(n.inputs[1].data, None if optional_input(n, 2) is None else n.inputs[2].data,
                             n.attrs.get("groups", 1) if n.op != "linear" else 1) for n in chain]
        result = equalize_chain(layers, self.iterations, self.tolerance)
        names = " -> ".join(f"%{n.name}" for n in chain)
        if result.sweeps == 1 and result.converged:
            notes.append(f"{names}: already equalized (every scale within {self.tolerance} of 1)")
            return False
        for node, layer in zip(chain, result.layers, strict=True):
            _equalized(graph, node, 1, layer.weight)
            if layer.bias is not None:
                _equalized(graph, node, 2, layer.bias)
        replaced = [node for node in paths if is_relu6(node)]  # only with replace_relu6=True
        for node in replaced:
            node.op, node.attrs = "relu", {}
        status = "converged" if result.converged else "did NOT converge"
        note = f"{names}: {status} after {result.sweeps} sweep(s)"
        if replaced:
            note += "; replaced ReLU6 " + ", ".join(f"%{n.name}" for n in replaced) + " by ReLU"
        notes.append(note)
        return True


def equalize_cross_layer(graph: Graph | None = None, /, *, iterations: int = 100,
                         tolerance: float = 1e-6, replace_relu6: bool = False):
    """Run cross-layer equalization on `graph` (-> PassResult), or, called without a
    graph, return the pass configured with these options (-> EqualizeCrossLayer)."""
    configured = EqualizeCrossLayer(iterations, tolerance, replace_relu6)
    return configured if graph is None else configured(graph)


equalize_cross_layer.in_place = True  # as the configured pass it runs


def _find_successor(graph: Graph, layer: Node, replace_relu6: bool
                    ) -> tuple[Node, list[Node]] | str | None:
    """(next layer, ops in between) if `layer` pairs with the layer after it; a reason
    (str) if something specific blocks it; None if its output simply ends elsewhere."""
    value, path = layer.output, []
    while True:
        if value in graph.outputs:
            return f"%{value.name} is a graph output"
        if len(value.users) != 1:
            if not value.users:
                return None
            users = ", ".join(f"%{u.name} ({u.op})" for u in value.users)
            return (f"%{value.name} has {len(value.users)} users ({users}); a branch, residual add "
                    "or concat would see the rescaled channels too")
        user = value.users[0]
        if user.op in OUT_IN_WEIGHTED_OPS and user.inputs[0] is value:
            if (user.op == "linear") != (layer.op == "linear"):  # conv channels are on axis 1
                return (f"{layer.op} %{layer.name} feeds {user.op} %{user.name}, whose "
                        "input channels are on another axis")
            reason = _why_not_rescalable(graph, layer) or _why_not_rescalable(graph, user)
            return (user, path) if reason is None else reason
        if OPS[user.op].homogeneous or is_relu_like(user):
            pass
        elif is_relu6(user):
            if not replace_relu6:
                return (f"ReLU6 %{user.name} is in the way; it is not positively homogeneous "
                        "(pass replace_relu6=True to turn it into ReLU)")
        elif user.op == "batch_norm":
            return f"batch_norm %{user.name} is in the way; run fold_batchnorm first"
        else:
            return None
        path.append(user)
        value = user.output


def _why_not_rescalable(graph: Graph, layer: Node) -> str | None:
    """None if the layer's weight and bias may be rewritten, else the reason."""
    if layer.op != "linear" and len(layer.output.shape) != len(layer.inputs[1].shape):
        return f"{layer.op} %{layer.name} is unbatched (channels not on axis 1)"
    for role, value in (("weight", layer.inputs[1]), ("bias", optional_input(layer, 2))):
        problem = None if value is None else why_not_private(graph, value, layer, "equalize")
        if problem is not None:
            return f"the {role} %{value.name} of %{layer.name} {problem}"
    return None


def _equalized(graph: Graph, node: Node, index: int, data) -> None:
    """Replace input `index` of `node` by the constant `data`, named `<old>.equalized` (a
    constant equalized again keeps that name, numbered)."""
    old = node.inputs[index]
    replace_constant(graph, node, index, data,
                     old.name if old.name.endswith(".equalized") else f"{old.name}.equalized")
