"""`qcompiler bench MODEL --rpc HOST:PORT --key KEY`: time a model on the devices registered
under KEY at a TVM RPC tracker (backends/tvm/remote.py, docs/remote.md).

MODEL is a model (quantized with the --target's preset, lowered, compiled for --target, which
must be the devices' target) or a directory `qcompiler compile` wrote (uploaded as it is).
"""

from __future__ import annotations

import time
from typing import TextIO

import qcompiler as qc


def add_arguments(bench) -> None:
    """The --rpc options of `bench`, whose command then runs `run_bench`: remote with --rpc,
    cli_tvm's local bench without."""
    bench.add_argument("--rpc", metavar="HOST:PORT", default=None,
                       help="time on remote devices through this TVM RPC tracker (docs/remote.md)")
    bench.add_argument("--key", default=None, help="the device key at the tracker (with --rpc)")
    bench.add_argument("--devices", type=int, default=None, metavar="N",
                       help="use at most N devices under the key (default: every free one)")
    bench.add_argument("--number", type=int, default=1,
                       help="calls per timing round (with --rpc; default 1)")
    bench.add_argument("--timeout", type=float, default=60.0, metavar="S",
                       help="give up a device silent for S seconds (with --rpc; default 60)")
    bench.set_defaults(run=run_bench)


def run_bench(args, out: TextIO) -> int:
    from qcompiler.cli_tvm import run_bench as run_local_bench

    return run_remote_bench(args, out) if args.rpc else run_local_bench(args, out)


def run_remote_bench(args, out: TextIO) -> int:
    from qcompiler.backends.tvm import remote
    from qcompiler.cli_models import UsageError, capture, load_model
    from qcompiler.cli_tvm import batch_of, integer_graph_for, is_artifact

    if not args.key:
        raise UsageError("--rpc needs --key: the device key the RPC servers registered with")
    if args.backend != "tvm":
        raise UsageError(f"--rpc times TVM builds; drop --backend {args.backend}")
    remote.Tracker(args.rpc).check_key(args.key)  # before compiling: a wrong address fails now
    if is_artifact(args.model):
        model = args.model
        out.write(f"uploading the compiled model {args.model}\n")
    else:
        loaded = load_model(args.model)
        if args.float:
            from qcompiler.pipelines import canonical_float_pipeline

            graph = canonical_float_pipeline().run(capture(loaded, out))
        else:
            _, graph, _, _ = integer_graph_for(loaded, args.model, args.target, args.preset, 8, out)
        start = time.perf_counter()
        model = qc.backends.tvm.build(graph, args.target, batch=batch_of(loaded.example_inputs))
        out.write(f"qc.backends.tvm.build for {model.target.describe()}: "
                  f"{time.perf_counter() - start:.1f} s\n")
    out.write(f"timing {args.repeat} rounds on the devices under key {args.key!r} at {args.rpc} "
              f"(a device silent for {args.timeout:g} s is given up)...\n")
    out.flush()
    result = remote.benchmark(model, args.rpc, args.key, repeat=args.repeat, number=args.number,
                              devices=args.devices, timeout=args.timeout)
    out.write(f"{result}\n")
    return 1 if result.partial or not result.outputs_agree else 0
