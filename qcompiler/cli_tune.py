"""`qcompiler tune MODEL --target host --budget 10m --db DIR [--rpc HOST:PORT --key KEY]`:
MetaSchedule tuning of the model's kernels, seeded with our schedules, into a database
directory that `qcompiler compile --db DIR` applies (backends/tvm/tuning.py).

The model is quantized with the target's preset and lowered as `compile` does. The command
shows the trials and the best latency so far as it goes (a tqdm bar on a terminal, a line
every `LINE_EVERY_S` when piped), then per kernel what tuning bought (ours vs tuned ms), and
the whole model built with and without the database: outputs compared (integer models must
be identical) and latency, measured here (or on the tracker's devices with --rpc).
"""

from __future__ import annotations

import re
import time
from typing import TextIO

import numpy as np

import qcompiler as qc

LINE_EVERY_S = 30.0


def parse_budget(text: str) -> float:
    """Seconds in "90", "90s", "10m", "1.5h"; positive."""
    from qcompiler.cli_models import UsageError

    match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([smh]?)\s*", str(text))
    if not match:
        raise UsageError(f"--budget {text!r} is not a duration: write 90s, 10m or 1h")
    seconds = float(match.group(1)) * {"": 1, "s": 1, "m": 60, "h": 3600}[match.group(2)]
    if seconds <= 0:
        raise UsageError(f"--budget {text!r} is zero: give the tuning some time (90s, 10m, 1h)")
    return seconds


def add_command(commands, model_help: str) -> None:
    from qcompiler.backends.tvm import TARGET_NAMES

    tune = commands.add_parser("tune", help="tune the model's TVM kernels with MetaSchedule (seeded "
                                            "with ours) into a database that compile --db applies")
    tune.add_argument("model", metavar="MODEL", help=model_help)
    tune.add_argument("--target", default="host", choices=TARGET_NAMES, help="TVM target (default host)")
    tune.add_argument("--budget", default="10m", help="wall-clock tuning time: 90s, 10m, 1h (default 10m)")
    tune.add_argument("--db", required=True, metavar="DIR", help="tuning database directory "
                      "(created, or extended: its records seed the search)")
    tune.add_argument("--float", action="store_true", help="tune the float graph instead")
    tune.add_argument("--preset", default=None, help="QuantConfig preset (default: the target's)")
    tune.add_argument("--threads", type=int, default=2, help="threads (default 2)")
    tune.add_argument("--rpc", metavar="HOST:PORT", default=None,
                      help="measure on the devices of this TVM RPC tracker (docs/remote.md)")
    tune.add_argument("--key", default=None, help="the device key at the tracker (with --rpc)")
    tune.add_argument("--timeout", type=float, default=60.0, metavar="S",
                      help="give up one build or measurement after S seconds (default 60)")
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


class _Progress:
    """A tqdm bar over the budget's seconds on a terminal; a line every LINE_EVERY_S when
    piped. Both show the trials and the sum of the kernels' best times so far."""

    def __init__(self, budget_s: float, out: TextIO):
        from tqdm.auto import tqdm

        from qcompiler.progress import show_bars

        self.out, self.last_line = out, 0.0
        self.bar = tqdm(total=round(budget_s), unit="s", desc="tuning", disable=not show_bars(None))

    def __call__(self, report) -> None:
        tuned = sum(1 for k in report.kernels if k.trials)
        text = (f"{report.trials} trials on {tuned} kernels, kernels' sum best-so-far "
                f"{sum(k.best_ms or 0.0 for k in report.kernels):.3f} ms (ours "
                f"{report.model_ms(False):.3f} ms)")
        if not self.bar.disable:
            self.bar.set_postfix_str(text, refresh=False)
            self.bar.update(max(0, min(round(report.seconds), self.bar.total) - self.bar.n))
        elif report.seconds - self.last_line >= LINE_EVERY_S:
            self.last_line = report.seconds
            self.out.write(f"  {report.seconds:5.0f} s: {text}\n")
            self.out.flush()

    def close(self) -> None:
        self.bar.close()


def run_tune(args, out: TextIO) -> int:
    from qcompiler.backends.tvm import remote, tuning
    from qcompiler.cli_tvm import set_threads

    budget = parse_budget(args.budget)
    if args.rpc and not args.key:
        from qcompiler.cli_models import UsageError

        raise UsageError("--rpc needs --key: the key the devices registered under at the tracker")
    set_threads(args.threads)
    graph, batch = _graph(args, out)
    where = f" on devices '{args.key}' at {args.rpc}" if args.rpc else ""
    out.write(f"tuning {graph.name} for {args.target}{where}: budget {budget:.0f} s, database {args.db}\n")
    out.flush()
    progress = _Progress(budget, out)
    try:
        report = tuning.tune(graph, args.target, budget_s=budget, database=args.db, batch=batch,
                             rpc=args.rpc, key=args.key, timeout=args.timeout, progress=progress)
    finally:
        progress.close()
    out.write(f"{report}\n")
    start = time.perf_counter()
    ours = qc.backends.tvm.build(graph, args.target, batch=batch)
    tuned = qc.backends.tvm.build(graph, args.target, batch=batch, database=args.db)
    out.write(f"built the model with and without the database: {time.perf_counter() - start:.1f} s\n")
    inputs = ours.example_inputs()
    if args.rpc:  # run where the kernels were measured (the devices may be another architecture)
        outputs = [remote.run(m, *inputs, tracker=args.rpc, key=args.key, timeout=args.timeout)
                   for m in (ours, tuned)]
    else:
        outputs = [m.run(*inputs) for m in (ours, tuned)]
    same = all(np.array_equal(a, b) for a, b in zip(_tuple(outputs[0]), _tuple(outputs[1]), strict=True))
    if args.rpc:
        before, after = (remote.benchmark(m, args.rpc, args.key, repeat=10, timeout=args.timeout)
                         for m in (ours, tuned))
    else:
        before, after = ours.benchmark(repeat=10), tuned.benchmark(repeat=10)
    verdict = "identical" if same else ("differ (float rounding)" if args.float else "DIFFER")
    out.write(f"model latency{where}: ours {before.median_ms:.3f} ms, with the database "
              f"{after.median_ms:.3f} ms ({before.median_ms / after.median_ms:.2f}x); outputs {verdict}\n"
              f"later builds apply it: qcompiler compile {args.model} --target {args.target} "
              f"--db {args.db} -o DIR\n")
    return 0 if same or args.float else 1


def _tuple(value):
    return value if isinstance(value, tuple) else (value,)
