"""`qcompiler tune MODEL --target host --budget 10m --db DIR`: MetaSchedule tuning of the
model's kernels into a database directory that `qcompiler compile/bench --db DIR` (or
$QCOMPILER_TUNING_DB) apply (backends/tvm/tuning.py).

The model is quantized with the target's preset and lowered as `compile` does; the command
prints the trials and the best latency so far as it goes, then per kernel what tuning found,
and the whole model's latency untuned and tuned (both built here, same inputs, checked equal).
"""

from __future__ import annotations

import re
import sys
import time
from typing import TextIO

import numpy as np

import qcompiler as qc


def parse_budget(text: str) -> float:
    """Seconds in "90", "90s", "10m", "1h"."""
    match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([smh]?)\s*", str(text))
    if not match:
        from qcompiler.cli_models import UsageError

        raise UsageError(f"--budget {text!r} is not a duration: write 90s, 10m or 1h")
    return float(match.group(1)) * {"": 1, "s": 1, "m": 60, "h": 3600}[match.group(2)]


def add_command(commands, model_help: str) -> None:
    from qcompiler.backends.tvm import TARGET_NAMES

    tune = commands.add_parser("tune", help="tune the model's TVM kernels with MetaSchedule into a "
                                            "database that compile --db applies")
    tune.add_argument("model", metavar="MODEL", help=model_help)
    tune.add_argument("--target", default="host", choices=TARGET_NAMES, help="TVM target (default host)")
    tune.add_argument("--budget", default="10m", help="tuning time: 90s, 10m, 1h (default 10m)")
    tune.add_argument("--db", required=True, metavar="DIR", help="tuning database directory "
                      "(created, or extended: earlier records seed the search)")
    tune.add_argument("--float", action="store_true", help="tune the float graph instead")
    tune.add_argument("--preset", default=None, help="QuantConfig preset (default: the target's)")
    tune.add_argument("--threads", type=int, default=2, help="threads (default 2)")
    tune.set_defaults(run=run_tune)


def _graph(args, out: TextIO):
    from qcompiler.cli_models import capture, load_model
    from qcompiler.cli_tvm import batch_of, integer_graph_for
    from qcompiler.pipelines import canonical_float_pipeline

    loaded = load_model(args.model)
    if args.float:
        graph = canonical_float_pipeline().run(capture(loaded, out))
    else:
        _, graph, _, _ = integer_graph_for(loaded, args.model, args.target, args.preset, 8, out)
    return graph, batch_of(loaded.example_inputs)


def run_tune(args, out: TextIO) -> int:
    from qcompiler.backends.tvm import tuning
    from qcompiler.cli_tvm import set_threads

    budget = parse_budget(args.budget)
    set_threads(args.threads)
    graph, batch = _graph(args, out)
    out.write(f"tuning {graph.name} for {args.target}, budget {budget:.0f} s, database {args.db}\n")
    out.flush()
    interactive = sys.stderr.isatty()

    def progress(report) -> None:
        tuned = [t.best_ms for t in report.tasks if t.best_ms is not None]
        line = (f"{report.seconds:6.0f} s  {report.trials:5d} trials  {len(tuned)}/{len(report.tasks)} "
                f"kernels measured, best-so-far sum {sum(tuned):.3f} ms")
        if interactive:
            sys.stderr.write("\r" + line)
            sys.stderr.flush()
        elif report.trials % 16 == 0:
            out.write(line + "\n")
            out.flush()

    report = tuning.tune(graph, args.target, budget_s=budget, database=args.db, batch=batch,
                         progress=progress)
    if interactive:
        sys.stderr.write("\n")
    out.write(f"{report}\n")
    start = time.perf_counter()
    untuned = qc.backends.tvm.build(graph, args.target, batch=batch, database=None)
    tuned = qc.backends.tvm.build(graph, args.target, batch=batch, database=args.db)
    out.write(f"built untuned and tuned: {time.perf_counter() - start:.1f} s\n")
    inputs = untuned.example_inputs()
    same = all(np.array_equal(a, b) for a, b in zip(_tuple(untuned.run(*inputs)), _tuple(tuned.run(*inputs)),
                                                   strict=True))
    before, after = untuned.benchmark(repeat=10), tuned.benchmark(repeat=10)
    out.write(f"model latency: untuned {before.median_ms:.3f} ms, tuned {after.median_ms:.3f} ms "
              f"({before.median_ms / after.median_ms:.2f}x); outputs {'identical' if same else 'DIFFER'}"
              f"\nlater builds apply it: qcompiler compile {args.model} --target {args.target} "
              f"--db {args.db} -o DIR\n")
    return 0 if same or args.float else 1


def _tuple(value):
    return value if isinstance(value, tuple) else (value,)
