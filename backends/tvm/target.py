"""Targets of the TVM backend: a name (or a TVM target dict) -> a `TargetSpec` holding the
TVM target dict, the architecture and SIMD level, whether this host can run its code, and
the int8 weight range its kernels compute exactly (docs/integer-spec.md, section 8).

| name | TVM target | int8 weights |
|---|---|---|
| `host` | this machine: LLVM's name for its CPU (`llvm_get_system_cpu`) | as its level below |
| `x86-avx2` | `mcpu=x86-64-v3` (AVX2, FMA) | 7 bits, `[-64, 63]` |
| `x86-avx512` | `mcpu=x86-64-v4` (AVX-512 F/BW/CD/DQ/VL) | 7 bits, `[-64, 63]` |
| `x86-vnni` | `mcpu=x86-64-v4`, `+avx512vnni` | full int8 |
| `aarch64` | `aarch64-linux-gnu`, `+neon` | full int8 |
| `aarch64-dotprod` | `aarch64-linux-gnu`, `+neon,+dotprod` | full int8 |

The weight range is a property of the target, not of today's kernels. The int8 instructions
that make x86 fast before VNNI (`vpmaddubsw`, on AVX2 and on AVX-512 without VNNI) add pairs
of u8 x s8 products in int16 and saturate unless the weights fit in 7 bits; VNNI's
`vpdpbusd` and ARM's `sdot` accumulate in int32 and take any int8 weight. The kernels of
this issue are generic TE computes that accumulate in int32 and never saturate, but
`check_weight_range` refuses, at build time, a graph whose weights exceed its target's
range whatever kernels are selected: so a graph accepted for `x86-avx2` today is one the
tensorized `vpmaddubsw` kernels of the next issue compute exactly, and they cannot make an
accepted graph silently wrong. The operand ranges are chosen before calibration with the
preset `quant_preset(target)` names (`"int8-avx2"`: 7-bit weights, uint8 activations, for the
vpmaddubsw targets; `"int8-aarch64"`: int8 activations for sdot; `"int8"` otherwise), and
`lowering_target(target)` names the `qc.lower_to_integer` target that checks them.

Nothing here touches TVM until a function needs it (target names and weight ranges are
plain data, read by the CLI without importing TVM).
"""

from __future__ import annotations

import json
import os
import platform
from dataclasses import dataclass, field
from functools import cache

from qcompiler.backends.tvm.errors import TargetError, WeightRangeError

FULL_INT8 = (-128, 127)
SEVEN_BIT = (-64, 63)  # vpmaddubsw: 2 * 255 * 64 < 2**15, so no pair of products saturates
WEIGHTED_OPS = ("qconv2d", "qconv1d", "qlinear")

# The preset (qcompiler.quantization.config.PRESETS) whose weights fit each range.
PRESET_FOR_RANGE = {SEVEN_BIT: "int8-avx2", FULL_INT8: "int8"}
# SIMD level -> (the preset to quantize with, the `lower_to_integer` target that checks its
# operand ranges), as docs/integer-spec.md section 8 pairs them: uint8 activations and 7-bit
# weights for vpmaddubsw, uint8 x int8 for VNNI, int8 x int8 for sdot. (The kernels here
# are exact for either activation type; the ranges are what the fast kernels will need.)
QUANTIZATION = {"avx2": ("int8-avx2", "x86"), "avx512": ("int8-avx2", "x86"), "vnni": ("int8", "generic"),
                "neon": ("int8-aarch64", "aarch64"), "dotprod": ("int8-aarch64", "aarch64"),
                "generic": ("int8", "generic")}

_X86 = {"kind": "llvm", "mtriple": "x86_64-linux-gnu"}
_AARCH64 = {"kind": "llvm", "mtriple": "aarch64-linux-gnu"}

# name -> (TVM target dict, SIMD level, description)
NAMED_TARGETS: dict[str, tuple[dict, str, str]] = {
    # "x86": the portable x86 build, every x86-64 machine with AVX2 (the AVX2 build, 7-bit weights)
    "x86": ({**_X86, "mcpu": "x86-64-v3"}, "avx2", "x86-64 with AVX2 + FMA (portable x86)"),
    "x86-avx2": ({**_X86, "mcpu": "x86-64-v3"}, "avx2", "x86-64 with AVX2 + FMA"),
    "x86-avx512": ({**_X86, "mcpu": "x86-64-v4"}, "avx512", "x86-64 with AVX-512 (no VNNI)"),
    "x86-vnni": ({**_X86, "mcpu": "x86-64-v4", "mattr": ["+avx512vnni"]}, "vnni",
                 "x86-64 with AVX-512 and AVX512-VNNI"),
    "aarch64": ({**_AARCH64, "mattr": ["+neon"]}, "neon", "64-bit ARM with NEON"),
    "aarch64-dotprod": ({**_AARCH64, "mattr": ["+neon", "+dotprod"]}, "dotprod",
                        "64-bit ARM with NEON and the dot-product extension (sdot/udot)"),
}
TARGET_NAMES = ("host", *NAMED_TARGETS)

# SIMD level -> the weight range its int8 kernels compute exactly (module docstring).
WEIGHT_RANGES = {"avx2": SEVEN_BIT, "avx512": SEVEN_BIT, "vnni": FULL_INT8, "neon": FULL_INT8,
                 "dotprod": FULL_INT8, "generic": FULL_INT8}

# LLVM feature names -> /proc/cpuinfo flags, for the SIMD families whose absence is a SIGILL.
_CPUINFO_FLAG = {
    "sse4.1": "sse4_1", "sse4.2": "sse4_2", "ssse3": "ssse3", "avx": "avx", "avx2": "avx2",
    "fma": "fma", "f16c": "f16c", "bmi": "bmi1", "bmi2": "bmi2", "avx512f": "avx512f",
    "avx512bw": "avx512bw", "avx512cd": "avx512cd", "avx512dq": "avx512dq",
    "avx512vl": "avx512vl", "avx512vnni": "avx512_vnni", "avx512bf16": "avx512_bf16",
    "avx512fp16": "avx512_fp16", "avx512vbmi": "avx512vbmi", "avx512vbmi2": "avx512_vbmi2",
    "avx512ifma": "avx512ifma", "avx512bitalg": "avx512_bitalg",
    "avx512vpopcntdq": "avx512_vpopcntdq", "avxvnni": "avx_vnni", "amx-tile": "amx_tile",
    "amx-int8": "amx_int8", "amx-bf16": "amx_bf16",
}


@dataclass(frozen=True)
class TargetSpec:
    """A resolved target: what to hand TVM and what the backend needs to know about it."""

    name: str  # "host", a name of NAMED_TARGETS, or "custom" for a TVM target dict
    config: dict = field(hash=False)  # the TVM target dict
    arch: str  # "x86_64" or "aarch64"
    isa: str  # SIMD level: avx2, avx512, vnni, neon, dotprod or generic
    description: str

    @property
    def weight_range(self) -> tuple[int, int]:
        return WEIGHT_RANGES[self.isa]

    @property
    def is_cross(self) -> bool:
        """Built for another architecture than this machine's (run it there, or in qemu)."""
        return self.arch != host_arch()

    def tvm_target(self):
        import tvm

        return tvm.target.Target(self.config)

    def describe(self) -> str:
        return f"{self.name} ({self.description}; {json.dumps(self.config, sort_keys=True)})"


def host_arch() -> str:
    machine = platform.machine().lower()
    return {"amd64": "x86_64", "arm64": "aarch64"}.get(machine, machine)


@cache
def cpu_flags() -> frozenset[str]:
    """The CPU's feature flags from /proc/cpuinfo (x86 `flags`, ARM `Features`)."""
    try:
        with open("/proc/cpuinfo") as file:
            for line in file:
                key, _, value = line.partition(":")
                if key.strip() in ("flags", "Features"):
                    return frozenset(value.split())
    except OSError:
        pass
    return frozenset()


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as file:
            for line in file:
                key, _, value = line.partition(":")
                if key.strip() in ("model name", "CPU part"):
                    return value.strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def x86_isa(flags) -> str:
    """The SIMD level of an x86 CPU with these /proc/cpuinfo flags (or LLVM features mapped
    to them)."""
    if {"avx512f", "avx512bw", "avx512vl"} <= flags:
        return "vnni" if "avx512_vnni" in flags else "avx512"
    if {"avx2", "fma"} <= flags:
        return "avx2"
    return "generic"


def host_target() -> TargetSpec:
    """This machine, as LLVM names its CPU; never `mcpu=native` (the wheel's default triple
    rejects it) and never a fixed CPU name."""
    import tvm

    arch = host_arch()
    if arch == "x86_64":
        isa = x86_isa(cpu_flags())
        mcpu = tvm.target.codegen.llvm_get_system_cpu()
        config = {**_X86, "mcpu": mcpu, "num-cores": os.cpu_count() or 1}
        return TargetSpec("host", config, arch, isa, f"this machine: {cpu_model()}, LLVM CPU "
                          f"{mcpu}, {isa}")
    if arch == "aarch64":
        dotprod = "asimddp" in cpu_flags()
        config = {**_AARCH64, "mattr": ["+neon", "+dotprod"] if dotprod else ["+neon"],
                  "num-cores": os.cpu_count() or 1}
        isa = "dotprod" if dotprod else "neon"
        return TargetSpec("host", config, arch, isa, f"this machine: {cpu_model()}, {isa}")
    raise TargetError(f"the TVM backend builds for x86_64 and aarch64; this machine is {arch}: "
                      f"name a target ({', '.join(NAMED_TARGETS)})")


def resolve_target(target: str | dict | TargetSpec) -> TargetSpec:
    """A target name of TARGET_NAMES, a TVM target dict (kind llvm, an x86_64 or aarch64
    mtriple) or a TargetSpec -> a TargetSpec; anything else raises TargetError listing the
    valid names."""
    if isinstance(target, TargetSpec):
        return target
    if isinstance(target, dict):
        return _custom_target(target)
    if target == "host":
        return host_target()
    if isinstance(target, str) and target in NAMED_TARGETS:
        config, isa, description = NAMED_TARGETS[target]
        arch = "aarch64" if config["mtriple"].startswith("aarch64") else "x86_64"
        return TargetSpec(target, dict(config), arch, isa, description)
    raise TargetError(f"unknown TVM target {target!r}; valid targets: {', '.join(TARGET_NAMES)}, "
                      "or a TVM target dict such as {'kind': 'llvm', 'mtriple': "
                      "'x86_64-linux-gnu', 'mcpu': 'znver3'}")


def _custom_target(config: dict) -> TargetSpec:
    import tvm

    if config.get("kind") != "llvm":
        raise TargetError(f"TVM target {config!r}: the backend builds CPU code, so the target "
                          "dict needs \"kind\": \"llvm\"")
    triple = str(config.get("mtriple", ""))
    arch = "aarch64" if triple.startswith("aarch64") else "x86_64" if triple.startswith(
        "x86_64") else None
    if arch is None:
        raise TargetError(f"TVM target {config!r}: give an \"mtriple\" of x86_64-linux-gnu or "
                          "aarch64-linux-gnu (the wheel's default triple is not portable)")
    try:
        tvm_target = tvm.target.Target(config)
    except Exception as error:  # TVM explains the bad field on its last line
        raise TargetError(f"TVM target {config!r} is invalid: "
                          f"{str(error).strip().splitlines()[-1]}") from None
    mcpu = config.get("mcpu")
    if mcpu is not None and not tvm.target.codegen.llvm_is_valid_cpu(str(mcpu), triple):
        raise TargetError(f"TVM target {config!r}: LLVM does not know the CPU {mcpu!r}")
    features = set(tvm.target.codegen.llvm_get_cpu_features(tvm_target))
    if arch == "x86_64":
        isa = x86_isa({_CPUINFO_FLAG.get(f, f) for f in features})
    else:
        isa = "dotprod" if "dotprod" in features else "neon"
    return TargetSpec("custom", dict(config), arch, isa, f"TVM target dict, {isa}")


def unsupported_features(spec: TargetSpec, flags: frozenset[str] | None = None) -> list[str]:
    """The CPU features `spec`'s code may use that a CPU with these /proc/cpuinfo flags (by
    default this host's) lacks, as /proc/cpuinfo names them; empty when it can run the code.
    Only meaningful for a target of the host's architecture."""
    import tvm

    flags = cpu_flags() if flags is None else flags
    if spec.arch != "x86_64" or not flags:  # ARM: the named targets use NEON, which every
        return []                          # aarch64 Linux CPU has (dotprod is checked below)
    features = tvm.target.codegen.llvm_get_cpu_features(spec.tvm_target())
    return sorted({_CPUINFO_FLAG[f] for f in features if f in _CPUINFO_FLAG} - set(flags))


def check_host_can_run(spec: TargetSpec, flags: frozenset[str] | None = None) -> None:
    """Raise TargetError (instead of letting the code die of SIGILL) when this machine cannot
    execute code built for `spec`."""
    if spec.is_cross:
        emulated = (", or under qemu-aarch64 (CompiledModel.run does that)"
                    if spec.arch == "aarch64" else "")
        raise TargetError(f"the model was built for {spec.name} ({spec.arch}) and this machine is "
                          f"{host_arch()}: run it on an {spec.arch} machine{emulated}")
    flags = cpu_flags() if flags is None else flags
    missing = unsupported_features(spec, flags)
    if spec.arch == "aarch64" and spec.isa == "dotprod" and "asimddp" not in flags:
        missing.append("asimddp")
    if missing:
        raise TargetError(f"this CPU ({cpu_model()}) cannot run code built for target "
                          f"{spec.name}: it lacks {', '.join(missing)}; build for 'host' "
                          f"(detected: {isa_of(flags)}) or run the model on a machine that has them")


def isa_of(flags: frozenset[str]) -> str:
    """The SIMD level of a CPU of this host's architecture with these /proc/cpuinfo flags."""
    if host_arch() == "x86_64":
        return x86_isa(flags)
    return "dotprod" if "asimddp" in flags else "neon"


def quant_preset(target: str | dict | TargetSpec = "host") -> str:
    """The name of the QuantConfig preset with the operand ranges `target`'s int8 kernels
    need: `QuantConfig.preset(quant_preset("x86-avx2"))` has 7-bit weights."""
    return QUANTIZATION[resolve_target(target).isa][0]


def lowering_target(target: str | dict | TargetSpec = "host") -> str:
    """The `qc.lower_to_integer(graph, target=...)` that checks those ranges: "x86" for the
    vpmaddubsw targets, "aarch64" for ARM, "generic" otherwise."""
    return QUANTIZATION[resolve_target(target).isa][1]


def check_weight_range(graph, spec: TargetSpec) -> None:
    """Refuse a graph whose int8 weights (of qconv2d, qconv1d, qlinear) exceed the target's
    range (module docstring), naming the layers and the preset to quantize with."""
    low, high = spec.weight_range
    outside = []
    for node in graph:
        if node.op in WEIGHTED_OPS and node.inputs[1] is not None and node.inputs[1].is_constant:
            weight = node.inputs[1].data
            if weight.size and (int(weight.min()) < low or int(weight.max()) > high):
                outside.append(f"%{node.name} [{int(weight.min())}, {int(weight.max())}]")
    if outside:
        shown = ", ".join(outside[:3]) + (f" and {len(outside) - 3} more" if len(outside) > 3 else "")
        raise WeightRangeError(
            f"target {spec.name} ({spec.isa}) computes int8 layers exactly only with weights in "
            f"[{low}, {high}] (docs/integer-spec.md, section 8), and {len(outside)} layer(s) "
            f"exceed it: {shown}. Quantize for this target with "
            f"qc.QuantConfig.preset({PRESET_FOR_RANGE[spec.weight_range]!r}) "
            f"(qc.backends.tvm.quant_preset({spec.name!r})), or build for a target with "
            "full-range int8 kernels (x86-vnni, aarch64, aarch64-dotprod)")

