"""Shared benchmark plumbing: machine info, timing, and the JSON + markdown result writer.

Every benchmark writes `benchmarks/results/<name>.json` (the rows plus the machine they
were measured on: CPU model, core count, thread settings, library versions, date, git
commit) and `benchmarks/results/<name>.md` (the same rows as a markdown table, which the
README links). A figure counts only if the committed script produces it.
"""

from __future__ import annotations

import datetime
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from importlib import metadata
from pathlib import Path

RESULTS_DIR = Path(__file__).resolve().parent / "results"
_LIBRARIES = ("qcompiler", "torch", "numpy", "networkx", "onnx", "onnxruntime", "apache-tvm",
              "scikit-learn", "scikit-image")
_THREAD_VARIABLES = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "TVM_NUM_THREADS")
# glibc's malloc gives a large freed block back to the kernel, so an eager torch call that
# allocates activations of a few MB page-faults them in afresh on every call. Measured on the
# ResNet-style model at batch 32: 34 ms per call with the defaults, 23 ms with both thresholds
# raised (either alone: 46 or 62 ms). The fault cost follows bytes allocated, not arithmetic,
# and moves with the allocator's dynamic threshold, so it blurs what a compression saves.
# 32 MiB is the largest mmap threshold glibc accepts on 64-bit machines.
STEADY_ALLOCATOR = {"MALLOC_MMAP_THRESHOLD_": str(32 << 20), "MALLOC_TRIM_THRESHOLD_": str(1 << 30)}


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def library_versions() -> dict[str, str]:
    versions = {}
    for name in _LIBRARIES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    return versions


def git_commit() -> str | None:
    """The commit the benchmark ran at, with `-dirty` if the work tree had changes."""
    root = Path(__file__).resolve().parent.parent
    try:
        commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=root, check=True,
                                capture_output=True, text=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=root,
                               check=True, capture_output=True, text=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return None
    return commit + ("-dirty" if dirty else "")


def machine_info() -> dict:
    import torch

    return {
        "cpu": cpu_model(),
        "machine": platform.machine(),
        "cores": os.cpu_count(),
        "cores_available": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None,
        "torch_threads": torch.get_num_threads(),
        # Other processes on the machine skew timings; the load average shows how busy it was.
        "load_average_1m": os.getloadavg()[0] if hasattr(os, "getloadavg") else None,
        "thread_variables": {name: os.environ.get(name) for name in _THREAD_VARIABLES},
        "allocator_variables": {name: os.environ.get(name) for name in STEADY_ALLOCATOR},
        "python": platform.python_version(),
        "platform": platform.platform(),
        "libraries": library_versions(),
        "git_commit": git_commit(),
        "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
    }


def set_threads(threads: int) -> None:
    """One thread setting for every library in the run (torch now; TVM reads the variable)."""
    import torch

    torch.set_num_threads(threads)
    os.environ["TVM_NUM_THREADS"] = str(threads)
    os.environ["OMP_NUM_THREADS"] = str(threads)


def rerun_with_steady_allocator() -> None:
    """Start this script again with `STEADY_ALLOCATOR` in its environment (glibc reads it
    only at start-up), unless the variables are already set or the C library is not glibc.
    Call it first thing under `if __name__ == "__main__"`, never from an importer."""
    missing = {name: value for name, value in STEADY_ALLOCATOR.items() if name not in os.environ}
    if not missing or platform.libc_ver()[0] != "glibc":
        return
    sys.stdout.flush()
    sys.stderr.flush()
    os.execve(sys.executable, [sys.executable, *sys.argv], {**os.environ, **missing})


def median_seconds(function: Callable[[], object], repeats: int, warmup: int = 1) -> tuple[float, list]:
    """Median wall time of `function` over `repeats` calls after `warmup` untimed calls."""
    for _ in range(warmup):
        function()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        function()
        times.append(time.perf_counter() - start)
    return statistics.median(times), times


def markdown_table(rows: Sequence[dict], columns: Sequence[str]) -> str:
    def cell(value) -> str:
        if isinstance(value, float):
            return f"{value:.4g}"
        return str(value)

    lines = ["| " + " | ".join(columns) + " |", "|" + "|".join("---" for _ in columns) + "|"]
    lines += ["| " + " | ".join(cell(row.get(c, "")) for c in columns) + " |" for row in rows]
    return "\n".join(lines)


def machine_line(machine: dict) -> str:
    libraries = ", ".join(f"{k} {v}" for k, v in machine["libraries"].items())
    allocator = {k: v for k, v in machine.get("allocator_variables", {}).items() if v is not None}
    allocator_part = "".join(f", {k}={v}" for k, v in allocator.items())
    return (f"{machine['cpu']}, {machine['cores']} cores, torch threads {machine['torch_threads']}"
            f"{allocator_part}, load average {machine['load_average_1m']:.1f} at the start; "
            f"Python {machine['python']}; {libraries}; commit {machine['git_commit']}; "
            f"{machine['date']}")


def write_results(name: str, title: str, tables: dict[str, tuple[list[dict], Sequence[str]]],
                  command: str, notes: Sequence[str] = (), settings: dict | None = None,
                  results_dir: Path | None = None) -> tuple[Path, Path]:
    """Write `<name>.json` and `<name>.md`. `tables` maps a section heading to (rows, the
    columns to show in markdown); the JSON keeps every field of every row. `command` is
    the command line that produced the results."""
    results_dir = Path(results_dir or RESULTS_DIR)
    results_dir.mkdir(parents=True, exist_ok=True)
    machine = machine_info()
    payload = {"benchmark": name, "title": title, "command": command, "machine": machine,
               "settings": settings or {},
               "notes": list(notes), "results": {heading: rows for heading, (rows, _) in tables.items()}}
    json_path = results_dir / f"{name}.json"
    json_path.write_text(json.dumps(payload, indent=2, default=str) + "\n")
    parts = [f"# {title}", "", f"Machine: {machine_line(machine)}", ""]
    if settings:
        parts += ["Settings: " + ", ".join(f"{k}={v}" for k, v in settings.items()), ""]
    for heading, (rows, columns) in tables.items():
        parts += [f"## {heading}", "", markdown_table(rows, columns), ""]
    parts += [f"- {note}" for note in notes]
    parts += ["", f"Generated by `{command}`; raw data in `{json_path.name}`."]
    md_path = results_dir / f"{name}.md"
    md_path.write_text("\n".join(parts).rstrip() + "\n")
    return json_path, md_path
