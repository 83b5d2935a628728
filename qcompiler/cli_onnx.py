"""The ONNX command of the `qcompiler` command line:

    qcompiler export MODEL --format onnx -o model.onnx [--quantize [--preset int8]]

MODEL is what the other commands take (a built-in name, `path/to/file.py:factory`, an
`.onnx` file) or a saved graph (`.qc`, `qc.save`). A float model is written as float ONNX;
`--quantize` first quantizes it (the preset's QuantConfig, calibrated on the demo data:
photo crops for image models, random batches otherwise) and writes QDQ ONNX. A saved
fake-quant graph is written as QDQ as it is. `cli.py` adds the command (`add_commands`).
"""

from __future__ import annotations

import time
from typing import TextIO

from qcompiler.quantization.config import PRESETS

FORMATS = ("onnx",)


def run_export(args, out: TextIO) -> int:
    import qcompiler as qc
    from qcompiler.analysis.report_render import check_output_path
    from qcompiler.cli_models import UsageError, capture, load_model
    from qcompiler.quantization.quantizers import fake_quant_nodes

    check_output_path(args.output, "ONNX")  # before the model is loaded and quantized
    loaded = load_model(args.model)
    graph = capture(loaded, out)
    if args.quantize:
        if loaded.stage != "float":
            raise UsageError(f"{args.model} is a {loaded.stage} graph already; export it without "
                             "--quantize")
        from qcompiler.examples.batches import demo_data
        from qcompiler.pipelines import canonical_float_pipeline

        calibration, _, described = demo_data(args.model, loaded.example_inputs, args.calibration)
        start = time.perf_counter()
        graph = qc.quantize(canonical_float_pipeline().run(graph), calibration,
                            config=qc.QuantConfig.preset(args.preset), progress=None)
        out.write(f"quantized with preset {args.preset!r} on {described} in "
                  f"{time.perf_counter() - start:.1f} s\n")
    path = qc.backends.onnx.export(graph, args.output)
    kind = "QDQ" if fake_quant_nodes(graph) else "float"
    out.write(f"wrote {path} ({kind} ONNX, opset {qc.backends.onnx.OPSET}, "
              f"{path.stat().st_size / 1024:.0f} KiB)\n")
    return 0


def add_commands(commands, model_help: str) -> None:
    export = commands.add_parser(
        "export", help="write a model (float, or quantized with --quantize) as ONNX: QDQ for "
                       "quantized graphs, checked with onnx.checker")
    export.add_argument("model", metavar="MODEL", help=f"{model_help}; or a saved graph (.qc)")
    export.add_argument("--format", choices=FORMATS, default="onnx", help="output format (onnx)")
    export.add_argument("-o", "--output", required=True, metavar="FILE", help="the file to write")
    export.add_argument("--quantize", action="store_true",
                        help="quantize first (PTQ with --preset on the demo data) and write QDQ")
    export.add_argument("--preset", default="int8", choices=list(PRESETS),
                        help="QuantConfig preset for --quantize (default int8)")
    export.add_argument("--calibration", type=int, default=8, metavar="N",
                        help="calibration inputs for --quantize (default 8)")
    export.set_defaults(run=run_export)
