"""The symbolic batch of `qc.trace`: which inputs carry it, how torch.export is asked for
it, how torch's symbolic sizes become IR `Dim`s, and why a model cannot have one.

- **Which inputs.** The batch size b is dimension 0 of the first input that has a
  dimension; every input whose dimension 0 is b gets the one symbol `N` (torch.export's
  `Dim("N")` shared by all of them, so they must agree at run time). Other inputs (a
  scalar, a lookup table) stay static.
- **Batch 1.** torch.export specialises a size-1 dimension (broadcasting rules differ for
  1), so examples with b = 1 are exported at batch 2 (the samples repeated); the graph is
  the same function at every batch.
- **Sizes.** torch records a size as an int or a sympy expression of its symbol; `s` and
  `12*s` become `Dim("N")` and `Dim("N", 12)`, anything else (`s + 1`) is refused.
- **Refusals.** A model whose code fixes the batch size (`x.view(8, -1)`, a branch on
  `x.shape[0]`) makes torch.export fail with a constraint violation that names no line;
  `specialization_site` exports again with a log filter that keeps the user's stack frame at
  the moment torch pinned the symbol, so the error can name the line.
"""

from __future__ import annotations

import logging
import os
import traceback

import sympy
import torch

from qcompiler.ir.dims import Dim

BATCH_SYMBOL = "N"
_SHAPES_LOGGER = "torch.fx.experimental.symbolic_shapes"
_FRONTEND = os.path.dirname(__file__)


def batch_size_of(inputs: tuple) -> int | None:
    """Dimension 0 of the first input that has dimensions (None: no input has one)."""
    for x in inputs:
        if x.dim() > 0:
            return int(x.shape[0])
    return None


def dynamic_export_arguments(inputs: tuple):
    """(inputs to export with, torch.export dynamic_shapes) giving dim 0 of each batch input the
    symbol N; (inputs, None) when no input has a batch dimension. The shapes are keyed by
    tensor (a ShapesCollection), so they fit any forward signature, `*inputs` included."""
    batch = batch_size_of(inputs)
    if not batch:
        return inputs, None
    carries = [x.dim() > 0 and int(x.shape[0]) == batch for x in inputs]
    if batch == 1:  # see the module docstring: export at batch 2
        inputs = tuple(torch.cat([x, x]) if carry else x for x, carry in zip(inputs, carries, strict=True))
    symbol = torch.export.Dim(BATCH_SYMBOL)
    shapes = torch.export.ShapesCollection()
    for x, carry in zip(inputs, carries, strict=True):
        if carry:
            shapes[x] = {0: symbol}
    return inputs, shapes


def ir_dim(size, where: str):
    """One size from torch.export (an int or a SymInt) as an IR dimension; ValueError says why
    it has none."""
    if isinstance(size, int):
        return size
    if not isinstance(size, torch.SymInt):
        raise ValueError(f"{where}: size {size!r} is neither an int nor a symbolic int")
    expr = size.node.expr
    if expr.is_Integer:
        return int(expr)
    coefficient, symbol = expr.as_coeff_Mul()
    if symbol.is_Symbol and coefficient.is_Integer and int(coefficient) >= 1:
        return Dim(BATCH_SYMBOL, int(coefficient))
    named = expr.subs({s: sympy.Symbol(BATCH_SYMBOL) for s in expr.free_symbols})
    raise ValueError(f"{where}: its size {named} is not a multiple of the batch size N "
                     "(the IR's symbolic sizes are N, 2*N, ...)")


def ir_shape(shape, where: str) -> tuple:
    return tuple(ir_dim(size, where) for size in shape)


def is_constraint_violation(error: BaseException) -> bool:
    """torch.export's error for a dynamic dimension that the model's code fixed."""
    kind = getattr(getattr(error, "error_type", None), "name", "")
    return kind == "CONSTRAINT_VIOLATION" or "Constraints violated" in str(error)


def pinned_value(error: BaseException) -> str | None:
    """The batch size torch says the code fixed (its 'specialized it to be a constant (8)')."""
    text = str(error)
    marker = "to be a constant ("
    if marker not in text:
        return None
    return text.split(marker, 1)[1].split(")", 1)[0]


def specialization_site(export, torch_paths: tuple[str, ...]) -> traceback.FrameSummary | None:
    """The frame of the user's code where torch fixed the batch symbol while running
    `export()` again, or None when the log does not say.

    torch's symbolic-shape log announces each guard ("eval Eq(12*s0, 48) [guard added]") and
    each symbol it pins ("set_replacement s0 = 4") from inside the op that caused it, while the
    user's forward is on the stack (non-strict export runs it as Python); a logging filter sees
    that stack. The filter also stops the records from reaching torch's own log handlers."""
    sites: list[tuple[str, traceback.FrameSummary]] = []  # (message, frame) as torch logged them

    def remember(record: logging.LogRecord) -> bool:
        message = record.getMessage()
        if "set_replacement" in message or "[guard added]" in message:
            frames = [f for f in traceback.extract_stack()
                      if not f.filename.startswith((*torch_paths, _FRONTEND, logging.__file__))]
            if frames:
                sites.append((message, frames[-1]))
        return False

    logger = logging.getLogger(_SHAPES_LOGGER)
    level = logger.level
    logger.addFilter(remember)
    logger.setLevel(logging.DEBUG)
    try:
        export()
    except Exception:  # the error is already known; only the log matters here
        pass
    finally:
        logger.removeFilter(remember)
        logger.setLevel(level)
    pins = [site for message, site in sites if "set_replacement" in message]
    guards = [site for message, site in sites if "Eq(" in message]
    for candidates in (pins, guards, [site for _, site in sites]):
        if candidates:
            return candidates[0]
    return None
