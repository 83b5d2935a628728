"""`qc.quantize`: one-call post-training quantization, and `qc.lower_to_integer`.

    qg = qc.quantize(model, calibration_data)              # W8A8, CLE, bias correction
    qg = qc.quantize(graph, None)                           # data-free (batch-norm statistics)
    y = qc.to_torch(qg)(x)                                  # fake-quant simulation
    ig = qc.lower_to_integer(qg)                            # integer-only graph

`qc.quantize` captures the module (`qc.trace`) if given one, then runs the PTQ steps of
`qcompiler.pipelines.ptq_steps` as one Pipeline: the canonical float clean-up (dead code,
constant folding, so that an imported graph's transposed weights fold before batch norms
do), high-bias absorption and batch-norm folding, cross-layer equalization, fake-quant
insertion, calibration, optionally AdaRound, and bias correction. The order and the reason
for it are written beside each step there. The caller's model and graph are never modified.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterable

import numpy as np
from torch import nn

from qcompiler.errors import QuantizationError
from qcompiler.frontends.torch_export.capture import trace
from qcompiler.ir import Graph
from qcompiler.passes.lower_to_integer import LowerToInteger
from qcompiler.pipelines import ptq_pipeline
from qcompiler.quantization.config import QuantConfig, as_quant_config, default_config


def quantize(model_or_graph: nn.Module | Graph, calibration_data: Iterable | None = None,
             config: QuantConfig | None = None, equalize: bool = True,
             bias_correction: bool = True, example_inputs: tuple | None = None, *,
             progress: bool | None = None, sigmas: float = 3.0, adaround: dict | None = None,
             print_after=None) -> Graph:
    """A calibrated fake-quant graph of `model_or_graph` (see the module docstring).

    calibration_data: an iterable of batches (a tensor, or a tuple with one tensor per
        input), or None for data-free ranges from batch-norm statistics (mean +- sigmas*std).
    config: a QuantConfig or preset name; None picks by the graph
        (`qcompiler.quantization.config.default_config`): the `transformer` preset for an
        attention model (linear/matmul layers, layer_norm or softmax, no conv), with
        SmoothQuant on the calibration data, else `int8`.
    example_inputs: for tracing a module; defaults to the first calibration batch.
    adaround: options of `qc.passes.round_adaptive` to run AdaRound after calibration
        (`{}` for its defaults); None keeps round-to-nearest.
    print_after: the pipeline's `print_after` (see `qcompiler.ir.pipeline`).
    """
    chosen = None if config is None else as_quant_config(config)
    if calibration_data is not None:
        # Calibration, bias correction, AdaRound, SmoothQuant (which a default may turn on).
        passes = 2 + bias_correction + (adaround is not None)
        calibration_data = _reusable(calibration_data, passes_over_data=passes)
    if example_inputs is None and calibration_data is not None \
            and not isinstance(model_or_graph, Graph):
        # Trace with the first batch; a one-shot iterator must then give it back.
        iterator = iter(calibration_data)
        first = next(iterator, None)
        if first is None:
            raise QuantizationError("calibration_data is empty: give at least one batch")
        example_inputs = tuple(first) if isinstance(first, (tuple, list)) else (first,)
        if iterator is calibration_data:
            calibration_data = itertools.chain([first], iterator)
    graph = _as_graph(model_or_graph, example_inputs)
    config = chosen if chosen is not None else default_config(graph)
    pipeline = ptq_pipeline(calibration_data, config, equalize=equalize,
                            bias_correction=bias_correction, adaround=adaround, progress=progress,
                            sigmas=sigmas, print_after=print_after)
    return pipeline.run(graph)


def lower_to_integer(graph: Graph, *, target: str = "generic", strict: bool = True,
                     ibert: bool = False) -> Graph:
    """The integer-only graph of a calibrated fake-quant graph (`docs/integer-spec.md`); the
    caller's graph is not modified. A float graph (no fake_quant nodes) is refused
    (QuantizationError): quantize it first.

    Like `qc.quantize`, this workflow function returns the Graph itself. The pass of the
    same name, `qc.passes.lower_to_integer`, returns a PassResult, as every pass does: the
    integer graph and the notes (float fall backs, the overflow check's bounds), for use in a
    Pipeline. target: "generic", "x86" or "aarch64" (operand ranges of spec section 8);
    strict: refuse float fall backs (IntegerOnlyError) instead of noting them; ibert: lower
    softmax and layer_norm to I-BERT's integer approximations (spec section 15) so that a
    transformer runs fully integer."""
    return LowerToInteger(target, strict, ibert)(graph).graph


def _reusable(calibration_data: Iterable, passes_over_data: int) -> Iterable:
    """One-shot iterators (generators) become lists when the data is read more than once
    (calibration, then bias correction); re-iterable data (lists, DataLoaders) stays lazy."""
    if iter(calibration_data) is calibration_data and passes_over_data > 1:
        return list(calibration_data)
    return calibration_data


def _as_graph(model_or_graph, example_inputs) -> Graph:
    if isinstance(model_or_graph, Graph):
        return model_or_graph
    if not isinstance(model_or_graph, nn.Module):
        raise QuantizationError(f"qc.quantize takes a torch.nn.Module or a qcompiler Graph, got "
                                f"{type(model_or_graph).__name__}")
    if example_inputs is None:
        raise QuantizationError("qc.quantize needs example_inputs to trace a module when "
                                "calibration_data is None (data-free)")
    return trace(model_or_graph, example_inputs)


def search_smoothing_alpha(model_or_graph: nn.Module | Graph, calibration_data: Iterable,
                           held_out_data: Iterable, config: QuantConfig | str = "transformer",
                           alphas=(0.0, 0.25, 0.5, 0.65, 0.8), **options) -> tuple[QuantConfig, dict]:
    """SmoothQuant's alpha chosen by measurement: quantize at each alpha (0 = no migration)
    and keep the one whose outputs on `held_out_data` have the highest SQNR against the float
    graph. Returns (the config with that `smoothing_alpha`, {alpha: SQNR in dB}); `options`
    go to `qc.quantize`. Costs one quantization per alpha."""
    from dataclasses import replace

    from qcompiler.ir.evaluate import evaluate, graph_inputs
    from qcompiler.numerics.quant import sqnr_db

    config = as_quant_config(config, "search_smoothing_alpha(config=)")
    calibration_data = list(calibration_data)
    graph = _as_graph(model_or_graph, None if calibration_data is None else _first_inputs(calibration_data))
    held_out = [graph_inputs(batch, graph, index) for index, batch in enumerate(held_out_data)]
    if not held_out:
        raise QuantizationError("search_smoothing_alpha: held_out_data is empty; give batches "
                                "the calibration did not see")
    want = [o.numpy().ravel() for batch in held_out for o in evaluate(graph, batch)]
    scores = {}
    for alpha in alphas:
        candidate = replace(config, smoothing_alpha=None if alpha == 0 else alpha)
        quantized = quantize(graph, calibration_data, config=candidate, **options)
        got = [o.numpy().ravel() for batch in held_out for o in evaluate(quantized, batch)]
        scores[alpha] = float(sqnr_db(np.concatenate(want), np.concatenate(got)))
    best = max(scores, key=scores.get)
    return replace(config, smoothing_alpha=None if best == 0 else best), scores


def _first_inputs(calibration_data: list) -> tuple | None:
    if not calibration_data:
        raise QuantizationError("calibration_data is empty: give at least one batch")
    first = calibration_data[0]
    return tuple(first) if isinstance(first, (tuple, list)) else (first,)
