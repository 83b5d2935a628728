"""`qcompiler run MODEL --backend interpreter`: quantize a model, lower it to integer ops, run
it on the integer interpreter and print its outputs and their agreement with float and with
the fake-quant simulation (`qcompiler.backends.simulation_agreement` measures it)."""

from __future__ import annotations

import sys
from typing import TextIO

import numpy as np
import torch

from qcompiler.backends.simulation_agreement import Agreement, compare_with_simulation
from qcompiler.errors import IntegerOnlyError
from qcompiler.quantize import quantize


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
    out = out or sys.stdout
    batches = _calibration_batches(example_inputs, calibration_batches, seed)
    fake_quant = quantize(module, batches, bias_correction=False, example_inputs=example_inputs,
                             progress=False)
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
        out.write(f"  vs fake-quant simulation (exact): max {difference.max_steps:.3g} step(s), "
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
