"""Dot-product tensor intrinsics for the int8 kernels, registered with TVM on demand.

Every intrinsic computes, for `lanes` int32 accumulators (one output channel a lane),

    C[i] += sum_{k < 4} int32(A[k]) * int32(B[i, k])          (`dot`: A broadcast)
    C[i] += sum_{k < 4} int32(A[k, i]) * int32(B[i, k])       (`depthwise`: A per lane)

`B` is the innermost `[lanes, 4]` tile of a packed weight (`packing.py`), `A` four
activations: consecutive input channels (`dot`) or four rows of one image column
(`depthwise`, the 3x3 depthwise kernel's vertical taps).

| name | instructions | exact when |
|---|---|---|
| `vnni` | `vpdpbusd zmm` (AVX512-VNNI), u8 x s8 | always (int32 accumulation) |
| `avx512bw` | `vpmaddubsw zmm` + `vpmaddwd` with ones + `vpaddd` | weights in 7 bits |
| `avx2` | the same on ymm, 8 lanes | weights in 7 bits |
| `sdot` | 4 x `sdot v.4s` (aarch64 +dotprod), s8 x s8 | always |

`vpmaddubsw` adds two u8 x s8 products in int16 and saturates: with weights in [-64, 63],
`2 * 255 * 64 = 32640 < 2**15`, so it never does (docs/integer-spec.md, section 8; the
kernel table ties each layer's weights to this range). TVM ships `VNNI_DOT_16x4_INTRIN`,
but the LLVM inside the 0.27 wheel declares `llvm.x86.avx512.vpdpbusd.512` with `<64 x i8>`
operands and TVM passes `<16 x i32>`, so it does not compile; ours passes bytes. We register
only these few instead of importing `tvm.s_tir.tensor_intrin` (20-50 s: it builds every
target's intrinsics). TVM's registry is global; `register` is idempotent.
"""

from __future__ import annotations

from dataclasses import dataclass

from tvm.s_tir import TensorIntrin
from tvm.script import tirx as T


@dataclass(frozen=True)
class DotIntrinsic:
    name: str
    lanes: int
    activation_dtype: str  # what A holds: uint8 (x86) or int8 (ARM)


def _dot_desc(lanes: int, a_dtype: str):
    @T.prim_func(s_tir=True)
    def desc(A: T.Buffer((4,), a_dtype, offset_factor=1),
             B: T.Buffer((lanes, 4), "int8", offset_factor=1),
             C: T.Buffer((lanes,), "int32", offset_factor=1)) -> None:
        with T.sblock("root"):
            T.reads(C[0:lanes], A[0:4], B[0:lanes, 0:4])
            T.writes(C[0:lanes])
            for i in T.serial(0, lanes):
                for k in T.serial(0, 4):
                    with T.sblock("update"):
                        vi, vk = T.axis.remap("SR", [i, k])
                        C[vi] = C[vi] + T.cast(A[vk], "int32") * T.cast(B[vi, vk], "int32")

    return desc


def _depthwise_desc(lanes: int, a_dtype: str):
    @T.prim_func(s_tir=True)
    def desc(A: T.Buffer((4, lanes), a_dtype, offset_factor=1),
             B: T.Buffer((lanes, 4), "int8", offset_factor=1),
             C: T.Buffer((lanes,), "int32", offset_factor=1)) -> None:
        with T.sblock("root"):
            T.reads(C[0:lanes], A[0:4, 0:lanes], B[0:lanes, 0:4])
            T.writes(C[0:lanes])
            for i in T.serial(0, lanes):
                for k in T.serial(0, 4):
                    with T.sblock("update"):
                        vi, vk = T.axis.remap("SR", [i, k])
                        C[vi] = C[vi] + T.cast(A[vk, vi], "int32") * T.cast(B[vi, vk], "int32")

    return desc


def _llvm(name: str, *args, dtype: str):
    return T.call_llvm_pure_intrin(T.llvm_lookup_intrinsic_id(name), *args, dtype=dtype)


def _x86_products(lanes: int, vnni: bool, a_bytes, b_bytes, c):
    """c + the 4-element dot products of a_bytes (u8) and b_bytes (s8), per int32 lane."""
    if vnni:
        return _llvm("llvm.x86.avx512.vpdpbusd.512", c, T.reinterpret(a_bytes, dtype="int8x64"),
                     b_bytes, dtype="int32x16")
    if lanes == 16:
        pairs = _llvm("llvm.x86.avx512.pmaddubs.w.512", a_bytes, b_bytes, dtype="int16x32")
        return c + _llvm("llvm.x86.avx512.pmaddw.d.512", pairs, T.broadcast(T.int16(1), 32),
                         dtype="int32x16")
    pairs = _llvm("llvm.x86.avx2.pmadd.ub.sw", a_bytes, b_bytes, dtype="int16x16")
    return c + _llvm("llvm.x86.avx2.pmadd.wd", pairs, T.broadcast(T.int16(1), 16), dtype="int32x8")


def _x86_dot_impl(lanes: int, vnni: bool):
    nbytes = 4 * lanes

    @T.prim_func(s_tir=True)
    def impl(A: T.Buffer((4,), "uint8", offset_factor=1),
             B: T.Buffer((lanes, 4), "int8", offset_factor=1),
             C: T.Buffer((lanes,), "int32", offset_factor=1)) -> None:
        with T.sblock("root"):
            T.reads(C[0:lanes], A[0:4], B[0:lanes, 0:4])
            T.writes(C[0:lanes])
            # The 4 activation bytes as one int32, broadcast to every lane.
            word = T.reinterpret(A.vload([0], "uint8x4"), dtype="int32")
            C[T.ramp(T.int32(0), 1, lanes)] = _x86_products(
                lanes, vnni, T.reinterpret(T.broadcast(word, lanes), dtype=f"uint8x{nbytes}"),
                B.vload([0, 0], f"int8x{nbytes}"), C.vload([0], f"int32x{lanes}"))

    return impl


def _interleave(lanes: int) -> list[int]:
    """Shuffle indices putting row q's byte of lane i at byte 4 * i + q."""
    return [q * lanes + i for i in range(lanes) for q in range(4)]


def _x86_depthwise_impl(lanes: int, vnni: bool):
    order = _interleave(lanes)

    @T.prim_func(s_tir=True)
    def impl(a: T.handle, b: T.handle, c: T.handle) -> None:
        stride = T.int32()
        A = T.match_buffer(a, (4, lanes), "uint8", offset_factor=1, strides=[stride, 1])
        B = T.match_buffer(b, (lanes, 4), "int8", offset_factor=1)
        C = T.match_buffer(c, (lanes,), "int32", offset_factor=1)
        with T.sblock("root"):
            T.reads(C[0:lanes], A[0:4, 0:lanes], B[0:lanes, 0:4])
            T.writes(C[0:lanes])
            # One byte shuffle (vpermt2b) makes each int32 lane hold its channel's 4 taps.
            rows = T.Shuffle([A.vload([0, 0], f"uint8x{lanes}"), A.vload([1, 0], f"uint8x{lanes}"),
                              A.vload([2, 0], f"uint8x{lanes}"), A.vload([3, 0], f"uint8x{lanes}")],
                             order)
            C[T.ramp(T.int32(0), 1, lanes)] = _x86_products(
                lanes, vnni, rows, B.vload([0, 0], f"int8x{4 * lanes}"), C.vload([0], f"int32x{lanes}"))

    return impl


@T.prim_func(s_tir=True)
def _sdot_impl(A: T.Buffer((4,), "int8", offset_factor=1),
               B: T.Buffer((16, 4), "int8", offset_factor=1),
               C: T.Buffer((16,), "int32", offset_factor=1)) -> None:
    with T.sblock("root"):
        T.reads(C[0:16], A[0:4], B[0:16, 0:4])
        T.writes(C[0:16])
        word = T.reinterpret(A.vload([0], "int8x4"), dtype="int32")
        a = T.reinterpret(T.broadcast(word, 4), dtype="int8x16")
        for j in T.unroll(4):  # one sdot per 4 output channels (a 128-bit register)
            C[T.ramp(j * 4, 1, 4)] = T.call_llvm_pure_intrin(
                T.llvm_lookup_intrinsic_id("llvm.aarch64.neon.sdot.v4i32.v16i8"),
                C.vload([j * 4], "int32x4"), a, B.vload([j * 4, 0], "int8x16"), dtype="int32x4")


VNNI = DotIntrinsic("qcompiler_dot_16x4_vnni", 16, "uint8")
AVX512BW = DotIntrinsic("qcompiler_dot_16x4_avx512bw", 16, "uint8")
AVX2 = DotIntrinsic("qcompiler_dot_8x4_avx2", 8, "uint8")
SDOT = DotIntrinsic("qcompiler_dot_16x4_sdot", 16, "int8")
DEPTHWISE_VNNI = DotIntrinsic("qcompiler_depthwise_16x4_vnni", 16, "uint8")
DEPTHWISE_AVX2 = DotIntrinsic("qcompiler_depthwise_8x4_avx2", 8, "uint8")

_DEFINITIONS = {
    VNNI.name: lambda: (_dot_desc(16, "uint8"), _x86_dot_impl(16, vnni=True)),
    AVX512BW.name: lambda: (_dot_desc(16, "uint8"), _x86_dot_impl(16, vnni=False)),
    AVX2.name: lambda: (_dot_desc(8, "uint8"), _x86_dot_impl(8, vnni=False)),
    SDOT.name: lambda: (_dot_desc(16, "int8"), _sdot_impl),
    DEPTHWISE_VNNI.name: lambda: (_depthwise_desc(16, "uint8"), _x86_depthwise_impl(16, vnni=True)),
    DEPTHWISE_AVX2.name: lambda: (_depthwise_desc(8, "uint8"), _x86_depthwise_impl(8, vnni=False)),
}
_registered: set[str] = set()  # mirrors TVM's own (global) intrinsic registry


def register(intrinsic: DotIntrinsic) -> str:
    """Register `intrinsic` with TVM (once; milliseconds) and return its name for
    `Schedule.tensorize`."""
    if intrinsic.name not in _registered:
        desc, impl = _DEFINITIONS[intrinsic.name]()
        TensorIntrin.register(intrinsic.name, desc, impl, override=True)
        _registered.add(intrinsic.name)
    return intrinsic.name
