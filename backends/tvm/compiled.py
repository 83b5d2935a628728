"""Compile a lowered graph with `tvm.compile` for a target, and the `CompiledModel` that runs,
times, profiles and exports the result.

    compiled = build(integer_graph, target="host")
    y = compiled.run(x)                                   # numpy in, numpy out
    result = compiled.benchmark(repeat=20, number=5, profile=True)
    compiled.export_library("out/")                       # library + manifest.json
    again = load("out/")                                  # no qcompiler passes needed

The Relax pipeline is TVM's CPU default without operator fusion (`schedule.py`): every
kernel stays its own PrimFunc, named after its node, so a per-op profile maps straight back
to the graph. By default the weighted ops run the blocked, hand-scheduled kernels of
`kernel_table.py` (layout plan: `plan.py`); `build(..., schedules=False)` runs the generic
computes of `kernels.py` instead, the reference they are tested against (same integers).
"""

from __future__ import annotations

import os
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from qcompiler.backends.tvm import artifact
from qcompiler.backends.tvm.errors import ArtifactError, TargetError, TVMBackendError
from qcompiler.backends.tvm.peak import Peak, peak
from qcompiler.backends.tvm.target import TargetSpec, check_host_can_run, check_weight_range, resolve_target
from qcompiler.errors import QCompilerError
from qcompiler.ir import DTYPES, Graph
from qcompiler.ir.dims import bind_sizes, shape_at


def _threads() -> int:
    """TVM's thread pool reads TVM_NUM_THREADS once, when it starts; unset, it uses half the
    hardware threads and pins them (half the speed on a 2-core VM). Default: every core."""
    return int(os.environ.setdefault("TVM_NUM_THREADS", str(os.cpu_count() or 1)))


@dataclass(frozen=True)
class BenchmarkResult:
    """Latency of one call of the model, in milliseconds, over `repeat` measurements of the
    mean of `number` calls each; `per_op` (when profiled) lists the kernels by total time,
    with their GOPS against `peak` (`peak.py`)."""

    median_ms: float
    min_ms: float
    max_ms: float
    repeat: int
    number: int
    threads: int
    target: str
    per_op: list[OpTime] = field(default_factory=list)
    peak: Peak | None = None

    @property
    def spread_ms(self) -> float:
        return self.max_ms - self.min_ms

    def __str__(self) -> str:
        text = (f"{self.median_ms:.3f} ms median (min {self.min_ms:.3f}, max {self.max_ms:.3f}; "
                f"{self.repeat} x {self.number} calls, {self.threads} threads, target {self.target})")
        if self.per_op:
            text += "\n" + format_profile(self.per_op)
            if self.peak is not None:
                text += "\n" + self.peak.describe()
        return text


@dataclass(frozen=True)
class OpTime:
    function: str  # the PrimFunc
    nodes: list[str]  # the graph nodes it computes
    calls: int
    total_ms: float  # per model call
    share: float  # of all kernel time
    kernel: str = "generic"  # which kernel runs it (`kernel_table.py`; generic, lanewise, layout)
    dtype: str = "float32"  # the arithmetic's data type: int8 or float32
    ops: int = 0  # multiplies and adds per model call (2 x MACs)
    peak_gops: float | None = None  # the host's peak for `dtype`

    @property
    def gops(self) -> float:
        return self.ops / (self.total_ms * 1e6) if self.total_ms > 0 else 0.0

    @property
    def of_peak(self) -> float | None:
        """The fraction of the peak this kernel reached (None without ops or a known peak)."""
        return self.gops / self.peak_gops if self.ops and self.peak_gops else None


def format_profile(rows: list[OpTime], top: int = 15) -> str:
    lines = [f"{'function':<34} {'ms':>8} {'share':>6} {'GOPS':>7} {'%peak':>6}  {'kernel':<22} nodes"]
    for row in rows[:top]:
        nodes = ", ".join(row.nodes[:2]) + (f" (+{len(row.nodes) - 2})" if len(row.nodes) > 2 else "")
        gops = f"{row.gops:7.1f}" if row.ops else f"{'':>7}"
        of_peak = f"{row.of_peak:6.1%}" if row.of_peak is not None else f"{'':>6}"
        lines.append(f"{row.function[:34]:<34} {row.total_ms:8.3f} {row.share:6.1%} {gops} {of_peak}  "
                     f"{row.kernel[:22]:<22} {nodes}")
    if len(rows) > top:
        lines.append(f"... {len(rows) - top} more kernels, "
                     f"{sum(r.total_ms for r in rows[top:]):.3f} ms together")
    return "\n".join(lines)


class CompiledModel:
    """A graph compiled for a target: `run`, `benchmark`, `export_library`."""

    def __init__(self, module, spec: TargetSpec, manifest: dict):
        self._module = module  # tvm.runtime.Executable (fresh build) or loaded runtime.Module
        self.target = spec
        self.manifest = manifest
        self._vm = None
        self.loaded_from: Path | None = None  # the directory `load` read it from
        self._export_dir: Path | None = None  # the exported library, for running in qemu
        self._temporary: tempfile.TemporaryDirectory | None = None

    @property
    def inputs(self) -> list[dict]:
        return self.manifest["inputs"]

    @property
    def outputs(self) -> list[dict]:
        return self.manifest["outputs"]

    @property
    def fall_backs(self) -> list[str]:
        return self.manifest["fall_backs"]

    def __repr__(self) -> str:
        return (f"<CompiledModel {self.manifest['graph']} for {self.target.name}: "
                f"{len(self.inputs)} input(s), {len(self.outputs)} output(s)>")

    # ---- running ---------------------------------------------------------------------

    @property
    def symbols(self) -> list[str]:
        """The symbolic dimensions the library leaves open ([] for a fixed-shape build)."""
        return list(self.manifest.get("symbols", []))

    def checked_inputs(self, inputs) -> list[np.ndarray]:
        """The inputs as contiguous numpy arrays of the compiled shapes and dtypes (any size
        for a symbolic dimension, the same for every input that shares its symbol)."""
        if len(inputs) != len(self.inputs):
            expected = ", ".join(f"{i['name']}: {artifact.type_text(i)}" for i in self.inputs)
            raise QCompilerError(f"{self.manifest['graph']} takes {len(self.inputs)} input(s) "
                                 f"({expected}), got {len(inputs)}")
        arrays, sizes = [], {}
        for spec, array in zip(self.inputs, inputs, strict=True):
            if hasattr(array, "detach"):  # a torch tensor
                array = array.detach().cpu().numpy()
            array = np.asarray(array, order="C")  # (ascontiguousarray makes 0-d arrays 1-d)
            mismatch = bind_sizes(artifact.shape_of(spec), array.shape, sizes, "it")
            if mismatch is None and array.dtype != DTYPES[spec["dtype"]]:
                mismatch = f"its dtype is {array.dtype}"
            if mismatch is not None:
                raise QCompilerError(f"input %{spec['name']} expects {artifact.type_text(spec)}, got "
                                     f"{array.dtype}{list(array.shape)} ({mismatch})")
            arrays.append(array)
        return arrays

    def _machine(self):
        if self._vm is None:
            import tvm
            from tvm import relax

            check_host_can_run(self.target)
            _threads()
            self._vm = relax.VirtualMachine(self._module, tvm.cpu())
        return self._vm

    def run(self, *inputs):
        """The outputs for these inputs (numpy arrays or tensors): one array for a
        single-output model, else a tuple. A model built for another architecture runs under
        qemu (`aarch64.run_in_qemu`)."""
        arrays = self.checked_inputs(inputs)
        if self.target.is_cross:
            from qcompiler.backends.tvm.aarch64 import run_in_qemu

            if self.target.arch != "aarch64":  # qemu-aarch64 runs aarch64 code only
                check_host_can_run(self.target)

            if self._export_dir is None:
                self._temporary = tempfile.TemporaryDirectory(prefix="qcompiler-tvm-")
                self._export_dir = self.export_library(Path(self._temporary.name) / "model")
            outputs = run_in_qemu(self._export_dir, arrays)
        else:
            import tvm

            result = self._machine()["main"](*[tvm.runtime.tensor(a) for a in arrays])
            outputs = [result.numpy()] if len(self.outputs) == 1 else [r.numpy() for r in result]
        return outputs[0] if len(outputs) == 1 else tuple(outputs)

    def benchmark(self, repeat: int = 10, number: int = 1, profile: bool = False,
                  batch: int = 1) -> BenchmarkResult:
        """Time `repeat` measurements of `number` calls on seeded inputs (after one warm-up
        call); `profile` adds a per-kernel table from five more, instrumented calls. A build
        with a symbolic batch runs at `batch` (a fixed-shape build at its own)."""
        import tvm

        if self.target.is_cross:
            raise TargetError(f"the model was built for {self.target.name} ({self.target.arch}); "
                              "timings under qemu mean nothing: benchmark it on such a machine")
        if repeat < 1 or number < 1:
            raise QCompilerError(f"benchmark needs repeat >= 1 and number >= 1, got {repeat}, {number}")
        vm = self._machine()
        arguments = [tvm.runtime.tensor(a) for a in self.example_inputs(batch=batch)]
        timer = vm.time_evaluator("main", tvm.cpu(), number=number, repeat=repeat)
        seconds = np.asarray(timer(*arguments).results, np.float64) * 1e3
        top = peak(self.target.isa, _threads()) if profile else None
        # The manifest counts a symbolic build's arithmetic per batch item.
        per_op = self._profile(vm, arguments, top, batch if self.symbols else 1) if profile else []
        return BenchmarkResult(float(np.median(seconds)), float(seconds.min()), float(seconds.max()),
                               repeat, number, _threads(), self.target.name, per_op, top)

    def example_inputs(self, seed: int = 0, batch: int = 1) -> list[np.ndarray]:
        """Seeded inputs of the compiled shapes (a symbolic dimension at `batch`): standard
        normal floats; integer inputs (token ids) in [0, 10)."""
        rng = np.random.default_rng(seed)
        arrays = []
        for spec in self.inputs:
            dtype = DTYPES[spec["dtype"]]
            shape = shape_at(artifact.shape_of(spec), batch)
            if np.issubdtype(dtype, np.floating):
                arrays.append(rng.standard_normal(shape).astype(dtype))
            else:
                arrays.append(rng.integers(0, 10, shape).astype(dtype))
        return arrays

    def _profile(self, vm, arguments, top: Peak, batch: int, runs: int = 5) -> list[OpTime]:
        """Per-kernel times from `runs` instrumented calls (each kernel's median over runs),
        with each kernel's arithmetic from the manifest. A Python callback brackets every
        kernel, so tiny kernels look slower than they are."""
        started: list[float] = []
        seconds: list[dict[str, float]] = []  # one dict per run: kernel -> time
        calls: list[dict[str, int]] = []

        def instrument(func, symbol, before, result, *args):
            if symbol.startswith("vm.builtin."):
                return 0
            if before:
                started.append(time.perf_counter())
            else:
                seconds[-1][symbol] = seconds[-1].get(symbol, 0.0) + time.perf_counter() - started.pop()
                calls[-1][symbol] = calls[-1].get(symbol, 0) + 1
            return 0

        vm.set_instrument(instrument)
        try:
            for _ in range(runs):
                seconds.append({})
                calls.append({})
                vm["main"](*arguments)
        finally:
            vm.set_instrument(lambda *args: 0)
        medians = {name: float(np.median([run.get(name, 0.0) for run in seconds]))
                   for name in seconds[0]}
        overall = sum(medians.values()) or 1.0
        functions, kernels = self.manifest.get("functions", {}), self.manifest.get("kernels", {})
        rows = []
        for name, value in medians.items():
            info = kernels.get(name, {})
            dtype = info.get("dtype", "float32")
            rows.append(OpTime(name, functions.get(name, []), calls[0][name], value * 1e3, value / overall,
                               info.get("kernel", "generic"), dtype, batch * int(info.get("ops", 0)),
                               top.of(dtype)))
        return sorted(rows, key=lambda row: -row.total_ms)

    # ---- export ------------------------------------------------------------------------

    def export_library(self, directory) -> Path:
        """Write the library and its manifest into `directory`, atomically (a reader sees the
        old complete artifact or the new one, never half of one). Returns the directory."""
        fcompile = None
        if self.target.arch == "aarch64":
            from qcompiler.backends.tvm.aarch64 import cross_compiler

            fcompile = cross_compiler()

        if self.loaded_from is not None:
            raise TVMBackendError(f"this model was loaded from {self.loaded_from}; copy that "
                                  "directory instead of exporting it again")

        def write_library(path: Path) -> None:
            self._module.export_library(str(path), fcompile=fcompile)

        return artifact.write(directory, self.manifest, write_library)


def build(graph: Graph, target="host", *, batch: int | None = None,
          schedules: bool = True, database=None) -> CompiledModel:
    """Compile an IR graph (float, or integer from `qc.lower_to_integer`) for `target`: a name
    of `target.TARGET_NAMES` or a TVM target dict. A symbolic batch dimension stays symbolic
    (one module runs any batch) unless `batch` fixes it (`Graph.at_batch`: the fast path, its
    kernels know every loop bound). `schedules=False`
    builds every node with the generic computes of `kernels.py` (the reference: the same
    integers, much slower). `database`: a tuning database directory (`tuning.py`) whose
    confirmed faster kernels replace ours ($QCOMPILER_TUNING_DB when not given); kernels match
    by their exact shapes, so a database tuned at `batch=1` applies to builds with `batch=1`."""
    import tvm

    from qcompiler.backends.tvm.lower import lower_graph
    from qcompiler.backends.tvm.plan import plan_graph
    from qcompiler.backends.tvm.schedule import cpu_pipeline

    if not isinstance(graph, Graph):
        raise QCompilerError(f"qc.backends.tvm.build takes an IR Graph, got {type(graph).__name__}; "
                             "capture a module with qc.trace (or qc.quantize + qc.lower_to_integer)")
    if batch is not None and not graph.is_static:
        graph = graph.at_batch(batch)
    spec = resolve_target(target)
    check_weight_range(graph, spec)
    plan = plan_graph(graph, spec.isa) if schedules else None
    lowered = lower_graph(graph, spec.arch, plan)
    tvm_target = spec.tvm_target()
    option = "--db" if database else "$QCOMPILER_TUNING_DB"
    database = database or os.environ.get("QCOMPILER_TUNING_DB")  # `qcompiler tune --db DIR`
    if database:
        from qcompiler.backends.tvm.tuning_db import apply_database

        lowered.module = apply_database(lowered, tvm_target, database, option)
    executable = tvm.compile(lowered.module, tvm_target, relax_pipeline=cpu_pipeline(tvm_target))
    manifest = artifact.manifest_for(graph, spec, lowered.fall_backs, lowered.functions,
                                     kernel_info(graph, lowered))
    return CompiledModel(executable, spec, manifest)


def kernel_info(graph: Graph, lowered) -> dict:
    """PrimFunc -> the kernel that runs it (a name of `kernel_table.py`; "lanewise" for the
    blocked element-wise and pooling computes, "generic" for `kernels.py` and Relax's
    operators, "layout" for conversions), its data type and its arithmetic (2 x MACs of its
    nodes; per batch item when the batch is symbolic), for the profile's GOPS."""
    from qcompiler.analysis.cost import node_macs
    from qcompiler.backends.tvm.plan import kernel_names

    names = kernel_names(lowered.plan) if lowered.plan is not None else {}
    nodes = {node.name: node for node in graph}
    info = {}
    for function, members in lowered.functions.items():
        computed = [nodes[m] for m in members if m in nodes]
        kernel = next((names[m] for m in members if m in names), None)
        if kernel is None and lowered.plan is not None and any(m in lowered.plan.blocked for m in members):
            kernel = "lanewise"
        if kernel is None:
            kernel = "generic" if computed else "layout"
        integer = any(n.op.startswith("q") or n.op == "quantize" for n in computed)
        info[function] = {"kernel": kernel, "dtype": "int8" if integer else "float32",
                          "ops": int(2 * sum(node_macs(n) for n in computed))}
    return info


def load(directory) -> CompiledModel:
    """A model exported by `CompiledModel.export_library`, loaded with TVM's runtime alone."""
    import tvm

    manifest, library = artifact.read(directory)
    built_with = manifest.get("versions", {}).get("tvm")
    if built_with != tvm.__version__:
        raise ArtifactError(f"{directory} was compiled with TVM {built_with} and this is TVM "
                            f"{tvm.__version__}: compile the model again")
    spec = artifact.target_of(manifest)
    if spec.is_cross:
        module = None  # run_in_qemu loads it inside the emulator
    else:
        check_host_can_run(spec)
        module = artifact.load_library(library)
    model = CompiledModel(module, spec, manifest)
    model.loaded_from = Path(directory)
    if spec.is_cross:
        model._export_dir = Path(directory)
    return model
