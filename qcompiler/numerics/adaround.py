"""AdaRound arithmetic: learn, per weight, whether to round down or up.

(Nagel et al. 2020, "Up or Down? Adaptive Rounding for Post-Training Quantization".)
Round-to-nearest minimises each weight's own error, not the layer's output error;
at 4 bits the difference is large. AdaRound keeps the grid (scale, zero point) and
chooses q = floor(w / s) + zero_point + h for every weight, with h in {0, 1}, to
minimise the layer's output error on calibration data:

    min_V  || f(W x + b) - f(W~(V) x~ + b) ||^2  +  lambda * f_reg(V)          (eq. 25)
    W~(V) = s * (clip(floor(W / s) + zero_point + h(V), qmin, qmax) - zero_point)   (eq. 22)
    h(V)  = clip(sigmoid(V) * (zeta - gamma) + gamma, 0, 1),  zeta = 1.1, gamma = -0.1  (eq. 23)
    f_reg = sum_ij 1 - |2 h(V_ij) - 1|^beta                                       (eq. 24)

f is the layer's fused activation (ReLU, ReLU6) or the identity; x are the layer's
inputs in the float model and x~ those in the quantized model (the paper's
"asymmetric" reconstruction, sec. 4; pass x~ = x for the symmetric form).
beta is annealed from 20 to 2 after a warm-up without the regulariser (sec. 5),
so h starts free and is pushed ever harder to 0 or 1. Finally h is hard-set by
V >= 0 (h(V) >= 1/2).

The optimisation needs gradients, so these helpers use torch (CPU); everything
else here is numpy. The reconstruction loss is summed over output channels and
averaged over rows (patches), with lambda = 0.01 as in the paper's setup.

Rows: a layer is written as out[p, g, o] = sum_k patches[p, g, k] W[g, o, k] for
groups g (1 for linear and ordinary convs), so convolutions are handled as
matrix products over sampled im2col rows (`sample_rows`) rather than whole
feature maps: a few thousand rows fit any layer in memory and make an iteration
cheap; the rounding choice only needs the input statistics those rows carry.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

ZETA, GAMMA = 1.1, -0.1  # the stretch of the rectified sigmoid (eq. 23; Louizos et al. 2018)


@dataclass(frozen=True)
class AdaRoundSettings:
    iterations: int = 500
    batch_rows: int = 256  # rows per optimisation step
    regularization: float = 0.01  # lambda of eq. 25
    beta_start: float = 20.0
    beta_end: float = 2.0
    warmup: float = 0.2  # fraction of iterations without the regulariser
    learning_rate: float = 1e-2  # Adam on V

    def __post_init__(self):
        if self.iterations < 1 or self.batch_rows < 1:
            raise ValueError(f"iterations and batch_rows must be >= 1, got {self.iterations} and "
                             f"{self.batch_rows}")
        if not 0 <= self.warmup < 1:
            raise ValueError(f"warmup is a fraction of the iterations in [0, 1), got {self.warmup}")
        if self.regularization < 0 or self.learning_rate <= 0:
            raise ValueError("regularization must be >= 0 and learning_rate > 0")


def rectified_sigmoid(v: torch.Tensor) -> torch.Tensor:
    """h(V) of eq. 23: a sigmoid stretched to (gamma, zeta) and clipped to [0, 1], so that
    h reaches exactly 0 and 1 with finite V."""
    return torch.clamp(torch.sigmoid(v) * (ZETA - GAMMA) + GAMMA, 0.0, 1.0)


def initial_rounding_variable(remainder: np.ndarray) -> np.ndarray:
    """V with h(V) = remainder (the fractional part of w / s, in [0, 1)): the optimisation
    starts from the unrounded weights."""
    p = (np.asarray(remainder, np.float64) - GAMMA) / (ZETA - GAMMA)
    return np.log(p / (1.0 - p)).astype(np.float32)


def rounding_regularizer(h: torch.Tensor, beta: float) -> torch.Tensor:
    """f_reg of eq. 24: zero when every h is 0 or 1, largest at h = 1/2."""
    return (1.0 - (2.0 * h - 1.0).abs().pow(beta)).sum()


def annealed_beta(iteration: int, settings: AdaRoundSettings) -> float | None:
    """beta at `iteration`: None (no regulariser) during the warm-up, then linear from
    beta_start down to beta_end."""
    start = int(settings.warmup * settings.iterations)
    if iteration < start:
        return None
    progress = (iteration - start) / max(1, settings.iterations - start)
    return settings.beta_start + (settings.beta_end - settings.beta_start) * progress


def channel_shape(ndim: int, axis: int | None) -> tuple[int, ...]:
    """The shape that makes per-channel parameters broadcast along `axis` of an ndim array."""
    if axis is None:
        return (1,) * ndim
    shape = [1] * ndim
    shape[axis] = -1
    return tuple(shape)


def floor_and_remainder(weight: np.ndarray, scale: np.ndarray, axis: int | None
                        ) -> tuple[np.ndarray, np.ndarray]:
    """floor(w / s) and its remainder in [0, 1), with w / s formed as `quantize` forms it
    (w * float32(1 / s) in float32), so that h = [remainder >= 1/2] is round-to-nearest."""
    inverse = (np.float32(1.0) / np.asarray(scale, np.float32)).astype(np.float32)
    scaled = (np.asarray(weight, np.float32) * inverse.reshape(channel_shape(weight.ndim, axis)))
    scaled = scaled.astype(np.float32).astype(np.float64)
    floor = np.floor(scaled)
    return floor, scaled - floor


def grid_integers(floor: np.ndarray, up: np.ndarray, zero_point: np.ndarray, axis: int | None,
                  qmin: int, qmax: int) -> np.ndarray:
    """The integers q = clip(floor + zero_point + up, qmin, qmax) (int32)."""
    zero_point = np.asarray(zero_point, np.int64).reshape(channel_shape(floor.ndim, axis))
    return np.clip(floor.astype(np.int64) + zero_point + up.astype(np.int64), qmin, qmax).astype(np.int32)


def group_weight_matrix(weight: np.ndarray, groups: int) -> np.ndarray:
    """A conv weight [O, C/g, *kernel] or linear weight [O, I] as [g, O/g, K]."""
    out_channels = weight.shape[0]
    return weight.reshape(groups, out_channels // groups, -1)


def layer_outputs(patches: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None,
                  activation: Callable | None) -> torch.Tensor:
    """f(W x + b) for rows: patches [P, g, K], weight [g, O/g, K] -> [P, O]."""
    out = torch.einsum("pgk,gok->pgo", patches, weight).reshape(patches.shape[0], -1)
    if bias is not None:
        out = out + bias
    return activation(out) if activation is not None else out


def sample_rows(inputs: list[list[torch.Tensor]], op: str, attrs: dict, weight_shape: tuple[int, ...],
                count: int, generator: torch.Generator) -> list[torch.Tensor]:
    """Rows (im2col patches, or the feature vectors of a linear layer) at `count` positions
    drawn uniformly without replacement from all examples of all batches, as [P, g, K]
    tensors: one for each list of batches in `inputs`, at the same positions in each (the
    float and the quantized inputs of a layer). Patches are formed one example at a time,
    so memory stays at one example's im2col matrix plus the rows kept."""
    groups = attrs.get("groups", 1) if op != "linear" else 1
    depth = int(np.prod(weight_shape[1:]))
    examples = [(b, n) for b, batch in enumerate(inputs[0]) for n in range(batch.shape[0])]
    per_example = _row_matrix(inputs[0][0][:1], op, attrs, weight_shape).shape[0]
    total = len(examples) * per_example
    chosen = torch.randperm(total, generator=generator)[:count].sort().values.numpy()
    picked: list[list[torch.Tensor]] = [[] for _ in inputs]
    for example in np.unique(chosen // per_example):
        b, n = examples[example]
        local = torch.from_numpy(chosen[chosen // per_example == example] % per_example)
        for i, batches in enumerate(inputs):
            picked[i].append(_row_matrix(batches[b][n:n + 1], op, attrs, weight_shape)[local])
    return [torch.cat(parts).reshape(-1, groups, depth) for parts in picked]


def _row_matrix(x: torch.Tensor, op: str, attrs: dict, weight_shape: tuple[int, ...]) -> torch.Tensor:
    """All rows of the input `x` of a layer: [R, C*k...] (im2col) or [R, I] (linear)."""
    if op == "linear":
        return x.reshape(-1, x.shape[-1])
    if op == "conv1d":  # as a conv2d of height 1
        x = x.unsqueeze(2)
        kernel = (1, weight_shape[2])
        stride, padding, dilation = (_ints(attrs[name], 1) for name in ("stride", "padding", "dilation"))
        stride, padding, dilation = (1, *stride), (0, *padding), (1, *dilation)
    elif op == "conv2d":
        kernel = tuple(weight_shape[2:])
        stride, padding, dilation = (_ints(attrs[name], 2) for name in ("stride", "padding", "dilation"))
    else:
        raise ValueError(f"no row form for op {op!r}")
    # unfold gives [N, C*kh*kw, L] with channels outermost, the layout of W[o, c, kh, kw].
    columns = F.unfold(x, kernel, dilation=dilation, padding=padding, stride=stride)
    return columns.transpose(1, 2).reshape(-1, columns.shape[1])


def _ints(value, rank: int) -> tuple[int, ...]:
    """A conv attribute (an int, or a list of one per spatial axis) as a tuple."""
    return (int(value),) * rank if isinstance(value, int) else tuple(int(v) for v in value)


def optimize_rounding(weight: np.ndarray, scale: np.ndarray, zero_point: np.ndarray,
                      axis: int | None, qmin: int, qmax: int, groups: int,
                      float_rows: torch.Tensor, quantized_rows: torch.Tensor,
                      bias: np.ndarray | None, activation: Callable | None,
                      settings: AdaRoundSettings, generator: torch.Generator) -> np.ndarray:
    """The AdaRound integers (int32, shaped as `weight`) of one layer (see the module
    docstring). `float_rows` / `quantized_rows`: [P, g, K] rows of the layer's input in
    the float and the quantized model; axis 0 is the output channel when not None."""
    if axis not in (None, 0):
        raise ValueError(f"AdaRound handles per-tensor or output-channel (axis 0) weights, got axis {axis}")
    floor, remainder = floor_and_remainder(weight, scale, axis)
    shape = channel_shape(weight.ndim, axis)
    scale_t = torch.from_numpy(np.asarray(scale, np.float32).reshape(shape))
    zero_t = torch.from_numpy(np.asarray(zero_point, np.float32).reshape(shape))
    floor_t = torch.from_numpy(floor.astype(np.float32))
    v = torch.nn.Parameter(torch.from_numpy(initial_rounding_variable(remainder)))
    bias_t = None if bias is None else torch.from_numpy(np.asarray(bias, np.float32))

    def soft_weight(h: torch.Tensor) -> torch.Tensor:
        q = torch.clamp(floor_t + zero_t + h, qmin, qmax)
        return group_weight_matrix(scale_t * (q - zero_t), groups)

    with torch.no_grad():
        target = layer_outputs(float_rows, torch.from_numpy(
            group_weight_matrix(np.asarray(weight, np.float32), groups)), bias_t, activation)
    optimizer = torch.optim.Adam([v], lr=settings.learning_rate)
    rows = float_rows.shape[0]
    for iteration in range(settings.iterations):
        batch = torch.randint(rows, (min(settings.batch_rows, rows),), generator=generator)
        h = rectified_sigmoid(v)
        prediction = layer_outputs(quantized_rows[batch], soft_weight(h), bias_t, activation)
        loss = (prediction - target[batch]).pow(2).sum(dim=1).mean()
        beta = annealed_beta(iteration, settings)
        if beta is not None:
            loss = loss + settings.regularization * rounding_regularizer(h, beta)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    up = (v.detach().numpy() >= 0).astype(np.int64)
    return grid_integers(floor, up, zero_point, axis, qmin, qmax)


def nearest_integers(weight: np.ndarray, scale: np.ndarray, zero_point: np.ndarray, axis: int | None,
                     qmin: int, qmax: int) -> np.ndarray:
    """Round-to-nearest in the same floor + h form (ties up rather than to even; for
    comparisons, not for the IR's own rounding)."""
    floor, remainder = floor_and_remainder(weight, scale, axis)
    return grid_integers(floor, remainder >= 0.5, zero_point, axis, qmin, qmax)


def reconstruction_error(weight: np.ndarray, rows_float: torch.Tensor, rows_quantized: torch.Tensor,
                         candidate: np.ndarray, groups: int, bias: np.ndarray | None,
                         activation: Callable | None) -> float:
    """Mean over rows of || f(W x + b) - f(W' x~ + b) ||^2 for a candidate weight W'."""
    bias_t = None if bias is None else torch.from_numpy(np.asarray(bias, np.float32))
    with torch.no_grad():
        target = layer_outputs(rows_float, torch.from_numpy(
            group_weight_matrix(np.asarray(weight, np.float32), groups)), bias_t, activation)
        got = layer_outputs(rows_quantized, torch.from_numpy(
            group_weight_matrix(np.asarray(candidate, np.float32), groups)), bias_t, activation)
    return float((got - target).pow(2).sum(dim=1).mean())
