"""The TVM backend: IR graphs (float, or integer from `qc.lower_to_integer`) lowered to TVM
Relax and compiled for x86 and aarch64 (docs/tvm.md).

    compiled = qc.backends.tvm.build(integer_graph, target="host")   # or "x86-avx2", "aarch64", ...
    y = compiled.run(x)                       # bit for bit the interpreter's integers
    print(compiled.benchmark(repeat=20))      # median latency; profile=True adds per-kernel times
    compiled.export_library("out/")           # model.so + manifest.json
    again = qc.backends.tvm.load("out/")      # TVM's runtime only, no qcompiler passes

Importing this package does not import TVM (a few seconds); the functions below do.
"""

from __future__ import annotations

from qcompiler.backends.tvm.errors import (  # noqa: F401  (the package's public face)
    ArtifactError,
    DeviceLostError,
    LoweringError,
    NoDeviceError,
    RemoteError,
    TargetError,
    TrackerUnreachableError,
    TuningDatabaseError,
    TVMBackendError,
    WeightRangeError,
)
from qcompiler.backends.tvm.target import TARGET_NAMES, lowering_target, quant_preset  # noqa: F401


def build(graph, target="host", *, batch=None, schedules=True, database=None):
    """Compile `graph` for `target` (a name of TARGET_NAMES or a TVM target dict); returns a
    `CompiledModel` (`.run`, `.benchmark`, `.export_library`). A graph with a symbolic batch
    (`f32[N,...]`, what qc.trace captures) is compiled at batch size `batch`, which it then
    requires: the Relax lowering takes static shapes (a static graph needs no `batch`).
    `schedules=False` uses the generic reference kernels only (same integers, much slower).
    `database`: a tuning database directory (`tuning.tune`, `qcompiler tune --db`) whose
    kernels measured faster than ours replace them ($QCOMPILER_TUNING_DB when not given)."""
    from qcompiler.backends.tvm.compiled import build as build_graph

    return build_graph(graph, target, batch=batch, schedules=schedules, database=database)


def load(directory):
    """Load a model directory written by `CompiledModel.export_library`."""
    from qcompiler.backends.tvm.compiled import load as load_directory

    return load_directory(directory)
