"""Fine-tuning: train a graph's weights in torch and write them back into a new graph.

    result = qc.finetune(pruned, train_batches, epochs=3, lr=1e-3, teacher=original)
    better = result.graph            # same structure, trained constants

The graph becomes a trainable torch module (`qc.to_torch`); its parameters are the
weights and biases of weighted layers and the scale and shift of batch norms
(batch-norm statistics stay fixed: the emitted module always normalises with them),
also when a weight reaches its layer through a `fake_quant` node, whose gradient is
straight-through inside the quantization range (quantization-aware training with the
calibrated scales held fixed; a weight trained past its range is clipped there).
Training is Adam with a cosine-decayed learning rate; after it, each parameter is
mapped back to its IR constant through `module.qc_names` and a copy of the graph gets
new arrays for them (the input graph is not modified).

The loss for a batch `(inputs..., labels)` or `inputs`:

- labels, no teacher: cross-entropy;
- a teacher (the uncompressed graph, or any module, which is put in eval mode), no
  labels: distillation,
  T^2 * KL(softmax(teacher / T) || softmax(student / T)) (Hinton et al. 2015,
  "Distilling the Knowledge in a Neural Network": the T^2 keeps the gradient scale
  independent of the temperature);
- both: alpha * distillation + (1 - alpha) * cross-entropy.

A batch is a tensor (one graph input), or a tuple with one tensor per graph input,
optionally followed by the labels. `train_data` is re-iterable (a list of batches, a
DataLoader, a photo pool): one epoch reads it once.

Requires: a graph with one output of shape [N, classes] and at least one learnable
float constant (an integer-lowered graph has none). Preserves: structure, names,
shapes, dtypes and qparams; changes the learnable constants' values.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import fx, nn
from tqdm import tqdm

from qcompiler.backends.torch import to_torch
from qcompiler.errors import OptionError, QCompilerError
from qcompiler.ir import Graph


@dataclass(frozen=True)
class FinetuneResult:
    graph: Graph  # a copy of the input graph with the trained constants
    module: fx.GraphModule  # the trained torch module (eval mode)
    epoch_losses: tuple[float, ...]  # mean training loss of each epoch


def distillation_loss(student: torch.Tensor, teacher: torch.Tensor, temperature: float) -> torch.Tensor:
    """T^2 * KL(softmax(teacher / T) || softmax(student / T)), averaged over the batch."""
    return F.kl_div(F.log_softmax(student / temperature, dim=1),
                    F.log_softmax(teacher / temperature, dim=1),
                    reduction="batchmean", log_target=True) * temperature ** 2


def _split(batch, inputs: int) -> tuple[tuple[torch.Tensor, ...], torch.Tensor | None]:
    items = tuple(batch) if isinstance(batch, (tuple, list)) else (batch,)
    items = tuple(torch.as_tensor(x) for x in items)
    if len(items) == inputs:
        return items, None
    if len(items) == inputs + 1:
        return items[:inputs], items[inputs]
    raise OptionError(f"a training batch has {len(items)} item(s); the graph takes {inputs} input(s), "
                      f"so give {inputs} (unlabelled, needs a teacher) or {inputs + 1} (with labels)")


def _teacher_function(teacher) -> Callable | None:
    if teacher is None:
        return None
    module = to_torch(teacher, trainable=False) if isinstance(teacher, Graph) else teacher
    if isinstance(module, nn.Module):
        module.eval()
    return module


def finetune(graph: Graph, train_data: Iterable, epochs: int = 1, lr: float = 1e-3,
             teacher: Graph | nn.Module | Callable | None = None, temperature: float = 4.0,
             alpha: float = 0.5, weight_decay: float = 0.0, progress: bool | None = None
             ) -> FinetuneResult:
    """Train `graph`'s learnable constants on `train_data`; see the module docstring.
    progress: a tqdm bar per epoch; None shows it only when stderr is a terminal."""
    if not isinstance(graph, Graph):
        hint = (" (capture it first: qc.trace(model, example_inputs))"
                if isinstance(graph, nn.Module) else "")
        raise OptionError(f"finetune takes a qcompiler Graph, got {type(graph).__name__}{hint}")
    if not (isinstance(epochs, int) and epochs >= 1):
        raise OptionError(f"epochs must be a positive int, got {epochs!r}")
    if epochs > 1 and iter(train_data) is train_data:
        raise OptionError(f"train_data is a one-shot iterator ({type(train_data).__name__}), but "
                          f"epochs={epochs} reads it {epochs} times: the epochs after the first "
                          "would see no batch. Pass a list of batches or a DataLoader")
    if not lr > 0:
        raise OptionError(f"lr must be positive, got {lr!r}")
    if not temperature > 0:
        raise OptionError(f"temperature must be positive, got {temperature!r}")
    if not 0 <= alpha <= 1:
        raise OptionError(f"alpha must be in [0, 1], got {alpha!r}")
    if len(graph.outputs) != 1 or len(graph.outputs[0].shape) != 2:
        shapes = ", ".join(str(list(v.shape)) for v in graph.outputs)
        raise QCompilerError(f"finetune needs a graph with one [N, classes] output; graph "
                             f"{graph.name} has outputs {shapes}")
    module = to_torch(graph, trainable=True)
    parameters = list(module.parameters())
    if not parameters:
        raise QCompilerError(f"graph {graph.name} has no learnable float weights (an integer-lowered "
                             "graph cannot be fine-tuned; fine-tune before lower_to_integer)")
    teacher_function = _teacher_function(teacher)
    optimizer = torch.optim.Adam(parameters, lr=lr, weight_decay=weight_decay)
    steps_per_epoch = len(train_data) if hasattr(train_data, "__len__") else None
    schedule = (torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, epochs * steps_per_epoch)
                if steps_per_epoch else None)
    epoch_losses = []
    for epoch in range(epochs):
        module.train()
        total, count = 0.0, 0
        bar = tqdm(train_data, total=steps_per_epoch, desc=f"finetune epoch {epoch + 1}/{epochs}",
                   disable=not (progress if progress is not None else sys.stderr.isatty()),
                   file=sys.stderr, leave=False)
        for batch in bar:
            inputs, labels = _split(batch, len(graph.inputs))
            logits = module(*inputs)
            losses = []
            if teacher_function is not None:
                with torch.no_grad():
                    target = teacher_function(*inputs)
                losses.append((alpha if labels is not None else 1.0,
                               distillation_loss(logits, target, temperature)))
            if labels is not None:
                losses.append((1.0 - alpha if teacher_function is not None else 1.0,
                               F.cross_entropy(logits, labels)))
            if not losses:
                raise OptionError("a training batch has no labels and no teacher was given: pass "
                                  "teacher= (e.g. the uncompressed graph) or labelled batches")
            loss = sum(weight * term for weight, term in losses)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            if schedule is not None:
                schedule.step()
            total, count = total + float(loss.detach()) * len(inputs[0]), count + len(inputs[0])
            bar.set_postfix(loss=f"{total / count:.4f}")
        if count == 0:
            raise OptionError("train_data yielded no batches")
        epoch_losses.append(total / count)
    module.eval()

    trained = graph.copy()
    for attribute, parameter in module.named_parameters():
        value = trained.values[module.qc_names[attribute]]
        # A new array (copies share constant arrays with the original graph).
        value.data = parameter.detach().cpu().numpy().astype(value.data.dtype, copy=True)
    return FinetuneResult(trained, module, tuple(epoch_losses))
