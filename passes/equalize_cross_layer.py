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

from qcompiler.ir import Graph, Node, Value
from qcompiler.ir.pipeline import PassResult
from qcompiler.numerics.equalization import ChainLayer, equalize_chain

# Layer op -> the kind of channel axis its data input and output use.
_LAYER_KINDS = {"conv2d": "conv", "conv1d": "conv", "linear": "linear"}
_BATCHED_CONV_RANK = {"conv2d": 4, "conv1d": 3}
# Per-channel ops with f(x / s) = f(x) / s for every s > 0.
_HOMOGENEOUS_OPS = {"relu", "max_pool2d", "avg_pool2d", "adaptive_avg_pool2d", "max_pool1d",
                    "avg_pool1d", "adaptive_avg_pool1d"}
_FLOAT_DTYPES = {"f32", "f16", "f64"}


def is_relu6(node: Node) -> bool:
    return node.op == "clamp" and _number_equals(node.attrs.get("min"), 0) \
        and _number_equals(node.attrs.get("max"), 6)


def is_relu_like(node: Node) -> bool:
    """relu, or clamp(min=0) without an upper bound."""
    return node.op == "relu" or (node.op == "clamp" and _number_equals(node.attrs.get("min"), 0)
                                 and node.attrs.get("max") is None)


def _number_equals(value, number: float) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and value == number


@dataclass(frozen=True)
class EqualizeCrossLayer:
    """The configured cross-layer equalization pass (see the module docstring)."""

    iterations: int = 100
    tolerance: float = 1e-6
    replace_relu6: bool = False

    # Not a dataclass field (no annotation): the name the pass manager reports.
    __name__ = "equalize_cross_layer"

    def __post_init__(self):
        if self.iterations < 1:
            raise ValueError(f"equalize_cross_layer: iterations must be >= 1, got {self.iterations}")
        if not self.tolerance > 0:
            raise ValueError(f"equalize_cross_layer: tolerance must be > 0, got {self.tolerance}")

    def __call__(self, graph: Graph) -> PassResult:
        notes: list[str] = []
        successors: dict[int, tuple[Node, list[Node]]] = {}
        for node in graph:
            if node.op not in _LAYER_KINDS:
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
        layers = [ChainLayer(n.inputs[1].data, None if _bias(n) is None else _bias(n).data,
                             n.attrs.get("groups", 1) if n.op != "linear" else 1) for n in chain]
        result = equalize_chain(layers, self.iterations, self.tolerance)
        names = " -> ".join(f"%{n.name}" for n in chain)
        if result.sweeps == 1 and result.converged:
            notes.append(f"{names}: already equalized (every scale within {self.tolerance} of 1)")
            return False
        for node, layer in zip(chain, result.layers, strict=True):
            _replace_constant(graph, node, 1, layer.weight)
            if layer.bias is not None:
                _replace_constant(graph, node, 2, layer.bias)
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


def _bias(node: Node) -> Value | None:
    return node.inputs[2] if len(node.inputs) > 2 else None


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
        if user.op in _LAYER_KINDS and user.inputs[0] is value:
            if _LAYER_KINDS[user.op] != _LAYER_KINDS[layer.op]:
                return (f"{layer.op} %{layer.name} feeds {user.op} %{user.name}, whose "
                        "input channels are on another axis")
            reason = _why_not_rescalable(graph, layer) or _why_not_rescalable(graph, user)
            return (user, path) if reason is None else reason
        if user.op in _HOMOGENEOUS_OPS or is_relu_like(user):
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
    if layer.op in _BATCHED_CONV_RANK and len(layer.output.shape) != _BATCHED_CONV_RANK[layer.op]:
        return f"{layer.op} %{layer.name} is unbatched (channels not on axis 1)"
    for role, value in (("weight", layer.inputs[1]), ("bias", _bias(layer))):
        if value is None:
            continue
        if not value.is_constant:
            return f"the {role} %{value.name} of %{layer.name} is not a constant"
        if value.dtype not in _FLOAT_DTYPES:
            return f"the {role} %{value.name} of %{layer.name} is {value.dtype}, not a float"
        if value.qparams is not None:
            return (f"the {role} %{value.name} of %{layer.name} carries quantization parameters; "
                    "equalize before quantizing")
        if len(value.users) != 1 or value in graph.outputs:
            others = ", ".join(f"%{u.name}" for u in value.users if u is not layer) or "a graph output"
            return f"the {role} %{value.name} of %{layer.name} is shared with {others}"
    return None


def _replace_constant(graph: Graph, node: Node, index: int, data) -> None:
    old = node.inputs[index]
    name = old.name if old.name.endswith(".equalized") else f"{old.name}.equalized"
    new = graph.add_constant(name, data)
    node.replace_input(old, new)
    if not old.users and old not in graph.outputs:
        graph.remove_value(old)
