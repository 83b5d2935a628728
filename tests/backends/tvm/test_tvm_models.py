"""Whole models through the TVM backend, against the two oracles of DESIGN.md:

- integer graphs (`qc.quantize` with the host's preset, `qc.lower_to_integer`) compiled for
  the host equal the numpy interpreter bit for bit, float fall backs (the BERT-style
  encoder's layer_norm and softmax) included;
- float graphs (`qc.trace`) compiled for the host match `qc.to_torch` within 1e-4.

Both are compiled once with the batch kept symbolic (`f32[N,...]`) and run at batch sizes
1, 2 and 5, with the scheduled kernels and (for the integer graphs) the generic ones.

The digits CNN, a ResNet-style CNN, a BERT-style encoder, a 1-D audio model and the
ImageNet-pretrained MobileNetV2 (at 64x64 here; at 224x224 and on aarch64 under qemu in
the slow tests, test_tvm_aarch64.py)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

pytest.importorskip("tvm")

import qcompiler as qc  # noqa: E402
from qcompiler.examples import models  # noqa: E402

MODELS = ["digits_cnn", "resnet_style", "bert_style", "audio_conv1d", "pretrained_mobilenet_v2"]
FLOAT_TOLERANCE = 1e-4


def factory(name: str, resolution: int = 64):
    if name == "pretrained_mobilenet_v2":
        if models.pretrained_weights_path() is None:
            pytest.skip("the pretrained MobileNetV2 weights package is not installed")
        return models.pretrained_mobilenet_v2(batch=1, resolution=resolution)
    return getattr(models, name)()


def batches(example: torch.Tensor, count: int, seed: int, batch: int | None = None) -> list[torch.Tensor]:
    """`count` seeded inputs shaped like `example` (with `batch` rows when given)."""
    generator = torch.Generator().manual_seed(seed)
    shape = example.shape if batch is None else (batch, *example.shape[1:])
    if example.is_floating_point():
        return [torch.randn(shape, generator=generator) for _ in range(count)]
    return [torch.randint(0, 100, shape, generator=generator) for _ in range(count)]


# One symbolic build runs every batch size: these (1, a pair, a prime that is no tile size).
BATCH_SIZES = (1, 2, 5)


def integer_graph(model, example, target: str = "host"):
    """Quantized with the preset `target` needs, lowered with the lowering target that checks
    its operand ranges (docs/integer-spec.md section 8)."""
    config = qc.QuantConfig.preset(qc.backends.tvm.quant_preset(target))
    quantized = qc.quantize(model, batches(example, 4, seed=0), config=config, progress=False)
    strict = not any(node.op in ("softmax", "layer_norm") for node in quantized)
    lowered = qc.lower_to_integer(quantized, strict=strict,
                                  target=qc.backends.tvm.lowering_target(target))
    return lowered, strict


@pytest.fixture(scope="module", params=MODELS)
def quantized_model(request):
    model, (example,) = factory(request.param)
    graph, strict = integer_graph(model, example)
    return request.param, graph, strict, example


def assert_exact_at_every_batch(compiled, graph, strict, example, name):
    assert compiled.symbols == ["N"] and compiled.inputs[0]["shape"][0] == "N"
    for batch in BATCH_SIZES:
        (x,) = batches(example, 1, seed=batch, batch=batch)
        expected = qc.backends.interpreter.run(graph, x.numpy(), strict=strict)
        actual = compiled.run(x.numpy())
        assert actual.dtype == expected.dtype == np.float32 and actual.shape[0] == batch
        assert np.count_nonzero(actual != expected) == 0, (name, batch)


def test_integer_models_are_exact_on_the_host(quantized_model):
    name, graph, strict, example = quantized_model
    assert not graph.is_static  # qc.trace keeps the batch symbolic
    compiled = qc.backends.tvm.build(graph, "host")
    assert_exact_at_every_batch(compiled, graph, strict, example, name)
    if not strict:  # the BERT-style encoder: its float islands are reported
        assert compiled.fall_backs and all("layer_norm" in f or "softmax" in f for f in compiled.fall_backs)


# The generic kernels take 2-3x longer to build: the two largest models run in the slow tests.
GENERIC_MODELS = [*MODELS[:1], *MODELS[2:4], *(pytest.param(m, marks=pytest.mark.slow)
                                             for m in (MODELS[1], MODELS[4]))]


@pytest.mark.parametrize("name", GENERIC_MODELS)
def test_integer_models_are_exact_with_the_generic_kernels_at_every_batch(name):
    model, (example,) = factory(name)
    graph, strict = integer_graph(model, example)
    compiled = qc.backends.tvm.build(graph, "host", schedules=False)
    assert_exact_at_every_batch(compiled, graph, strict, example, name)


FLOAT_MODELS = [*MODELS[:-1], pytest.param(MODELS[-1], marks=pytest.mark.slow)]  # ~15 s to build


@pytest.mark.parametrize("name", FLOAT_MODELS)
def test_float_models_match_torch(name):
    model, (example,) = factory(name)
    graph = qc.trace(model, (example,))
    compiled = qc.backends.tvm.build(graph, "host")  # the batch stays symbolic
    reference = qc.to_torch(graph)
    for batch in BATCH_SIZES:
        (x,) = batches(example, 1, seed=batch, batch=batch)
        with torch.no_grad():
            expected = reference(x).numpy()
        np.testing.assert_allclose(compiled.run(x.numpy()), expected, rtol=FLOAT_TOLERANCE,
                                   atol=FLOAT_TOLERANCE)


@pytest.mark.slow  # ~1 min: quantize (32 photographs) and compile MobileNetV2 at 224x224
def test_pretrained_mobilenet_v2_at_224_is_exact_on_photographs():
    from qcompiler.examples.photos import calibration_pool, evaluation_pool

    model, _ = factory("pretrained_mobilenet_v2", resolution=224)
    config = qc.QuantConfig.preset(qc.backends.tvm.quant_preset("host"))
    quantized = qc.quantize(model, list(calibration_pool(32, seed=0, batch_size=1, size=224)),
                            config=config, progress=False)
    graph = qc.lower_to_integer(quantized, target=qc.backends.tvm.lowering_target("host"))
    compiled = qc.backends.tvm.build(graph, "host", batch=1)
    differing = 0
    for batch in evaluation_pool(8, seed=1, batch_size=1, size=224):
        differing += int(np.count_nonzero(compiled.run(batch.numpy())
                                          != qc.backends.interpreter.run(graph, batch.numpy())))
    assert differing == 0
