"""How closely the integer interpreter follows fake-quant simulation, output by output and
layer by layer (the oracle check of DESIGN.md: interpreter versus `qc.to_torch(qg)`).

Two measures per quantized activation, in quantization steps:
- end to end: the interpreter's integers versus the simulation's, both run on the
  same graph inputs; differences here include ones inherited from earlier layers;
- local: each integer op run on the *simulation's* integers for its inputs, so only
  its own arithmetic differs: exact accumulation and the fixed-point multiplier of one
  rounding, where a float32 simulation accumulates in float32 and rounds `y * (1 / s_out)`
  (the bias is the same int32 grid in both, see the `fake_quant_bias` op; a float64
  simulation rounds as the integer path does, docs/integer-spec.md section 12).
  `local_agreement_by_op` sums these per op type, most differing first;
  `perturbation_spread` measures how far one step at one element reaches the outputs.

`qcompiler.run_model.run_model_on_interpreter` (the `qcompiler run MODEL --backend
interpreter` command) prints these measures for a model.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from qcompiler.backends.interpreter import Interpreter
from qcompiler.backends.torch import to_torch
from qcompiler.errors import OptionError
from qcompiler.ir import Graph
from qcompiler.quantization.lowering import lower_with_origins


@dataclass(frozen=True)
class Difference:
    """Differences between two integer (or float) tensors of one value."""

    name: str
    elements: int
    max_steps: float  # largest |difference| in quantization steps (float outputs: in steps too)
    differing: float  # fraction of elements that differ at all


@dataclass(frozen=True)
class LayerAgreement:
    name: str  # the integer value
    op: str
    simulated: str  # the fake_quant output it stands for
    end_to_end: Difference
    local: Difference


@dataclass(frozen=True)
class Agreement:
    integer_graph: Graph
    notes: list[str]
    outputs: list[Difference]
    layers: list[LayerAgreement]  # empty when compared with local=False
    interpreter_outputs: list[np.ndarray]
    simulation_outputs: list[np.ndarray]


@dataclass(frozen=True)
class OpAgreement:
    """Local differences of every integer op of one type, summed over its layers."""

    op: str
    layers: int
    elements: int
    differing: int  # elements that differ at all
    max_steps: float

    @property
    def fraction(self) -> float:
        return self.differing / self.elements if self.elements else 0.0


def local_agreement_by_op(agreement: Agreement) -> list[OpAgreement]:
    """The local (each op on the simulation's integers) differences per op type, the op type
    with the most differing elements first: where the simulation and the integer kernels
    part, op by op."""
    totals: dict[str, list] = {}
    for layer in agreement.layers:
        total = totals.setdefault(layer.op, [0, 0, 0, 0.0])
        total[0] += 1
        total[1] += layer.local.elements
        total[2] += round(layer.local.differing * layer.local.elements)
        total[3] = max(total[3], layer.local.max_steps)
    rows = [OpAgreement(op, *numbers) for op, numbers in totals.items()]
    return sorted(rows, key=lambda row: (-row.differing, row.op))


def _difference(name: str, ours: np.ndarray, theirs: np.ndarray, step: float = 1.0) -> Difference:
    gap = np.abs(ours.astype(np.float64) - theirs.astype(np.float64)) / step
    # A dequantized output differs by whole steps up to float32 rounding of the product:
    # below a thousandth of a step it is the same integer.
    differing = gap > 1e-3
    return Difference(name, int(gap.size), float(gap.max(initial=0.0, where=differing)),
                      float(differing.mean()))


PRECISIONS = {"float32": torch.float32, "float64": torch.float64}


def compare_with_simulation(fake_quant_graph: Graph, inputs: tuple, *, target: str = "generic",
                            strict: bool = True, local: bool = True,
                            precision: str = "float32") -> Agreement:
    """Lower `fake_quant_graph`, run the interpreter and the simulation on `inputs`, and compare.
    local=False skips the layer-by-layer comparison (and its second interpreter run).
    precision="float64" runs the simulation as `qc.to_torch(graph, exact=True)` (see
    `SimulationComparison`)."""
    return SimulationComparison(fake_quant_graph, target=target, strict=strict,
                                precision=precision).compare(inputs, local)


class SimulationComparison:
    """`compare_with_simulation` for many batches: lowers the graph and builds the simulation
    once, then `compare(inputs, local)` per batch.

    precision "float32" is the simulation as `qc.to_torch` makes it by default; "float64" is
    `qc.to_torch(graph, exact=True)`, which computes in float64: its fake_quant nodes round
    exactly as the integer path does at each point (`qcompiler.ir.ops`, docs/integer-spec.md
    section 12), and accumulation is exact to far below one step."""

    def __init__(self, fake_quant_graph: Graph, *, target: str = "generic", strict: bool = True,
                 precision: str = "float32"):
        if precision not in PRECISIONS:
            raise OptionError(f"precision must be one of {sorted(PRECISIONS)}, got {precision!r}")
        state, self.origins = lower_with_origins(fake_quant_graph, target=target, strict=strict)
        self.integer_graph, self.notes, self.strict = state.new, list(state.notes), strict
        self.dtype = PRECISIONS[precision]
        self.steps = {name: fake_quant_graph.values[name].qparams for name in self.origins}
        self.outputs = len(fake_quant_graph.outputs)
        exact = precision == "float64"
        self.simulation = to_torch(fake_quant_graph, trainable=False, exact=exact)
        probe = fake_quant_graph.copy()
        probe.outputs = probe.outputs + [probe.values[name] for name in self.origins]
        # Graph outputs first, then every quantized layer.
        self.simulation_with_layers = to_torch(probe, trainable=False, exact=exact)

    def compare(self, inputs: tuple, local: bool = True,
                interpreted: list[np.ndarray] | None = None) -> Agreement:
        """`interpreted`: the interpreter's outputs for these inputs if already known (another
        comparison's `interpreter_outputs`); only with local=False."""
        if interpreted is not None and local:
            raise OptionError("interpreted outputs replace the interpreter run only with local=False")
        integer_graph, count = self.integer_graph, self.outputs
        cast = tuple(x.to(self.dtype) if isinstance(x, torch.Tensor) and x.is_floating_point()
                     else x for x in inputs)
        with torch.no_grad():
            simulated = (self.simulation_with_layers if local else self.simulation)(*cast)
        simulated = [t.numpy() for t in (simulated if isinstance(simulated, tuple) else (simulated,))]
        simulated_ints = {}
        for name, array in zip(self.origins if local else (), simulated[count:], strict=True):
            q = self.steps[name]
            integer = np.rint(array.astype(np.float64) / float(q.scale[0])) + int(q.zero_point[0])
            simulated_ints[self.origins[name]] = integer.astype(np.int64)

        interpreter = Interpreter(integer_graph, self.strict)
        outputs = interpreter.run(*inputs, keep_values=local) if interpreted is None else interpreted
        layers = []
        if local:
            end_to_end = dict(interpreter.env)
            local_results = _local_results(Interpreter(integer_graph, self.strict), inputs,
                                           simulated_ints)
            inverse = {integer: simulated for simulated, integer in self.origins.items()}
            for node in integer_graph:
                name = node.outputs[0].name
                if name in simulated_ints:
                    reference = simulated_ints[name]
                    layers.append(LayerAgreement(name, node.op, inverse[name],
                                                 _difference(name, end_to_end[name], reference),
                                                 _difference(name, local_results[name], reference)))
        differences = [_difference(value.name, ours, theirs, _output_step(value))
                       for value, ours, theirs in zip(integer_graph.outputs, outputs,
                                                      simulated[:count], strict=True)]
        return Agreement(integer_graph, self.notes, differences, layers, outputs, simulated[:count])


def _output_step(value) -> float:
    """One quantization step of a graph output (the scale of the dequantize producing it)."""
    producer = value.producer
    return producer.attrs["scale"] if producer is not None and producer.op == "dequantize" else 1.0


def perturbation_spread(integer_graph: Graph, inputs: tuple, value_name: str, *, trials: int = 4,
                        seed: int = 0, strict: bool = True) -> list[Difference]:
    """How far a one-step difference at one element spreads to the outputs: in each trial one
    random element of the integer value `value_name` in the first example of the batch moves
    one step (toward the middle of its range) and the rest of the graph runs again; the result
    is the Difference, in output steps, of the first example's first graph output from the
    unperturbed run. This is the network's gain for the one-step differences simulation and
    integer kernels have at single ops (`compare_with_simulation`'s local measure)."""
    interpreter = Interpreter(integer_graph, strict)
    reference = interpreter.run(*inputs, keep_values=True)[0]
    values = dict(interpreter.env)
    nodes = integer_graph.nodes
    start = next(i for i, node in enumerate(nodes) if value_name in (v.name for v in node.outputs)) + 1
    integers = values[value_name]
    qparams = integer_graph.values[value_name].qparams
    low, high = (qparams.qmin, qparams.qmax) if qparams is not None else (
        np.iinfo(integers.dtype).min, np.iinfo(integers.dtype).max)
    output = integer_graph.outputs[0]
    rng = np.random.default_rng(seed)
    spreads = []
    for _ in range(trials):
        where = (0, *np.unravel_index(int(rng.integers(integers[0].size)), integers.shape[1:]))
        perturbed = integers.copy()
        element = int(perturbed[where])
        perturbed[where] = element + 1 if element < (low + high) / 2 else element - 1
        interpreter.env = {**values, value_name: perturbed}
        for node in nodes[start:]:
            for value, result in zip(node.outputs, interpreter.run_node(node), strict=True):
                interpreter.env[value.name] = result
        spreads.append(_difference(output.name, interpreter.env[output.name][:1], reference[:1],
                                   _output_step(output)))
    return spreads


def _local_results(interpreter: Interpreter, inputs: tuple, simulated_ints: dict) -> dict:
    """Each node run on the simulation's integers (where there are any) for its inputs."""
    interpreter.bind(*inputs)
    env, local = interpreter.env, {}
    for node in interpreter.graph:
        for value, result in zip(node.outputs, interpreter.run_node(node), strict=True):
            local[value.name] = result
            reference = simulated_ints.get(value.name)
            env[value.name] = result if reference is None else reference.astype(result.dtype)
    return local
