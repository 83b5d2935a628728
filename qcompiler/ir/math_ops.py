"""Torch semantics of the IR's elementwise math, comparison, selection, cast and reduction ops
(the rows of `qcompiler.ir.ops.OPS` that real networks add to the CNN core: masks, norms,
attention and recurrent cells).

Each function is what the op table calls for its op, so capture (`qc.trace`), shape
inference, the torch backend, lookup-table building (`docs/integer-spec.md`, section 9) and
the float fall backs of integer lowering all compute the same thing. They are written with
torch's own functions, keyword attributes as in the table, so a backend lowers them by
their torch meaning.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

# IR dtype name -> torch dtype (the inverse of `qcompiler.ir.ops.ir_dtype`; repeated here
# so that this module does not import the table that imports it).
_TORCH_DTYPES = {"f32": torch.float32, "f16": torch.float16, "f64": torch.float64,
                 "i64": torch.int64, "i32": torch.int32, "i16": torch.int16, "i8": torch.int8,
                 "u8": torch.uint8, "bool": torch.bool}


def cast(x, *, dtype):
    """`x.to(dtype)`: torch's conversion (floats to integers truncate toward zero, anything
    to bool is `!= 0`)."""
    return x.to(_TORCH_DTYPES[dtype])


def where(condition, a, b):
    return torch.where(condition, a, b)


def reduce_sum(x, *, dim, keepdim):
    return torch.sum(x, dim=dim, keepdim=keepdim)


def amax(x, *, dim, keepdim):
    return torch.amax(x, dim=dim, keepdim=keepdim)


def amin(x, *, dim, keepdim):
    return torch.amin(x, dim=dim, keepdim=keepdim)


def argmax(x, *, dim, keepdim):
    """The index of the first maximum along `dim` (torch's rule for ties)."""
    return torch.argmax(x, dim=dim, keepdim=keepdim)


def var(x, *, dim, correction, keepdim):
    return torch.var(x, dim=dim, correction=correction, keepdim=keepdim)


def vector_norm(x, *, ord, dim, keepdim):
    return torch.linalg.vector_norm(x, ord, dim, keepdim)


def expand(x, *, shape):
    return x.expand(shape)


def power(x, *, exponent):
    return torch.pow(x, exponent)


def leaky_relu(x, *, negative_slope):
    return F.leaky_relu(x, negative_slope)


def elu(x, *, alpha, scale, input_scale):
    """aten's elu: scale * x for x > 0, scale * alpha * (exp(input_scale * x) - 1) otherwise
    (nn.ELU, and nn.SELU / nn.CELU with their constants)."""
    return torch.ops.aten.elu(x, alpha, scale, input_scale)


def softplus(x, *, beta, threshold):
    return F.softplus(x, beta, threshold)


def prelu(x, weight):
    """nn.PReLU: one slope for every channel, or one per channel (axis 1)."""
    return F.prelu(x, weight)
