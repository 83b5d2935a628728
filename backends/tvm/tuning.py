"""MetaSchedule tuning of a graph's kernels, for a time budget, into a database directory that
later builds apply (`build(graph, target, database=DIR)`, `qcompiler compile --db DIR`).

    report = tune(integer_graph, "host", budget_s=600, database="tuning/", batch=1)
    print(report)                                  # per kernel: trials, best latency found
    compiled = build(integer_graph, "host", batch=1, database="tuning/")

A task is one kernel (one graph node: the pipeline does not fuse, `schedule.py`). Tuning only
re-orders, tiles, vectorizes and parallelizes loops; the integer arithmetic (int32
accumulation, the requantize chain) is the same expression, so tuned integer builds stay bit
for bit the interpreter's (tested). Float fall backs may change in the last bits (a reduction
in another order).

Two things make MetaSchedule usable on a small machine (TVM-NOTES): the default builder imports
every target's tensor intrinsics in each fresh worker (20-50 s, so every trial timed out), so
the builder here gets its own build function that does not; and MetaSchedule counts trials,
not time, so a measure callback checks the budget after each batch of trials and ends the
search (every measured trial is already in the database by then).

Not done: seeding the search with our own kernel schedules (they are being rewritten in
another branch; today's kernels are unscheduled TE computes, which MetaSchedule's design
spaces start from anyway), and tuning through the RPC tracker (`--rpc`).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path

from qcompiler.backends.tvm.errors import TargetError, TVMBackendError


class _BudgetSpent(Exception):
    pass


def legalized(module, tvm_target):
    """The Relax module with every op legalized to a PrimFunc: what tasks are extracted from
    and what the database is applied to (before `tvm.compile`'s own pipeline, whose
    legalization then finds nothing left to do)."""
    import tvm
    from tvm import relax

    with tvm_target:
        passes = [relax.transform.LegalizeOps(), relax.transform.AnnotateTIROpPattern(),
                  relax.transform.FoldConstant()]
        return tvm.transform.Sequential(passes)(module)


def apply_database(module, tvm_target, database):
    """`module` legalized, with every kernel the database has a record for scheduled as the
    best record says (the others stay as they are)."""
    import tvm
    from tvm import relax

    directory = Path(database)
    if not (directory / "database_workload.json").is_file():
        raise TVMBackendError(f"{directory} is not a tuning database (no database_workload.json); "
                              "create one with `qcompiler tune MODEL --db DIR`")
    with tvm_target, tvm.transform.PassContext(opt_level=3):
        return relax.transform.MetaScheduleApplyDatabase(str(directory))(legalized(module, tvm_target))


def _register_intrinsics(arch: str) -> None:
    """Register the tensor intrinsics of `arch` only. MetaSchedule imports the package
    `tvm.s_tir.tensor_intrin`, which imports every target's (CUDA's take most of its 20-50 s),
    when it creates a tuning context; an empty package registered first makes that import
    free, and only this architecture's module is loaded into it."""
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


def _build_function():
    """MetaSchedule's default build without `import tvm.s_tir.tensor_intrin`. A closure, so
    that cloudpickle sends it by value and the worker does not import qcompiler (torch)."""

    def build(mod, target, _params):
        from tvm.driver import build as tvm_build
        from tvm.s_tir.transform import RemoveWeightLayoutRewriteBlock

        return tvm_build(RemoveWeightLayoutRewriteBlock(skip_tensor_rewrite=True)(mod), target=target)

    return build


@dataclass
class TaskResult:
    name: str  # the kernel (PrimFunc)
    nodes: list[str]  # the graph nodes it computes
    trials: int = 0
    best_ms: float | None = None  # best measured latency of the kernel


@dataclass
class TuneReport:
    target: str
    database: Path
    budget_s: float
    seconds: float = 0.0
    trials: int = 0
    tasks: list[TaskResult] = field(default_factory=list)

    def __str__(self) -> str:
        lines = [f"tuned {len(self.tasks)} kernels for {self.target}: {self.trials} trials in "
                 f"{self.seconds:.0f} s (budget {self.budget_s:.0f} s), database {self.database}",
                 f"  {'kernel':<40} {'trials':>6} {'best ms':>9}  nodes"]
        for task in sorted(self.tasks, key=lambda t: -(t.best_ms or 0)):
            best = f"{task.best_ms:9.4f}" if task.best_ms is not None else f"{'-':>9}"
            lines.append(f"  {task.name[:40]:<40} {task.trials:>6} {best}  {', '.join(task.nodes[:2])}")
        return "\n".join(lines)


def tune(graph, target="host", *, budget_s: float, database, batch: int | None = None,
         trials_per_round: int = 16, progress=None) -> TuneReport:
    """Tune the kernels of `graph` for `target` for about `budget_s` seconds (tasks already
    started finish their batch of `trials_per_round` trials), adding every measured trial to
    the database directory `database` (created, or extended: earlier records are kept and
    seed the search). `progress(report)` is called after every batch."""
    from tvm.ir.utils import derived_object
    from tvm.s_tir import meta_schedule as ms

    from qcompiler.backends.tvm.lower import lower_graph
    from qcompiler.backends.tvm.target import check_host_can_run, resolve_target

    if budget_s <= 0:
        raise TVMBackendError(f"the tuning budget must be positive, got {budget_s} s")
    spec = resolve_target(target)
    if spec.is_cross:
        raise TargetError(f"tuning measures kernels on this machine and {spec.name} is another "
                          f"architecture ({spec.arch}); tuning through an RPC tracker is not built yet")
    check_host_can_run(spec)
    if not graph.is_static:
        if batch is None:
            raise TVMBackendError(f"graph {graph.name} has a symbolic batch: pass batch=")
        graph = graph.at_batch(batch)
    tvm_target = spec.tvm_target()
    lowered = lower_graph(graph, spec.arch)
    module = legalized(lowered.module, tvm_target)
    tasks = ms.relax_integration.extract_tasks(module, tvm_target)
    directory = Path(database)
    directory.mkdir(parents=True, exist_ok=True)
    report = TuneReport(spec.name, directory, budget_s, tasks=[
        TaskResult(task.task_name, list(lowered.functions.get(task.task_name, []))) for task in tasks])
    start = time.monotonic()

    @derived_object
    class Progress(ms.measure_callback.PyMeasureCallback):
        def apply(self, scheduler, task_id, candidates, builds, runs):
            result = report.tasks[task_id]
            result.trials += len(runs)
            report.trials += len(runs)
            for run in runs:
                if run.error_msg is None and run.run_secs:
                    seconds = sum(float(s) for s in run.run_secs) / len(run.run_secs)
                    if result.best_ms is None or seconds * 1e3 < result.best_ms:
                        result.best_ms = seconds * 1e3
            report.seconds = time.monotonic() - start
            if progress is not None:
                progress(report)
            if report.seconds > budget_s:
                raise _BudgetSpent()

    _register_intrinsics(spec.arch)
    contexts, weights = ms.relax_integration.extracted_tasks_to_tune_contexts(
        tasks, str(directory), num_threads="physical")
    try:
        ms.tune.tune_tasks(
            tasks=contexts, task_weights=weights, work_dir=str(directory),
            max_trials_global=1_000_000, num_trials_per_iter=trials_per_round,
            builder=ms.builder.LocalBuilder(f_build=_build_function(), max_workers=1),
            runner=ms.runner.LocalRunner(), database=ms.database.JSONDatabase(work_dir=str(directory)),
            measure_callbacks=[*ms.measure_callback.MeasureCallback.create("default"), Progress()])
    except Exception as error:  # noqa: BLE001  (the budget ends the search from a callback)
        if report.seconds <= budget_s:
            raise TVMBackendError(f"MetaSchedule failed: {str(error).strip().splitlines()[-1]}") from None
    report.seconds = time.monotonic() - start
    return report
