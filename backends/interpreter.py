"""The integer-only reference interpreter: runs a lowered graph node by node in numpy.

    ig = qc.lower_to_integer(qg)
    y = qc.backends.interpreter.run(ig, x)          # numpy arrays in, numpy arrays out

It implements `docs/integer-spec.md` and nothing else; the kernels, one per op, are in
`qcompiler.backends.interpreter_ops`. A graph with a symbolic batch runs at the batch
size of the inputs it is given (every input carrying N must agree). The shape is torch.fx's Interpreter: `run`
binds the graph inputs, `run_node` fetches a node's arguments from the environment,
calls its kernel with the node's attributes and checks the result against the
node's recorded type.

Strict mode (the default) first checks that the graph is integer-only: float
tensors appear only where `quantize` reads graph inputs and where `dequantize`
produces graph outputs. A float op inside (a fall back of `lower_to_integer(...,
strict=False)`, such as softmax or layer_norm) is refused with an error naming the
node; `strict=False` runs such ops with their torch semantics in float32.
"""

from __future__ import annotations

import numpy as np
import torch

from qcompiler.backends.interpreter_low_bit import KERNELS as LOW_BIT_KERNELS
from qcompiler.backends.interpreter_ops import KERNELS as BASE_KERNELS
from qcompiler.backends.interpreter_ops import AccumulatorOverflowError
from qcompiler.errors import InputError, IntegerOnlyError, QCompilerError
from qcompiler.ir import DTYPES, FLOAT_DTYPES, Graph, Node
from qcompiler.ir.dims import bind_sizes, shape_at
from qcompiler.ir.ops import attrs_with_defaults, run_op

KERNELS = {**BASE_KERNELS, **LOW_BIT_KERNELS}


def _float_values(node: Node) -> list[str]:
    return [f"%{v.name}: {v.type_str}" for v in [*node.inputs, *node.outputs]
            if v is not None and v.dtype in FLOAT_DTYPES]


def check_integer_only(graph: Graph) -> None:
    """Raise IntegerOnlyError naming the first node that computes in float inside the
    integer region (everything between the input quantizes and the output dequantizes)."""
    hint = ("lower without fall backs (qc.lower_to_integer(graph) refuses them), or run the "
            "interpreter with strict=False to execute the float op in float32")
    for node in graph:
        if node.op == "quantize":
            source = node.inputs[0]
            if source.producer is not None and source.producer.op != "dequantize":
                continue  # the producer computes in float and is reported below, first
            if source.producer is not None:
                raise IntegerOnlyError(
                    f"strict mode: {node.describe()} re-quantizes a dequantized tensor "
                    f"(%{source.name}): a float round trip inside the integer region; {hint}")
        elif node.op == "dequantize":
            continue  # its users, if any, are float ops and are reported
        elif _float_values(node):
            raise IntegerOnlyError(
                f"strict mode: {node.describe()} computes in float inside the integer region "
                f"({', '.join(_float_values(node))}); {hint}")
        elif node.op not in KERNELS:
            raise IntegerOnlyError(f"strict mode: {node.describe()} has no integer kernel; the "
                                   f"interpreter runs {', '.join(sorted(KERNELS))}")


class Interpreter:
    """Executes `graph` with the numpy kernels (see the module docstring)."""

    def __init__(self, graph: Graph, strict: bool = True):
        if strict:
            check_integer_only(graph)
        self.graph, self.strict = graph, strict
        self.env: dict[str, np.ndarray] = {}
        self.sizes: dict[str, int] = {}  # the symbols' sizes in this run (the batch N)

    def run(self, *inputs, keep_values: bool = False) -> list[np.ndarray]:
        """The graph outputs for these inputs (numpy arrays or tensors, one per graph input).
        With keep_values, `self.env` keeps every intermediate array by value name."""
        graph = self.graph
        self.bind(*inputs)
        last_use = _last_uses(graph) if not keep_values else {}
        for index, node in enumerate(graph):
            results = self.run_node(node)
            for value, result in zip(node.outputs, results, strict=True):
                self.env[value.name] = result
            for name in last_use.get(index, ()):
                del self.env[name]
        return [self.env[v.name] for v in graph.outputs]

    def bind(self, *inputs) -> None:
        """Start a fresh environment: the checked graph inputs and the constants."""
        graph = self.graph
        if len(inputs) != len(graph.inputs):
            raise InputError(f"graph {graph.name} takes {len(graph.inputs)} input(s) "
                                 f"({', '.join(f'%{v.name}: {v.type_str}' for v in graph.inputs)}), "
                                 f"got {len(inputs)}")
        self.sizes = {}
        self.env = {value.name: _checked_input(value, array, self.sizes)
                    for value, array in zip(graph.inputs, inputs, strict=True)}
        for value in graph.constants:
            self.env[value.name] = value.data

    def run_node(self, node: Node) -> tuple[np.ndarray, ...]:
        args = [None if v is None else self.env[v.name] for v in node.inputs]
        attrs = attrs_with_defaults(node.op, node.attrs)
        kernel = KERNELS.get(node.op)
        float_op = bool(_float_values(node)) and node.op not in ("quantize", "dequantize")
        try:
            if kernel is not None and not float_op:
                result = kernel(*args, **attrs)
            elif self.strict:  # check_integer_only has vouched for the graph; cannot happen
                raise IntegerOnlyError(f"strict mode: {node.describe()} has no integer kernel")
            else:
                result = _run_with_torch(node, args)
        except (AccumulatorOverflowError, ValueError, IndexError) as error:
            raise QCompilerError(f"interpreter: {node.describe()} failed: {error}") from None
        results = result if isinstance(result, tuple) else (result,)
        for value, array in zip(node.outputs, results, strict=True):
            if array.shape != shape_at(value.shape, self.sizes) or array.dtype != DTYPES[value.dtype]:
                raise QCompilerError(f"interpreter: {node.describe()} produced {array.dtype}"
                                     f"{list(array.shape)}, but %{value.name} is {value.type_str}")
        return results


def run(graph: Graph, *inputs, strict: bool = True):
    """Run `graph` on numpy arrays (or tensors): one array for a single-output graph, else a
    tuple. strict=True refuses float arithmetic inside the integer region."""
    outputs = Interpreter(graph, strict).run(*inputs)
    return outputs[0] if len(outputs) == 1 else tuple(outputs)


def _checked_input(value, array, sizes: dict[str, int]) -> np.ndarray:
    """The input as a numpy array of the value's type; a symbolic dimension takes its size from
    the array (recorded in `sizes`, where every input must agree)."""
    if isinstance(array, torch.Tensor):
        array = array.detach().cpu().numpy()
    array = np.asarray(array)
    mismatch = bind_sizes(value.shape, array.shape, sizes, f"input %{value.name}")
    if mismatch or array.dtype != DTYPES[value.dtype]:
        because = f" ({mismatch})" if mismatch and not value.is_static else ""
        raise InputError(f"input %{value.name} expects {value.type_str}, got "
                         f"{array.dtype}{list(array.shape)}{because}")
    if value.dtype in FLOAT_DTYPES and not np.isfinite(array).all():
        bad = ~np.isfinite(array)
        position = [int(i) for i in np.unravel_index(int(np.argmax(bad)), array.shape)]
        raise InputError(f"input %{value.name} holds {array[tuple(position)]} at index {position} "
                         f"({int(bad.sum())} of {array.size} values are NaN or infinite); the graph "
                         "quantizes it, and quantize would map NaN to the lowest level and clamp "
                         "infinities without a word: clean the input first (e.g. torch.nan_to_num)")
    return array


def _run_with_torch(node: Node, args: list) -> tuple[np.ndarray, ...]:
    """A float fall back (non-strict mode): the op's own torch semantics, in float32."""
    tensors = [None if a is None else torch.from_numpy(np.ascontiguousarray(a)) for a in args]
    with torch.no_grad():
        results = run_op(node.op, tensors, node.attrs)
    return tuple(r.numpy() for r in results)


def _last_uses(graph: Graph) -> dict[int, list[str]]:
    """Node index -> names of values read for the last time there (freed after it runs)."""
    keep = {v.name for v in graph.outputs}
    last: dict[str, int] = {}
    for index, node in enumerate(graph):
        for value in node.inputs:
            if value is not None and not value.is_constant:
                last[value.name] = index
    freed: dict[int, list[str]] = {}
    for name, index in last.items():
        if name not in keep:
            freed.setdefault(index, []).append(name)
    return freed
