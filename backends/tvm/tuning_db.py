"""The tuning database directory (`tuning.py`): MetaSchedule's JSON records plus
`choices.json`, which says per kernel whether builds use a tuned schedule (confirmed faster
than ours) or ours; the kernels of a lowered graph as tuning workloads; and applying the
choices to a build's module (`build(..., database=DIR)`).

A kernel is keyed by the structural hash of its workload: its compute before our schedule
(`lower.LoweredGraph.scheduled`), so the same kernel in another model or build shares its
records and choice. A tuned schedule is named by a hash of its trace's text.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

from qcompiler.backends.tvm.errors import TuningDatabaseError

CHOICES = "choices.json"


def workload_key(workload) -> str:
    import tvm
    import tvm_ffi

    return f"{tvm_ffi.structural_hash(tvm.IRModule({'main': workload})) & (2**64 - 1):016x}"


def trace_id(trace) -> str:
    return hashlib.sha256(str(trace).encode()).hexdigest()[:16]


def read_choices(database, tvm_target=None, option: str = "--db") -> dict:
    """The choices file of a database directory, checked: it exists, parses, and (given
    `tvm_target`) was tuned for that target. Errors name the directory as `option` (the CLI
    option or variable it came from)."""
    directory = Path(database)
    path = directory / CHOICES
    if not directory.is_dir():
        raise TuningDatabaseError(f"{option} {directory}: no such directory; create a tuning database "
                                  "with `qcompiler tune MODEL --db DIR`")
    if not path.is_file() or not (directory / "database_workload.json").is_file():
        raise TuningDatabaseError(f"{option} {directory} is not a tuning database (no {path.name} or "
                                  "database_workload.json); create one with `qcompiler tune MODEL --db DIR`")
    try:
        choices = json.loads(path.read_text())
        target, kernels = choices["target"], choices["kernels"]
    except (ValueError, KeyError, TypeError) as error:
        raise TuningDatabaseError(f"{option} {directory}: {path.name} is corrupt ({error}); delete the "
                                  "directory and tune again") from None
    if tvm_target is not None and target != str(tvm_target):
        raise TuningDatabaseError(f"{option} {directory} was tuned for target {target}, not {tvm_target}: "
                                  "use a database tuned with the same --target (one directory per "
                                  "target)")
    return kernels


def write_choices(directory: Path, tvm_target, kernels: dict) -> None:
    path = directory / CHOICES
    temporary = path.with_suffix(".tmp")
    temporary.write_text(json.dumps({"target": str(tvm_target), "kernels": kernels}, indent=1))
    os.replace(temporary, path)  # atomic: a build never reads half a file


def open_database(directory: Path, option: str = "--db"):
    from tvm.s_tir import meta_schedule as ms

    try:
        return ms.database.JSONDatabase(work_dir=str(directory))
    except Exception as error:  # noqa: BLE001  (TVM's error types; name the directory)
        reason = str(error).strip().splitlines()[-1] if str(error).strip() else type(error).__name__
        raise TuningDatabaseError(f"{option} {directory}: its records do not load ({reason}); delete "
                                  "the directory and tune again") from None


# ---- kernels: workloads, ours, applying the choices ----------------------------------------


def legalized(module, tvm_target):
    """The Relax module with every op legalized to a PrimFunc (as `cpu_pipeline` begins):
    what the kernels are taken from and the choices applied to."""
    import tvm
    from tvm import relax

    with tvm_target:
        passes = [relax.backend.DispatchSampling(), relax.backend.DispatchSortScan(),
                  relax.transform.LegalizeOps(), relax.transform.AnnotateTIROpPattern(),
                  relax.transform.FoldConstant()]
        return tvm.transform.Sequential(passes)(module)


def kernels_of(lowered, module):
    """(name, workload, ours schedule or None) of every PrimFunc of the legalized module."""
    import tvm

    for variable, function in module.functions.items():
        if isinstance(function, tvm.tirx.PrimFunc):
            name = variable.name_hint
            workload, schedule = lowered.scheduled.get(name, (function, None))
            # A standalone build needs a symbol (the module's AttachGlobalSymbol adds it later).
            yield name, workload.with_attr("global_symbol", "main"), schedule


def ours_schedule(workload, schedule):
    """Our schedule of `workload` as a traced Schedule (no instruction for a generic kernel)."""
    from tvm.s_tir import Schedule

    sch = Schedule(workload)
    if schedule is not None:
        schedule(sch)
    return sch


def apply_database(lowered, tvm_target, database, option: str = "--db"):
    """The legalized module of `lowered` (`lower.LoweredGraph`) with each kernel whose tuned
    schedule the database's choices confirmed faster than ours scheduled that way; every
    other kernel stays ours."""

    kernels = read_choices(database, tvm_target, option)
    module = legalized(lowered.module, tvm_target)
    chosen = [(name, workload, kernels[workload_key(workload)])
              for name, workload, _ in kernels_of(lowered, module)
              if kernels.get(workload_key(workload), {}).get("use") == "tuned"]
    if not chosen:
        return module
    db = open_database(Path(database), option)
    for name, workload, choice in chosen:
        import tvm

        records = db.get_top_k(db.commit_workload(tvm.IRModule({"main": workload})), 256)
        record = next((r for r in records if trace_id(r.trace) == choice["trace"]), None)
        if record is None:
            raise TuningDatabaseError(f"{option} {database}: the tuned schedule of kernel {name} is "
                                      f"missing from its records; delete the directory and tune again")
        function = replayed(workload, record).without_attr("global_symbol")
        module.update_func(module.get_global_var(name), function)
    return module


def as_module(workload):
    import tvm

    return tvm.IRModule({"main": workload})


def replayed(workload, record):
    """`workload` scheduled by the trace of a database record."""
    from tvm.s_tir import Schedule

    sch = Schedule(workload)
    record.trace.apply_to_schedule(sch, remove_postproc=False)
    return sch.mod["main"]


def commit_record(db, workload, trace, milliseconds: float, tvm_target) -> None:
    from tvm.s_tir import meta_schedule as ms

    entry = db.commit_workload(as_module(workload))
    db.commit_tuning_record(ms.database.TuningRecord(
        trace, entry, [milliseconds / 1e3], tvm_target, ms.arg_info.ArgInfo.from_prim_func(workload)))


def best_tuned(db, workload, ours_trace):
    """The fastest record of `workload` that is not our schedule, or None."""
    mod = as_module(workload)
    if not db.has_workload(mod):
        return None
    ours = trace_id(ours_trace)
    return next((r for r in db.get_top_k(db.commit_workload(mod), 64) if trace_id(r.trace) != ours), None)
