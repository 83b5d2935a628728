"""TE computes of the integer ops (docs/integer-spec.md), one plain function per op, each
returning a `te.Tensor`. The lowering (`lower_integer.py`) calls them through
`relax.BlockBuilder.emit_te`, so a kernel with a hand-written schedule or a packed layout can
replace one of them without touching the lowering.

The arithmetic is the spec's and nothing else:

- accumulators are int32 sums of zero-point-corrected operands, `(int32(x) - z_x) * int32(w)`
  (spec 2), padding holding `z_x` so it adds nothing; weighted ops reduce over the input
  channel innermost and, where it is exact in int32, as `sum x * w - z_x * sum w` with the
  second term folded into the bias at compile time (`prepare_weighted`): the same integer;
- requantization (`requantize_expr`) forms `p = int64(acc) * int64(M0)` and rounds once,
  `(p + 2**(t-1)) >> t` with an arithmetic shift and `t = 31 + shift`, adds `z_out` and
  clamps to `[output_min, output_max]` (spec 3, 4) before the cast;
- `qadd` scales both operands to one fixed point in int64 (spec 5);
- `quantize` is the float32 boundary rule `round_half_even(x * float32(1 / scale)) + z`
  (spec 10): one float32 product and `nearbyint`, nothing LLVM could contract into an FMA.

These are generic computes: correct for every shape, unscheduled (LLVM vectorizes the
contiguous int8 reductions; on aarch64 with +dotprod into `sdot`).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from tvm import te, tirx

from qcompiler.backends.tvm import packing

INT_DTYPES = {"u8": "uint8", "i8": "int8", "i16": "int16", "i32": "int32", "i64": "int64"}


@dataclass(frozen=True)
class Output:
    """The output attributes of a requantizing op (spec 4 and 11)."""

    zero_point: int
    low: int
    high: int
    dtype: str  # TVM dtype name

    @classmethod
    def of(cls, attrs: dict) -> Output:
        return cls(int(attrs["output_zero_point"]), int(attrs["output_min"]),
                   int(attrs["output_max"]), INT_DTYPES[attrs["output_dtype"]])


def _i64(value) -> tirx.PrimExpr:
    if isinstance(value, int | np.integer):
        return tirx.const(int(value), "int64")
    return tirx.Cast("int64", value)


def requantize_expr(acc, multiplier, shift, out: Output):
    """Spec section 3 on an int32 (or int64) accumulator expression. `multiplier` (M0) and
    `shift` are Python ints (per tensor) or int32 expressions (per channel or per count)."""
    total = _i64(shift) + tirx.const(31, "int64")
    half = tirx.const(1, "int64") << (total - tirx.const(1, "int64"))
    scaled = (_i64(acc) * _i64(multiplier) + half) >> total
    shifted = scaled + tirx.const(out.zero_point, "int64")
    clamped = tirx.max(tirx.min(shifted, tirx.const(out.high, "int64")), tirx.const(out.low, "int64"))
    return clamped.astype(out.dtype)


def _offset(value, zero_point: int):
    """int32(value) - zero_point: the zero-point-corrected operand of spec 2."""
    return value.astype("int32") - tirx.const(int(zero_point), "int32")


def broadcast_index(shape, out_rank: int, index):
    """The index into a tensor of `shape` that numpy broadcasting reads at output `index`."""
    lead = out_rank - len(shape)
    return [tirx.const(0, "int64") if int(size) == 1 else index[lead + axis]
            for axis, size in enumerate(shape)]


# ---- graph boundary -------------------------------------------------------------------------


def quantize(x, *, scale: float, zero_point: int, qmin: int, qmax: int, dtype: str):
    """Spec 10: clamp(round_half_even(x * float32(1 / scale)) + zero_point, qmin, qmax)."""
    inverse = np.float32(1.0) / np.float32(scale)
    # Clamp while still a float (a huge x would overflow the int conversion); the bounds are
    # small integers, exact in float32, so this changes no in-range value.
    low, high = float(qmin - int(zero_point)), float(qmax - int(zero_point))

    def element(*index):
        rounded = tirx.nearbyint(x(*index) * tirx.const(float(inverse), "float32"))
        bounded = tirx.max(tirx.min(rounded, tirx.const(high, "float32")),
                           tirx.const(low, "float32"))
        return (bounded.astype("int32") + tirx.const(int(zero_point), "int32")).astype(
            INT_DTYPES[dtype])

    return te.compute(x.shape, element, name="quantize")


def dequantize(q, *, scale: float, zero_point: int):
    """Spec 10: float32(q - zero_point) * float32(scale)."""
    factor = tirx.const(float(np.float32(scale)), "float32")
    return te.compute(q.shape, lambda *i: _offset(q(*i), zero_point).astype("float32") * factor,
                      name="dequantize")


# ---- accumulating ops --------------------------------------------------------------------------


@dataclass(frozen=True)
class WeightedConstants:
    """The compile-time form of a weighted op's weight and bias (see `prepare_weighted`)."""

    weight: np.ndarray  # int8, input channels innermost: [O, *kernel, I] or [O, K]
    bias: np.ndarray  # int32 [O]; with fold_zero_point, bias - z_x * sum_k w[o, k]
    fold_zero_point: bool


def prepare_weighted(weight: np.ndarray, bias: np.ndarray, input_zero_point: int,
                     input_dtype: str) -> WeightedConstants:
    # input_dtype and input_zero_point are those the kernel multiplies (after `as_signed`).
    """Weights with the reduced input channel innermost (OIHW -> OHWI, OIW -> OWI), so the
    accumulation is a contiguous int8 dot product LLVM vectorises (sdot on ARM with
    +dotprod), and, when exact, the zero point folded into the bias:

        sum_k (x - z_x) * w  =  sum_k x * w  -  z_x * sum_k w

    Exact in int32 when no partial sum of `x * w` can reach 2**31 and the folded bias fits;
    otherwise the kernel subtracts z_x from every operand (spec 2 as written)."""
    channels_last = np.ascontiguousarray(np.moveaxis(weight, 1, -1)) if weight.ndim > 2 else weight
    limits = np.iinfo(np.dtype(INT_DTYPES[input_dtype]))
    folded = packing.fold_zero_point(weight, bias, input_zero_point, (int(limits.min), int(limits.max)))
    if folded is not None:
        return WeightedConstants(channels_last, folded, True)
    return WeightedConstants(channels_last, bias.astype(np.int32), False)


def as_signed(value):
    """A uint8 value moved to int8 (value - 128): exact, and with the zero point moved by the
    same 128, `x - z_x` is unchanged. ARM's sdot multiplies int8 by int8."""
    return (value.astype("int32") - tirx.const(128, "int32")).astype("int8")


def qconv(x, weight, bias, multiplier, shift, *, out_shape, stride, padding, dilation, groups,
          input_zero_point: int, fold_zero_point: bool, signed_input: bool, out: Output):
    """qconv2d / qconv1d (spec 2-4): x in NC[H]W, `weight` channels-last [O, *kernel, I/groups]
    and `bias` from `prepare_weighted`; grouped, strided, dilated, padded with z_x.
    `multiplier` and `shift` are int32 [C_out]. The input is first copied channels-last
    (padding included) so that the reduction reads both operands contiguously; with
    `signed_input` a uint8 input becomes int8 on the way (`as_signed`, and `input_zero_point`
    is then the moved one)."""
    spatial = len(out_shape) - 2
    channels = int(x.shape[1])
    kernel = [int(k) for k in weight.shape[1:-1]]
    per_group = int(weight.shape[-1])
    out_per_group = int(out_shape[1]) // groups
    sizes = [int(x.shape[2 + i]) for i in range(spatial)]
    fill = tirx.const(int(input_zero_point), "int8" if signed_input else x.dtype)

    def channels_last(n, *index):
        position, c = index[:-1], index[-1]
        inside = [tirx.all(position[i] >= padding[i], position[i] < sizes[i] + padding[i])
                  for i in range(spatial)]
        source = [tirx.max(tirx.min(position[i] - padding[i], sizes[i] - 1), 0) for i in range(spatial)]
        value = x(n, c, *source)
        return tirx.if_then_else(tirx.all(*inside), as_signed(value) if signed_input else value, fill)

    padded = te.compute([x.shape[0], *[sizes[i] + 2 * padding[i] for i in range(spatial)], channels],
                        channels_last, name="pad_channels_last")
    reduce_kernel = [te.reduce_axis((0, kernel[i]), name=f"rk{i}") for i in range(spatial)]
    reduce_channel = te.reduce_axis((0, per_group), name="rc")

    def accumulate(n, o, *position):
        channel = (o // out_per_group) * per_group + reduce_channel
        source = [position[i] * stride[i] + reduce_kernel[i] * dilation[i] for i in range(spatial)]
        value = padded(n, *source, channel).astype("int32")
        operand = value if fold_zero_point else value - tirx.const(int(input_zero_point), "int32")
        return te.sum(operand * weight(o, *reduce_kernel, reduce_channel).astype("int32"),
                      axis=[*reduce_kernel, reduce_channel])

    acc = te.compute(out_shape, accumulate, name="accumulate")
    return te.compute(out_shape, lambda n, o, *p: requantize_expr(
        acc(n, o, *p) + bias(o), multiplier(o), shift(o), out), name="requantize")


def qlinear(x, weight, bias, multiplier, shift, *, input_zero_point: int, fold_zero_point: bool,
            signed_input: bool, out: Output):
    """qlinear: x [..., K] times weight [C, K]^T (bias from `prepare_weighted`), per-channel
    requantization along the last axis; `signed_input` as for `qconv`."""
    depth = int(weight.shape[1])
    if signed_input:
        x = te.compute(x.shape, lambda *i: as_signed(x(*i)), name="as_signed")
    out_shape = [*x.shape[:-1], weight.shape[0]]
    k = te.reduce_axis((0, depth), name="k")

    def accumulate(*index):
        value = x(*index[:-1], k).astype("int32")
        operand = value if fold_zero_point else value - tirx.const(int(input_zero_point), "int32")
        return te.sum(operand * weight(index[-1], k).astype("int32"), axis=k)

    acc = te.compute(out_shape, accumulate, name="accumulate")
    return te.compute(out_shape, lambda *i: requantize_expr(
        acc(*i) + bias(i[-1]), multiplier(i[-1]), shift(i[-1]), out), name="requantize")


def qmatmul(a, b, *, out_shape, a_zero_point: int, b_zero_point: int, multiplier: int,
            shift: int, out: Output):
    """qmatmul: a [..., M, K] @ b [..., K, N] with numpy's batch broadcasting (spec 2)."""
    depth = int(a.shape[-1])
    rank = len(out_shape)
    k = te.reduce_axis((0, depth), name="k")

    def accumulate(*index):
        batch = index[:-2]
        a_index = broadcast_index(a.shape[:-2], rank - 2, batch) + [index[-2], k]
        b_index = broadcast_index(b.shape[:-2], rank - 2, batch) + [k, index[-1]]
        return te.sum(_offset(a(*a_index), a_zero_point) * _offset(b(*b_index), b_zero_point),
                      axis=k)

    acc = te.compute(out_shape, accumulate, name="accumulate")
    return te.compute(out_shape, lambda *i: requantize_expr(acc(*i), multiplier, shift, out),
                      name="requantize")


# ---- elementwise ----------------------------------------------------------------------------------


def qadd(a, b, *, out_shape, a_zero_point: int, a_multiplier: int, b_zero_point: int,
         b_multiplier: int, shift: int, out: Output):
    """Spec 5: p = int64(a - z_a) * Ka + int64(b - z_b) * Kb, then one rounding shift."""
    rank = len(out_shape)
    total = 31 + int(shift)

    def element(*index):
        pa = _i64(_offset(a(*broadcast_index(a.shape, rank, index)), a_zero_point)) * \
            tirx.const(int(a_multiplier), "int64")
        pb = _i64(_offset(b(*broadcast_index(b.shape, rank, index)), b_zero_point)) * \
            tirx.const(int(b_multiplier), "int64")
        scaled = (pa + pb + tirx.const(1 << (total - 1), "int64")) >> tirx.const(total, "int64")
        shifted = scaled + tirx.const(out.zero_point, "int64")
        return tirx.max(tirx.min(shifted, tirx.const(out.high, "int64")),
                        tirx.const(out.low, "int64")).astype(out.dtype)

    return te.compute(out_shape, element, name="qadd")


def qmul(a, b, *, out_shape, a_zero_point: int, b_zero_point: int, multiplier: int, shift: int,
         out: Output):
    """Spec 5: acc = (a - z_a) * (b - z_b) in int32, then spec 3."""
    rank = len(out_shape)

    def element(*index):
        acc = _offset(a(*broadcast_index(a.shape, rank, index)), a_zero_point) * \
            _offset(b(*broadcast_index(b.shape, rank, index)), b_zero_point)
        return requantize_expr(acc, multiplier, shift, out)

    return te.compute(out_shape, element, name="qmul")


def requantize(x, *, input_zero_point: int, multiplier: int, shift: int, out: Output):
    return te.compute(x.shape, lambda *i: requantize_expr(
        _offset(x(*i), input_zero_point), multiplier, shift, out), name="requantize")


def qlookup(x, table, *, input_min: int):
    """Spec 9: table[x - input_min]."""
    return te.compute(x.shape, lambda *i: table(_offset(x(*i), input_min)), name="qlookup")


# ---- pooling and reductions ---------------------------------------------------------------------


def qmean(x, *, dims, keepdim: bool, input_zero_point: int, multiplier: int, shift: int,
          out: Output):
    """qmean: the int32 sum of (x - z_x) over `dims`, then spec 3 (M includes the count)."""
    rank = len(x.shape)
    dims = sorted(d % rank for d in dims)
    axes = {d: te.reduce_axis((0, x.shape[d]), name=f"r{d}") for d in dims}
    kept = [d for d in range(rank) if d not in axes]
    out_shape = [1 if d in axes else x.shape[d] for d in range(rank)] if keepdim else \
        [x.shape[d] for d in kept]

    def source(index):
        if keepdim:
            return [axes[d] if d in axes else index[d] for d in range(rank)]
        position = dict(zip(kept, index, strict=True))
        return [axes[d] if d in axes else position[d] for d in range(rank)]

    acc = te.compute(out_shape, lambda *i: te.sum(_offset(x(*source(i)), input_zero_point),
                                                  axis=list(axes.values())), name="accumulate")
    return te.compute(out_shape, lambda *i: requantize_expr(acc(*i), multiplier, shift, out),
                      name="requantize")


def window(x, out_shape, kernel, stride, padding, dilation):
    """Reduce axes over a pooling window and a function giving, for an output position, the
    input position each window element reads and whether it lies inside the input."""
    spatial = len(kernel)
    axes = [te.reduce_axis((0, kernel[i]), name=f"rk{i}") for i in range(spatial)]

    def source(position):
        coords = [position[i] * stride[i] - padding[i] + axes[i] * dilation[i]
                  for i in range(spatial)]
        inside = tirx.all(*[tirx.all(coords[i] >= 0, coords[i] < x.shape[2 + i])
                            for i in range(spatial)])
        # Clamp so that the (unselected) read of a position outside stays in bounds.
        safe = [tirx.max(tirx.min(coords[i], x.shape[2 + i] - 1), 0) for i in range(spatial)]
        return safe, inside

    return axes, source


def qmax_pool(x, *, out_shape, kernel_size, stride, padding, dilation):
    """Spec 6: the maximum over the window; positions outside the input never win (every
    window holds at least one input element, torch's output-size rule guarantees it)."""
    axes, source = window(x, out_shape, kernel_size, stride, padding, dilation)
    lowest = tirx.min_value(x.dtype)

    def element(n, c, *position):
        safe, inside = source(position)
        return te.max(tirx.if_then_else(inside, x(n, c, *safe), lowest), axis=axes)

    return te.compute(out_shape, element, name="qmax_pool")


def qavg_pool(x, multipliers, shifts, *, out_shape, kernel_size, stride, padding,
              input_zero_point: int, out: Output):
    """Spec 6: the int32 window sum of (x - z_x) (outside the input: 0), requantized with the
    (M0, shift) of the position's count. `multipliers` and `shifts` are int32 tensors of the
    output's spatial shape, chosen at compile time from the per-count tables."""
    ones = [1] * len(kernel_size)
    axes, source = window(x, out_shape, kernel_size, stride, padding, ones)

    def accumulate(n, c, *position):
        safe, inside = source(position)
        value = tirx.if_then_else(inside, _offset(x(n, c, *safe), input_zero_point),
                                  tirx.const(0, "int32"))
        return te.sum(value, axis=axes)

    acc = te.compute(out_shape, accumulate, name="accumulate")
    return te.compute(out_shape, lambda n, c, *p: requantize_expr(
        acc(n, c, *p), multipliers(*p), shifts(*p), out), name="requantize")


def window_counts(size: int, kernel: int, stride: int, padding: int, outputs: int,
                  count_include_pad: bool) -> np.ndarray:
    """torch's average-pooling divisor along one axis at each of `outputs` positions: the
    window clipped to the padded input (and to the input itself without count_include_pad)."""
    start = np.arange(outputs) * stride - padding
    end = np.minimum(start + kernel, size + padding)
    if count_include_pad:
        return end - start
    return np.minimum(end, size) - np.maximum(start, 0)
