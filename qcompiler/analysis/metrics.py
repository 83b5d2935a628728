"""How closely a compressed model follows its float original, and labelled accuracy.

Without labels (the ImageNet model on the photo pool), a quantized model is judged by
its fidelity to the FP32 model on the same inputs (Nagel et al. 2019 report labelled
top-1; agreement with FP32 is the label-free counterpart):

- top-1 agreement: the fraction of inputs where both predict the same class;
- top-5 containment: the fraction where FP32's top-1 class is among the quantized
  model's five highest logits;
- mean KL(FP32 || quantized) of the softmax distributions, in nats: sensitive to
  changes below the top class, and 0 only when the distributions match;
- confident top-1 agreement: top-1 agreement on the inputs where FP32's highest
  probability exceeds 0.5. On inputs where FP32 itself hesitates between classes, a
  tiny perturbation flips the argmax; the confident subset measures the flips that
  would change a real prediction.

All functions take logits as arrays [N, classes] (numpy or torch), compute in float64
and return Python floats (fractions in [0, 1], not percent). Ties in argmax go to the
lowest class index, as numpy's argmax does.
"""

from __future__ import annotations

import math

import numpy as np


def _logits(array, name: str) -> np.ndarray:
    if hasattr(array, "detach"):  # a torch tensor
        array = array.detach().cpu().numpy()
    array = np.asarray(array, dtype=np.float64)
    if array.ndim != 2 or array.shape[0] == 0:
        raise ValueError(f"{name} must be a non-empty [N, classes] array, got shape {array.shape}")
    return array


def _pair(reference, candidate) -> tuple[np.ndarray, np.ndarray]:
    reference, candidate = _logits(reference, "reference"), _logits(candidate, "candidate")
    if reference.shape != candidate.shape:
        raise ValueError(f"reference and candidate logits differ in shape: {reference.shape} vs "
                         f"{candidate.shape}")
    return reference, candidate


def log_softmax(logits) -> np.ndarray:
    logits = _logits(logits, "logits")
    shifted = logits - logits.max(axis=1, keepdims=True)
    return shifted - np.log(np.exp(shifted).sum(axis=1, keepdims=True))


def top1_agreement(reference, candidate) -> float:
    reference, candidate = _pair(reference, candidate)
    return float(np.mean(reference.argmax(axis=1) == candidate.argmax(axis=1)))


def topk_containment(reference, candidate, k: int = 5) -> float:
    """Fraction of rows whose reference top-1 class is among the candidate's k highest
    logits (ties at the k-th place count as contained)."""
    reference, candidate = _pair(reference, candidate)
    if not 1 <= k <= reference.shape[1]:
        raise ValueError(f"k must be in 1..{reference.shape[1]}, got {k}")
    target = reference.argmax(axis=1)
    target_logit = candidate[np.arange(len(target)), target]
    # Contained iff fewer than k classes score strictly higher than the target.
    higher = (candidate > target_logit[:, None]).sum(axis=1)
    return float(np.mean(higher < k))


def mean_kl_divergence(reference, candidate) -> float:
    """Mean over rows of KL(softmax(reference) || softmax(candidate)), in nats."""
    reference, candidate = _pair(reference, candidate)
    log_p, log_q = log_softmax(reference), log_softmax(candidate)
    return float(np.mean(np.sum(np.exp(log_p) * (log_p - log_q), axis=1)))


def confident_mask(reference, threshold: float = 0.5) -> np.ndarray:
    """Rows where the reference's highest softmax probability exceeds `threshold`."""
    return np.exp(log_softmax(reference).max(axis=1)) > threshold


def confident_top1_agreement(reference, candidate, threshold: float = 0.5) -> float:
    """Top-1 agreement on the rows where the reference is confident; NaN if there are none."""
    reference, candidate = _pair(reference, candidate)
    mask = confident_mask(reference, threshold)
    if not mask.any():
        return math.nan
    return top1_agreement(reference[mask], candidate[mask])


def fidelity(reference, candidate, threshold: float = 0.5, k: int = 5) -> dict[str, float]:
    """Every fidelity metric of `candidate` against `reference` (see the module docstring)."""
    reference, candidate = _pair(reference, candidate)
    return {
        "top1_agreement": top1_agreement(reference, candidate),
        f"top{k}_containment": topk_containment(reference, candidate, k),
        "mean_kl": mean_kl_divergence(reference, candidate),
        "confident_top1_agreement": confident_top1_agreement(reference, candidate, threshold),
        "confident_count": int(confident_mask(reference, threshold).sum()),
        "count": int(reference.shape[0]),
    }


def accuracy(logits, labels) -> float:
    """Top-1 accuracy as a fraction of rows whose argmax equals the label."""
    logits = _logits(logits, "logits")
    labels = np.asarray(labels.detach().cpu().numpy() if hasattr(labels, "detach") else labels)
    if labels.shape != (logits.shape[0],):
        raise ValueError(f"labels must have shape ({logits.shape[0]},), got {labels.shape}")
    return float(np.mean(logits.argmax(axis=1) == labels))
