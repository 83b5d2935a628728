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

`preserve_sharing=True` keeps the structure that weight compression gave the weights and
biases of weighted layers (conv, linear): a zero stays zero (`sparsify_weights`: pruned
weights stay pruned) and entries that hold the same value get the same update, so a
clustered weight keeps its shared values and training moves the centroids (Han et al.
2016, §3.3: a centroid's gradient gathers its weights' gradients; here their mean, which
Adam's per-parameter scaling makes equivalent up to its epsilon). Each gradient is replaced
by its mean over the entries sharing the value before the optimizer step, and after
training every group is set to its mean once more (guarding against float rounding).

`project_weights` (weight name -> a function of the weight array, e.g. the binary or ternary
quantizers of `qcompiler.numerics.low_bit`; `quantize_weights_low_bit(...).projections(graph)`
gives them for the layers that pass quantizes) trains low-bit weights straight through (BinaryConnect,
Courbariaux et al. 2015, Algorithm 1): each step runs forward and backward on the projected
weights of the weighted layers, and the optimizer updates the latent float weights behind
them, so a weight can change sign; the graph returned holds the projected weights.

Requires: a graph with one output of shape [N, classes] and at least one learnable
float constant (an integer-lowered graph has none). Preserves: structure, names,
shapes, dtypes and qparams; changes the learnable constants' values.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import fx, nn
from tqdm import tqdm

from qcompiler.backends.torch import to_torch
from qcompiler.errors import OptionError, QCompilerError
from qcompiler.ir import Graph
from qcompiler.ir.ops import WEIGHTED_OPS
from qcompiler.numerics import clustering


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
             alpha: float = 0.5, weight_decay: float = 0.0, progress: bool | None = None,
             preserve_sharing: bool = False,
             project_weights: Mapping[str, Callable[[np.ndarray], np.ndarray]] | None = None
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
    shared = _tie_shared_values(graph, module) if preserve_sharing else {}
    project_weights = dict(project_weights or {})
    unknown = sorted(set(project_weights) - set(module.qc_names.values()))
    if unknown:
        raise OptionError(f"project_weights names {', '.join(unknown)}, which graph {graph.name} "
                          "has no learnable weight of")
    projected = {attribute: parameter for attribute, parameter in module.named_parameters()
                 if module.qc_names[attribute] in project_weights}
    projection = {attribute: project_weights[module.qc_names[attribute]] for attribute in projected}
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
            latent = {name: p.data.clone() for name, p in projected.items()}
            for name, parameter in projected.items():  # forward and backward on projected weights
                parameter.data = _projected(projection[name], latent[name])
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
            for name, parameter in projected.items():  # the update goes to the latent weights
                parameter.data = latent[name]
            optimizer.step()
            if schedule is not None:
                schedule.step()
            total, count = total + float(loss.detach()) * len(inputs[0]), count + len(inputs[0])
            bar.set_postfix(loss=f"{total / count:.4f}")
        if count == 0:
            raise OptionError("train_data yielded no batches")
        epoch_losses.append(total / count)
    for name, parameter in projected.items():  # the trained module and graph hold projected weights
        parameter.data = _projected(projection[name], parameter.data)
    module.eval()

    trained = graph.copy()
    for attribute, parameter in module.named_parameters():
        value = trained.values[module.qc_names[attribute]]
        data = parameter.detach().cpu().numpy().astype(value.data.dtype, copy=True)
        if attribute in shared:
            data = _group_means(data, shared[attribute])
        # A new array (copies share constant arrays with the original graph).
        value.data = data
    return FinetuneResult(trained, module, tuple(epoch_losses))


def _tie_shared_values(graph: Graph, module: nn.Module) -> dict[str, np.ndarray]:
    """Make the weights and biases of weighted layers keep their zeros and shared values
    (`preserve_sharing`): a gradient hook averages each gradient over the entries holding
    the same value and zeroes it on zeros. Returns parameter name -> group labels."""
    groups = {}
    for attribute, parameter in _layer_weight_parameters(graph, module, (1, 2)).items():
        name = module.qc_names[attribute]
        labels = clustering.share_by_value(graph.values[name].data)
        groups[attribute] = labels
        flat = torch.from_numpy(labels.ravel())
        kept = flat >= 0
        counts = torch.bincount(flat[kept]).to(parameter.dtype)

        def average(grad, flat=flat, kept=kept, counts=counts):
            sums = torch.zeros(len(counts), dtype=grad.dtype).index_add_(0, flat[kept],
                                                                         grad.reshape(-1)[kept])
            tied = torch.zeros_like(grad).reshape(-1)
            tied[kept] = (sums / counts)[flat[kept]]
            return tied.reshape(grad.shape)

        parameter.register_hook(average)
    return groups


def _layer_weight_parameters(graph: Graph, module: nn.Module, inputs: tuple[int, ...]
                             ) -> dict[str, nn.Parameter]:
    """The module's parameters that are inputs `inputs` (1: weight, 2: bias) of weighted layers."""
    owned = {node.inputs[i].name for node in graph if node.op in WEIGHTED_OPS
             for i in inputs if i < len(node.inputs) and node.inputs[i] is not None}
    return {attribute: parameter for attribute, parameter in module.named_parameters()
            if module.qc_names[attribute] in owned}


def _projected(project: Callable[[np.ndarray], np.ndarray], latent: torch.Tensor) -> torch.Tensor:
    return torch.from_numpy(np.asarray(project(latent.numpy()), dtype=latent.numpy().dtype)).to(latent)


def _group_means(data: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """Each group of equal labels set to its mean; label -1 (a zero) set to 0."""
    flat, groups = data.ravel().astype(np.float64), labels.ravel()
    kept = groups >= 0
    out = np.zeros_like(flat)
    if kept.any():
        means = np.bincount(groups[kept], weights=flat[kept]) / np.bincount(groups[kept])
        out[kept] = means[groups[kept]]
    return out.astype(data.dtype).reshape(data.shape)
