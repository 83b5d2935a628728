"""MetaSchedule tuning of a graph's kernels, seeded with our own schedules, for a wall-clock
budget, into a database directory that later builds apply (`build(graph, target,
database=DIR)`, `qcompiler compile --db DIR`).

    report = tune(integer_graph, "host", budget_s=600, database="tuning/", batch=1)
    print(report)                                  # per kernel: ours ms, tuned ms, choice
    compiled = build(integer_graph, "host", batch=1, database="tuning/")

A task is one kernel (one PrimFunc: the pipeline does not fuse, `schedule.py`). Its workload
is the kernel's compute before any schedule; our schedule of it (`schedules.py`, or none for
the generic kernels) is replayed as a trace and committed to the database as the first
record, measured by the same runner as every tuned candidate: the search starts from it
(MetaSchedule's evolutionary search takes measured records into its first population). A
tuned schedule replaces ours only where it was measured faster and then, re-measured back to
back with ours, confirmed faster (`CONFIRM_ROUNDS`): the choice is written to `choices.json`
in the database, and a build applies nothing else. Tuning only re-orders, tiles, vectorizes
and parallelizes loops; integer kernels compute the same expression, so tuned integer builds
stay bit for bit the interpreter's (tested).

The budget covers the whole call (measuring ours, searching, confirming). MetaSchedule counts
trials, not time: a measure callback ends the search after the first batch from which another
as long would end past `budget_s` less the confirmation's estimated time, so the call
overshoots by at most one batch of `trials_per_round` builds and runs plus the error of that
estimate. The database directory's format and applying it to a build: `tuning_db.py`.

Two things make MetaSchedule usable on a small machine (TVM-NOTES): the default builder
imports every target's tensor intrinsics in each fresh worker (20-50 s, so every trial timed
out), so the builder gets its own build function that does not; and only the kernels that
carry most of the model's time are tuned (`MIN_SHARE`), heaviest first, as many as the budget
gives `ROUNDS_PER_KERNEL` batches of trials each.

Measurements go through MetaSchedule's LocalRunner, or its RPCRunner on devices registered
with a TVM RPC tracker (`rpc="HOST:PORT", key=KEY`, as `remote.py`): the builds stay here.
Kernels for another architecture (aarch64 boards) are cross-compiled here into shared
libraries the devices load, and can only be measured there: such a target needs `rpc`.
"""

from __future__ import annotations

import logging
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from qcompiler.backends.tvm.errors import TargetError, TVMBackendError
from qcompiler.backends.tvm.tuning_db import (
    as_module,
    best_tuned,
    commit_record,
    kernels_of,
    legalized,
    open_database,
    ours_schedule,
    read_choices,
    replayed,
    trace_id,
    workload_key,
    write_choices,
)
from qcompiler.errors import OptionError

MIN_SHARE = 0.02  # kernels under 2% of the model's time (ours) are not worth trials
ROUNDS_PER_KERNEL = 4  # batches of trials a kernel should get for tuning it to be worth it
CONFIRM_ROUNDS = 3  # back-to-back re-measurements of ours and the best tuned schedule


@dataclass
class KernelResult:
    name: str  # the kernel (PrimFunc)
    nodes: list[str]  # the graph nodes it computes
    key: str  # the workload's structural hash
    scheduled: bool  # ours is a hand schedule (else the generic compute as TE writes it)
    ours_ms: float | None = None
    tuned_ms: float | None = None  # best tuned candidate measured
    trials: int = 0
    use_tuned: bool = False  # confirmed faster than ours: builds apply it
    trace: str | None = None  # the id of the tuned schedule's trace (`trace_id`)

    @property
    def best_ms(self) -> float | None:
        known = [t for t in (self.ours_ms, self.tuned_ms) if t is not None]
        return min(known) if known else None


@dataclass
class TuneReport:
    target: str
    database: Path
    budget_s: float
    seconds: float = 0.0
    trials: int = 0
    kernels: list[KernelResult] = field(default_factory=list)

    def model_ms(self, tuned: bool) -> float:
        """The sum of the kernels' standalone times: ours, or with the confirmed choices."""
        return sum((k.tuned_ms if tuned and k.use_tuned else k.ours_ms) or 0.0 for k in self.kernels)

    def __str__(self) -> str:
        tuned = [k for k in self.kernels if k.trials]
        lines = [f"tuned {len(tuned)} of {len(self.kernels)} kernels for {self.target}: {self.trials} "
                 f"trials in {self.seconds:.0f} s (budget {self.budget_s:.0f} s), database {self.database}",
                 f"  {'kernel':<32} {'trials':>6} {'ours ms':>9} {'tuned ms':>9}  {'speedup':>7}  uses"]
        for k in sorted(self.kernels, key=lambda k: -(k.ours_ms or 0.0)):
            ours = f"{k.ours_ms:9.4f}" if k.ours_ms is not None else f"{'failed':>9}"
            best = f"{k.tuned_ms:9.4f}" if k.tuned_ms is not None else f"{'-':>9}"
            gain = f"{k.ours_ms / k.tuned_ms:6.2f}x" if k.ours_ms and k.tuned_ms else f"{'-':>7}"
            use = "tuned" if k.use_tuned else ("ours" if k.scheduled else "ours (generic)")
            lines.append(f"  {k.name[:32]:<32} {k.trials:>6} {ours} {best}  {gain}  {use}")
        lines.append(f"  sum of kernels: ours {self.model_ms(False):.3f} ms, with tuning "
                     f"{self.model_ms(True):.3f} ms")
        return "\n".join(lines)


class _BudgetSpent(Exception):
    pass


# ---- measuring and searching ---------------------------------------------------------------


def _build_function():
    """MetaSchedule's default build without `import tvm.s_tir.tensor_intrin` (TVM-NOTES). A
    closure, so that cloudpickle sends it by value and the worker does not import qcompiler."""

    def build(mod, target, _params):
        from tvm.driver import build as tvm_build
        from tvm.s_tir.transform import RemoveWeightLayoutRewriteBlock

        return tvm_build(RemoveWeightLayoutRewriteBlock(skip_tensor_rewrite=True)(mod), target=target)

    return build


def _register_intrinsics(arch: str) -> None:
    """Register the tensor intrinsics of `arch` only. Creating a tuning context imports the
    package `tvm.s_tir.tensor_intrin`, which imports every target's (CUDA's take most of its
    20-50 s); an empty package registered first makes that import free, and only this
    architecture's module is loaded into it."""
    import importlib
    import sys
    import types

    import tvm.s_tir

    name = "tvm.s_tir.tensor_intrin"
    if name not in sys.modules:
        package = types.ModuleType(name)
        package.__path__ = [str(Path(tvm.s_tir.__file__).parent / "tensor_intrin")]
        sys.modules[name] = package
    importlib.import_module(f"{name}.{'arm_cpu' if arch == 'aarch64' else 'x86'}")


def _export_function(compiler: str):
    """Export a built kernel as a shared library linked by `compiler` (the cross compiler of
    the devices' architecture), which their RPC servers load; MetaSchedule's default export
    is a tar of objects that the device would have to link itself. A closure, as above."""

    def export(mod):
        import os
        import tempfile

        from tvm.support import cc

        path = os.path.join(tempfile.mkdtemp(), "tvm_tmp_mod.so")
        mod.export_library(path, fcompile=cc.cross_compiler(compiler))
        return path

    return export


def _alloc_function():
    """MetaSchedule's argument allocation for devices whose runtime has no random fill (the
    aarch64 runtime wheel is built without it): random arrays made here and copied over.
    Kernels run the same instructions on any values. A closure, as above."""

    def alloc(_session, device, args_info, alloc_repeat):
        import numpy as np
        from tvm.s_tir.meta_schedule.runner.utils import alloc_argument_common

        generator = np.random.default_rng(0)

        def fill(tensor):
            dtype, shape = str(tensor.dtype), tuple(int(d) for d in tensor.shape)
            if dtype == "bool":
                data = generator.integers(0, 2, size=shape).astype(bool)
            elif dtype.startswith(("int", "uint")):
                info = np.iinfo(dtype)
                data = generator.integers(max(info.min, -128), min(info.max, 127) + 1, size=shape,
                                          dtype=dtype)
            else:
                data = generator.standard_normal(shape).astype(dtype)
            tensor.copyfrom(data)

        return alloc_argument_common(fill, device, args_info, alloc_repeat)

    return alloc


def _measurers(rpc: str | None, key: str | None, timeout: float, cross_arch: str | None = None):
    """MetaSchedule's builder (here; cross-compiling for `cross_arch` devices) and runner
    (here, or on the tracker's devices). The runner times each kernel CONFIRM_ROUNDS times
    (each the mean of at least 30 ms of calls) and a trial counts their median: on a shared
    machine one round is often an outlier."""
    from tvm.s_tir import meta_schedule as ms

    export = None
    if cross_arch is not None:
        from qcompiler.backends.tvm import aarch64

        export = _export_function(aarch64.require_cross_compiler())
    builder = ms.builder.LocalBuilder(f_build=_build_function(), f_export=export, max_workers=1,
                                      timeout_sec=timeout)
    evaluator = ms.runner.EvaluatorConfig(number=3, repeat=CONFIRM_ROUNDS, min_repeat_ms=30)
    if rpc is None:
        return builder, ms.runner.LocalRunner(timeout_sec=timeout, evaluator_config=evaluator)
    if not key:
        raise OptionError("--rpc needs --key: the key the devices registered under")
    from qcompiler.backends.tvm.remote import Tracker

    tracker = Tracker(rpc)  # fails now, naming the tracker or the key, rather than per trial
    tracker.check_key(key)
    devices = len(tracker.devices(key))  # each measures its share of a batch
    config = ms.runner.RPCConfig(tracker_host=tracker.host, tracker_port=tracker.port,
                                 tracker_key=key, session_timeout_sec=int(timeout))
    return builder, ms.runner.RPCRunner(rpc_config=config, evaluator_config=evaluator,
                                        max_workers=devices,
                                        f_alloc_argument=_alloc_function() if cross_arch else None)


def _measure(builder, runner, tvm_target, functions) -> list[float | None]:
    """The standalone latency (ms, the median of the runner's repeats) of each PrimFunc, in
    one batch (None where it failed to build or run)."""
    import numpy as np
    import tvm
    from tvm.s_tir import meta_schedule as ms

    built = builder.build([ms.builder.BuilderInput(tvm.IRModule({"main": f}), tvm_target) for f in functions])
    inputs = [(i, ms.runner.RunnerInput(b.artifact_path, "cpu", ms.arg_info.ArgInfo.from_prim_func(f)))
              for i, (b, f) in enumerate(zip(built, functions, strict=True)) if b.error_msg is None]
    times: list[float | None] = [None] * len(functions)
    for (i, _), future in zip(inputs, runner.run([r for _, r in inputs]), strict=True):
        result = future.result()
        if result.error_msg is None and result.run_secs:
            times[i] = 1e3 * float(np.median([float(s) for s in result.run_secs]))
    return times


def _search(tasks, tvm_target, db, builder, runner, report, deadline: float, start: float,
            trials_per_round: int, progress) -> None:
    """MetaSchedule's evolutionary search (XGBoost cost model) on `tasks` [(KernelResult,
    workload)] until the deadline; every measured trial goes into `db`."""
    import numpy as np
    from tvm.ir.utils import derived_object
    from tvm.s_tir import meta_schedule as ms

    @derived_object
    class Watch(ms.measure_callback.PyMeasureCallback):
        def apply(self, scheduler, task_id, _candidates, _builds, runs):
            result = tasks[task_id][0]
            result.trials += len(runs)
            report.trials += len(runs)
            for run in runs:
                if run.error_msg is None and run.run_secs:
                    seconds = float(np.median([float(s) for s in run.run_secs]))
                    if result.tuned_ms is None or seconds * 1e3 < result.tuned_ms:
                        result.tuned_ms = seconds * 1e3
            now = time.monotonic()
            report.seconds = now - start
            if progress is not None:
                progress(report)
            # Stop when the next batch, as long as this one, would end past the deadline. Not
            # with `terminate_task`: a task terminated while the scheduler joins it fails
            # TVM's own check; an exception unwinds the search (every measured trial is in
            # the database by then).
            if now + (now - batch_start[0]) > deadline:
                stopped[0] = True
                raise _BudgetSpent()  # reaches us as a RuntimeError through TVM's FFI
            batch_start[0] = now

    batch_start, stopped = [time.monotonic()], [False]

    # MetaSchedule's generic CPU rules: with a VNNI target it would also try its own VNNI
    # tensorization, which fails on every blocked kernel (ours carry their own intrinsics)
    # and took ~100 s per batch of candidates, whose builds then failed.
    quiet = logging.getLogger("qcompiler.tune")
    quiet.addHandler(logging.NullHandler())
    quiet.propagate = False
    search_target = _with_core_count(tvm_target)
    contexts = [ms.TuneContext(mod=as_module(workload), target=search_target,
                               space_generator=ms.space_generator.PostOrderApply(
                                   sch_rules="llvm", postprocs="llvm", mutator_probs="llvm"),
                               search_strategy=ms.search_strategy.EvolutionarySearch(
                                   population_size=128, init_min_unmeasured=32),
                               task_name=result.name, logger=quiet, rand_state=i, num_threads="physical")
                for i, (result, workload) in enumerate(tasks)]
    scheduler_log = logging.getLogger("tvm.s_tir.meta_schedule")
    level = scheduler_log.level
    scheduler_log.setLevel(logging.WARNING)  # its per-batch tables are for TVM's own CLI
    try:
        with tempfile.TemporaryDirectory(prefix="qc-tune-") as work_dir:
            ms.tune.tune_tasks(tasks=contexts, task_weights=[1.0] * len(tasks), work_dir=work_dir,
                               max_trials_global=1_000_000, num_trials_per_iter=trials_per_round,
                               builder=builder, runner=runner, database=db, cost_model="xgb",
                               measure_callbacks=[*ms.measure_callback.MeasureCallback.create("default"),
                                                  Watch()],
                               task_scheduler="round-robin")
    except Exception as error:  # noqa: BLE001  (how the budget ends the search, through TVM)
        if not stopped[0]:
            reason = str(error).strip().splitlines()[-1] if str(error).strip() else type(error).__name__
            raise TVMBackendError(f"MetaSchedule's search failed: {reason}") from error
    finally:
        scheduler_log.setLevel(level)


def tune(graph, target="host", *, budget_s: float, database, batch: int | None = None,
         rpc: str | None = None, key: str | None = None, trials_per_round: int = 8,
         timeout: float = 60.0, progress=None) -> TuneReport:
    """Tune the kernels of `graph` for `target` for about `budget_s` seconds (module
    docstring), adding every measured trial to the database directory `database` (created, or
    extended: earlier records seed the search) and the confirmed choices to its
    `choices.json`. `rpc`/`key`: measure on the devices of a TVM RPC tracker. `progress(report)`
    is called after every batch of trials."""
    from qcompiler.backends.tvm.lower import lower_graph
    from qcompiler.backends.tvm.plan import plan_graph
    from qcompiler.backends.tvm.target import check_host_can_run, host_arch, resolve_target

    if not budget_s > 0:
        raise OptionError(f"--budget must be a positive duration, got {budget_s} s")
    start = time.monotonic()
    spec = resolve_target(target)
    if spec.is_cross and rpc is None:
        raise TargetError(f"{spec.name} ({spec.arch}) kernels cannot run on this {host_arch()} "
                          "machine: tune them on devices of that architecture through a tracker "
                          "(rpc='HOST:PORT', key='KEY'; qcompiler tune --rpc HOST:PORT --key KEY)")
    if rpc is None:
        check_host_can_run(spec)
    if not graph.is_static:
        if batch is None:
            raise OptionError(f"graph {graph.name} has a symbolic batch: pass batch= (tuning "
                              "measures kernels of fixed shapes)")
        graph = graph.at_batch(batch)
    tvm_target = spec.tvm_target()
    directory = Path(database)
    earlier = read_choices(directory, tvm_target) if directory.is_dir() and any(directory.iterdir()) else {}
    directory.mkdir(parents=True, exist_ok=True)
    lowered = lower_graph(graph, spec.arch, plan_graph(graph, spec.isa))
    report = TuneReport(spec.name, directory, budget_s)
    kernels, seen = [], set()
    for name, workload, schedule in kernels_of(lowered, legalized(lowered.module, tvm_target)):
        result = KernelResult(name, list(lowered.functions.get(name, [name])), workload_key(workload),
                              schedule is not None)
        if result.key not in seen:  # the same kernel twice (shapes and constants): tuned once
            seen.add(result.key)
            kernels.append((result, workload, ours_schedule(workload, schedule)))
    report.kernels = [result for result, _, _ in kernels]

    _register_intrinsics(spec.arch)
    builder, runner = _measurers(rpc, key, timeout, cross_arch=spec.arch if spec.is_cross else None)
    db = open_database(directory)
    began = time.monotonic()
    for (result, workload, ours), milliseconds in zip(
            kernels, _measure(builder, runner, tvm_target, [o.mod["main"] for _, _, o in kernels]),
            strict=True):
        result.ours_ms = milliseconds
        if milliseconds is not None and not db.has_workload(as_module(workload)):
            commit_record(db, workload, ours.trace, milliseconds, tvm_target)  # the seed record
    report.seconds = time.monotonic() - start
    if progress is not None:
        progress(report)
    per_kernel = (time.monotonic() - began) / max(len(kernels), 1)
    total = sum(r.ours_ms or 0.0 for r in report.kernels)
    # The heaviest kernels, as many as can get ROUNDS_PER_KERNEL batches of trials in the time
    # left (a trial costs about what measuring one of ours did).
    left = start + budget_s - time.monotonic()
    affordable = max(1, int(left / (ROUNDS_PER_KERNEL * trials_per_round * per_kernel)))
    chosen = sorted([k for k in kernels if k[0].ours_ms and k[0].ours_ms >= MIN_SHARE * total],
                    key=lambda k: -k[0].ours_ms)[:affordable]
    reserve = 2 * per_kernel * len(chosen)  # the confirmation: ours and tuned, built and timed
    deadline = start + budget_s - reserve
    if chosen and time.monotonic() + trials_per_round * per_kernel < deadline:
        _search([(r, w) for r, w, _ in chosen], tvm_target, db, builder, runner, report, deadline,
                start, trials_per_round, progress)
    _confirm(chosen, db, tvm_target, builder, runner)
    choices = dict(earlier)
    for result in report.kernels:
        entry = {"name": result.name, "nodes": result.nodes, "ours_ms": result.ours_ms,
                 "tuned_ms": result.tuned_ms, "use": "tuned" if result.use_tuned else "ours"}
        if result.use_tuned:
            entry["trace"] = result.trace
        if result.use_tuned or result.trials or result.key not in choices:
            choices[result.key] = entry
    write_choices(directory, tvm_target, choices)
    report.seconds = time.monotonic() - start
    return report


def _with_core_count(tvm_target):
    """The target MetaSchedule's search needs: with "num-cores" (its rules size parallel loops
    by it). Our host targets carry it; an aarch64 target without it is searched as if the
    device had as many cores as this machine (give a TVM target dict with "num-cores" for a
    board with another count)."""
    import os

    import tvm

    if "num-cores" in tvm_target.attrs:
        return tvm_target
    return tvm.target.Target({**tvm_target.export(), "num-cores": os.cpu_count() or 1})


def _confirm(chosen, db, tvm_target, builder, runner) -> None:
    """Each kernel whose best tuned record beats ours is re-measured back to back with ours
    (one batch); the tuned schedule is used only if it is still faster."""
    import numpy as np

    pairs = []
    for result, workload, ours in chosen:
        record = best_tuned(db, workload, ours.trace)
        if record is None or not record.run_secs:
            continue
        result.tuned_ms = 1e3 * float(np.median([float(s) for s in record.run_secs]))
        if result.tuned_ms >= result.ours_ms:
            continue
        pairs.append((result, ours.mod["main"], replayed(workload, record), trace_id(record.trace)))
    if not pairs:
        return
    times = _measure(builder, runner, tvm_target, [f for _, o, t, _ in pairs for f in (o, t)])
    for index, (result, _, _, trace) in enumerate(pairs):
        ours_ms, tuned_ms = times[2 * index], times[2 * index + 1]
        if ours_ms is None or tuned_ms is None:
            continue  # not confirmed: ours stays
        result.ours_ms, result.tuned_ms, result.trace = ours_ms, tuned_ms, trace
        result.use_tuned = tuned_ms < ours_ms
