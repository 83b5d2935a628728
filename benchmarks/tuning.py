"""What MetaSchedule tuning buys over our own schedules: INT8 builds of MobileNetV2 and a
ResNet-18 tuned for a wall-clock budget each (`qc.backends.tvm.tuning.tune`, seeded with our
schedules), against our default build and onnxruntime INT8 and FP32, batch 1, in one run.

    python benchmarks/tuning.py                       # 2 models x 10 min of tuning: ~30 min
    python benchmarks/tuning.py --models resnet18 --budget 60

Needs the `tvm`, `onnx` and `bench` extras and the pretrained MobileNetV2 weights (README).
Models and calibration as `latency.py` (the pretrained MobileNetV2 on photographs; the
ResNet-18 layout with random weights on random inputs), quantized with the host's preset.

Per model: tuning runs for `--budget` seconds into a fresh database directory (its time is
reported separately, and is not part of any latency); then our build without and with the
database, each checked bit for bit against the interpreter on the evaluation inputs, and the
four engines timed round-robin at `--threads` threads (`compare_latencies`). Per kernel: our
schedule's and the best tuned schedule's standalone time (MetaSchedule's runner, the median
of 3 rounds; re-measured back to back where tuned looked faster) and which one builds use.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import rerun_with_steady_allocator, set_threads, write_results  # noqa: E402
from latency import ISA_FLAGS, load  # noqa: E402

import qcompiler as qc  # noqa: E402
from qcompiler.analysis.latency import compare_latencies, onnxruntime_engines, torch_threads  # noqa: E402
from qcompiler.backends.tvm import target as targets  # noqa: E402
from qcompiler.backends.tvm import tuning  # noqa: E402

ENGINES = ("TVM INT8, our schedules", "TVM INT8, tuned", "onnxruntime INT8", "onnxruntime FP32")
KERNELS_SHOWN = 8  # per model, the heaviest by our time


def differing(build, graph, inputs) -> int:
    return sum(int(np.count_nonzero(build.run(x.numpy()) != qc.backends.interpreter.run(graph, x.numpy())))
               for x in inputs)


def measure(name: str, args, directory: Path) -> tuple[dict, list[dict]]:
    load_before = os.getloadavg()[0]
    model, calibration, evaluation = load(name, args.calibration)
    config = qc.QuantConfig.preset(qc.backends.tvm.quant_preset("host"))
    quantized = qc.quantize(model, calibration, config=config, progress=False)
    graph = qc.lower_to_integer(quantized, target=qc.backends.tvm.lowering_target("host"))

    def progress(report):
        print(f"  {name}: {report.seconds:5.0f} s, {report.trials} trials, kernels' best sum "
              f"{sum(k.best_ms or 0 for k in report.kernels):.3f} ms", flush=True)

    start = time.perf_counter()
    report = tuning.tune(graph, "host", budget_s=args.budget, database=directory / name, batch=1,
                         progress=progress)
    tuning_s = time.perf_counter() - start
    print(report, flush=True)
    ours = qc.backends.tvm.build(graph, "host", batch=1)
    tuned = qc.backends.tvm.build(graph, "host", batch=1, database=directory / name)
    example = evaluation[0]
    ort_fp32, ort_int8 = onnxruntime_engines(model, (example,), calibration, args.threads)
    x = example.numpy()
    engines = {"TVM INT8, our schedules": lambda: ours.run(x), "TVM INT8, tuned": lambda: tuned.run(x),
               "onnxruntime INT8": ort_int8, "onnxruntime FP32": ort_fp32}
    with torch_threads(args.threads):
        latencies = compare_latencies(engines, rounds=args.rounds)
    row = {"model": name, "budget s": args.budget, "tuning s": round(tuning_s, 1),
           "trials": report.trials, "kernels": len(report.kernels),
           "kernels tuned": sum(1 for k in report.kernels if k.trials),
           "kernels using the tuned schedule": sum(1 for k in report.kernels if k.use_tuned),
           "kernels' sum, ours ms": round(report.model_ms(False), 3),
           "kernels' sum, with tuning ms": round(report.model_ms(True), 3),
           "outputs differing from the interpreter (ours, tuned)":
               f"{differing(ours, graph, evaluation)}, {differing(tuned, graph, evaluation)}",
           "load before": round(load_before, 2), "load after": round(os.getloadavg()[0], 2)}
    for engine, latency in latencies.items():
        row[f"{engine} ms"] = round(latency.median_ms, 3)
        row[f"{engine} range ms"] = f"{latency.min_ms:.3g}-{latency.max_ms:.3g}"
    row["tuned / ours"] = round(latencies["TVM INT8, tuned"].median_ms
                                / latencies["TVM INT8, our schedules"].median_ms, 3)
    if not row["kernels using the tuned schedule"]:  # the same kernels: the ratio is noise
        row["tuned / ours"] = f"{row['tuned / ours']} (identical builds)"
    print(row, flush=True)
    kernels = [{"model": name, "kernel": k.name, "nodes": ", ".join(k.nodes[:2]),
                "ours ms": round(k.ours_ms, 4) if k.ours_ms is not None else "",
                "best tuned ms": round(k.tuned_ms, 4) if k.tuned_ms is not None else "",
                "trials": k.trials, "builds use": "tuned" if k.use_tuned else "ours"}
               for k in sorted(report.kernels, key=lambda k: -(k.ours_ms or 0))[:KERNELS_SHOWN]]
    return row, kernels


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", nargs="+", default=["mobilenet_v2", "resnet18"],
                        choices=["mobilenet_v2", "resnet18"])
    parser.add_argument("--budget", type=float, default=600.0, help="tuning seconds per model")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument("--calibration", type=int, default=16)
    args = parser.parse_args()
    set_threads(args.threads)
    rows, kernels = [], []
    with tempfile.TemporaryDirectory(prefix="qc-tuning-bench-") as directory:
        for name in args.models:
            row, shown = measure(name, args, Path(directory))
            rows.append(row)
            kernels.extend(shown)
    spec = targets.resolve_target("host")
    flags = sorted(set(ISA_FLAGS) & targets.cpu_flags())
    tables = {
        "Latency per call, batch 1 (median over rounds)": (
            rows, ["model", *(f"{e} ms" for e in ENGINES), "tuned / ours"]),
        "Tuning (time reported apart from latency)": (
            rows, ["model", "budget s", "tuning s", "trials", "kernels", "kernels tuned",
                   "kernels using the tuned schedule", "kernels' sum, ours ms",
                   "kernels' sum, with tuning ms", "outputs differing from the interpreter (ours, tuned)",
                   "load before", "load after"]),
        f"Heaviest {KERNELS_SHOWN} kernels per model: ours vs the best tuned schedule": (
            kernels, ["model", "kernel", "nodes", "ours ms", "best tuned ms", "trials", "builds use"]),
    }
    notes = [f"CPU: {targets.cpu_model()}; TVM target: {spec.describe()}; ISA flags: {' '.join(flags)}; "
             f"{args.threads} threads for every engine",
             "tuning: MetaSchedule evolutionary search (XGBoost cost model, its generic CPU schedule "
             "rules), seeded with our schedules as records; a tuned kernel is used only if measured "
             "faster than ours twice (search, then back to back)",
             "kernel times are standalone (MetaSchedule's runner, each kernel on its own buffers), "
             "so their sum is not the model's latency",
             "load averages before and after each model show how busy the shared 2-core machine "
             "was; latency ranges (fastest-slowest round) are in the JSON"]
    write_results("tuning", "Tuning: MetaSchedule seeded with our schedules, against them and "
                  "onnxruntime", tables, ("python benchmarks/tuning.py " + " ".join(sys.argv[1:])).strip(),
                  notes, settings={"budget s per model": args.budget, "threads": args.threads,
                                   "rounds": args.rounds, "calibration inputs": args.calibration})


if __name__ == "__main__":
    rerun_with_steady_allocator()
    main()
