"""Running a model on the integer path, for the CLI: `qcompiler run MODEL --backend
interpreter` (`run_model_on_interpreter`: quantize a model, lower it to integer ops, run it
on the integer interpreter and print its outputs and their agreement with float and with the
fake-quant simulation, as `qcompiler.backends.simulation_agreement` measures it) and the
quantized half of `qcompiler demo` (`run_quantized_demo`)."""

from __future__ import annotations

import sys
import time
from typing import TextIO

import numpy as np
import torch
from tqdm.auto import tqdm

from qcompiler.analysis.cost import cost
from qcompiler.analysis.metrics import fidelity
from qcompiler.analysis.units import cost_comparison, op_counts
from qcompiler.backends import interpreter
from qcompiler.backends.simulation_agreement import Agreement, compare_with_simulation
from qcompiler.backends.torch import to_torch
from qcompiler.errors import IntegerOnlyError
from qcompiler.examples.batches import demo_data
from qcompiler.ir import Graph
from qcompiler.ir.edit import graph_stage
from qcompiler.progress import about, expected_seconds, float_run_seconds, show_bars
from qcompiler.quantization.config import QuantConfig
from qcompiler.quantization.lowering import FALLBACK_OPS
from qcompiler.quantize import lower_to_integer, quantize


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


def run_model_on_interpreter(module: torch.nn.Module | None, example_inputs: tuple, *,
                             calibration_batches: int = 4, strict: bool | None = None,
                             seed: int = 0, out: TextIO | None = None,
                             graph: Graph | None = None) -> Agreement | None:
    """Quantize `module` (int8 preset, calibrated on the example inputs plus random batches like
    them), lower it, run it on the example inputs, and print the outputs and their agreement
    with float and with fake-quant simulation. strict=None tries an integer-only lowering and
    falls back to float islands (strict=False) if the model needs them, saying so.

    A saved `graph` (module None) starts where it is: a float graph is quantized, a fake-quant
    graph lowered (no float reference), an integer graph only run."""
    out = out or sys.stdout
    stage = "float" if graph is None else graph_stage(graph)
    if stage == "integer":
        return _run_integer_graph(graph, example_inputs, strict, out)
    if stage == "float":
        batches = _calibration_batches(example_inputs, calibration_batches, seed)
        fake_quant = quantize(module if graph is None else graph, batches, bias_correction=False,
                              example_inputs=example_inputs, progress=None)
    else:
        fake_quant = graph
    modes = [strict] if strict is not None else [True, False]
    for mode in modes:
        try:
            agreement = compare_with_simulation(fake_quant, example_inputs, strict=mode,
                                                precision="float64")
            break
        except IntegerOnlyError as error:
            if mode is modes[-1]:
                raise
            out.write(f"not integer-only: {error}\nretrying with float fall backs (strict=False)\n")
    reference = _float_reference(module, graph, example_inputs)
    for note in agreement.notes:
        out.write(f"lowering: {note}\n")
    for difference, ours, float_out in zip(agreement.outputs, agreement.interpreter_outputs,
                                           reference, strict=True):
        out.write(f"output %{difference.name}: {list(ours.shape)}\n")
        with np.printoptions(precision=4, suppress=True, threshold=20, edgeitems=3):
            out.write(f"  interpreter: {ours.reshape(-1)[:8]}\n")
        out.write(f"  vs fake-quant simulation (exact): max {difference.max_steps:.3g} step(s), "
                  f"{difference.differing:.2%} of {difference.elements} elements differ\n")
        if float_out is None:
            continue
        float_out = float_out.numpy()
        out.write(f"  vs float: max |difference| {np.abs(ours - float_out).max():.4g}")
        if ours.ndim == 2:
            agree = float((ours.argmax(1) == float_out.argmax(1)).mean())
            out.write(f", top-1 agreement {agree:.1%}")
        out.write("\n")
    local = max((layer.local.differing for layer in agreement.layers), default=0.0)
    out.write(f"layers: {len(agreement.layers)} quantized activations; worst local disagreement "
              f"(each op on the simulation's inputs) {local:.3%} of elements\n")
    return agreement


def _float_reference(module, graph: Graph | None, example_inputs: tuple) -> tuple:
    """The float outputs to compare with: the module's, a saved float graph's, or Nones (a
    saved fake-quant graph carries no float model)."""
    if module is None and graph_stage(graph) != "float":
        return (None,) * len(graph.outputs)
    with torch.no_grad():
        reference = (module if module is not None else to_torch(graph))(*example_inputs)
    return reference if isinstance(reference, tuple) else (reference,)


def _run_integer_graph(graph: Graph, example_inputs: tuple, strict: bool | None, out: TextIO):
    """A saved integer graph: run it on the interpreter (strict unless it holds float fall
    backs) and print its outputs; there is no simulation or float model to compare with."""
    fall_backs = [node for node in graph if node.op in FALLBACK_OPS]
    strict = not fall_backs if strict is None else strict
    if fall_backs:
        out.write(f"float fall backs: {len(fall_backs)} ({', '.join(n.describe() for n in fall_backs[:3])}"
                  f"{', ...' if len(fall_backs) > 3 else ''})\n")
    outputs = interpreter.run(graph, *[x.numpy() for x in example_inputs], strict=strict)
    for value, array in zip(graph.outputs, outputs if isinstance(outputs, tuple) else (outputs,),
                            strict=True):
        out.write(f"output %{value.name}: {array.dtype}{list(array.shape)}\n")
        with np.printoptions(precision=4, suppress=True, threshold=20, edgeitems=3):
            out.write(f"  interpreter: {array.reshape(-1)[:8]}\n")
    return None


def run_quantized_demo(spec: str, module: torch.nn.Module, example_inputs: tuple, float_graph: Graph,
                       images: int, out: TextIO, tvm: bool = True, rounds: int = 7) -> None:
    """`qcompiler demo`'s second half: quantize (int8: per-channel weights, u8 activations, the
    weight range this machine's TVM kernels take), lower to integers, run the integer
    interpreter, and compare FP32, fake-quant simulation and integers; then (`tvm`) compile
    with TVM, check it against the interpreter and time it beside torch and onnxruntime."""
    from qcompiler.backends.tvm import lowering_target, quant_preset

    calibration, evaluation, described = demo_data(spec, example_inputs, images)
    out.write(f"\n== int8 post-training quantization (calibrate / evaluate on {described}) ==\n")
    preset = quant_preset("host")
    out.write(f"preset {preset!r}: the int8 operand ranges this machine's TVM kernels take "
              f"(qc.backends.tvm.quant_preset('host'); lowered with target={lowering_target('host')!r})\n")
    float_run = float_run_seconds(float_graph, calibration[0])
    expected = expected_seconds(float_run, {"calibrate": len(calibration),
                                            "correct_bias": len(calibration)})
    out.write(f"qc.quantize: calibration and bias correction on {len(calibration)} batches, "
              f"{about(expected)} (estimated from one float run: {float_run:.2f} s)\n")
    out.flush()
    start = time.perf_counter()
    quantized = quantize(float_graph, calibration, config=QuantConfig.preset(preset), progress=None)
    out.write(f"qc.quantize: {time.perf_counter() - start:.1f} s "
              "(fold BN, equalize, fake-quant, calibrate, bias correction)\n")
    strict = not any(node.op in FALLBACK_OPS for node in quantized)  # else float islands
    start = time.perf_counter()
    integer = lower_to_integer(quantized, strict=strict, target=lowering_target("host"))
    out.write(f"qc.lower_to_integer: {time.perf_counter() - start:.1f} s, {len(integer)} integer-graph "
              f"nodes, ops: {op_counts(integer)}\n")
    out.write("\n== cost: float vs integer graph ==\n")
    out.write(cost_comparison(cost(float_graph), cost(integer)))

    simulation = to_torch(quantized, trainable=False, exact=True)  # what the integers must equal
    reference, simulated, integers = [], [], []
    seconds = 0.0
    expected = expected_seconds(float_run, {"interpreter": len(evaluation),
                                            "exact_simulation": len(evaluation)})
    out.write(f"\nevaluating {len(evaluation)} batches on the integer interpreter and the float64 "
              f"simulation, {about(expected)}\n")
    out.flush()
    for batch in tqdm(evaluation, desc="interpreter + simulation", disable=not show_bars(None),
                      leave=False):
        inputs = batch if isinstance(batch, tuple) else (batch,)
        with torch.no_grad():
            reference.append(module(*inputs).numpy())
            simulated.append(simulation(*inputs).numpy())
        start = time.perf_counter()
        integers.append(np.asarray(interpreter.run(integer, *inputs, strict=strict)))
        seconds += time.perf_counter() - start
    reference, simulated, integers = (np.concatenate(x) for x in (reference, simulated, integers))
    count = len(reference)
    out.write(f"\n== fidelity on {count} evaluation inputs ==\n")
    for name, candidate in (("fake-quant simulation", simulated), ("integer interpreter", integers)):
        metrics = fidelity(reference, candidate)
        out.write(f"{name:>22} vs FP32: top-1 agreement {metrics['top1_agreement']:.1%}, "
                  f"top-5 containment {metrics['top5_containment']:.1%}, "
                  f"mean KL {metrics['mean_kl']:.4f}\n")
    differing = float(np.mean(simulated != integers))
    agree = float(np.mean(simulated.argmax(-1) == integers.argmax(-1)))
    out.write(f"interpreter vs simulation (qc.to_torch(qg, exact=True)): {differing:.2%} of "
              "output elements differ, "
              f"top-1 agreement {agree:.1%}\n")
    out.write(f"interpreter speed: {count / seconds:.1f} inputs/s (numpy reference, not a fast "
              "backend)\n")
    if tvm:
        from qcompiler.cli_tvm import demo_section

        demo_section(module, float_graph, integer, strict, calibration, evaluation, integers, out,
                     rounds=rounds)
