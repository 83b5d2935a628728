"""The TVM commands of the `qcompiler` command line, and the demo's TVM section.

    qcompiler compile MODEL --target host -o out/    quantize with the target's preset, lower to
                                                     integers, compile, write library + manifest
    qcompiler run out/ [--input x.npy]               run a compiled model directory
    qcompiler bench MODEL --backend tvm              latency (median, min, max) of a backend

`cli.py` adds these to its parser (`add_commands`) and calls `demo_section` after the
interpreter part of `qcompiler demo`.
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import TextIO

import numpy as np

import qcompiler as qc
from qcompiler.backends.tvm import TARGET_NAMES, lowering_target, quant_preset
from qcompiler.backends.tvm import target as targets
from qcompiler.backends.tvm.artifact import type_text
from qcompiler.quantization.lowering import FALLBACK_OPS

DEMO_THREADS = 2
# The /proc/cpuinfo flags that decide which int8 instructions a kernel may use.
ISA_FLAGS = ("avx2", "fma", "avx512f", "avx512bw", "avx512vl", "avx512_vnni", "avx_vnni", "amx_int8",
             "asimd", "asimddp", "i8mm")


def set_threads(threads: int) -> None:
    """TVM reads TVM_NUM_THREADS when its thread pool starts (at the first run); torch's
    count is set around the timing (`torch_threads`), onnxruntime's per session."""
    os.environ["TVM_NUM_THREADS"] = str(threads)


def describe_cpu() -> str:
    flags = [f for f in ISA_FLAGS if f in targets.cpu_flags()]
    return (f"{targets.cpu_model()}; {targets.host_arch()}, SIMD level {targets.isa_of(targets.cpu_flags())} "
            f"({' '.join(flags) or 'no SIMD flags found'})")


def _progress(out: TextIO, text: str, start: float) -> None:
    out.write(f"{text}: {time.perf_counter() - start:.1f} s\n")
    out.flush()


def integer_graph_for(loaded, spec: str, target: str, preset: str | None, count: int, out: TextIO):
    """Capture, quantize with the target's preset (or `preset`), lower to integers (with
    reported float fall backs where an op has no integer form). Returns (float graph, integer
    graph, strict, evaluation batches)."""
    from qcompiler.cli_models import capture
    from qcompiler.examples.batches import demo_data
    from qcompiler.pipelines import canonical_float_pipeline

    graph = capture(loaded, out)
    if loaded.stage == "integer":  # a saved integer graph: built as it is
        return graph, graph, not any(node.op in FALLBACK_OPS for node in graph), []
    if loaded.stage == "fake-quant":  # a saved fake-quant graph: lowered as it is
        strict = not any(node.op in FALLBACK_OPS for node in graph)
        return graph, qc.lower_to_integer(graph, strict=strict, target="generic"), strict, []
    graph = canonical_float_pipeline().run(graph)
    # The target's preset is lowered with the lowering target that checks its ranges; a preset
    # given by hand is left to `build`, whose refusal names the preset to use instead.
    lowering = lowering_target(target) if preset is None else "generic"
    preset = preset or quant_preset(target)
    calibration, evaluation, described = demo_data(spec, loaded.example_inputs, count)
    out.write(f"int8 preset {preset!r} (qc.backends.tvm.quant_preset({target!r})); calibration / "
              f"evaluation data: {described}\n")
    start = time.perf_counter()
    quantized = qc.quantize(graph, calibration, config=qc.QuantConfig.preset(preset), progress=False)
    _progress(out, "qc.quantize", start)
    strict = not any(node.op in FALLBACK_OPS for node in quantized)
    integer = qc.lower_to_integer(quantized, strict=strict, target=lowering)
    return graph, integer, strict, evaluation


def run_compile(args, out: TextIO) -> int:
    from qcompiler.cli_models import UsageError, load_model

    if args.target not in TARGET_NAMES:
        raise UsageError(f"unknown target {args.target!r}; valid targets: {', '.join(TARGET_NAMES)}")
    if args.batch is not None and args.batch < 1:
        raise UsageError(f"--batch must be a positive batch size, got {args.batch}")
    loaded = load_model(args.model)
    if args.float:
        from qcompiler.cli_models import capture
        from qcompiler.pipelines import canonical_float_pipeline

        graph = canonical_float_pipeline().run(capture(loaded, out))
    else:
        _, graph, _, _ = integer_graph_for(loaded, args.model, args.target, args.preset,
                                           args.calibration, out)
    start = time.perf_counter()
    batch = args.batch
    if args.db and batch is None:  # tuned kernels match by shape: `tune` tunes at the example batch
        batch = batch_of(loaded.example_inputs)
    compiled = qc.backends.tvm.build(graph, args.target, batch=batch, database=args.db)
    _progress(out, f"qc.backends.tvm.build for {compiled.target.describe()}", start)
    directory = compiled.export_library(args.output)
    size = (directory / "model.so").stat().st_size
    out.write(f"wrote {directory}: model.so ({size / 1024:.0f} kB) and manifest.json\n")
    for kind, tensors in (("input", compiled.inputs), ("output", compiled.outputs)):
        for tensor in tensors:
            out.write(f"  {kind} {tensor['name']}: {type_text(tensor)}\n")
    for fall_back in compiled.fall_backs:
        out.write(f"  float fall back: {fall_back}\n")
    return 0


def run_artifact(args, out: TextIO) -> int:
    from qcompiler.cli_models import UsageError

    compiled = qc.backends.tvm.load(args.model)
    manifest = compiled.manifest
    out.write(f"loaded {args.model}: graph {manifest['graph']}, target {compiled.target.describe()}, "
              f"TVM {manifest['versions']['tvm']}\n")
    if args.input:
        if len(args.input) != len(compiled.inputs):
            raise UsageError(f"{args.model} takes {len(compiled.inputs)} input(s), "
                             f"{len(args.input)} --input file(s) given")
        try:
            arrays = [np.load(path, allow_pickle=False) for path in args.input]
        except (OSError, ValueError) as error:
            raise UsageError(f"cannot read --input: {error}") from None
    else:
        arrays = compiled.example_inputs()
        out.write("no --input given: seeded random inputs\n")
    outputs = compiled.run(*arrays)
    outputs = outputs if isinstance(outputs, tuple) else (outputs,)
    for spec, array in zip(compiled.outputs, outputs, strict=True):
        first = np.array2string(array.reshape(-1)[:8], precision=4, separator=", ")
        out.write(f"output %{spec['name']}: {array.dtype}{list(array.shape)}, first values {first}\n")
    if args.output:
        if len(outputs) == 1:
            np.save(args.output, outputs[0])
        else:
            np.savez(args.output, *outputs)
        out.write(f"wrote {args.output}\n")
    return 0


def run_model_on_tvm(args, out: TextIO) -> int:
    """`qcompiler run MODEL --backend tvm`: quantize, lower, compile for the host, run the
    example inputs and compare with the interpreter."""
    from qcompiler.cli_models import load_model

    loaded = load_model(args.model)
    _, graph, strict, _ = integer_graph_for(loaded, args.model, "host", None, 8, out)
    start = time.perf_counter()
    compiled = qc.backends.tvm.build(graph, "host", batch=batch_of(loaded.example_inputs))
    _progress(out, "qc.backends.tvm.build for host", start)
    arrays = [x.numpy() for x in loaded.example_inputs]
    outputs = compiled.run(*arrays)
    expected = qc.backends.interpreter.run(graph, *arrays, strict=strict)
    outputs, expected = (v if isinstance(v, tuple) else (v,) for v in (outputs, expected))
    for spec, array, reference in zip(compiled.outputs, outputs, expected, strict=True):
        first = np.array2string(array.reshape(-1)[:8], precision=4, separator=", ")
        differing = int(np.count_nonzero(array != reference))
        out.write(f"output %{spec['name']}: {list(array.shape)}, first values {first}\n"
                  f"  vs interpreter: {differing} of {array.size} elements differ\n")
    return 0


def run_bench(args, out: TextIO) -> int:
    from qcompiler.analysis.latency import compare_latencies, torch_engine, torch_threads
    from qcompiler.cli_models import UsageError, capture, load_model
    from qcompiler.pipelines import canonical_float_pipeline

    if args.float and args.backend == "interpreter":
        raise UsageError("the integer interpreter runs integer graphs only; drop --float")
    set_threads(args.threads)
    loaded = load_model(args.model)
    out.write(f"CPU: {describe_cpu()}; {args.threads} threads\n")
    inputs = loaded.example_inputs
    if args.backend == "torch":
        engine, label = torch_engine(loaded.require_module("bench --backend torch"), inputs), \
            "torch eager FP32"
    elif args.float:
        graph = canonical_float_pipeline().run(capture(loaded, out))
        engine, label = _engine(args, graph, inputs, True, out)
    else:
        _, graph, strict, _ = integer_graph_for(loaded, args.model, args.target, args.preset, 8, out)
        engine, label = _engine(args, graph, inputs, strict, out)
    with torch_threads(args.threads):
        latency = compare_latencies({label: engine}, rounds=args.repeat)[label]
    out.write(f"{label}: {latency} per call, batch {inputs[0].shape[0]}, median of {args.repeat} "
              "rounds\n")
    if args.profile and args.backend == "tvm":
        out.write(str(engine.compiled.benchmark(repeat=1, profile=True)).split("\n", 1)[1] + "\n")
    return 0


def _engine(args, graph, inputs, strict: bool, out: TextIO):
    arrays = [x.numpy() for x in inputs]
    kind = "FP32" if args.float else "INT8"
    if args.backend == "interpreter":
        return (lambda: qc.backends.interpreter.run(graph, *arrays, strict=strict)), \
            f"integer interpreter {kind}"
    start = time.perf_counter()
    compiled = qc.backends.tvm.build(graph, args.target, batch=batch_of(inputs))
    _progress(out, f"qc.backends.tvm.build for {args.target}", start)

    def engine():
        return compiled.run(*arrays)

    engine.compiled = compiled
    return engine, f"TVM {kind} ({args.target}, untuned)"


def demo_section(module, float_graph, integer, strict: bool, calibration, evaluation,
                 interpreter_outputs: np.ndarray, out: TextIO, rounds: int = 7) -> None:
    """Compile the demo's integer graph for this machine, check it against the interpreter's
    outputs and time it beside torch, onnxruntime FP32/INT8 and the interpreter."""
    from qcompiler.analysis.latency import compare_latencies, onnxruntime_engines, torch_engine, torch_threads

    set_threads(DEMO_THREADS)
    spec = targets.resolve_target("host")
    out.write(f"\n== TVM backend (qc.backends.tvm, target host) ==\nCPU: {describe_cpu()}\n"
              f"TVM target: {spec.describe()}\n")
    first = evaluation[0] if isinstance(evaluation[0], tuple) else (evaluation[0],)
    batch = batch_of(first)  # the evaluation batches' size (the last one may be smaller)
    evaluation = [b for b in evaluation if batch_of(b if isinstance(b, tuple) else (b,)) == batch]
    interpreter_outputs = interpreter_outputs[:sum(len(b[0] if isinstance(b, tuple) else b)
                                                   for b in evaluation)]
    start = time.perf_counter()
    compiled = qc.backends.tvm.build(integer, "host", batch=batch)
    _progress(out, "qc.backends.tvm.build (integer graph)", start)
    outputs = np.concatenate([np.asarray(compiled.run(*(b if isinstance(b, tuple) else (b,))))
                              for b in evaluation])
    differing = int(np.count_nonzero(outputs != interpreter_outputs))
    verdict = "bit-exact" if differing == 0 else "NOT bit-exact"
    out.write(f"TVM vs interpreter on {len(evaluation)} evaluation batches: {differing} of "
              f"{outputs.size:,} outputs differ ({verdict})\n")
    if compiled.fall_backs:
        out.write(f"float fall backs compiled as float ops: {len(compiled.fall_backs)}\n")
    start = time.perf_counter()
    float_build = qc.backends.tvm.build(float_graph, "host", batch=batch)
    _progress(out, "qc.backends.tvm.build (float graph)", start)

    arrays = [x.numpy() for x in first]
    engines = {"torch eager FP32": torch_engine(module, first)}
    start = time.perf_counter()
    try:
        fp32, int8 = onnxruntime_engines(module, first, calibration, DEMO_THREADS)
        engines.update({"onnxruntime FP32": fp32, "onnxruntime INT8 (QDQ u8/s8 per-channel)": int8})
        _progress(out, "onnxruntime: ONNX export and quantize_static", start)
    except Exception as error:  # a model the ONNX exporter or quantizer refuses
        out.write(f"onnxruntime: skipped ({type(error).__name__}: {str(error).splitlines()[0][:120]})\n")
    engines["TVM FP32 (ours, untuned)"] = lambda: float_build.run(*arrays)
    engines["TVM INT8 (ours, untuned)"] = lambda: compiled.run(*arrays)
    engines["integer interpreter (numpy)"] = lambda: qc.backends.interpreter.run(integer, *arrays,
                                                                                 strict=strict)
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    out.write(f"timing {len(engines)} engines ({rounds} rounds each; load average {load:.1f} on "
              f"{os.cpu_count()} cores: other work on the machine slows 2-thread engines)...\n")
    out.flush()
    with torch_threads(DEMO_THREADS):
        latencies = compare_latencies(engines, rounds=rounds)
    out.write(f"\nlatency, batch {batch}, {DEMO_THREADS} threads, median of {rounds} rounds (min-max):\n")
    width = max(len(name) for name in latencies)
    for name, latency in latencies.items():
        out.write(f"  {name:<{width}}  {latency.median_ms:9.2f} ms  ({latency.min_ms:.2f}-"
                  f"{latency.max_ms:.2f})\n")
    out.write("TVM's kernels here are generic TE computes (one thread, LLVM's own vectorizing, "
              "nothing tiled, parallelized or tensorized): bit-exact, not yet fast; tiled, "
              "vectorized, VNNI/sdot-tensorized kernels are the next issue.\n")


def add_commands(commands, model_help: str) -> None:
    compile_command = commands.add_parser(
        "compile", help="quantize a model with the target's preset, lower it to integers, compile "
                        "it with TVM and write the library and its manifest")
    compile_command.add_argument("model", metavar="MODEL", help=model_help)
    compile_command.add_argument("--target", default="host",
                                 help=f"TVM target: {', '.join(TARGET_NAMES)} (default host)")
    compile_command.add_argument("-o", "--output", required=True, metavar="DIR",
                                 help="directory to write (replaced atomically if it holds a model)")
    compile_command.add_argument("--float", action="store_true", help="compile the float graph instead")
    compile_command.add_argument("--preset", default=None,
                                 help="QuantConfig preset (default: the one the target needs)")
    compile_command.add_argument("--calibration", type=int, default=8, metavar="N",
                                 help="calibration inputs (default 8)")
    compile_command.add_argument("--batch", type=int, default=None, metavar="N",
                                 help="compile for this batch size only (faster kernels; default: "
                                      "one library for every batch size)")
    compile_command.add_argument("--db", default=None, metavar="DIR",
                                 help="apply this tuning database (qcompiler tune --db DIR); compiles at the "
                                      "model's example batch unless --batch is given")
    compile_command.set_defaults(run=run_compile)

    bench = commands.add_parser("bench", help="time a model on a backend (median, min, max)")
    bench.add_argument("model", metavar="MODEL", help=model_help)
    bench.add_argument("--backend", choices=["tvm", "interpreter", "torch"], default="tvm",
                       help="tvm (compiled, default), interpreter (numpy), torch (float eager)")
    bench.add_argument("--target", default="host", choices=TARGET_NAMES, help="TVM target (default host)")
    bench.add_argument("--float", action="store_true", help="time the float graph (tvm)")
    bench.add_argument("--preset", default=None, help="QuantConfig preset (default: the target's)")
    bench.add_argument("--repeat", type=int, default=10, help="timing rounds (default 10)")
    bench.add_argument("--threads", type=int, default=DEMO_THREADS, help="threads (default 2)")
    bench.add_argument("--profile", action="store_true", help="per-kernel times (tvm)")
    bench.set_defaults(run=run_bench)


def batch_of(inputs) -> int:
    """The batch size TVM compiles a graph with a symbolic batch for: that of these inputs."""
    return int(inputs[0].shape[0]) if inputs and inputs[0].dim() else 1


def is_artifact(path: str) -> bool:
    """A `qcompiler run` argument naming a compiled-model directory (not a model)."""
    return Path(path).is_dir()
