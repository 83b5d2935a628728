"""The standard pass lists, one function each, with the reason for every ordering
constraint written beside the step that needs it.

- `canonical_float_pipeline`: clean up a freshly captured float graph.
- `ptq_steps` / `ptq_pipeline`: post-training quantization, the one sequence `qc.quantize`,
  the quantization report and the PTQ benchmark run (`ptq_float_steps` is its float part,
  up to cross-layer equalization).
"""

from __future__ import annotations

from collections.abc import Iterable

from qcompiler.errors import QuantizationError
from qcompiler.ir.pipeline import Pass, Pipeline
from qcompiler.passes.absorb_high_bias import absorb_high_bias
from qcompiler.passes.calibrate import calibrate
from qcompiler.passes.convert_batchnorm_to_conv import convert_batchnorm_to_conv
from qcompiler.passes.correct_bias import correct_bias
from qcompiler.passes.eliminate_dead_code import eliminate_dead_code
from qcompiler.passes.equalize_cross_layer import equalize_cross_layer
from qcompiler.passes.fold_batchnorm import fold_batchnorm
from qcompiler.passes.fold_constants import fold_constants
from qcompiler.passes.insert_fake_quant import insert_fake_quant
from qcompiler.passes.migrate_activation_scales import migrate_activation_scales
from qcompiler.passes.round_adaptive import round_adaptive
from qcompiler.quantization.config import QuantConfig, as_quant_config
from qcompiler.quantization.data_free import EqualizeKeepingStatistics, RecordBatchnormStatistics


def float_clean_up() -> list[Pass]:
    """The first steps on a freshly captured or imported float graph (function-preserving)."""
    return [
        # First: a dead user of a conv output would block folding the BN after
        # that conv, and folding dead constant subgraphs is wasted work.
        eliminate_dead_code,
        # Before fold_batchnorm: it folds only into constant weights, and capture (or an
        # imported graph) can leave weight-side arithmetic (a transposed or reshaped weight)
        # as nodes.
        fold_constants,
    ]


def canonical_float_pipeline(verify_each: bool = True) -> Pipeline:
    """Clean up a freshly captured float graph: the form every later pass
    (quantization, equalization, pruning, low-rank) expects. Function-preserving."""
    return Pipeline([
        *float_clean_up(),
        # Before any quantization pass (not in this list): folding rescales the
        # weights, so ranges and quantization parameters must be chosen after it.
        fold_batchnorm,
        # Last: drops whatever the passes above left unused, so the result is
        # canonical regardless of how much each pass tidies after itself.
        eliminate_dead_code,
    ], verify_each=verify_each)


def ptq_float_steps(*, equalize: bool = True, equalization: Pass | None = None,
                    statistics: dict | None = None) -> list[Pass]:
    """The float part of post-training quantization: every step that rewrites weights.

    equalization: the cross-layer equalization pass (default `equalize_cross_layer`; e.g.
        `equalize_cross_layer(replace_relu6=True)`); with `equalize`, it is the last step.
    statistics: for the data-free path, a dict the steps fill with the batch-norm statistics
        (recorded before folding, carried through equalization) for calibration to read.
    """
    equalization = equalization if equalization is not None else equalize_cross_layer
    return [
        # The float clean-up first, so that an imported graph's transposed weight is a
        # constant before fold_batchnorm (which folds into constants only).
        *float_clean_up(),
        # Before fold_batchnorm: it reads each batch norm's shift and scale and rewrites the
        # shift; folding carries that into the bias (absorbing before equalization gives
        # the paper's result, see its module docstring).
        *([absorb_high_bias] if equalize else []),
        # Data-free only, before fold_batchnorm deletes the batch norms (and after absorption
        # changed their shifts): the statistics that activation ranges come from.
        *([RecordBatchnormStatistics(statistics)] if statistics is not None else []),
        # Before any weight is quantized: integer runtimes run folded convs, and
        # equalization needs folded weights.
        fold_batchnorm,
        eliminate_dead_code,
        # Rescales weights, so it precedes weight quantization (it refuses weights that carry
        # qparams); the data-free statistics describe the channels it rescales, so they are
        # carried through it.
        *([equalization if statistics is None else EqualizeKeepingStatistics(equalization, statistics)]
          if equalize else []),
    ]


def ptq_steps(calibration_data: Iterable | None, config: QuantConfig | None = None, *,
              equalize: bool = True, equalization: Pass | None = None, bias_correction: bool = True,
              adaround: dict | None = None, progress: bool | None = None,
              sigmas: float = 3.0) -> list[Pass]:
    """Post-training quantization as one list of steps (see `qc.quantize` for the options).

    calibration_data: batches (read once per step that needs data: calibration, AdaRound,
        bias correction), or None for data-free ranges and bias correction from batch-norm
        statistics (mean +- sigmas * std).
    adaround: options of `round_adaptive` (e.g. `{}` for its defaults) to run AdaRound; None
        leaves round-to-nearest.
    """
    config = as_quant_config(config)
    data_free = calibration_data is None
    if data_free and adaround is not None:
        raise QuantizationError("AdaRound fits each layer's rounding on calibration data; "
                                "data-free quantization (calibration_data=None) cannot run it")
    # Data-free: filled by the float steps, read by calibration and bias correction.
    statistics: dict | None = {} if data_free else None
    return [
        *ptq_float_steps(equalize=equalize, equalization=equalization, statistics=statistics),
        # After folding (a batch norm that folds costs nothing) and equalization (which does
        # not pass through a batch norm): the batch norms left (after a ReLU, on an input)
        # become depthwise 1x1 convs, which integer lowering handles like any layer.
        convert_batchnorm_to_conv,
        # After the float weight rewrites above, before the quantizers: SmoothQuant rescales
        # weights and layer_norm parameters from measured activation ranges, which
        # equalization would otherwise change again; it needs calibration data.
        *([migrate_activation_scales(calibration_data=calibration_data, alpha=config.smoothing_alpha)]
          if config.smoothing_alpha is not None and not data_free else []),
        # After every weight rewrite: calibration reads the final weights.
        insert_fake_quant(config=config),
        # Weight ranges from the final weights; activation ranges from the float graph on
        # the calibration data (or from the statistics, carried through equalization).
        calibrate(calibration_data=calibration_data, config=config, statistics=statistics,
                  sigmas=sigmas, progress=progress),
        # After calibration (it needs the grids) and before bias correction: AdaRound chooses
        # each weight's rounding from the layer's output error; bias correction then removes
        # what mean error remains.
        *([round_adaptive(calibration_data=calibration_data, progress=progress, **adaround)]
          if adaround is not None else []),
        # Measures the error the *quantized* weights cause, so it needs calibrated fake
        # quants; it changes biases only, which weight qparams do not depend on (activation
        # ranges are not re-measured). Measured input means when there is data; else the
        # analytical, data-free correction from the statistics.
        *([correct_bias(calibration_data=calibration_data, progress=progress) if not data_free
           else correct_bias(statistics=statistics)] if bias_correction else []),
    ]


def ptq_pipeline(calibration_data: Iterable | None, config: QuantConfig | None = None, *,
                 verify_each: bool = True, print_after=None, **options) -> Pipeline:
    """`ptq_steps` as one Pipeline (one copy of the graph, the IR verified after every step)."""
    return Pipeline(ptq_steps(calibration_data, config, **options), verify_each=verify_each,
                    print_after=print_after)
