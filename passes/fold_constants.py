"""Replace nodes whose inputs are all constants by constants holding their result.

The classic compile-time evaluation (Aho et al., *Compilers*, 2nd ed., sec. 9.4).
Each such node is run once with `qcompiler.ir.ops.run_op`, the same torch function
the torch backend calls, so the folded value is exactly what the graph would
have computed. Nodes are visited in topological order, so a chain of constant
nodes (a weight transposed, then reshaped, then scaled) folds in one run.

Size rule: folding must not blow up the stored weights. A result is folded
when it has no more elements than its constant inputs together (a transpose,
reshape, slice or elementwise op of a weight), or when it is small
(at most `SMALL_RESULT_ELEMENTS` elements, e.g. a broadcast that fills a bias
vector). A larger result, such as a broadcast that expands a scalar into a
feature map, is left as a node and named in `PassResult.notes`.

Requires: nothing beyond a valid graph. Preserves: the function (bit for bit:
the same torch function computes the value), every value's name, shape, dtype
and quantization parameters (a folded output keeps its name and becomes a
constant). Constant inputs that nothing else uses after folding are removed;
other unused constants are left to `eliminate_dead_code`.

Known limits: quantization boundary ops (`quantize`, `dequantize`,
`fake_quant`) and nodes whose inputs carry quantization parameters are never
folded, so the quantizer's explicit weight quantization stays visible to the
integer lowering.
"""

from __future__ import annotations

import numpy as np
import torch

from qcompiler.ir import Graph, Node, Value
from qcompiler.ir.edit import remove_if_unused, rename_value
from qcompiler.ir.ops import ops_where, run_op
from qcompiler.ir.pipeline import PassResult

# Results up to this size fold even when they are larger than their inputs:
# 1024 float32 elements is 4 KiB, below any weight worth worrying about.
SMALL_RESULT_ELEMENTS = 1024

# Quantization ops (quantize, dequantize, fake_quant...) are kept as nodes: the integer
# lowering matches them.
_QUANTIZATION_OPS = ops_where(category="quant")


def fold_constants(graph: Graph) -> PassResult:
    folded = 0
    notes: list[str] = []
    for node in graph:
        if not _all_inputs_constant(node) or node.op in _QUANTIZATION_OPS:
            continue
        if any(v is not None and v.qparams is not None for v in node.inputs):
            continue
        result_elements = sum(v.numel for v in node.outputs)
        distinct_inputs = {id(v): v for v in node.inputs if v is not None}.values()
        input_elements = sum(v.numel for v in distinct_inputs)
        if result_elements > max(input_elements, SMALL_RESULT_ELEMENTS):
            notes.append(
                f"{node.describe()} not folded: its result has {result_elements} elements, more "
                f"than its constant inputs ({input_elements}) and than {SMALL_RESULT_ELEMENTS}")
            continue
        _fold(graph, node)
        folded += 1
    return PassResult(graph, folded > 0, notes)


fold_constants.in_place = True  # rewrites the graph it is given


def _all_inputs_constant(node: Node) -> bool:
    present = [v for v in node.inputs if v is not None]
    return bool(present) and all(v.is_constant for v in present)


def _as_tensor(value: Value | None) -> torch.Tensor | None:
    if value is None:
        return None
    data = value.data
    # torch.from_numpy refuses read-only arrays (and the op must not write anyway).
    return torch.from_numpy(data if data.flags.writeable else data.copy())


def _fold(graph: Graph, node: Node) -> None:
    with torch.no_grad():
        results = run_op(node.op, [_as_tensor(v) for v in node.inputs], node.attrs)
    inputs = [v for v in node.inputs if v is not None]
    replacements = []
    for value, result in zip(node.outputs, results, strict=True):
        array = np.ascontiguousarray(result.numpy())
        constant = graph.add_constant(f"{value.name}.folded", array, value.dtype)
        constant.qparams = value.qparams
        graph.replace_all_uses(value, constant)
        replacements.append((value.name, constant))
    graph.remove_node(node)
    # The folded constant takes over the name of the value it replaces, so the
    # rest of the graph reads the same in text form.
    for name, constant in replacements:
        rename_value(graph, constant, name)
    for value in inputs:
        remove_if_unused(graph, value)
