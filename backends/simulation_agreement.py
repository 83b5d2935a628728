"""How closely the integer interpreter follows fake-quant simulation, output by output and
layer by layer (the oracle check of DESIGN.md: interpreter versus `qc.to_torch(qg)`).

Two measures per quantized activation, in quantization steps:
- end to end: the interpreter's integers versus the simulation's, both run on the
  same graph inputs; differences here include ones inherited from earlier layers;
- local: each integer op run on the *simulation's* integers for its inputs, so only
  its own arithmetic (int32 bias rounding, exact accumulation, one rounding) differs.

`run_model_on_interpreter` is the `qcompiler run MODEL --backend interpreter`
command's body: quantize a module, lower it, run it and print the agreement.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from typing import TextIO

import numpy as np
import torch

from qcompiler.backends.interpreter import Interpreter
from qcompiler.backends.torch import to_torch
from qcompiler.errors import IntegerOnlyError
from qcompiler.ir import Graph


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
    layers: list[LayerAgreement]
    interpreter_outputs: list[np.ndarray]
    simulation_outputs: list[np.ndarray]


def _difference(name: str, ours: np.ndarray, theirs: np.ndarray, step: float = 1.0) -> Difference:
    gap = np.abs(ours.astype(np.float64) - theirs.astype(np.float64)) / step
    # A dequantized output differs by whole steps up to float32 rounding of the product.
    differing = gap > 1e-3
    return Difference(name, int(gap.size), float(gap.max(initial=0.0)), float(differing.mean()))


def compare_with_simulation(fake_quant_graph: Graph, inputs: tuple, *, target: str = "generic",
                            strict: bool = True) -> Agreement:
    """Lower `fake_quant_graph`, run the interpreter and the simulation on `inputs`, and compare."""
    from qcompiler.passes.lower_to_integer import lower_with_origins

    result, origins = lower_with_origins(fake_quant_graph, target=target, strict=strict)
    integer_graph = result.graph
    probe = fake_quant_graph.copy()
    count = len(probe.outputs)
    probe.outputs = probe.outputs + [probe.values[name] for name in origins]
    with torch.no_grad():
        simulated = to_torch(probe, trainable=False)(*inputs)
    simulated = [t.numpy() for t in (simulated if isinstance(simulated, tuple) else (simulated,))]
    simulated_ints = {}
    for name, array in zip(origins, simulated[count:], strict=True):
        q = fake_quant_graph.values[name].qparams
        integer = np.rint(array.astype(np.float64) / float(q.scale[0])) + int(q.zero_point[0])
        simulated_ints[origins[name]] = integer.astype(np.int64)

    interpreter = Interpreter(integer_graph, strict)
    outputs = interpreter.run(*inputs, keep_values=True)
    end_to_end = dict(interpreter.env)
    local = _local_results(Interpreter(integer_graph, strict), inputs, simulated_ints)

    inverse = {integer: simulated for simulated, integer in origins.items()}
    layers = []
    for node in integer_graph:
        name = node.outputs[0].name
        if name not in simulated_ints:
            continue
        reference = simulated_ints[name]
        layers.append(LayerAgreement(name, node.op, inverse[name],
                                     _difference(name, end_to_end[name], reference),
                                     _difference(name, local[name], reference)))
    differences = []
    for value, ours, theirs in zip(integer_graph.outputs, outputs, simulated[:count], strict=True):
        producer = value.producer
        step = producer.attrs["scale"] if producer is not None and producer.op == "dequantize" else 1.0
        differences.append(_difference(value.name, ours, theirs, step))
    return Agreement(integer_graph, list(result.notes), differences, layers, outputs,
                     simulated[:count])


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


def _calibration_batches(example_inputs: tuple, count: int, seed: int) -> list[tuple]:
    """The example inputs and `count - 1` random batches like them (normal noise for float
    inputs, integers drawn from the example's range for integer inputs)."""
    generator = torch.Generator().manual_seed(seed)
    batches = [tuple(example_inputs)]
    for _ in range(count - 1):
        batch = []
        for tensor in example_inputs:
            if tensor.is_floating_point():
                batch.append(torch.randn(tensor.shape, generator=generator, dtype=tensor.dtype))
            else:
                low, high = int(tensor.min()), int(tensor.max())
                batch.append(torch.randint(low, high + 1, tensor.shape, generator=generator,
                                           dtype=tensor.dtype))
        batches.append(tuple(batch))
    return batches


def run_model_on_interpreter(module: torch.nn.Module, example_inputs: tuple, *,
                             calibration_batches: int = 4, strict: bool | None = None,
                             seed: int = 0, out: TextIO | None = None) -> Agreement:
    """Quantize `module` (int8 preset, calibrated on the example inputs plus random batches like
    them), lower it, run it on the example inputs, and print the outputs and their agreement
    with float and with fake-quant simulation. strict=None tries an integer-only lowering and
    falls back to float islands (strict=False) if the model needs them, saying so."""
    import qcompiler as qc

    out = out or sys.stdout
    batches = _calibration_batches(example_inputs, calibration_batches, seed)
    fake_quant = qc.quantize(module, batches, bias_correction=False, example_inputs=example_inputs,
                             progress=False)
    modes = [strict] if strict is not None else [True, False]
    for mode in modes:
        try:
            agreement = compare_with_simulation(fake_quant, example_inputs, strict=mode)
            break
        except IntegerOnlyError as error:
            if mode is modes[-1]:
                raise
            out.write(f"not integer-only: {error}\nretrying with float fall backs (strict=False)\n")
    with torch.no_grad():
        reference = module(*example_inputs)
    reference = reference if isinstance(reference, tuple) else (reference,)
    for note in agreement.notes:
        out.write(f"lowering: {note}\n")
    for difference, ours, float_out in zip(agreement.outputs, agreement.interpreter_outputs,
                                           reference, strict=True):
        float_out = float_out.numpy()
        out.write(f"output %{difference.name}: {list(ours.shape)}\n")
        with np.printoptions(precision=4, suppress=True, threshold=20, edgeitems=3):
            out.write(f"  interpreter: {ours.reshape(-1)[:8]}\n")
        out.write(f"  vs fake-quant simulation: max {difference.max_steps:.3g} step(s), "
                  f"{difference.differing:.2%} of {difference.elements} elements differ\n")
        out.write(f"  vs float: max |difference| {np.abs(ours - float_out).max():.4g}")
        if ours.ndim == 2:
            agree = float((ours.argmax(1) == float_out.argmax(1)).mean())
            out.write(f", top-1 agreement {agree:.1%}")
        out.write("\n")
    local = max((layer.local.differing for layer in agreement.layers), default=0.0)
    out.write(f"layers: {len(agreement.layers)} quantized activations; worst local disagreement "
              f"(each op on the simulation's inputs) {local:.3%} of elements\n")
    return agreement
