"""The standard pass lists (`qcompiler.pipelines`): the PTQ steps in their order, run as one
Pipeline by qc.quantize, and the float clean-up they start with."""

import numpy as np
import pytest
import torch

import qcompiler as qc
from qcompiler.examples.models import digits_cnn, resnet_style
from qcompiler.ir import Graph, structurally_equal
from qcompiler.ir.pipeline import pass_name
from qcompiler.pipelines import ptq_float_steps, ptq_pipeline
from qcompiler.quantization.quantizers import find_uncalibrated

CONV = {"stride": [1, 1], "padding": [1, 1], "dilation": [1, 1]}


@pytest.fixture(scope="module")
def digits():
    model, (x,) = digits_cnn(batch=4)
    generator = torch.Generator().manual_seed(0)
    return qc.trace(model, (x,)), [torch.randn(x.shape, generator=generator) for _ in range(2)]


def step_names(calibration, **options) -> list[str]:
    return [pass_name(p) for p in ptq_pipeline(calibration, **options).passes]


def test_the_ptq_steps_in_order(digits):
    _, batches = digits
    assert step_names(batches) == [
        "eliminate_dead_code", "fold_constants", "absorb_high_bias", "fold_batchnorm",
        "eliminate_dead_code", "equalize_cross_layer", "convert_batchnorm_to_conv",
        "insert_fake_quant", "calibrate", "correct_bias"]
    assert step_names(batches, equalize=False, bias_correction=False, adaround={}) == [
        "eliminate_dead_code", "fold_constants", "fold_batchnorm", "eliminate_dead_code",
        "convert_batchnorm_to_conv", "insert_fake_quant", "calibrate", "round_adaptive"]
    # Data-free: the batch-norm statistics are recorded before folding and carried through CLE.
    assert step_names(None) == [
        "eliminate_dead_code", "fold_constants", "absorb_high_bias", "record_batchnorm_statistics",
        "fold_batchnorm", "eliminate_dead_code", "equalize_keeping_statistics",
        "convert_batchnorm_to_conv", "insert_fake_quant", "calibrate", "correct_bias"]


def test_qc_quantize_is_the_ptq_pipeline():
    model, (x,) = resnet_style(batch=2)
    generator = torch.Generator().manual_seed(1)
    graph, batches = qc.trace(model, (x,)), [torch.randn(x.shape, generator=generator) for _ in range(2)]
    quantized, records = ptq_pipeline(batches, progress=False).run_with_report(graph)
    assert structurally_equal(qc.quantize(graph, batches, progress=False), quantized)
    assert not find_uncalibrated(quantized)
    notes = {record.name: record.notes for record in records}
    assert any(note.startswith("equalized") for note in notes["equalize_cross_layer"])
    assert notes["correct_bias"][0].startswith("corrected the bias of")


def test_a_transposed_weight_folds_before_the_batch_norm_does():
    """An imported graph can hold weight-side arithmetic; qc.quantize folds it to a constant
    first, so the batch norm after the conv still folds."""
    rng = np.random.default_rng(0)
    g = Graph("imported")
    x = g.add_input("x", (2, 3, 6, 6))
    stored = g.add_constant("w.stored", rng.standard_normal((3, 4, 3, 3)).astype(np.float32))
    weight = g.add_node("transpose", [stored], {"dim0": 0, "dim1": 1}, name="w").output
    conv = g.add_node("conv2d", [x, weight], CONV, name="conv").output
    bn = [g.add_constant(f"bn.{n}", v.astype(np.float32)) for n, v in (
        ("weight", rng.uniform(0.5, 2, 4)), ("bias", rng.standard_normal(4)),
        ("mean", rng.standard_normal(4)), ("var", rng.uniform(0.5, 2, 4)))]
    normed = g.add_node("batch_norm", [conv, *bn], name="bn").output
    g.outputs = [g.add_node("relu", [normed], name="relu").output]
    g.verify()
    batches = [torch.from_numpy(rng.standard_normal((2, 3, 6, 6)).astype(np.float32)) for _ in range(2)]
    quantized = qc.quantize(g, batches, progress=False)
    assert [n.op for n in quantized if n.op in ("batch_norm", "transpose")] == []
    folded = qc.Pipeline(ptq_float_steps(equalize=False)).run(g)
    assert [n.op for n in folded] == ["conv2d", "relu"]
