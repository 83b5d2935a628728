"""One node-by-node evaluator of a graph, with the torch functions of the op table.

    outputs = Evaluator(graph).run([inputs])[0]             # one batch: the graph outputs
    Evaluator(graph, bypass=is_fake_quant).run(batches, wanted=[value])   # float values

The shape is torch.fx's Interpreter: `run` binds the graph inputs (`bind`), then runs
the nodes in order (`step`), each through `run_node`, and every value it computes goes
through `store`. Subclasses override `run_node` (to change what a node computes) or
`store` (to observe or rewrite values as they appear); callers that must act between
nodes (bias correction, AdaRound) call `bind`, `step` and `free` themselves.

Several batches run together, node by node: a value is a list with one tensor per batch,
or one tensor shared by all batches when it depends on constants only (a weight's
fake_quant runs once); with a single batch every value is one tensor. `run` computes
only the nodes its `wanted` values need and frees every other value after its last use,
so memory holds the live activations only.

`bypass` names nodes whose output is their input 0 (the fake-quant nodes, for the float
graph a quantized graph simulates); `constants` replaces constants by name (a weight
compressed in simulation, or a tensor that requires grad) without copying the graph.
`differentiable=True` records the autograd graph (saliency criteria need gradients with
respect to weights); by default nothing is recorded.

The batch converter (`graph_inputs`, `graph_runs`) is the one place where calibration
data, a tensor or a tuple with one tensor per graph input, is checked against the graph
inputs and turned into tensors.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence

import numpy as np
import torch

from qcompiler.errors import CalibrationDataError
from qcompiler.ir.dims import bind_sizes
from qcompiler.ir.graph import Graph, Node, Value
from qcompiler.ir.ops import FAKE_QUANT_OPS, TORCH_DTYPES, bound_op, ir_dtype

Batch = Sequence[torch.Tensor]  # one tensor per graph input
Held = torch.Tensor | list[torch.Tensor]  # shared by every batch, or one per batch


def is_fake_quant(node: Node) -> bool:
    """The `bypass` that evaluates a fake-quant graph's float graph."""
    return node.op in FAKE_QUANT_OPS


class Evaluator:
    """Runs `graph` node by node on one or more batches at once (see the module docstring)."""

    def __init__(self, graph: Graph, *, bypass: Callable[[Node], bool] | None = None,
                 constants: Mapping[str, np.ndarray | torch.Tensor] | None = None,
                 differentiable: bool = False):
        self.graph = graph
        self.differentiable = differentiable
        self.bypass = bypass
        self.constants = dict(constants or {})
        self.env: dict[int, Held] = {}
        self.count = 0  # batches bound
        # Filled as the evaluator runs, so it reflects the graph as it first ran: make a new
        # Evaluator after changing the graph's nodes (replacing constants is fine).
        self._constant_tensors: dict[int, tuple[Value, torch.Tensor]] = {}
        self._calls: dict[int, tuple[Node, Callable]] = {}
        self._plans: dict[tuple, tuple] = {}

    # ---- the run ---------------------------------------------------------------------------

    def run(self, batches: Sequence[Batch], wanted: Sequence[Value] | None = None
            ) -> list[list[torch.Tensor]]:
        """The `wanted` values (default: the graph outputs), one list of per-batch tensors each."""
        wanted = list(self.graph.outputs if wanted is None else wanted)
        key = tuple(id(value) for value in wanted)
        if key not in self._plans:  # the values are kept alive with the plan: ids stay unique
            nodes = self.nodes_for(wanted)
            self._plans[key] = (wanted, nodes, self.last_uses(nodes, keep=wanted))
        _, nodes, last_uses = self._plans[key]
        self.bind(batches)
        with torch.set_grad_enabled(self.differentiable):
            for index, node in enumerate(nodes):
                self._step(node)
                self.free(last_uses.get(index, ()))
        return [self.batches(value) for value in wanted]

    def bind(self, batches: Sequence[Batch]) -> None:
        """Start afresh with these batches of graph inputs. With one batch every value is a
        plain tensor (nothing to tell shared and per-batch values apart)."""
        self.env = {}
        self.count = len(batches)
        for position, value in enumerate(self.graph.inputs):
            per_batch = [batch[position] for batch in batches]
            self.store(value, per_batch[0] if self.count == 1 else per_batch)

    def step(self, node: Node) -> None:
        """Run one node on every batch and store its outputs."""
        with torch.set_grad_enabled(self.differentiable):
            self._step(node)

    def _step(self, node: Node) -> None:
        arguments = [self.fetch(value) for value in node.inputs]
        if self.count == 1 or not any(isinstance(argument, list) for argument in arguments):
            results: Sequence[Held] = self.run_node(node, arguments)
        else:
            per_batch = [self.run_node(node, [a[b] if isinstance(a, list) else a for a in arguments])
                         for b in range(self.count)]
            results = [[outputs[position] for outputs in per_batch]
                       for position in range(len(node.outputs))]
        for value, result in zip(node.outputs, results, strict=True):
            self.store(value, result)

    def run_node(self, node: Node, arguments: list) -> tuple[torch.Tensor, ...]:
        """What one node computes on one batch (tensors, None for absent inputs)."""
        if self.bypass is not None and self.bypass(node):
            return (arguments[0],)
        call = self._calls.get(id(node))
        if call is None or call[0] is not node:
            call = self._calls[id(node)] = (node, bound_op(node.op, node.attrs))
        return call[1](arguments)

    def store(self, value: Value, result: Held) -> None:
        self.env[id(value)] = result

    def free(self, values: Iterable[Value]) -> None:
        for value in values:
            self.env.pop(id(value), None)

    # ---- values ----------------------------------------------------------------------------

    def fetch(self, value: Value | None) -> Held | None:
        if value is None:
            return None
        if value.is_constant:
            # Keyed by id, holding the value too: a value kept alive keeps its id unique.
            cached = self._constant_tensors.get(id(value))
            if cached is None:
                data = self.constants.get(value.name, value.data)
                tensor = data if isinstance(data, torch.Tensor) else torch.from_numpy(np.asarray(data))
                cached = self._constant_tensors[id(value)] = (value, tensor)
            return cached[1]
        return self.env[id(value)]

    def batches(self, value: Value) -> list[torch.Tensor]:
        """A value as one tensor per batch."""
        held = self.fetch(value)
        return held if isinstance(held, list) else [held] * self.count

    # ---- planning --------------------------------------------------------------------------

    def nodes_for(self, wanted: Sequence[Value]) -> list[Node]:
        """The nodes `wanted` depends on, in graph order."""
        needed = {id(value) for value in wanted}
        nodes = []
        for node in self.graph.reversed():
            if any(id(value) in needed for value in node.outputs):
                nodes.append(node)
                needed.update(id(value) for value in node.inputs if value is not None)
        return nodes[::-1]

    @staticmethod
    def last_uses(nodes: Sequence[Node], keep: Sequence[Value] = ()) -> dict[int, list[Value]]:
        """Position in `nodes` -> the values read for the last time there (free after it);
        `keep` values are never freed."""
        kept = {id(value) for value in keep}
        last: dict[int, tuple[int, Value]] = {}
        for index, node in enumerate(nodes):
            # An output no later node reads is freed right after the node that makes it.
            for value in [*node.inputs, *node.outputs]:
                if value is not None and not value.is_constant and id(value) not in kept:
                    last[id(value)] = (index, value)
        freed: dict[int, list[Value]] = {}
        for index, value in last.values():
            freed.setdefault(index, []).append(value)
        return freed


def evaluate(graph: Graph, inputs: Batch, wanted: Sequence[Value] | None = None, *,
             bypass: Callable[[Node], bool] | None = None,
             constants: Mapping[str, np.ndarray] | None = None) -> list[torch.Tensor]:
    """The `wanted` values (default: the graph outputs) of one run on `inputs`."""
    results = Evaluator(graph, bypass=bypass, constants=constants).run([inputs], wanted)
    return [per_batch[0] for per_batch in results]


# ---- calibration data ------------------------------------------------------------------------


def graph_inputs(batch, graph: Graph, index: int = 0, *, any_multiple: bool = False
                 ) -> list[torch.Tensor]:
    """Check one batch of calibration data (a tensor or numpy array for a single-input graph,
    else a tuple or list with one per graph input) against the graph inputs and convert it to
    tensors; `index` numbers the batch in messages. With `any_multiple`, dimension 0 of every
    input may be the same multiple of the graph's (see `graph_runs`)."""
    if isinstance(batch, (torch.Tensor, np.ndarray)):
        batch = (batch,)
    signature = ", ".join(f"%{v.name}: {v.type_str}" for v in graph.inputs)
    if not isinstance(batch, (tuple, list)):
        raise CalibrationDataError(f"calibration batch {index} is a {type(batch).__name__}; expected "
                                   f"a tensor or a tuple of tensors for the graph inputs ({signature})")
    if len(batch) != len(graph.inputs):
        raise CalibrationDataError(f"calibration batch {index} has {len(batch)} tensor(s) but graph "
                                   f"{graph.name} takes {len(graph.inputs)} input(s) ({signature})")
    tensors, multiples, sizes = [], set(), {}
    for value, item in zip(graph.inputs, batch, strict=True):
        tensor = torch.from_numpy(item) if isinstance(item, np.ndarray) else item
        if not isinstance(tensor, torch.Tensor):
            raise CalibrationDataError(f"calibration batch {index}: input %{value.name} is a "
                                       f"{type(item).__name__}, expected a tensor of {value.type_str}")
        dtype = ir_dtype(tensor.dtype) if tensor.dtype in TORCH_DTYPES.values() else str(tensor.dtype)
        got = f"{dtype}[{','.join(str(d) for d in tensor.shape)}]"
        if not value.is_static:  # any batch size, the same for every input
            mismatch = bind_sizes(value.shape, tuple(tensor.shape), sizes, f"input %{value.name}")
            if dtype != value.dtype or mismatch:
                raise CalibrationDataError(f"calibration batch {index}: input %{value.name} expects "
                                           f"{value.type_str}, got {got}"
                                           + (f" ({mismatch})" if dtype == value.dtype else ""))
        elif any_multiple and _is_batch_multiple(tensor, value, dtype):
            multiples.add(tensor.shape[0] // value.shape[0])
        elif got != value.type_str:
            raise CalibrationDataError(f"calibration batch {index}: input %{value.name} expects "
                                       f"{value.type_str}, got {got}")
        if tensor.is_floating_point() and not torch.isfinite(tensor).all():
            raise CalibrationDataError(f"calibration batch {index}: input %{value.name} contains "
                                       "NaN or Inf")
        tensors.append(tensor)
    if len(multiples) > 1:
        raise CalibrationDataError(f"calibration batch {index}: the inputs carry different numbers "
                                   f"of examples ({signature}); give every input the same batch size")
    return tensors


def _is_batch_multiple(tensor: torch.Tensor, value: Value, dtype: str) -> bool:
    return (dtype == value.dtype and tensor.dim() == len(value.shape) > 0
            and tuple(tensor.shape[1:]) == value.shape[1:] and value.shape[0] > 0
            and tensor.shape[0] > 0 and tensor.shape[0] % value.shape[0] == 0)


def input_batches(calibration_data, graph: Graph) -> list[list[torch.Tensor]]:
    """Every batch of `calibration_data` as checked input tensors (`graph_inputs`). A graph with
    a symbolic batch takes batches of any size; a static one, any multiple of its batch size,
    run whole: the compression passes' statistics over a batch do not depend on how it is cut
    (a graph whose ops fix the batch size needs batches of that size)."""
    batches = [graph_inputs(batch, graph, index, any_multiple=True)
               for index, batch in enumerate(calibration_data)]
    if not batches:
        raise CalibrationDataError("calibration_data is empty; give at least one batch of inputs")
    return batches


def graph_runs(batch, graph: Graph, index: int = 0) -> list[list[torch.Tensor]]:
    """One calibration batch as the input lists of the graph runs it takes.

    A graph with a symbolic batch runs any batch whole. A static graph traced with batch size
    b (`qc.trace(..., dynamic_batch=False)`) runs b examples at a time; a batch whose inputs
    all carry k * b examples along dimension 0 is cut into k runs (e.g. 32-image calibration
    batches for a graph traced with one image).
    """
    tensors = graph_inputs(batch, graph, index, any_multiple=True)
    if (not tensors or tensors[0].dim() == 0 or not graph.inputs[0].shape
            or not all(value.is_static for value in graph.inputs)):
        return [tensors]
    runs = tensors[0].shape[0] // graph.inputs[0].shape[0]
    pieces = [torch.chunk(t, runs) for t in tensors]
    return [[piece[run] for piece in pieces] for run in range(runs)]
