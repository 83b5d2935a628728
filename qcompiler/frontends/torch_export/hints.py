"""What to do about an aten op that `qc.trace` cannot map onto the IR: a rewrite the user can
make in the model, or the nearest ops that are supported.

`HINTS` is data: aten op name -> the advice. Ops without an entry get the supported aten ops
whose names are closest (difflib), which catches the common case of a variant of a supported
op (`logsigmoid` next to `sigmoid`, `hardshrink` next to `hardswish`).
"""

from __future__ import annotations

import difflib

_DATA_DEPENDENT = ("its output shape depends on the values, which a static graph cannot hold; "
                   "compute it outside the model (before or after the captured part)")

HINTS = {
    "log_softmax": "write torch.log(torch.softmax(x, dim)) (softmax and log are supported)",
    "_log_softmax": "write torch.log(torch.softmax(x, dim)) (softmax and log are supported)",
    "log_sigmoid": "write -torch.nn.functional.softplus(-x) (softplus is supported)",
    "cumsum": "no IR op accumulates along an axis; for a short fixed axis, a conv1d with a "
              "kernel of ones computes a running sum",
    "argmin": "write torch.argmax(-x, dim)",
    "topk": "no IR op sorts; for the top-1 use torch.max(x, dim) or torch.argmax",
    "sort": "no IR op sorts; for the maximum use torch.max(x, dim) or torch.amax",
    "argsort": "no IR op sorts; for the top-1 use torch.argmax",
    "nonzero": _DATA_DEPENDENT,
    "masked_select": _DATA_DEPENDENT + "; to zero the other elements instead, use "
                     "torch.where(mask, x, 0)",
    "unique": _DATA_DEPENDENT,
    "index": "tensor indexing (x[idx] with a tensor idx) has no IR op; use slicing "
             "(x[:, 2:5]), torch.narrow or x.select(dim, i), or torch.nn.functional.embedding "
             "for a lookup in a table",
    "index_select": "use slicing for a contiguous range, or torch.nn.functional.embedding(idx, "
                    "table) for rows of a table",
    "gather": "use slicing, or torch.nn.functional.embedding for rows of a table",
    "index_put": "write torch.where(mask, value, x) for a masked assignment",
    "scatter": "write torch.where(mask, value, x) for a masked assignment",
    "group_norm": "no IR op normalizes groups; use batch_norm (eval mode) or layer_norm",
    "instance_norm": "no IR op normalizes instances; use batch_norm (eval mode) or layer_norm",
    "native_group_norm": "no IR op normalizes groups; use batch_norm (eval mode) or layer_norm",
    "maximum": "write torch.where(a > b, a, b)",
    "minimum": "write torch.where(a < b, a, b)",
    "clamp_": "write torch.clamp(x, min, max) with numbers",
    "sign": "write torch.where(x > 0, 1.0, 0.0) - torch.where(x < 0, 1.0, 0.0)",
    "floor": "no IR op rounds; integer lowering quantizes values already",
    "round": "no IR op rounds; integer lowering quantizes values already",
    "remainder": "no IR op computes remainders",
    "fmod": "no IR op computes remainders",
    "conv3d": "the IR has conv1d and conv2d; fold the extra axis into the batch or channels",
    "max_pool3d": "the IR has 1-D and 2-D pooling",
    "avg_pool3d": "the IR has 1-D and 2-D pooling",
    "embedding_bag": "write embedding followed by sum or mean over the bag axis",
    "rand": "random numbers are not a function of the inputs; generate them outside the model",
    "randn": "random numbers are not a function of the inputs; generate them outside the model",
    "bernoulli": "random numbers are not a function of the inputs; call model.eval() for dropout",
}


def unsupported_hint(aten_name: str, supported) -> str:
    """What to do about aten op `aten_name`, given the names of the supported aten ops."""
    hint = HINTS.get(aten_name)
    if hint is not None:
        return hint
    close = difflib.get_close_matches(aten_name, sorted(supported), n=3, cutoff=0.6)
    if close:
        return (f"the nearest supported ops are {', '.join(close)}; rewrite the model with them, "
                "or compute this part outside the captured model")
    return ("rewrite that part of the model with supported ops (docs/ops.md lists them), or "
            "compute it outside the captured model")
