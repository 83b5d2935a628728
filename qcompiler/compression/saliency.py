"""Weight saliency from gradients: how much the loss would rise if a weight were zeroed.

- "obd": Optimal Brain Damage (LeCun et al. 1990), s = h_kk w_k^2 / 2. The Hessian diagonal
  is taken in the Gauss-Newton form the paper uses (its Levenberg-Marquardt approximation,
  never negative). For a softmax cross-entropy that is the Fisher information, whose
  diagonal E[g_k^2] is estimated from backward passes with labels *sampled from the model's
  own softmax*: the cross terms between the samples of a batch vanish in expectation
  (E_y[grad log p(y|x)] = 0), so the squared batch gradient is an unbiased estimate of the
  batch's summed diagonal. `probes` draws per batch; no labels are needed.
- "taylor": first-order Taylor importance (Molchanov et al. 2019), (g_k w_k)^2 summed over
  batches, with g the gradient of the cross-entropy to the batch's labels, or, for an
  unlabelled batch, to the model's own top-1 predictions.

The graph runs in torch through `qcompiler.ir.evaluate` with the scored weights as leaf
tensors that require grad; the graph is not changed. A batch is a tensor (one graph input),
or a tuple with one tensor per graph input, optionally followed by integer labels.
The formulas are in `qcompiler.numerics.sparsity`.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from qcompiler.errors import CalibrationDataError, OptionError
from qcompiler.ir import Graph, Value
from qcompiler.ir.evaluate import Evaluator, graph_inputs
from qcompiler.numerics import sparsity

CRITERIA = ("obd", "taylor")


def weight_saliency(graph: Graph, weights: Sequence[Value], criterion: str, data: Iterable,
                    probes: int = 1, seed: int = 0) -> dict[str, np.ndarray]:
    """Weight name -> saliency array (the weight's shape; larger is more important)."""
    if criterion not in CRITERIA:
        raise OptionError(f"unknown saliency criterion {criterion!r}; choose one of {', '.join(CRITERIA)}")
    if data is None:
        raise OptionError(f"saliency criterion {criterion!r} needs calibration_data (batches of "
                          "inputs, optionally with labels)")
    if len(graph.outputs) != 1 or len(graph.outputs[0].shape) != 2:
        raise OptionError(f"saliency criterion {criterion!r} needs a graph with one [N, classes] "
                          f"output; graph {graph.name} has "
                          f"{', '.join(str(list(v.shape)) for v in graph.outputs)}")
    leaves = {w.name: torch.tensor(np.asarray(w.data), requires_grad=True) for w in weights}
    evaluator = Evaluator(graph, constants=leaves, differentiable=True)
    generator = torch.Generator().manual_seed(seed)
    squares = {name: np.zeros(leaf.shape) for name, leaf in leaves.items()}
    gradients: dict[str, list[np.ndarray]] = {name: [] for name in leaves}
    batches = 0
    for index, batch in enumerate(data):
        inputs, labels = _split(batch, graph, index)
        logits = evaluator.run([inputs])[0][0]
        batches += 1
        if criterion == "taylor":
            target = labels if labels is not None else logits.detach().argmax(dim=1)
            for name, g in _gradients(F.cross_entropy(logits, target), leaves).items():
                gradients[name].append(g)
            continue
        probabilities = torch.softmax(logits.detach().double(), dim=1)
        for probe in range(probes):
            sampled = torch.multinomial(probabilities, 1, generator=generator).squeeze(1)
            loss = F.cross_entropy(logits, sampled)
            grads = _gradients(loss, leaves, retain=probe < probes - 1)
            for name, g in grads.items():
                squares[name] += g.astype(np.float64) ** 2
    if not batches:
        raise CalibrationDataError("calibration_data is empty; give at least one batch")
    if criterion == "taylor":
        return {w.name: sparsity.taylor_saliency(w.data, gradients[w.name]) for w in weights}
    return {w.name: sparsity.obd_saliency(w.data, squares[w.name] / (batches * probes))
            for w in weights}


def _gradients(loss: torch.Tensor, leaves: dict[str, torch.Tensor], retain: bool = False
               ) -> dict[str, np.ndarray]:
    names = list(leaves)
    grads = torch.autograd.grad(loss, [leaves[n] for n in names], retain_graph=retain,
                                allow_unused=True)
    return {n: (np.zeros(leaves[n].shape) if g is None else g.detach().numpy())
            for n, g in zip(names, grads, strict=True)}


def _split(batch, graph: Graph, index: int) -> tuple[list[torch.Tensor], torch.Tensor | None]:
    items = batch if isinstance(batch, (tuple, list)) else (batch,)
    if len(items) == len(graph.inputs) + 1:
        labels = torch.as_tensor(items[-1])
        if labels.dtype not in (torch.int64, torch.int32):
            raise CalibrationDataError(f"batch {index}: the item after the inputs should be integer "
                                       f"class labels, got {labels.dtype}")
        return graph_inputs(tuple(items[:-1]), graph, index, any_multiple=True), labels.long()
    return graph_inputs(tuple(items), graph, index, any_multiple=True), None
