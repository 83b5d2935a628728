"""The standard pass lists, one function each, with the reason for every ordering
constraint written beside the step that needs it."""

from __future__ import annotations

from qcompiler.ir.pipeline import Pipeline
from qcompiler.passes.eliminate_dead_code import eliminate_dead_code
from qcompiler.passes.fold_batchnorm import fold_batchnorm
from qcompiler.passes.fold_constants import fold_constants


def canonical_float_pipeline(verify_each: bool = True) -> Pipeline:
    """Clean up a freshly captured float graph: the form every later pass
    (quantization, equalization, pruning, low-rank) expects. Function-preserving."""
    return Pipeline([
        # First: a dead user of a conv output would block folding the BN after
        # that conv, and folding dead constant subgraphs is wasted work.
        eliminate_dead_code,
        # Before fold_batchnorm: it folds only into constant weights, and capture
        # can leave weight-side arithmetic (a transposed or reshaped weight) as nodes.
        fold_constants,
        # Before any quantization pass (not in this list): folding rescales the
        # weights, so ranges and quantization parameters must be chosen after it.
        fold_batchnorm,
        # Last: drops whatever the passes above left unused, so the result is
        # canonical regardless of how much each pass tidies after itself.
        eliminate_dead_code,
    ], verify_each=verify_each)
