"""The arithmetic peak of the CPU a model runs on, for each data type, so a profile can say
how far each kernel is from the limit (`CompiledModel.benchmark(profile=True)`).

    peak (GOPS) = ops per cycle per core (the SIMD level's, table below) x clock x threads

An op is one multiply or one add (a MAC is 2), the convention of every GOPS figure here.

| SIMD level | int8 ops / cycle / core | float32 ops / cycle / core | instruction stream assumed |
|---|---|---|---|
| vnni | 256 | 64 | 2 x `vpdpbusd zmm` (64 MAC each); 2 x `vfmadd zmm` (16 FMA each) |
| avx512 | 128 | 64 | 2 x (`vpmaddubsw` + `vpmaddwd`) zmm per 128 MAC |
| avx2 | 64 | 32 | 2 x (`vpmaddubsw` + `vpmaddwd`) ymm per 64 MAC; 2 x `vfmadd ymm` |
| dotprod | 64 | 16 | 2 x `sdot` q-register (16 MAC each); 2 x `fmla` 4 lanes |
| neon | 32 | 16 | 2 x `smlal` (8 MAC each) |

The exact int8 sequence of the `vpmaddubsw` levels needs `vpmaddwd` after each
`vpmaddubsw` (both on the same two ports), so it is half of what `vpmaddubsw` alone would
suggest. Two FMA (or dot) ports per core is the common case for these levels (Intel server
parts with one 512-bit FMA unit reach half of the AVX-512 figures). A microbenchmark of
independent dot / FMA chains on this project's Xeon (at about 3.1 GHz) reached 736 int8
GOPS (vpdpbusd) and 192 FP32 GFLOP/s on one core, 93% and 97% of these figures; on the
shared 2-vCPU VM two copies together got about 1.3 cores' worth.

The clock is the highest of: the kernel's maximum frequency (`cpufreq`), `cpu MHz` in
/proc/cpuinfo and the `@ x.xxGHz` of the model name; VMs often report only the base clock,
so turbo can take a kernel above "100%" there.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path

OPS_PER_CYCLE = {  # SIMD level -> (int8, float32) ops per cycle per core
    "vnni": (256, 64), "avx512": (128, 64), "avx2": (64, 32), "dotprod": (64, 16),
    "neon": (32, 16),
}


@dataclass(frozen=True)
class Peak:
    isa: str
    ghz: float
    threads: int
    int8_gops: float | None
    float32_gops: float | None

    def of(self, dtype: str) -> float | None:
        return self.int8_gops if dtype == "int8" else self.float32_gops

    def describe(self) -> str:
        if self.int8_gops is None:
            return f"no peak known for SIMD level {self.isa}"
        return (f"peak at {self.ghz:.2f} GHz x {self.threads} threads ({self.isa}): "
                f"int8 {self.int8_gops:.0f} GOPS, float32 {self.float32_gops:.0f} GFLOP/s")


def clock_ghz(cpuinfo: str | None = None, max_khz: str | None = None) -> float | None:
    """The CPU clock in GHz (module docstring), or None when nothing reports one."""
    if cpuinfo is None:
        cpuinfo = _read("/proc/cpuinfo")
    if max_khz is None:
        max_khz = _read("/sys/devices/system/cpu/cpu0/cpufreq/cpuinfo_max_freq")
    candidates = []
    if max_khz.strip().isdigit():
        candidates.append(int(max_khz) / 1e6)
    megahertz = re.search(r"^cpu MHz\s*:\s*([0-9.]+)", cpuinfo, re.MULTILINE)
    if megahertz:
        candidates.append(float(megahertz.group(1)) / 1e3)
    named = re.search(r"^model name\s*:.*@\s*([0-9.]+)\s*GHz", cpuinfo, re.MULTILINE)
    if named:
        candidates.append(float(named.group(1)))
    return max(candidates) if candidates else None


def _read(path: str) -> str:
    try:
        return Path(path).read_text()
    except OSError:
        return ""


def peak(isa: str, threads: int, ghz: float | None = None) -> Peak:
    """The peak of `threads` cores (at most the machine's) of SIMD level `isa` at `ghz`
    (default: this machine's clock)."""
    ghz = clock_ghz() if ghz is None else ghz
    threads = max(1, min(int(threads), os.cpu_count() or 1))
    per_cycle = OPS_PER_CYCLE.get(isa)
    if per_cycle is None or ghz is None:
        return Peak(isa, ghz or 0.0, threads, None, None)
    return Peak(isa, ghz, threads, per_cycle[0] * ghz * threads, per_cycle[1] * ghz * threads)
