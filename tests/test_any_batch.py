"""One captured graph at any batch size: each built-in model is captured once (symbolic batch
N), calibrated on batches of 3, 8 and 1 examples, lowered to integers, and run at batch sizes
1, 3 and 8. The integer interpreter gives each sample the same integers at every batch size
(and alone), the float64 simulation equals the interpreter bit for bit at each size, and the
float graph gives each sample its float32 result to rounding."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import STAGE_MODELS, like_inputs

import qcompiler as qc
from qcompiler.examples import models
from qcompiler.ir import BATCH

BATCHES = (1, 3, 8)


def _check_any_batch(model, inputs, graph, quantized, integer):
    assert all(v.shape[0] == BATCH for g in (graph, quantized, integer) for v in g.inputs)
    strict = not any(node.op in ("softmax", "layer_norm") for node in integer)  # BERT's float islands
    pool = like_inputs(inputs, max(BATCHES), torch.Generator().manual_seed(1))
    exact, floating = qc.to_torch(quantized, exact=True), qc.to_torch(graph)
    with torch.no_grad():
        reference = model(*pool).numpy()
    integers = qc.backends.interpreter.run(integer, *pool, strict=strict)
    for batch in BATCHES:
        part = tuple(x[:batch] for x in pool)
        ours = qc.backends.interpreter.run(integer, *part, strict=strict)
        assert np.array_equal(ours, integers[:batch]), batch  # per sample, whatever the batch
        with torch.no_grad():
            assert np.array_equal(exact(*part).numpy(), ours), batch
            np.testing.assert_allclose(floating(*part).numpy(), reference[:batch], rtol=1e-5, atol=1e-5)
    for index in range(3):  # and each sample alone
        alone = qc.backends.interpreter.run(integer, *(x[index:index + 1] for x in pool), strict=strict)
        assert np.array_equal(alone, integers[index:index + 1])


@pytest.mark.parametrize("name", STAGE_MODELS)
def test_capture_once_then_simulate_lower_and_interpret_at_any_batch(builtin_stages, name):
    _check_any_batch(*builtin_stages(name))


@pytest.mark.slow
def test_mobilenet_v2_at_224_at_any_batch(builtin_stages):
    _check_any_batch(*builtin_stages("mobilenet_v2", resolution=224))


def test_quantize_traces_from_a_dataloader_whose_last_batch_is_smaller():
    model, _ = models.digits_cnn()
    images = torch.randn(10, 1, 8, 8, generator=torch.Generator().manual_seed(0))
    loader = torch.utils.data.DataLoader(images, batch_size=4)  # batches of 4, 4 and 2
    quantized = qc.quantize(model, loader, progress=False)
    assert quantized.inputs[0].type_str == "f32[N,1,8,8]"
    integer = qc.lower_to_integer(quantized)
    assert qc.backends.interpreter.run(integer, images[:7]).shape == (7, 10)


def test_cost_is_per_sample_and_scales_with_the_batch(builtin_stages):
    model, inputs, graph, _, integer = builtin_stages("resnet_style")
    one = qc.cost(qc.trace(model, tuple(x[:1] for x in inputs), dynamic_batch=False))
    assert qc.cost(graph).macs == one.macs and qc.cost(graph).params == one.params
    assert qc.cost(graph, batch=8).macs == 8 * one.macs
    assert qc.cost(graph, batch=8).peak_activation_bytes == 8 * one.peak_activation_bytes
    assert qc.cost(integer).macs == one.macs
