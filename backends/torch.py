"""The torch backend: turn a Graph into a runnable, trainable `torch.fx.GraphModule`.

Each IR node becomes one `call_function` of the op's torch function from
`qcompiler.ir.ops` (the same function that defines the op's semantics), so the
emitted module computes exactly what the IR says. Weights of weighted and
normalisation layers become `nn.Parameter`s (gradients flow, for fine-tuning);
other constants become buffers. Attribute names are the IR value names with
dots replaced by underscores; `module.qc_names` maps them back.

`exact=True` runs the float arithmetic in float64 (float32 inputs and outputs stay
float32 at the module boundary), except the ops the integer path itself evaluates in
float32 (`FLOAT32_IN_EXACT`: lookup-table functions, float fall backs). A fake-quant
graph then computes exactly what its integer lowering computes: each fake_quant rounds
by the integer path's rule at that point, and float64 accumulation of int8 x int8
products sits far below one step (docs/integer-spec.md, section 12). The float32
default uses torch's fake-quant kernels, for speed and quantization-aware training;
its float32 accumulation order can land a value on the other side of a rounding
boundary, and a deep network amplifies such one-step differences
(benchmarks/results/integer_fidelity.md measures both).
"""

from __future__ import annotations

import keyword
import operator

import torch
from torch import fx, nn

from qcompiler.ir import Graph
from qcompiler.ir.ops import FAKE_QUANT_OPS, LOOKUP_OPS, OPS, attrs_with_defaults, ops_where
from qcompiler.ir.printer import print_graph
from qcompiler.ir.text import parse
from qcompiler.quantization.lowering import FALLBACK_OPS
from qcompiler.quantization.quantizers import require_calibrated

# Ops whose constant inputs 1 and 2 (weight and bias, by the ops' input order) are
# learnable weights rather than fixed numbers. Only those two: batch-norm running
# statistics (inputs 3, 4) are not learnable, and torch refuses gradients through them.
_TRAINABLE_CATEGORIES = {"weighted", "norm"}


# Ops an exact module still runs in float32: those the integer path evaluates in float32 (lookup
# tables are built from float32 evaluations; float fall backs run in float32), so the float64
# simulation feeds the next quantization point the interpreter's very numbers. Single-output ops.
# Comparisons and casts of quantized values are tables of float32 results too; a cast of
# integers to float gives float64 through this path (its float32 output is widened).
FLOAT32_IN_EXACT = LOOKUP_OPS | FALLBACK_OPS | ops_where(category="compare") | {"cast"}

# Ops whose torch function returns a tuple even when the node has one output
# (`split` into a single piece).
_TUPLE_RESULT_OPS = {"split"}


def _learnable_inputs(op: str) -> tuple[int, ...]:
    if op == "embedding":
        return (1,)
    return (1, 2) if OPS[op].category in _TRAINABLE_CATEGORIES else ()


def _attribute_name(name: str) -> str:
    """A Python identifier for an IR name: fx emits it as `self.<name>` and as a local."""
    safe = "".join(c if c.isalnum() or c == "_" else "_" for c in name)
    safe = safe if not safe[0].isdigit() else f"c_{safe}"
    return f"{safe}_" if keyword.iskeyword(safe) else safe


class TorchModule(fx.GraphModule):
    """What `to_torch` returns: a GraphModule that also survives `torch.save` / `torch.load`.

    torch.fx pickles a GraphModule as its generated Python code and traces that code again on
    load, which fails on the IR ops' own control flow (a TraceError). This module pickles as the
    graph's IR text and its current tensors (trained weights included) and is rebuilt by
    `to_torch` on load, so `torch.load(path, weights_only=False)` gives a working module. Like
    any pickle, that runs code from the file: load only files you trust. The safe route is
    `qc.save(graph, path)` with `qc.to_torch(qc.load(path))` (and `module.state_dict()` with
    `weights_only=True` for trained weights).
    """

    def __reduce__(self):
        return (_rebuild, (self.qc_text, self.qc_sources, dict(self.qc_names), self.state_dict(),
                           self.qc_options, self.training))


def _rebuild(text: str, sources: dict, names: dict, state: dict, options: dict, training: bool):
    """The inverse of `TorchModule.__reduce__`: the graph with the module's current tensors (in
    the IR's dtypes), emitted again, then those tensors loaded exactly (an exact module's float64
    copies included)."""
    constants = {names[attribute]: tensor.detach().numpy() for attribute, tensor in state.items()}
    graph = parse(text, constants)  # casts an exact module's float64 copies to the IR's dtype
    for node in graph:
        node.source = sources.get(node.name, "")
    module = to_torch(graph, **options)
    module.load_state_dict(state)
    return module.train(training)


def to_torch(graph: Graph, trainable: bool = True, *, exact: bool = False) -> TorchModule:
    """Emit a GraphModule that runs `graph`; its forward takes the graph inputs in order.

    exact=True computes in float64 inside (see the module docstring): the simulation that
    equals the integer interpreter. A fake-quant graph must be calibrated first (the error
    names the first node that is not).
    """
    require_calibrated(graph, "qc.to_torch")
    root = nn.Module()
    fx_graph = fx.Graph()
    env: dict[int, fx.Node] = {}
    qc_names: dict[str, str] = {}

    for value in graph.inputs:
        env[id(value)] = fx_graph.placeholder(_attribute_name(value.name))
        if exact and value.dtype == "f32":
            env[id(value)] = fx_graph.call_method("to", (env[id(value)], torch.float64))

    learnable = set()
    for node in graph:
        for index in _learnable_inputs(node.op):
            value = node.inputs[index] if index < len(node.inputs) else None
            # A quantized weight (bias) reaches its layer through a fake_quant
            # (fake_quant_bias); the float constant behind it is what quantization-aware
            # training updates.
            if value is not None and value.producer is not None \
                    and value.producer.op in FAKE_QUANT_OPS:
                value = value.producer.inputs[0]
            if value is not None and value.is_constant:
                learnable.add(id(value))
    for value in graph.constants:
        attribute = _attribute_name(value.name)
        while hasattr(root, attribute) or attribute in qc_names:
            attribute += "_"
        tensor = torch.from_numpy(value.data.copy())
        if exact and tensor.dtype == torch.float32:
            tensor = tensor.to(torch.float64)
        if trainable and id(value) in learnable and tensor.is_floating_point():
            root.register_parameter(attribute, nn.Parameter(tensor))
        else:
            root.register_buffer(attribute, tensor)
        qc_names[attribute] = value.name
        env[id(value)] = fx_graph.get_attr(attribute)

    for node in graph:
        spec = OPS[node.op]
        in_float32 = exact and node.op in FLOAT32_IN_EXACT
        args = [None if v is None else
                fx_graph.call_method("to", (env[id(v)], torch.float32)) if in_float32 and v.dtype == "f32"
                else env[id(v)] for v in node.inputs]
        while args and args[-1] is None and len(args) > spec.min_inputs:
            args.pop()
        call = fx_graph.call_function(spec.fn, tuple(args), attrs_with_defaults(node.op, node.attrs))
        call.name = _attribute_name(node.name)
        if in_float32 and node.output.dtype == "f32":
            call = fx_graph.call_method("to", (call, torch.float64))
        if len(node.outputs) == 1 and node.op not in _TUPLE_RESULT_OPS:
            env[id(node.outputs[0])] = call
        else:
            for index, value in enumerate(node.outputs):
                env[id(value)] = fx_graph.call_function(operator.getitem, (call, index))

    results = [env[id(v)] for v in graph.outputs]
    if exact:
        results = [fx_graph.call_method("to", (result, torch.float32)) if value.dtype == "f32"
                   else result for result, value in zip(results, graph.outputs, strict=True)]
    fx_graph.output(results[0] if len(results) == 1 else tuple(results))
    module = TorchModule(root, fx_graph, class_name=f"QC_{_attribute_name(graph.name)}")
    module.qc_names = qc_names
    # What pickling needs to rebuild the module (`TorchModule.__reduce__`): the structure as
    # text, its constants `external` (they come from the module's own tensors then).
    module.qc_text = print_graph(graph, external_constants=True)
    module.qc_sources = {node.name: node.source for node in graph if node.source}
    module.qc_options = {"trainable": trainable, "exact": exact}
    return module
