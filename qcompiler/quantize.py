"""`qc.quantize`: one-call post-training quantization.

    qg = qc.quantize(model, calibration_data)              # W8A8, CLE, bias correction
    qg = qc.quantize(graph, None)                           # data-free (batch-norm statistics)
    y = qc.to_torch(qg)(x)                                  # fake-quant simulation

The steps and why they come in this order:
1. capture (`qc.trace`), if given a module;
2. record batch-norm statistics (data-free path only): folding deletes them;
3. `absorb_high_bias` (if equalize): it reads each batch norm's shift and scale, so it
   runs on the unfolded graph and rewrites the BN's shift; folding carries that into
   the bias (its module docstring shows the result equals absorbing after CLE);
4. `fold_batchnorm`: the integer runtime runs folded convs, so weights must be
   quantized after folding, and equalization needs folded weights;
5. `equalize_cross_layer` (if equalize): rescales weights, so it precedes weight
   quantization; it refuses weights that already carry qparams;
6. `insert_fake_quant`: after every weight rewrite, since calibration reads the weights;
7. `calibrate`: weight ranges from the final weights, activation ranges from the
   float graph on the calibration data (or the statistics of step 2, carried
   through step 5 by `qcompiler.quantization.data_free.transport_statistics`);
8. `correct_bias` (if bias_correction): it measures the error the *quantized* weights
   cause, so it needs calibrated fake-quants; it changes biases only, which weight
   qparams do not depend on (activation ranges are not re-measured).

The caller's model and graph are never modified.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterable

from torch import nn

from qcompiler.errors import QuantizationError
from qcompiler.ir import Graph
from qcompiler.ir.pipeline import Pipeline
from qcompiler.quantization.calibrate import calibrate
from qcompiler.quantization.config import QuantConfig
from qcompiler.quantization.data_free import batchnorm_statistics, transport_statistics


def quantize(model_or_graph: nn.Module | Graph, calibration_data: Iterable | None = None,
             config: QuantConfig | None = None, equalize: bool = True,
             bias_correction: bool = True, example_inputs: tuple | None = None, *,
             progress: bool | None = None, sigmas: float = 3.0) -> Graph:
    """A calibrated fake-quant graph of `model_or_graph` (see the module docstring).

    calibration_data: an iterable of batches (a tensor, or a tuple with one tensor per
        input), or None for data-free ranges from batch-norm statistics (mean +- sigmas*std).
    config: defaults to `QuantConfig.preset("int8")`.
    example_inputs: for tracing a module; defaults to the first calibration batch.
    """
    from qcompiler import passes

    config = config if config is not None else QuantConfig.preset("int8")
    if calibration_data is not None:
        calibration_data = _reusable(calibration_data, passes_over_data=1 + bias_correction)
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

    statistics = None
    if equalize:
        graph = Pipeline([passes.absorb_high_bias]).run(graph)
    if calibration_data is None:
        statistics = batchnorm_statistics(graph)  # after absorption changed the shifts
    folded = Pipeline([passes.fold_batchnorm]).run(graph)
    float_graph = folded
    if equalize:
        float_graph = Pipeline([passes.equalize_cross_layer]).run(folded)
        if statistics:
            statistics = transport_statistics(statistics, folded, float_graph)

    fake_quant = Pipeline([passes.insert_fake_quant(config=config)]).run(float_graph)
    quantized = calibrate(fake_quant, calibration_data, config, progress=progress,
                          statistics=statistics, sigmas=sigmas)
    if bias_correction:
        quantized = _correct_bias(quantized, calibration_data, statistics)
    return quantized.verify()


def _correct_bias(quantized: Graph, calibration_data, statistics) -> Graph:
    from qcompiler.passes.correct_bias import correct_bias

    # Measured input means when there is data; else the analytical, data-free correction
    # from the (transported) batch-norm statistics.
    if calibration_data is not None:
        configured = correct_bias(calibration_data=calibration_data)
    else:
        configured = correct_bias(statistics=statistics)
    return Pipeline([configured]).run(quantized)


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
    from qcompiler.frontends.torch_export.capture import trace

    return trace(model_or_graph, example_inputs)
