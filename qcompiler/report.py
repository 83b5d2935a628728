"""A quantization report: what the quantizer saw and did, as one HTML or markdown file.

    qc.write_report("report.html", float_graph, quantized_graph, calibration_batches,
                    fidelity={"W8A8": qc.metrics.fidelity(fp32_logits, int8_logits)})

Sections:
- Summary: the quantizers and their formats.
- Cross-layer equalization: the per-output-channel weight ranges (max |w|) of every
  layer that `equalize_cross_layer` changes, before (the float graph after the PTQ float
  steps that precede equalization, `qcompiler.pipelines.ptq_float_steps`: high-bias
  absorption and batch-norm folding) and after equalization, as a table of the max/min channel-range
  ratio and plots for the `cle_layers` layers with the widest spread before. This is
  what CLE is for: per-tensor quantization gives every channel the range of the widest
  (Nagel et al. 2019, sec. 3-4). Computed from `float_graph`, whether or not the
  quantized graph was equalized.
- Activation ranges: for every activation fake_quant, the range its qparams represent,
  scale * ([qmin, qmax] - zero_point), and the [min, max] of the values reaching it on
  the calibration data (the graph run with its quantizers bypassed), with the share of
  values outside the representable range (clipped).
- Per-layer sensitivity: `qcompiler.quantization.sensitivity`, given, or computed on the first
  `sensitivity_batches` batches against `float_graph` (mode "one_float"); pass
  `sensitivity=False` to leave it out.
- Fidelity: the table given as `fidelity`, if any: a mapping of metric -> value, of
  variant -> {metric: value}, or a list of row dicts.

HTML (`.html`, `.htm`) is self-contained: figures are inlined as base64 PNG. Markdown
(`.md`) writes its PNGs into a folder `<name>_files` beside it. Everything is computed
before anything is written, and files are written atomically, so a failure leaves no
partial report (`qcompiler.analysis.report_render`).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import TextIO

import numpy as np
import torch

from qcompiler.analysis.report_render import (
    Block,
    Heading,
    Image,
    Paragraph,
    Table,
    check_output_path,
    new_figure,
    png_bytes,
    render_html,
    render_markdown,
    write_atomically,
)
from qcompiler.errors import OutputPathError, QuantizationError
from qcompiler.ir import Graph
from qcompiler.ir.evaluate import Evaluator, graph_inputs, is_fake_quant
from qcompiler.ir.ops import OUT_IN_WEIGHTED_OPS
from qcompiler.ir.pipeline import Pipeline
from qcompiler.numerics.equalization import output_channel_ranges
from qcompiler.pipelines import ptq_float_steps
from qcompiler.quantization.quantizers import (
    fake_quant_nodes,
    observed_name,
    require_calibrated,
)
from qcompiler.quantization.sensitivity import SensitivityReport, sensitivity_analysis


def write_report(path, float_graph: Graph, quantized_graph: Graph, calibration_data: Iterable,
                 fidelity=None, sensitivity: SensitivityReport | bool | None = None, *,
                 title: str | None = None, cle_layers: int = 6, sensitivity_batches: int = 2,
                 equalization=None, progress: bool | None = None) -> Path:
    """Write the report (see the module docstring) and return its path.

    equalization: the CLE pass whose effect is shown (default `equalize_cross_layer` with its
    default options; e.g. `equalize_cross_layer(replace_relu6=True)` for ReLU6 networks)."""
    path = check_report_path(path)
    suffix = path.suffix.lower()
    if not isinstance(float_graph, Graph) or not isinstance(quantized_graph, Graph):
        raise QuantizationError("write_report takes the float Graph and the quantized Graph "
                                f"(got {type(float_graph).__name__} and {type(quantized_graph).__name__})")
    if not fake_quant_nodes(quantized_graph):
        raise QuantizationError(f"graph {quantized_graph.name} has no fake_quant nodes; pass the "
                                "quantized graph (qc.quantize) as quantized_graph")
    require_calibrated(quantized_graph, "write_report")
    if calibration_data is None:
        raise QuantizationError("write_report needs calibration_data to measure activation ranges")
    batches = [graph_inputs(b, quantized_graph, i) for i, b in enumerate(calibration_data)]
    if not batches:
        raise QuantizationError("write_report: calibration_data is empty; give at least one batch")
    if sensitivity is None or sensitivity is True:
        sensitivity = sensitivity_analysis(quantized_graph, batches, reference=float_graph,
                                           max_batches=sensitivity_batches, progress=progress)
    title = title or f"Quantization report: {quantized_graph.name}"
    blocks = [*_summary(quantized_graph, batches), *_equalization(float_graph, cle_layers, equalization),
              *_activation_ranges(quantized_graph, batches), *_sensitivity(sensitivity),
              *_fidelity(fidelity)]
    if suffix == ".md":
        folder = path.with_name(f"{path.stem}_files")
        text, images = render_markdown(title, blocks, folder.name)
        write_atomically(path, text, images, folder)
    else:
        write_atomically(path, render_html(title, blocks))
    return path


def check_report_path(path) -> Path:
    """The report's path, checked before any work: a .html, .htm or .md file that can be
    written (its directory exists and is writable)."""
    path = Path(path)
    if path.suffix.lower() not in (".html", ".htm", ".md"):
        raise OutputPathError(f"report path {path} must end in .html, .htm or .md")
    return check_output_path(path, "report")


def _number(value) -> str:
    if isinstance(value, (bool, np.bool_)):
        return str(bool(value))
    if isinstance(value, (int, np.integer)):
        return str(int(value))
    if isinstance(value, (float, np.floating)):
        return f"{value:.4g}" if math.isfinite(value) else str(float(value))
    return str(value)


# ---- sections ----------------------------------------------------------------------------------


def _summary(graph: Graph, batches) -> list[Block]:
    weights = [fq for fq in fake_quant_nodes(graph) if fq.inputs[0].is_constant]
    activations = [fq for fq in fake_quant_nodes(graph) if not fq.inputs[0].is_constant]

    def formats(nodes) -> str:
        counts: dict[str, int] = {}
        for fq in nodes:
            a = fq.attrs
            kind = (f"{'int' if a.get('signed', True) else 'uint'}{a.get('bits', 8)} "
                    f"{'symmetric' if a.get('symmetric') else 'asymmetric'} "
                    f"{'per-tensor' if a.get('axis') is None else 'per-channel'}")
            counts[kind] = counts.get(kind, 0) + 1
        return ", ".join(f"{n} x {kind}" for kind, n in sorted(counts.items())) or "none"

    examples = sum(int(batch[0].shape[0]) if batch[0].dim() else 1 for batch in batches)
    return [Heading("Summary"), Table(("", ""), (
        ("nodes", str(len(graph))),
        ("weight quantizers", f"{len(weights)}: {formats(weights)}"),
        ("activation quantizers", f"{len(activations)}: {formats(activations)}"),
        ("calibration batches (examples)", f"{len(batches)} ({examples})"),
    ))]


def _equalization(float_graph: Graph, cle_layers: int, equalization) -> list[Block]:
    # The float steps of PTQ, the equalization last: the weights before and after it.
    *before_equalization, equalizing = ptq_float_steps(equalize=True, equalization=equalization)
    folded = Pipeline(before_equalization).run(float_graph)
    equalized, records = Pipeline([equalizing]).run_with_report(folded)
    notes = [note for record in records for note in record.notes]
    layers = []
    for node in folded:
        if node.op not in OUT_IN_WEIGHTED_OPS or not node.inputs[1].is_constant:
            continue
        after = equalized.values.get(node.name)
        after = after.producer if after is not None else None
        if after is None or not after.inputs[1].is_constant:
            continue
        if not np.array_equal(node.inputs[1].data, after.inputs[1].data):
            layers.append((node.name, node.op, output_channel_ranges(node.inputs[1].data),
                           output_channel_ranges(after.inputs[1].data)))
    blocks: list[Block] = [Heading("Cross-layer equalization: per-channel weight ranges"), Paragraph(
        "Per output channel max |w| of each layer that equalize_cross_layer rescales, before (float "
        "graph after the PTQ steps before equalization: batch norms folded) and after. A max/min "
        "ratio near 1 means per-tensor quantization wastes few levels on narrow channels.")]
    if notes:
        shown_notes = "; ".join(notes[:8]) + (f"; and {len(notes) - 8} more" if len(notes) > 8 else "")
        blocks.append(Paragraph(f"The pass says: {shown_notes}."))
    if not layers:
        return [*blocks, Paragraph("No layer of this graph is equalized.")]

    def spread(ranges) -> float:
        return float(ranges.max() / max(ranges.min(), np.finfo(np.float32).tiny))

    blocks.append(Table(("layer", "op", "channels", "max/min range before", "after", "max range before",
                         "after"), tuple((name, op, str(len(b)), _number(spread(b)), _number(spread(a)),
                                          _number(float(b.max())), _number(float(a.max())))
                                         for name, op, b, a in layers)))
    shown = sorted(layers, key=lambda layer: -spread(layer[2]))[:max(cle_layers, 0)]
    if shown:
        columns = min(3, len(shown))
        rows = -(-len(shown) // columns)
        figure = new_figure(4.2 * columns, 2.8 * rows)
        for index, (name, _, before, after) in enumerate(shown):
            axes = figure.add_subplot(rows, columns, index + 1)
            channels = np.arange(len(before))
            axes.plot(channels, before, ".", label="before", color="tab:red")
            axes.plot(channels, after, ".", label="after", color="tab:blue")
            axes.set_yscale("log")
            axes.set_title(name, fontsize=9)
            axes.set_xlabel("output channel", fontsize=8)
            axes.tick_params(labelsize=7)
            if index == 0:
                axes.legend(fontsize=7)
        blocks.append(Image(png_bytes(figure), f"Per-channel weight ranges before and after CLE "
                                               f"({len(shown)} layers with the widest spread before)"))
    return blocks


def _activation_ranges(graph: Graph, batches) -> list[Block]:
    points = [fq for fq in fake_quant_nodes(graph) if not fq.inputs[0].is_constant]
    names = list(dict.fromkeys(observed_name(fq.inputs[0]) for fq in points))
    evaluator = Evaluator(graph, bypass=is_fake_quant)  # the float graph
    observed = {name: [math.inf, -math.inf] for name in names}
    ranges = {}
    for fq in points:
        qparams = fq.output.qparams
        scale, zero_point = float(qparams.scale[0]), int(qparams.zero_point[0])
        ranges[fq.name] = (scale * (qparams.qmin - zero_point), scale * (qparams.qmax - zero_point))
    outside = {fq.name: 0 for fq in points}
    total = {name: 0 for name in names}
    for batch in batches:
        results = evaluator.run([batch], [graph.values[name] for name in names])
        values = {name: per_batch[0].numpy() for name, per_batch in zip(names, results, strict=True)}
        for name, array in values.items():
            observed[name][0] = min(observed[name][0], float(array.min()))
            observed[name][1] = max(observed[name][1], float(array.max()))
            total[name] += array.size
        for fq in points:
            array = values[observed_name(fq.inputs[0])]
            lo, hi = ranges[fq.name]
            outside[fq.name] += int(np.count_nonzero((array < lo) | (array > hi)))
    rows = []
    for fq in points:
        name = observed_name(fq.inputs[0])
        lo, hi = ranges[fq.name]
        qparams = fq.output.qparams
        rows.append((fq.name, str(qparams.bits), _number(float(qparams.scale[0])),
                     str(int(qparams.zero_point[0])), f"[{_number(lo)}, {_number(hi)}]",
                     f"[{_number(observed[name][0])}, {_number(observed[name][1])}]",
                     f"{100 * outside[fq.name] / max(total[name], 1):.3g}%"))
    figure = new_figure(8, 1.2 + 0.22 * len(points))
    axes = figure.add_subplot()
    positions = np.arange(len(points))[::-1]
    lows = np.array([ranges[fq.name][0] for fq in points])
    highs = np.array([ranges[fq.name][1] for fq in points])
    axes.barh(positions, highs - lows, left=lows, height=0.6, color="tab:blue", alpha=0.35,
              label="quantized range")
    seen = np.array([observed[observed_name(fq.inputs[0])] for fq in points])
    axes.plot(seen[:, 0], positions, "|", color="black", label="observed min / max")
    axes.plot(seen[:, 1], positions, "|", color="black")
    axes.set_yticks(positions, [fq.name for fq in points], fontsize=6)
    axes.set_xlabel("value")
    axes.legend(fontsize=7, loc="lower right")
    return [Heading("Activation ranges"), Paragraph(
        "Each activation quantizer's representable range, scale * ([qmin, qmax] - zero_point), "
        "and the values reaching it on the calibration data (quantizers bypassed)."),
        Table(("quantizer", "bits", "scale", "zero point", "quantized range", "observed [min, max]",
               "clipped"), tuple(rows)),
        Image(png_bytes(figure), "Activation ranges: quantized (bars) and observed (ticks)")]


def _sensitivity(report: SensitivityReport | bool) -> list[Block]:
    blocks: list[Block] = [Heading("Per-layer sensitivity")]
    if report is False:
        return [*blocks, Paragraph("Not computed (sensitivity=False).")]
    if not isinstance(report, SensitivityReport):
        raise QuantizationError(f"write_report(sensitivity=...) takes a SensitivityReport, None or "
                                f"False, got {type(report).__name__}")
    one_float = report.mode == "one_float"
    blocks.append(Paragraph(
        ("SQNR of the output against FP32 with every layer quantized except the one named, and the "
         "gain over the fully quantized network" if one_float else
         "SQNR of the output against FP32 with only the named layer quantized")
        + f"; {report.examples} examples. Fully quantized: SQNR "
        f"{_number(report.quantized_sqnr_db)} dB, mean KL {_number(report.quantized_kl)} nats. "
        "Most harmful first."))
    headers = ("rank", "layer", "op", "SQNR (dB)", *(("gain (dB)",) if one_float else ()), "KL (nats)")
    blocks.append(Table(headers, tuple(
        (str(rank), row.layer.name, row.layer.op, _number(row.sqnr_db),
         *((_number(report.gain_db(row)),) if one_float else ()), _number(row.kl))
        for rank, row in enumerate(report.rows, start=1))))
    shown = report.rows[:30]
    if shown:
        figure = new_figure(8, 1.2 + 0.22 * len(shown))
        axes = figure.add_subplot()
        values = [report.gain_db(row) if one_float else row.sqnr_db for row in shown]
        values = [v if math.isfinite(v) else 0.0 for v in values]
        positions = np.arange(len(shown))[::-1]
        axes.barh(positions, values, color="tab:orange")
        axes.set_yticks(positions, [row.layer.name for row in shown], fontsize=6)
        axes.set_xlabel("SQNR gain when left in float (dB)" if one_float else "SQNR (dB)")
        blocks.append(Image(png_bytes(figure), f"Per-layer sensitivity ({len(shown)} most harmful)"))
    return blocks


def _fidelity(fidelity) -> list[Block]:
    if fidelity is None:
        return []
    blocks: list[Block] = [Heading("Fidelity")]
    if isinstance(fidelity, Mapping) and all(isinstance(v, Mapping) for v in fidelity.values()):
        metrics = list(dict.fromkeys(key for row in fidelity.values() for key in row))
        rows = tuple((str(name), *(_number(row.get(m, "")) for m in metrics))
                     for name, row in fidelity.items())
        return [*blocks, Table(("variant", *metrics), rows)]
    if isinstance(fidelity, Mapping):
        return [*blocks, Table(("metric", "value"),
                               tuple((str(k), _number(v)) for k, v in fidelity.items()))]
    if isinstance(fidelity, Sequence) and not isinstance(fidelity, str) \
            and all(isinstance(row, Mapping) for row in fidelity):
        columns = list(dict.fromkeys(key for row in fidelity for key in row))
        return [*blocks, Table(tuple(columns), tuple(tuple(_number(row.get(c, "")) for c in columns)
                                                     for row in fidelity))]
    raise QuantizationError(f"write_report(fidelity=...) takes a mapping (metric -> value, or variant "
                            f"-> metrics) or a list of row dicts, got {type(fidelity).__name__}")


# ---- the command line's entry point ------------------------------------------------------------


def report_for_model(module: torch.nn.Module, example_inputs: tuple, out, *, config: str = "int8",
                     equalize: bool = True, bias_correction: bool = True, photos: int | None = None,
                     batch_size: int = 8, progress: bool | None = None,
                     log: TextIO | None = None) -> Path:
    """Quantize `module` with `qc.quantize` and write its report to `out` (for
    `qcompiler report MODEL --out report.html`).

    config: a `QuantConfig` preset name. photos: calibrate on that many crops of the offline
    photo pool (`qcompiler.examples.photos`; for image models taking one [N, 3, S, S] input) in batches of
    `batch_size`, and measure fidelity to FP32 on as many held-out crops; without it, the
    example inputs are the only calibration batch (a smoke test: ranges then describe those
    inputs alone). log: where to say what each step does and how long it should take
    (`qcompiler.progress`); the long steps also draw tqdm bars on a terminal."""
    from qcompiler.analysis import metrics
    from qcompiler.backends.torch import to_torch
    from qcompiler.frontends.torch_export.capture import trace
    from qcompiler.progress import about, expected_seconds, float_run_seconds
    from qcompiler.quantization.config import QuantConfig
    from qcompiler.quantization.sensitivity import quantized_layers
    from qcompiler.quantize import quantize

    def say(line: str) -> None:
        if log is not None:
            log.write(line + "\n")
            log.flush()

    check_report_path(out)  # before minutes of work
    if photos is not None:
        calibration, evaluation = _photo_pools(example_inputs, photos, batch_size)
        example_inputs = (next(iter(calibration)),)
    else:
        calibration = evaluation = [tuple(example_inputs)]
    say("capturing the model (torch.export)")
    graph = trace(module, tuple(example_inputs))
    calibration = list(calibration)
    float_run = float_run_seconds(graph, calibration[0])
    steps = {"calibrate": len(calibration), **({"correct_bias": len(calibration)}
                                                if bias_correction else {})}
    say(f"quantizing ({config}): calibration{' and bias correction' if bias_correction else ''} "
        f"on {len(calibration)} batch(es), {about(expected_seconds(float_run, steps))}")
    quantized = quantize(graph, calibration, config=QuantConfig.preset(config), equalize=equalize,
                         bias_correction=bias_correction, progress=progress)
    fidelity = None
    simulated = to_torch(quantized).eval()
    with torch.no_grad():
        pairs = [(module(*_as_tuple(b)), simulated(*_as_tuple(b))) for b in evaluation]
    if all(isinstance(r, torch.Tensor) and r.dim() == 2 for pair in pairs for r in pair):
        label = (f"{config}{' + CLE' if equalize else ''}{' + bias correction' if bias_correction else ''}")
        fidelity = {label: metrics.fidelity(torch.cat([p[0] for p in pairs]),
                                            torch.cat([p[1] for p in pairs]))}
    layers = len(quantized_layers(quantized))
    batches = min(len(calibration), 2)  # write_report's sensitivity_batches
    expected = expected_seconds(float_run, {"fake_quant_run": (layers + 1) * batches})
    say(f"per-layer sensitivity: {layers} layers, each quantized network run on {batches} "
        f"batch(es), {about(expected)}")
    return write_report(out, graph, quantized, calibration, fidelity, progress=progress,
                        title=f"Quantization report: {graph.name} ({config})")


def _as_tuple(batch) -> tuple:
    return tuple(batch) if isinstance(batch, (tuple, list)) else (batch,)


def _photo_pools(example_inputs: tuple, count: int, batch_size: int):
    from qcompiler.examples.photos import calibration_pool, evaluation_pool

    shape = tuple(example_inputs[0].shape) if len(example_inputs) == 1 else ()
    if len(shape) != 4 or shape[1] != 3 or shape[2] != shape[3]:
        raise QuantizationError(f"photos= needs a model taking one [N, 3, S, S] image batch; this one "
                                f"takes {[tuple(x.shape) for x in example_inputs]}")
    if count < 1 or batch_size < 1:
        raise QuantizationError(f"photos={count} and batch_size={batch_size} must be positive (the "
                                "last batch may be smaller: the graph takes any batch size)")
    return (calibration_pool(count, batch_size=batch_size, size=shape[2]),
            evaluation_pool(count, batch_size=batch_size, size=shape[2]))
