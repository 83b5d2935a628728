"""aarch64 for real: models cross-compiled with aarch64-linux-gnu-g++, their kernels inspected
(sdot with +dotprod, NEON only without), and run under qemu-aarch64 with TVM's aarch64
runtime and our runner: bit for bit the interpreter's integers, torch's floats within 1e-4.

The cross toolchain and qemu come from apt (`.ci/run` installs them). These tests skip only
where apt is not available to install them; where it is and they are missing, they fail and
say what to install."""

from __future__ import annotations

import shutil

import numpy as np
import pytest
import torch

pytest.importorskip("tvm")

from test_tvm_models import MODELS, batches, factory, integer_graph  # noqa: E402

import qcompiler as qc  # noqa: E402
from qcompiler.backends.tvm import aarch64  # noqa: E402
from qcompiler.examples.models import digits_cnn  # noqa: E402

TOOLS = {aarch64.CROSS_CXX: "g++-aarch64-linux-gnu", aarch64.QEMU: "qemu-user"}


@pytest.fixture(scope="module", autouse=True)
def toolchain():
    missing = [package for tool, package in TOOLS.items() if shutil.which(tool) is None]
    if not missing:
        return
    if shutil.which("apt-get") is None:
        pytest.skip(f"apt is not available on this machine to install {', '.join(missing)}")
    pytest.fail(f"install the aarch64 toolchain first: apt-get install -y {' '.join(missing)} "
                "(.ci/run does)")


@pytest.fixture(scope="module")
def digits():
    model, (example,) = digits_cnn()
    graph, _ = integer_graph(model, example, target="aarch64")
    return graph, example.numpy()


def test_dotprod_build_is_exact_under_qemu_and_its_int8_kernels_use_sdot(digits):
    graph, x = digits
    compiled = qc.backends.tvm.build(graph, "aarch64-dotprod", batch=len(x))
    assert compiled.target.is_cross
    assert np.array_equal(compiled.run(x), qc.backends.interpreter.run(graph, x))
    counts = aarch64.instruction_counts(compiled._export_dir)
    weighted = {node.name.replace(".", "_") for node in graph if node.op in ("qconv2d", "qlinear")
                and node.inputs[1].shape[1] * np.prod(node.inputs[1].shape[2:]) >= 16}
    with_sdot = {name for name in weighted if any(f"k_{name}_" in k or k == f"k_{name}"
                                                   for k in counts.dot_product_kernels)}
    assert counts.dot_product > 0 and with_sdot == weighted, (weighted, counts.dot_product_kernels)


def test_plain_aarch64_build_uses_neon_and_no_dot_products(digits):
    graph, x = digits
    compiled = qc.backends.tvm.build(graph, "aarch64", batch=len(x))
    assert np.array_equal(compiled.run(x), qc.backends.interpreter.run(graph, x))
    counts = aarch64.instruction_counts(compiled._export_dir)
    assert counts.dot_product == 0 and counts.neon > 0


def test_an_exported_aarch64_artifact_loads_and_runs_in_qemu(digits, tmp_path):
    graph, x = digits
    directory = qc.backends.tvm.build(graph, "aarch64-dotprod", batch=len(x)).export_library(tmp_path / "arm")
    loaded = qc.backends.tvm.load(directory)
    assert np.array_equal(loaded.run(x), qc.backends.interpreter.run(graph, x))


@pytest.mark.slow  # ~3 min: five models quantized, cross-compiled and run under qemu
@pytest.mark.parametrize("name", MODELS)
def test_integer_models_are_exact_on_aarch64_under_qemu(name):
    model, (example,) = factory(name)
    graph, strict = integer_graph(model, example, target="aarch64")
    compiled = qc.backends.tvm.build(graph, "aarch64-dotprod", batch=len(example))
    for x in batches(example, 2, seed=1):
        expected = qc.backends.interpreter.run(graph, x.numpy(), strict=strict)
        assert np.count_nonzero(compiled.run(x.numpy()) != expected) == 0


@pytest.mark.slow  # ~2 min
@pytest.mark.parametrize("name", MODELS)
def test_float_models_match_torch_on_aarch64_under_qemu(name):
    model, (example,) = factory(name)
    graph = qc.trace(model, (example,))
    compiled = qc.backends.tvm.build(graph, "aarch64", batch=len(example))
    x = batches(example, 1, seed=2)[0]
    with torch.no_grad():
        expected = qc.to_torch(graph)(x).numpy()
    np.testing.assert_allclose(compiled.run(x.numpy()), expected, rtol=1e-4, atol=1e-4)
