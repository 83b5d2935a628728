"""The TVM backend against the interpreter and its peers: latency, compile time, exactness.

    python benchmarks/tvm_backend.py            # five models, MobileNetV2 at 224: ~5 min
    python benchmarks/tvm_backend.py --quick    # digits CNN and ResNet-style: ~1 min

For each model, quantized with the preset the host's kernels need
(`qc.backends.tvm.quant_preset("host")`) and lowered with `qc.lower_to_integer`:

- latency of one call (the model's example batch), median over rounds with the fastest and
  slowest round, every engine at the same thread count, timed round-robin
  (`qcompiler.analysis.latency`): torch eager FP32, onnxruntime FP32 and INT8 (its own
  `quantize_static`, QDQ, u8 activations, per-channel s8 weights), our TVM FP32 and INT8
  builds for the host (our schedules, no tuning), and the numpy integer interpreter;
- compile time of the two TVM builds;
- exactness: TVM's integer outputs against the interpreter's on evaluation inputs (elements
  that differ), and, for the float fall backs of the BERT-style encoder (layer_norm,
  softmax), each island `dequantize -> op -> quantize` fed the integers the interpreter
  computes on real inputs, run by TVM and by the interpreter (torch, float32): the fraction
  of island outputs that differ (one step where a float32 result sits within an ulp of a
  rounding boundary).

Models: the ImageNet-pretrained MobileNetV2 at 224x224, batch 1, on photographs; the digits
CNN, a ResNet-style CNN, a BERT-style encoder and a 1-D audio model with random weights on
random inputs, at their example batch sizes.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import set_threads, write_results  # noqa: E402

import qcompiler as qc  # noqa: E402
from qcompiler.analysis.latency import (  # noqa: E402
    compare_latencies,
    onnxruntime_engines,
    torch_engine,
    torch_threads,
)
from qcompiler.backends.interpreter import Interpreter  # noqa: E402
from qcompiler.backends.tvm import target as targets  # noqa: E402
from qcompiler.examples import models  # noqa: E402
from qcompiler.ir import Graph  # noqa: E402

MODELS = {"quick": ["digits_cnn", "resnet_style"],
          "full": ["pretrained_mobilenet_v2", "resnet_style", "digits_cnn", "bert_style", "audio_conv1d"]}
ROUNDS = {"quick": 5, "full": 9}
EVALUATION = {"quick": 4, "full": 16}  # inputs compared with the interpreter
ISLAND_INPUTS = 64  # BERT-style inputs whose fall-back islands are compared


def data(name: str, example: torch.Tensor, count: int, seed: int) -> list[torch.Tensor]:
    if name == "pretrained_mobilenet_v2":
        from qcompiler.examples.photos import calibration_pool, evaluation_pool

        pool = calibration_pool if seed == 0 else evaluation_pool
        return list(pool(count, seed=seed, batch_size=1, size=224))
    generator = torch.Generator().manual_seed(seed)
    if example.is_floating_point():
        return [torch.randn(example.shape, generator=generator) for _ in range(count)]
    return [torch.randint(0, 100, example.shape, generator=generator) for _ in range(count)]


def measure(name: str, mode: str, threads: int) -> dict:
    model, (example,) = getattr(models, name)()
    calibration = data(name, example, 32 if name == "pretrained_mobilenet_v2" else 8, seed=0)
    example = calibration[0]
    preset = qc.backends.tvm.quant_preset("host")
    start = time.perf_counter()
    quantized = qc.quantize(model, calibration, config=qc.QuantConfig.preset(preset), progress=False)
    strict = not any(node.op in ("softmax", "layer_norm") for node in quantized)
    integer = qc.lower_to_integer(quantized, strict=strict, target=qc.backends.tvm.lowering_target("host"))
    quantize_seconds = time.perf_counter() - start
    start = time.perf_counter()
    int8_build = qc.backends.tvm.build(integer, "host", batch=len(example))
    int8_seconds = time.perf_counter() - start
    float_graph = qc.trace(model, (example,))
    start = time.perf_counter()
    float_build = qc.backends.tvm.build(float_graph, "host", batch=len(example))
    float_seconds = time.perf_counter() - start

    evaluation = data(name, example, EVALUATION[mode], seed=1)
    differing = elements = 0
    for x in evaluation:
        expected = qc.backends.interpreter.run(integer, x.numpy(), strict=strict)
        differing += int(np.count_nonzero(int8_build.run(x.numpy()) != expected))
        elements += expected.size

    x = example.numpy()
    engines = {"torch eager FP32": torch_engine(model, (example,))}
    try:
        ort_fp32, ort_int8 = onnxruntime_engines(model, (example,), calibration, threads)
        engines.update({"onnxruntime FP32": ort_fp32, "onnxruntime INT8": ort_int8})
    except Exception as error:  # noqa: BLE001  (reported in the results, not fatal)
        print(f"{name}: onnxruntime skipped: {error}", file=sys.stderr)
    engines.update({"TVM FP32 (untuned)": lambda: float_build.run(x),
                    "TVM INT8 (untuned)": lambda: int8_build.run(x),
                    "interpreter": lambda: qc.backends.interpreter.run(integer, x, strict=strict)})
    with torch_threads(threads):
        latencies = compare_latencies(engines, rounds=ROUNDS[mode])
    row = {"model": name, "batch": int(example.shape[0]), "preset": preset,
           "quantize_s": round(quantize_seconds, 1), "tvm_int8_build_s": round(int8_seconds, 1),
           "tvm_fp32_build_s": round(float_seconds, 1),
           "int8_outputs_differing": f"{differing} of {elements}"}
    for engine, latency in latencies.items():
        row[f"{engine} ms"] = round(latency.median_ms, 3)
        row[f"{engine} range ms"] = f"{latency.min_ms:.3g}-{latency.max_ms:.3g}"
    if "onnxruntime INT8" in latencies:
        row["TVM INT8 / onnxruntime INT8"] = round(latencies["TVM INT8 (untuned)"].median_ms
                                                   / latencies["onnxruntime INT8"].median_ms, 1)
    row["interpreter / TVM INT8"] = round(latencies["interpreter"].median_ms
                                          / latencies["TVM INT8 (untuned)"].median_ms, 1)
    print(row, flush=True)
    return row


def island(graph: Graph, node) -> tuple[Graph, str]:
    """The fall back `node` alone: its dequantized input and the quantize after it."""
    dequantize = node.inputs[0].producer
    (quantize,) = node.output.users
    source = dequantize.inputs[0]
    part = Graph(f"island_{node.name}")
    value = part.add_input("q", source.shape, source.dtype)
    value = part.add_node("dequantize", [value], dequantize.attrs).output
    constants = [None if v is None else part.add_constant(v.name, v.data) for v in node.inputs[1:]]
    value = part.add_node(node.op, [value, *constants], node.attrs).output
    part.outputs.append(part.add_node("quantize", [value], quantize.attrs).output)
    return part.verify(), source.name


def fall_back_agreement() -> list[dict]:
    model, (example,) = models.bert_style()
    calibration = data("bert_style", example, 8, seed=0)
    quantized = qc.quantize(model, calibration, progress=False,
                            config=qc.QuantConfig.preset(qc.backends.tvm.quant_preset("host")))
    integer = qc.lower_to_integer(quantized, strict=False, target=qc.backends.tvm.lowering_target("host"))
    interpreter = Interpreter(integer, strict=False)
    inputs = data("bert_style", example, ISLAND_INPUTS, seed=3)
    rows = []
    for node in integer:
        if node.op not in ("layer_norm", "softmax"):
            continue
        part, source = island(integer, node)
        compiled = qc.backends.tvm.build(part, "host", batch=len(example))
        differing = elements = largest = 0
        for x in inputs:
            interpreter.run(x.numpy(), keep_values=True)
            q = interpreter.env[source]
            expected = qc.backends.interpreter.run(part, q, strict=False).astype(np.int64)
            actual = compiled.run(q).astype(np.int64)
            differing += int(np.count_nonzero(actual != expected))
            largest = max(largest, int(np.abs(actual - expected).max()))
            elements += expected.size
        rows.append({"island": node.name, "op": node.op, "outputs": elements, "differing": differing,
                     "fraction": differing / elements, "largest difference (steps)": largest})
        print(rows[-1], flush=True)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    mode = "quick" if args.quick else "full"
    set_threads(args.threads)
    rows = [measure(name, mode, args.threads) for name in MODELS[mode]]
    islands = fall_back_agreement() if mode == "full" else []
    spec = targets.resolve_target("host")
    engines = ["torch eager FP32", "onnxruntime FP32", "onnxruntime INT8", "TVM FP32 (untuned)",
               "TVM INT8 (untuned)", "interpreter"]
    columns = ["model", "batch", *[f"{e} ms" for e in engines], "TVM INT8 / onnxruntime INT8",
               "interpreter / TVM INT8"]
    tables = {"Latency per call (median over rounds)": (rows, columns),
              "Compile time and exactness": (rows, ["model", "preset", "quantize_s", "tvm_int8_build_s",
                                                    "tvm_fp32_build_s", "int8_outputs_differing"])}
    if islands:
        tables["BERT-style float fall backs, TVM vs interpreter on the same integers"] = (
            islands, ["island", "op", "outputs", "differing", "fraction", "largest difference (steps)"])
    notes = [f"TVM target: {spec.describe()}; {args.threads} threads for every engine",
             "TVM kernels: the blocked, tensorized kernels of backends/tvm/kernel_table.py where a "
             "layer has one (hand-written schedules, no tuning), the generic TE computes elsewhere",
             "latency ranges (fastest-slowest round) are in the JSON; on a shared machine the "
             "engines with spinning 2-thread pools (torch eager above all) suffer most from other "
             "work: read them with the load average of the machine line"]
    command = f"python benchmarks/tvm_backend.py{' --quick' if args.quick else ''}"
    write_results(f"tvm_backend{'_quick' if args.quick else ''}", "TVM backend: latency, compile time, "
                  "exactness", tables, command, notes, settings={"threads": args.threads, "mode": mode})


if __name__ == "__main__":
    main()
