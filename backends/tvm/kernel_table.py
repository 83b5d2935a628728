"""Which kernel computes a weighted op on which target: a small table keyed by (kind, SIMD
level), each entry naming its TE compute, its schedule, its tensor intrinsic, its lane count
and the int8 weights it computes exactly.

| kind | vnni | avx512 | avx2 | dotprod | neon |
|---|---|---|---|---|---|
| int8 conv, dense | vpdpbusd 16x4 | vpmaddubsw 16x4 (7b) | vpmaddubsw 8x4 (7b) | sdot 16x4 | generic |
| int8 depthwise 3x3 | row dot, vpdpbusd | int16 products | row dot, vpmaddubsw (7b) | int16 | generic |
| int8 depthwise, other | int16 products | int16 products | int16 products | int16 | generic |
| float conv, depthwise, dense | 16 lanes | 16 lanes | 8 lanes | 16 lanes | 16 lanes |

(7b: exact for weights in 7 bits.)

"generic" is `kernels.py`'s reference compute in the plain layout (no entry in the table).
The weight range is the guarantee of docs/integer-spec.md section 8 tied to the kernel that
runs: `plan.py` checks every layer's weights against the range of the kernel it selects
(the `vpmaddubsw` kernels add two u8 x s8 products in int16: exact for weights in 7 bits).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from qcompiler.backends.tvm import blocked_float, blocked_int8, intrinsics, schedules
from qcompiler.backends.tvm.intrinsics import DotIntrinsic
from qcompiler.backends.tvm.target import FULL_INT8, SEVEN_BIT


@dataclass(frozen=True)
class Kernel:
    name: str  # as the manifest and profiles show it
    kind: str  # conv, depthwise, depthwise3x3, dense (float: with the suffix _float)
    compute: Callable
    schedule: Callable  # (Schedule, Registers, intrinsic name or None) -> None
    lanes: int
    intrinsic: DotIntrinsic | None = None
    weight_range: tuple[int, int] = FULL_INT8

    @property
    def integer(self) -> bool:
        return not self.kind.endswith("_float")

    def apply_schedule(self, sch, registers: schedules.Registers) -> None:
        name = intrinsics.register(self.intrinsic) if self.intrinsic is not None else None
        self.schedule(sch, registers, name)


def _int8(isa: str, kind: str, compute, schedule, intrinsic: DotIntrinsic | None, lanes: int,
          weight_range=FULL_INT8) -> Kernel:
    return Kernel(f"{kind}_int8_{isa}", kind, compute, schedule, lanes, intrinsic, weight_range)


def _float(isa: str, lanes: int) -> dict:
    return {
        ("conv_float", isa): Kernel(f"conv_float32_{isa}", "conv_float", blocked_float.conv,
                                    schedules.schedule_conv, lanes),
        ("depthwise_float", isa): Kernel(f"depthwise_float32_{isa}", "depthwise_float",
                                         blocked_float.depthwise, schedules.schedule_depthwise, lanes),
        ("dense_float", isa): Kernel(f"dense_float32_{isa}", "dense_float", blocked_float.dense,
                                     schedules.schedule_dense, lanes),
    }


def _dot(isa: str, intrinsic: DotIntrinsic, weight_range) -> dict:
    lanes = intrinsic.lanes
    return {
        ("conv", isa): _int8(isa, "conv", blocked_int8.conv, schedules.schedule_conv, intrinsic,
                             lanes, weight_range),
        ("dense", isa): _int8(isa, "dense", blocked_int8.dense, schedules.schedule_dense, intrinsic,
                              lanes, weight_range),
        ("depthwise", isa): _int8(isa, "depthwise", blocked_int8.depthwise,
                                  schedules.schedule_depthwise, None, lanes),
    }


def _row_dot(isa: str, intrinsic: DotIntrinsic, weight_range) -> dict:
    return {("depthwise3x3", isa): _int8(isa, "depthwise3x3", blocked_int8.depthwise_rows,
                                         schedules.schedule_depthwise, intrinsic, intrinsic.lanes,
                                         weight_range)}


TABLE: dict[tuple[str, str], Kernel] = {
    **_dot("vnni", intrinsics.VNNI, FULL_INT8),
    **_row_dot("vnni", intrinsics.DEPTHWISE_VNNI, FULL_INT8),
    **_dot("avx512", intrinsics.AVX512BW, SEVEN_BIT),
    **_dot("avx2", intrinsics.AVX2, SEVEN_BIT),
    **_row_dot("avx2", intrinsics.DEPTHWISE_AVX2, SEVEN_BIT),
    **_dot("dotprod", intrinsics.SDOT, FULL_INT8),
    **_float("vnni", 16), **_float("avx512", 16), **_float("avx2", 8),
    **_float("dotprod", 16), **_float("neon", 16),
}

# Registers per target architecture / SIMD level, for the tile sizes (`schedules.Registers`).
REGISTERS = {"vnni": "avx512", "avx512": "avx512", "avx2": "avx2", "dotprod": "aarch64",
             "neon": "aarch64"}


def registers(isa: str) -> schedules.Registers:
    return schedules.REGISTERS[REGISTERS.get(isa, "avx2")]


def lookup(kind: str, isa: str) -> Kernel | None:
    """The kernel for `kind` on `isa`; a 3x3 depthwise falls back to the general depthwise."""
    if kind == "depthwise3x3" and (kind, isa) not in TABLE:
        kind = "depthwise"
    return TABLE.get((kind, isa))


def storage_dtype(isa: str) -> str:
    """The dtype blocked int8 activations are stored in: what the dot instructions take."""
    return "int8" if isa in ("dotprod", "neon") else "uint8"


def int8_lanes(isa: str) -> int | None:
    kernel = TABLE.get(("conv", isa))
    return kernel.lanes if kernel else None


def float_lanes(isa: str) -> int | None:
    kernel = TABLE.get(("conv_float", isa))
    return kernel.lanes if kernel else None

