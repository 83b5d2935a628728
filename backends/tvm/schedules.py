"""Hand-written schedules of the blocked kernels (`blocked_int8.py`, `blocked_float.py`,
`blocked.py`), applied with TVM's `s_tir.Schedule` to the PrimFunc of each kernel; no
search, no tuning.

A convolution keeps a register tile of `reg_n` output pixels x `oc_tile` channel blocks in
vector registers for its whole reduction:

    parallel(n, oc_outer, oh) / ow_outer / reduce(ic_chunk, kh, kw, ic_inner) /
        ow_inner (unrolled) / oc_inner (unrolled) / lanes (the dot intrinsic, or one FMA)

and runs its epilogue (bias, requantization or activation clamp) on that tile before it
leaves the registers (`reverse_compute_at` under the tile loop). The tile is the largest
that fits the accumulator registers (`Registers`), with exact divisors of the output width
and channel blocks: a split that does not divide adds a predicate, and tensorize then
refuses the block. Measured on the research prototype (FINDINGS, 1 thread): in the
inner loop LLVM keeps the whole int32 tile in zmm registers (`vpbroadcastd` + `vpdpbusd`
only), and oc_tile 2 is 10-15% faster than 1 on AVX-512 (each broadcast feeds two dot
products), with no gain on AVX2.

Order matters: `parallel`, `vectorize` and `unroll` of the reduction's own loops come
before `decompose_reduction` (afterwards the update block has no init and vectorize
refuses it), and `tensorize` comes last.
"""

from __future__ import annotations

from dataclasses import dataclass

from tvm.s_tir import Schedule


@dataclass(frozen=True)
class Registers:
    """How many accumulator vectors of the kernel's lane width a tile may hold."""

    accumulators: int
    max_oc_tile: int


# 32 zmm on AVX-512 (28 for the tile, the rest for operands); 16 ymm on AVX2 (vpmaddubsw
# needs temporaries: 12); aarch64's 32 q registers hold 8 16-lane int32 vectors (6 for the tile).
REGISTERS = {"avx512": Registers(28, 4), "avx2": Registers(12, 1), "aarch64": Registers(6, 1)}


def _divisor_at_most(value: int, limit: int) -> int:
    for candidate in range(min(value, max(limit, 1)), 0, -1):
        if value % candidate == 0:
            return candidate
    return 1


def register_tile(width: int, blocks: int, registers: Registers) -> tuple[int, int]:
    """(reg_n, oc_tile): exact divisors of the output width and of the channel blocks with
    the most accumulators reg_n * oc_tile within the budget; ties prefer oc_tile 2."""
    best = None
    for oc_tile in (1, 2, 4):
        if oc_tile > registers.max_oc_tile or blocks % oc_tile:
            continue
        reg_n = _divisor_at_most(width, registers.accumulators // oc_tile)
        key = (reg_n * oc_tile, oc_tile == 2)
        if best is None or key > best[0]:
            best = (key, reg_n, oc_tile)
    return best[1], best[2]


def _block(sch: Schedule, name: str):
    try:
        return sch.get_sblock(name)
    except Exception:  # noqa: BLE001  (TVM raises its own error type when absent)
        return None


def _extent(sch: Schedule, loop) -> int:
    return int(sch.get(loop).extent)


def schedule_copy(sch: Schedule, name: str = "pad", contiguous: bool = True) -> None:
    """A copy stage (padding, layout change): parallel over the three leading loops, the
    rest vectorized; `contiguous=False` (a transposing copy) vectorizes only the lanes, as
    the fused read would not be contiguous and LLVM would gather element by element."""
    block = _block(sch, name)
    if block is None:
        return
    loops = sch.get_loops(block)
    sch.parallel(sch.fuse(*loops[:min(3, len(loops) - 1)]))
    inner = loops[min(3, len(loops) - 1):]
    sch.vectorize(sch.fuse(*inner) if contiguous else inner[-1])


def _epilogue_under(sch: Schedule, names, loop) -> None:
    """Each epilogue stage computed under the tile loop, its lanes vectorized and its pixels
    unrolled, so it reads the accumulators from registers."""
    for name in names:
        block = _block(sch, name)
        if block is None:
            continue
        sch.reverse_compute_at(block, loop)
        pixels, lanes = sch.get_loops(block)[-2:]
        sch.vectorize(lanes)
        sch.unroll(pixels)


def schedule_conv(sch: Schedule, registers: Registers, intrinsic: str | None) -> None:
    """The convolution tile (module docstring): tensorized with `intrinsic` (int8), or an
    FMA per lane vector (float)."""
    conv = sch.get_sblock("conv")
    loops = sch.get_loops(conv)
    batch, blocks, y, x, lanes = loops[:5]
    reduction = loops[5:]
    reg_n, oc_tile = register_tile(_extent(sch, x), _extent(sch, blocks), registers)
    x_outer, x_inner = sch.split(x, [None, reg_n])
    blocks_outer, blocks_inner = sch.split(blocks, [None, oc_tile])
    if intrinsic is not None:  # int8: (chunk, kh, kw, quad) outside, the 4-step inside
        sch.reorder(batch, blocks_outer, y, x_outer, *reduction[:-1], x_inner, blocks_inner,
                    lanes, reduction[-1])
    else:
        sch.reorder(batch, blocks_outer, y, x_outer, *reduction, x_inner, blocks_inner, lanes)
    sch.parallel(sch.fuse(batch, blocks_outer, y))
    _epilogue_under(sch, ["bias_add", "out"], x_outer)
    sch.unroll(x_inner)
    sch.unroll(blocks_inner)
    if intrinsic is None:
        sch.vectorize(lanes)
    init = sch.decompose_reduction(conv, reduction[0])
    for loop in sch.get_loops(init)[-3:-1]:
        sch.unroll(loop)
    sch.vectorize(sch.get_loops(init)[-1])
    if intrinsic is not None:
        sch.tensorize(lanes, intrinsic)
    schedule_copy(sch)


def schedule_depthwise(sch: Schedule, registers: Registers, intrinsic: str | None) -> None:
    """Depthwise: parallel(n, block, oh) / ow_outer / taps / ow_inner / lanes, the taps
    unrolled; with `intrinsic` (the 3x3 row dot), the column taps outside and the four row
    taps inside the intrinsic."""
    conv = sch.get_sblock("conv")
    batch, blocks, y, x, lanes, first, second = sch.get_loops(conv)
    reg_n = _divisor_at_most(_extent(sch, x), 16 if registers.accumulators > 12 else 8)
    x_outer, x_inner = sch.split(x, [None, reg_n])
    if intrinsic is not None:
        sch.reorder(batch, blocks, y, x_outer, first, x_inner, lanes, second)
    else:
        sch.reorder(batch, blocks, y, x_outer, first, second, x_inner, lanes)
    sch.parallel(sch.fuse(batch, blocks, y))
    _epilogue_under(sch, ["bias_add", "out"], x_outer)
    sch.unroll(first)
    sch.unroll(x_inner)
    if intrinsic is None:
        sch.unroll(second)
        sch.vectorize(lanes)
    init = sch.decompose_reduction(conv, first)
    pixels, init_lanes = sch.get_loops(init)[-2:]
    sch.vectorize(init_lanes)
    sch.unroll(pixels)
    if intrinsic is not None:
        sch.tensorize(lanes, intrinsic)
        schedule_copy(sch, contiguous=False)  # under the tile it was slower (1.26 -> 1.39 ms)
    else:
        _pad_under(sch, x_outer)


def _pad_under(sch: Schedule, loop) -> None:
    """The padded input computed under the tile loop, only the rows and columns the tile
    reads, its lanes vectorized: it stays in cache instead of a whole padded copy going
    through memory. Measured (1 thread, float depthwise 96 channels stride 2 at 112x112 and
    144 channels at 56x56): 0.61-0.67 -> 0.25-0.33 ms and 0.32-0.36 -> 0.20-0.33 ms. The
    int8 row-dot kernel keeps its separate pass: its column-major copy of bytes is cheap,
    and under the tile (lanes vectorized alone) MobileNetV2's depthwise total rose from 1.26
    to 1.39 ms."""
    pad = _block(sch, "pad")
    if pad is None:
        return
    sch.compute_at(pad, loop)
    sch.vectorize(sch.get_loops(pad)[-1])


def schedule_dense(sch: Schedule, registers: Registers, intrinsic: str | None) -> None:
    """Dense `(M, O/L, L)`: a tile of rows x channel blocks, the reduction outside it."""
    conv = sch.get_sblock("conv")
    loops = sch.get_loops(conv)
    rows, blocks, lanes = loops[:3]
    reduction = loops[3:]
    reg_m, oc_tile = register_tile(_extent(sch, rows), _extent(sch, blocks),
                                   Registers(registers.accumulators, 8))
    rows_outer, rows_inner = sch.split(rows, [None, reg_m])
    blocks_outer, blocks_inner = sch.split(blocks, [None, oc_tile])
    if intrinsic is not None:
        sch.reorder(rows_outer, blocks_outer, *reduction[:-1], rows_inner, blocks_inner, lanes,
                    reduction[-1])
    else:
        sch.reorder(rows_outer, blocks_outer, *reduction, rows_inner, blocks_inner, lanes)
    sch.parallel(sch.fuse(rows_outer, blocks_outer))
    tile = sch.get_loops(conv)[0]
    for name in ("bias_add", "out"):
        block = _block(sch, name)
        if block is not None:
            sch.reverse_compute_at(block, tile)
            sch.vectorize(sch.get_loops(block)[-1])
    sch.unroll(rows_inner)
    sch.unroll(blocks_inner)
    if intrinsic is None:
        sch.vectorize(lanes)
    init = sch.decompose_reduction(conv, reduction[0])
    sch.vectorize(sch.get_loops(init)[-1])
    if intrinsic is not None:
        sch.tensorize(lanes, intrinsic)
    schedule_copy(sch)


def schedule_pool(sch: Schedule) -> None:
    """A window or spatial reduction (`pool`) and its epilogue (`out`): parallel over
    (n, block, oh), the window loops outside the vectorized lanes."""
    pool = sch.get_sblock("pool")
    loops = sch.get_loops(pool)
    batch, blocks, y, x, lanes = loops[:5]
    window = loops[5:]
    sch.reorder(batch, blocks, y, x, *window, lanes)
    sch.parallel(sch.fuse(batch, blocks, y))
    out = _block(sch, "out")
    if out is not None:
        sch.reverse_compute_at(out, x)
        sch.vectorize(sch.get_loops(out)[-1])
    sch.vectorize(lanes)
    if window:
        sch.decompose_reduction(pool, window[0])


def schedule_elementwise(sch: Schedule) -> None:
    """Every stage of an elementwise kernel: parallel over the leading loops and the
    innermost loop vectorized (blocked tensors: the lanes)."""
    for block in sch.get_child_blocks(sch.get_sblock("root")) if _block(sch, "root") else []:
        _elementwise_block(sch, block)


def _elementwise_block(sch: Schedule, block) -> None:
    loops = sch.get_loops(block)
    if not loops:
        return
    if len(loops) >= 3:
        sch.parallel(sch.fuse(*loops[:-2]))
    elif len(loops) == 2:
        sch.parallel(loops[0])
    inner = loops[-1]
    if _extent(sch, inner) <= 64:
        sch.vectorize(inner)
