"""Top-1 agreement between executions of one quantized MobileNetV2: how far apart two
faithful implementations of the same INT8 model land on the photo pool.

    python benchmarks/onnx_agreement.py                 # 256 evaluation crops: ~6 min
    python benchmarks/onnx_agreement.py --images 64

Needs the `onnx` and `bench` extras and the pretrained MobileNetV2 weights (README).

The ONNX issue asks that onnxruntime's INT8 execution of our QDQ export agree with our
fake-quant simulation on >= 99% of top-1 predictions. This benchmark puts that figure beside
the agreement of other pairs of executions of one quantized model, so the figure can be read:

- our QDQ export (`qc.quantize`, then `qc.backends.onnx.export`) run five ways: our float32
  simulation (`qc.to_torch`), our exact simulation (`qc.to_torch(exact=True)`, float64, bit
  for bit the integer interpreter), onnxruntime with every node run as written (its reference
  meaning of the QDQ file, in float32), and onnxruntime's optimized run (QDQ fused into its
  INT8 kernels, float requantization);
- onnxruntime's own `quantize_static` file of the same network (QDQ, u8 activations, s8
  per-channel weights, the same calibration crops) run as written and optimized.

Every pair of executions of one file computes the same quantized function up to rounding
order; where the pairs already disagree on many crops, the model's quantized logits are
near-tied there and no implementation can be held to 99%.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import set_threads, write_results  # noqa: E402

import qcompiler as qc  # noqa: E402
from qcompiler.analysis.latency import onnxruntime_files  # noqa: E402
from qcompiler.analysis.metrics import top1_agreement  # noqa: E402

BATCH = 16


def _onnxruntime(path, batches: list[torch.Tensor], *, optimize: bool) -> np.ndarray:
    import onnxruntime

    options = onnxruntime.SessionOptions()
    options.log_severity_level = 3
    if not optimize:
        options.graph_optimization_level = onnxruntime.GraphOptimizationLevel.ORT_DISABLE_ALL
    session = onnxruntime.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name
    return np.concatenate([session.run(None, {name: b.numpy()})[0] for b in batches])


def _torch(module, batches: list[torch.Tensor], dtype=torch.float32) -> np.ndarray:
    with torch.no_grad():
        return np.concatenate([module(b.to(dtype)).double().numpy() for b in batches])


def main(argv: list[str] | None = None) -> int:
    from qcompiler.examples.models import pretrained_mobilenet_v2, pretrained_weights_path
    from qcompiler.examples.photos import calibration_pool, evaluation_pool

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--images", type=int, default=256, help="evaluation crops")
    parser.add_argument("--calibration", type=int, default=64, help="calibration crops")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--results-dir", default=None, help="where to write (default benchmarks/results)")
    args = parser.parse_args(argv)
    if pretrained_weights_path() is None:
        sys.exit("the pretrained MobileNetV2 weights package is not installed (see README)")
    set_threads(args.threads)
    model, _ = pretrained_mobilenet_v2()
    calibration = list(calibration_pool(args.calibration, batch_size=BATCH))
    evaluation = list(evaluation_pool(args.images, batch_size=BATCH))

    print("quantizing with qcompiler and with onnxruntime's quantize_static ...", flush=True)
    quantized = qc.quantize(model, calibration, progress=False)
    ours = qc.backends.onnx.export(quantized, Path(tempfile.mkdtemp()) / "mobilenet_v2_qdq.onnx")
    _, theirs = onnxruntime_files(model, (calibration[0],), calibration)

    print("running the executions ...", flush=True)
    runs = {
        "FP32 (torch)": _torch(model, evaluation),
        "our float32 simulation": _torch(qc.to_torch(quantized), evaluation),
        "our exact simulation (= interpreter)": _torch(qc.to_torch(quantized, exact=True), evaluation,
                                                       torch.float64),
        "onnxruntime, our file as written": _onnxruntime(ours, evaluation, optimize=False),
        "onnxruntime INT8, our file": _onnxruntime(ours, evaluation, optimize=True),
        "onnxruntime, its file as written": _onnxruntime(theirs, evaluation, optimize=False),
        "onnxruntime INT8, its file": _onnxruntime(theirs, evaluation, optimize=True),
    }
    pairs = [
        ("onnxruntime INT8, our file", "our float32 simulation", "the issue's figure (target 99%)"),
        ("onnxruntime INT8, our file", "our exact simulation (= interpreter)", ""),
        ("onnxruntime INT8, our file", "onnxruntime, our file as written", "onnxruntime against itself"),
        ("onnxruntime INT8, its file", "onnxruntime, its file as written", "onnxruntime against itself"),
        ("our exact simulation (= interpreter)", "our float32 simulation", "float64 against float32"),
        ("onnxruntime, our file as written", "our float32 simulation", "both float32, QDQ as written"),
    ]
    rows = [{"execution A": a, "execution B": b,
             "top-1 agreement": round(top1_agreement(runs[a], runs[b]), 4), "what the pair is": note}
            for a, b, note in pairs]
    rows += [{"execution A": name, "execution B": "FP32 (torch)",
              "top-1 agreement": round(top1_agreement(runs["FP32 (torch)"], logits), 4),
              "what the pair is": "fidelity"} for name, logits in runs.items() if name != "FP32 (torch)"]
    reference = runs["FP32 (torch)"]
    ordered = np.sort(reference, axis=1)
    margins = ordered[:, -1] - ordered[:, -2]
    step = float(quantized.outputs[0].qparams.scale.max())
    for row in rows:
        print(row, flush=True)
    notes = [f"{args.images} evaluation and {args.calibration} calibration crops of the photo pool; "
             f"{args.threads} threads",
             f"FP32 top-1 margin (top-1 minus top-2 logit) in output steps of our INT8 model "
             f"({step:.4f}): 10th percentile {np.quantile(margins, 0.1) / step:.2f}, median "
             f"{np.median(margins) / step:.2f}; a crop within a few steps flips under any rounding "
             "difference",
             "every pair of executions of one file computes the same quantized function up to "
             "rounding order: their agreement is what two faithful implementations reach here"]
    command = "python benchmarks/onnx_agreement.py " + " ".join(sys.argv[1:] if argv is None else argv)
    write_results("onnx_agreement", "Top-1 agreement between executions of one INT8 MobileNetV2",
                  {"Pairs of executions": (rows, ["execution A", "execution B", "top-1 agreement",
                                                  "what the pair is"])},
                  command.strip(), notes, settings={"images": args.images,
                                                    "calibration crops": args.calibration},
                  results_dir=args.results_dir)
    return 0


if __name__ == "__main__":
    sys.exit(main())
