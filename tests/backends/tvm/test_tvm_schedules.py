"""Our schedules change nothing but speed: a build with them (`schedules=True`, the default:
the blocked, tensorized kernels of `kernel_table.py`) and one without (`schedules=False`,
the generic computes of `kernels.py`) give identical integers, and both equal the numpy
interpreter, on every x86 kernel family this host can run (VNNI `vpdpbusd`, the AVX-512 and
AVX2 `vpmaddubsw` paths with 7-bit weights: an AVX-512 host runs the AVX2 code too) and on
aarch64 `sdot` under qemu. Each test also checks that the scheduled build really ran the
kernels it is about (the manifest names the kernel of every function), so a silent fall
back to the generic kernels cannot pass."""

from __future__ import annotations

import shutil
from collections import Counter

import numpy as np
import pytest
import torch

pytest.importorskip("tvm")

from schedule_cases import conv_network  # noqa: E402
from test_tvm_models import MODELS, batches, factory, integer_graph  # noqa: E402

import qcompiler as qc  # noqa: E402
from qcompiler.backends.tvm import aarch64, kernel_table  # noqa: E402
from qcompiler.backends.tvm.target import resolve_target, unsupported_features  # noqa: E402

X86_TARGETS = ("x86-vnni", "x86-avx512", "x86-avx2")


def runnable(name: str) -> bool:
    spec = resolve_target(name)
    return not spec.is_cross and not unsupported_features(spec)


HOST_TARGETS = [name for name in X86_TARGETS if runnable(name)]
needs_qemu = pytest.mark.skipif(shutil.which(aarch64.QEMU) is None or shutil.which(aarch64.CROSS_CXX)
                                is None, reason="the aarch64 toolchain and qemu are not installed")


def kernels_used(compiled) -> Counter:
    return Counter(info["kernel"] for info in compiled.manifest["kernels"].values())


def assert_identical(graph, inputs, target, strict=True):
    """Scheduled and generic builds agree bit for bit, and with the interpreter; returns the
    scheduled build."""
    batch = len(inputs[0])
    scheduled = qc.backends.tvm.build(graph, target, batch=batch)
    generic = qc.backends.tvm.build(graph, target, batch=batch, schedules=False)
    assert set(kernels_used(generic)) <= {"generic", "layout"}
    expected = qc.backends.interpreter.run(graph, *inputs, strict=strict)
    expected = expected if isinstance(expected, tuple) else (expected,)
    for build in (scheduled, generic):
        actual = build.run(*inputs)
        actual = actual if isinstance(actual, tuple) else (actual,)
        for value, want, got in zip(graph.outputs, expected, actual, strict=True):
            assert got.dtype == want.dtype and got.shape == want.shape, value.name
            assert np.count_nonzero(got != want) == 0, (value.name, kernels_used(build))
    return scheduled


def assert_kernels(used: Counter, isa: str) -> None:
    """conv_network's layers each ran the blocked kernel of their kind: 7 convolutions
    (grouped with whole blocks included), 2 dense layers, two 3x3 depthwise (the row-dot
    kernel where the ISA has one) and one 5x5."""
    expected = Counter({kernel_table.lookup("conv", isa).name: 7,
                        kernel_table.lookup("dense", isa).name: 2})
    expected[kernel_table.lookup("depthwise3x3", isa).name] += 2
    expected[kernel_table.lookup("depthwise", isa).name] += 1
    for kernel, count in expected.items():
        assert used[kernel] == count, (kernel, used)


@pytest.mark.parametrize("target", HOST_TARGETS)
def test_random_conv_networks_are_identical_with_and_without_schedules(target):
    spec = resolve_target(target)
    lanes = kernel_table.int8_lanes(spec.isa)
    graph, x = conv_network(seed=X86_TARGETS.index(target), lanes=lanes, weight_range=spec.weight_range)
    used = kernels_used(assert_identical(graph, [x], target))
    assert_kernels(used, spec.isa)
    assert used["generic"] >= 1  # the grouped convolution whose groups are not whole blocks


@pytest.mark.slow  # ~1 min a target: more random networks
@pytest.mark.parametrize("target", HOST_TARGETS)
@pytest.mark.parametrize("seed", range(10, 14))
def test_more_random_conv_networks_are_identical(target, seed):
    spec = resolve_target(target)
    graph, x = conv_network(seed, kernel_table.int8_lanes(spec.isa), spec.weight_range)
    assert_identical(graph, [x], target)


@needs_qemu
def test_random_conv_network_is_identical_on_aarch64_sdot_under_qemu():
    spec = resolve_target("aarch64-dotprod")
    graph, x = conv_network(seed=7, lanes=kernel_table.int8_lanes(spec.isa), weight_range=spec.weight_range)
    assert_kernels(kernels_used(assert_identical(graph, [x], "aarch64-dotprod")), spec.isa)


def test_resnet_style_model_is_identical_with_and_without_schedules_on_the_host():
    model, (example,) = factory("resnet_style")
    graph, _ = integer_graph(model, example)
    used = kernels_used(assert_identical(graph, [batches(example, 1, seed=3)[0].numpy()], "host"))
    assert sum(count for kernel, count in used.items() if kernel.startswith("conv_int8")) >= 10


@pytest.mark.slow  # ~3 min: every model, generic and scheduled, on every x86 level the host runs
@pytest.mark.parametrize("target", HOST_TARGETS)
@pytest.mark.parametrize("name", MODELS)
def test_integer_models_are_identical_with_and_without_schedules(name, target):
    model, (example,) = factory(name)
    graph, strict = integer_graph(model, example, target=target)
    assert_identical(graph, [x.numpy() for x in batches(example, 1, seed=4)], target, strict)


class FloatNet(torch.nn.Module):
    """Every float kernel family: conv + batch norm + relu6, depthwise, whole-block grouped,
    a residual add with relu, pooling, and a classifier."""

    def __init__(self, lanes: int):
        super().__init__()
        c = 2 * lanes
        self.stem = torch.nn.Sequential(torch.nn.Conv2d(3, c, 3, 2, 1), torch.nn.BatchNorm2d(c),
                                        torch.nn.ReLU6())
        self.depthwise = torch.nn.Conv2d(c, c, 3, 1, 1, groups=c)
        self.grouped = torch.nn.Conv2d(c, c, 3, 1, 2, dilation=2, groups=2)
        self.pointwise = torch.nn.Conv2d(c, c + 3, 1)
        self.head = torch.nn.Linear(c + 3, 10)
        for module in self.modules():
            if isinstance(module, torch.nn.BatchNorm2d):
                module.running_mean.uniform_(-0.5, 0.5)
                module.running_var.uniform_(0.5, 2.0)

    def forward(self, x):
        x = self.stem(x)
        x = torch.relu(self.grouped(self.depthwise(x)) + x)
        x = torch.nn.functional.max_pool2d(self.pointwise(x), 3, 2, 1)
        return self.head(torch.nn.functional.adaptive_avg_pool2d(x, 1).flatten(1))


def test_float_network_matches_torch_with_and_without_schedules():
    torch.manual_seed(0)
    spec = resolve_target("host")
    model = FloatNet(kernel_table.float_lanes(spec.isa) or 8).eval()
    x = torch.randn(1, 3, 20, 20)
    graph = qc.trace(model, (x,))
    with torch.no_grad():
        expected = model(x).numpy()
    scheduled = qc.backends.tvm.build(graph, "host", batch=1)
    used = kernels_used(scheduled)
    assert used[f"conv_float32_{spec.isa}"] == 3 and used[f"depthwise_float32_{spec.isa}"] == 1, used
    assert used[f"dense_float32_{spec.isa}"] == 1, used
    for build in (scheduled, qc.backends.tvm.build(graph, "host", batch=1, schedules=False)):
        np.testing.assert_allclose(build.run(x.numpy()), expected, rtol=1e-4, atol=1e-4)
