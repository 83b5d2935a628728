"""Batch-norm recalibration: re-estimate every batch norm's running mean and variance
from data, after a rewrite changed what flows into it.

    %y = batch_norm(%x, %g, %b, %mean, %var)   ->   batch_norm(%x, %g, %b, %mean', %var')

with mean' and var' the per-channel mean and population variance of %x over
`calibration_data`, as the graph itself now computes %x. Removing filters, merging
neurons or factorising a layer shifts the statistics of the layers after it, while the
batch norms keep normalising with the old ones; re-estimating them is the cheap repair
of "adaptive batch norm" (Li et al. 2020, "EagleEye: Fast Sub-net Evaluation for
Efficient Neural Network Pruning", sec. 3.2), and a better start for fine-tuning.

The batch norms are taken in graph order and each is re-estimated with the ones before
it already replaced, so every statistic describes the input the rewritten graph really
produces (what torch would give with each layer in turn put in training mode with
`momentum=None`). Batches are streamed once per batch norm, never held together.

The data must be drawn like the data the network was trained on: the statistics
become those of the data given, so a few unrepresentative examples (or, for a network
with untrained batch norms, any data) move the graph away from the original instead.

Changes the function on purpose (the claim, tested, is the statistics above), so run it
before `fold_batchnorm`; a graph without batch norms is returned unchanged, with a note.
Preserves: structure, names of nodes, shapes, dtypes; the learned scale and shift stay.
"""

from __future__ import annotations

import sys
from collections.abc import Iterable
from dataclasses import dataclass
from typing import ClassVar

import numpy as np
import torch
from tqdm.auto import tqdm

from qcompiler.errors import QCompilerError
from qcompiler.ir import Graph, Node
from qcompiler.ir.edit import replace_constant
from qcompiler.ir.evaluate import Evaluator, graph_runs, is_fake_quant
from qcompiler.ir.pipeline import PassResult


@dataclass(frozen=True, eq=False)  # eq=False: the data may hold tensors
class RecalibrateBatchnorm:
    """The configured pass: the batches to estimate from, and whether to show progress."""

    calibration_data: Iterable
    progress: bool | None = None

    name: ClassVar[str] = "recalibrate_batchnorm"
    in_place: ClassVar[bool] = True  # rewrites the graph it is given

    def __call__(self, graph: Graph) -> PassResult:
        norms = [node for node in graph if node.op == "batch_norm"]
        if not norms:
            return PassResult(graph, False, ["no batch_norm node: nothing to recalibrate"])
        if iter(self.calibration_data) is self.calibration_data:
            raise QCompilerError("recalibrate_batchnorm reads calibration_data once per batch norm: "
                                 "give a re-iterable (a list of batches, a DataLoader), not an "
                                 "iterator or generator")
        # Estimated on a copy (each batch norm after the ones before it are replaced), then
        # written into `graph`: an error half-way leaves the input graph as it was.
        work = graph.copy()
        progress = sys.stderr.isatty() if self.progress is None else self.progress
        estimates = []
        for node in tqdm([n for n in work if n.op == "batch_norm"], desc="recalibrating batch norms",
                         disable=not progress):
            estimates.append(_input_statistics(work, node, self.calibration_data))
            _set_statistics(work, node, *estimates[-1])
        for node, statistics in zip(norms, estimates, strict=True):
            _set_statistics(graph, node, *statistics)
        return PassResult(graph, True, [f"re-estimated the statistics of {len(norms)} batch norm(s)"])


def recalibrate_batchnorm(graph: Graph | None = None, /, *, calibration_data: Iterable,
                          progress: bool | None = None):
    """`recalibrate_batchnorm(calibration_data=batches)` returns the configured pass; with a
    graph first, it runs it (-> PassResult). Batches are as `qcompiler.quantization.calibrate.calibrate`
    takes them: a tensor, or a tuple with one tensor per graph input."""
    configured = RecalibrateBatchnorm(calibration_data, progress)
    return configured if graph is None else configured(graph)


recalibrate_batchnorm.in_place = True  # as the configured pass it runs


def _set_statistics(graph: Graph, node: Node, mean: np.ndarray, variance: np.ndarray) -> None:
    for position, data in ((3, mean), (4, variance)):
        old = node.inputs[position]
        replace_constant(graph, node, position, data.astype(old.data.dtype), f"{old.name}.recalibrated")


def _input_statistics(graph: Graph, node: Node, calibration_data: Iterable
                      ) -> tuple[np.ndarray, np.ndarray]:
    """Per-channel (axis 1) mean and population variance of `node`'s input over the data."""
    evaluator = Evaluator(graph, bypass=is_fake_quant)  # the float graph
    total = squares = None
    count = 0
    for index, batch in enumerate(calibration_data):
        for inputs in graph_runs(batch, graph, index):
            values = evaluator.run([inputs], [node.inputs[0]])[0][0].double()
            if not torch.isfinite(values).all():
                raise QCompilerError(f"recalibrate_batchnorm: calibration batch {index} makes the "
                                     f"input of {node.describe()} NaN or Inf; check the model and "
                                     "the data for overflow")
            axes = [0, *range(2, values.dim())]
            batch_total, batch_squares = values.sum(axes), (values * values).sum(axes)
            total = batch_total if total is None else total + batch_total
            squares = batch_squares if squares is None else squares + batch_squares
            count += values.numel() // values.shape[1]
    if count == 0:
        raise QCompilerError("recalibrate_batchnorm: calibration_data is empty; give at least one "
                             "batch (a tensor, or a tuple with one tensor per graph input)")
    mean = total / count
    # E[x^2] - E[x]^2 in float64, clipped at 0 against cancellation in constant channels.
    variance = torch.clamp(squares / count - mean * mean, min=0.0)
    return mean.numpy(), variance.numpy()
