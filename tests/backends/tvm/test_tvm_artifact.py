"""Compiled-model directories: the library and its manifest written atomically, loaded back by
`qc.backends.tvm.load` (and by TVM alone), and every kind of damage named; benchmarks and
per-kernel profiles."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

pytest.importorskip("tvm")

import qcompiler as qc  # noqa: E402
from qcompiler.backends.tvm.errors import ArtifactError  # noqa: E402
from qcompiler.examples.models import digits_cnn  # noqa: E402


@pytest.fixture(scope="module")
def digits():
    model, (example,) = digits_cnn()
    calibration = [torch.randn(example.shape, generator=torch.Generator().manual_seed(i)) for i in range(3)]
    config = qc.QuantConfig.preset(qc.backends.tvm.quant_preset("host"))
    graph = qc.lower_to_integer(qc.quantize(model, calibration, config=config, progress=False),
                                target=qc.backends.tvm.lowering_target("host"))
    return graph, qc.backends.tvm.build(graph, "host", batch=len(example)), example.numpy()


@pytest.fixture(scope="module")
def exported(digits, tmp_path_factory):
    _, compiled, _ = digits
    return compiled.export_library(tmp_path_factory.mktemp("artifact") / "digits")


def test_export_and_load_give_the_same_integers(digits, exported):
    graph, compiled, x = digits
    loaded = qc.backends.tvm.load(exported)
    expected = qc.backends.interpreter.run(graph, x)
    assert np.array_equal(loaded.run(x), expected) and np.array_equal(compiled.run(x), expected)
    assert sorted(p.name for p in exported.iterdir()) == ["manifest.json", "model.so"]
    with pytest.raises(qc.QCompilerError, match="was loaded from .*; copy that directory"):
        loaded.export_library(exported.parent / "again")


def test_manifest_describes_inputs_outputs_target_and_versions(digits, exported):
    import tvm

    graph, _, _ = digits
    manifest = json.loads((exported / "manifest.json").read_text())
    (source,) = [node for node in graph if node.op == "quantize"]
    (sink,) = [node for node in graph if node.op == "dequantize"]
    assert manifest["inputs"] == [{"name": "x", "shape": [4, 1, 8, 8], "dtype": "f32", "qparams": {
        "scale": [source.attrs["scale"]], "zero_point": [source.attrs["zero_point"]], "axis": None,
        "qmin": source.attrs["qmin"], "qmax": source.attrs["qmax"]}}]
    (output,) = manifest["outputs"]
    assert (output["name"], output["shape"], output["dtype"]) == (graph.outputs[0].name, [4, 10], "f32")
    assert output["qparams"]["scale"] == [sink.attrs["scale"]]
    assert manifest["target"]["name"] == "host"
    assert manifest["target"]["config"]["mcpu"] == tvm.target.codegen.llvm_get_system_cpu()
    assert manifest["versions"]["tvm"] == tvm.__version__
    assert manifest["fall_backs"] == []
    assert len(manifest["library_sha256"]) == 64


def test_tvm_alone_runs_the_library(digits, exported):
    """The library needs no qcompiler at all: TVM's runtime and the Relax VM run it."""
    graph, _, x = digits
    np.save(exported.parent / "x.npy", x)
    script = (
        "import sys, numpy, tvm\n"
        "from tvm import relax\n"
        "library = tvm.runtime.load_module(sys.argv[1] + '/model.so')\n"
        "machine = relax.VirtualMachine(library, tvm.cpu())\n"
        "y = machine['main'](tvm.runtime.tensor(numpy.load(sys.argv[2]))).numpy()\n"
        "numpy.save(sys.argv[3], y)\n"
        "assert not any(name.startswith('qcompiler') for name in sys.modules)\n")
    subprocess.run([sys.executable, "-c", script, str(exported), str(exported.parent / "x.npy"),
                    str(exported.parent / "y.npy")], check=True, env={**os.environ, "TVM_NUM_THREADS": "1"})
    assert np.array_equal(np.load(exported.parent / "y.npy"), qc.backends.interpreter.run(graph, x))


def test_export_replaces_an_artifact_atomically_and_refuses_other_directories(digits, tmp_path):
    _, compiled, x = digits
    target = tmp_path / "model"
    compiled.export_library(target)
    first = (target / "manifest.json").read_text()
    compiled.export_library(target)  # replaces the old artifact
    assert json.loads((target / "manifest.json").read_text())["library_sha256"] == \
        json.loads(first)["library_sha256"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model"]  # no staging left behind
    precious = tmp_path / "precious"
    precious.mkdir()
    (precious / "notes.txt").write_text("keep me")
    with pytest.raises(ArtifactError) as error:
        compiled.export_library(precious)
    assert str(error.value) == (f"{precious} exists and is not a compiled-model directory (no "
                                "manifest.json); choose a new or empty directory")
    assert (precious / "notes.txt").read_text() == "keep me"


def _damage(directory: Path, how: str) -> str:
    """Damage a copy of an artifact; return the message load must give."""
    manifest, library = directory / "manifest.json", directory / "model.so"
    if how == "no manifest":
        manifest.unlink()
        return f"{directory} is not a compiled model: it has no manifest.json"
    if how == "bad json":
        manifest.write_text("{not json")
        return f"{manifest} is corrupted: not valid JSON"
    if how == "foreign json":
        manifest.write_text(json.dumps({"format": "something-else"}))
        return f"{manifest} is not a qcompiler TVM manifest (format 'something-else')"
    if how == "future version":
        data = json.loads(manifest.read_text())
        manifest.write_text(json.dumps({**data, "format_version": 99}))
        return f"{manifest} has format version 99; this qcompiler reads version 1: compile the model again"
    if how == "other tvm":
        data = json.loads(manifest.read_text())
        manifest.write_text(json.dumps({**data, "versions": {**data["versions"], "tvm": "0.1"}}))
        return f"{directory} was compiled with TVM 0.1 and this is TVM "
    if how == "no library":
        library.unlink()
        return f"{directory} is incomplete: the library model.so is missing; compile the model again"
    if how == "truncated library":
        library.write_bytes(library.read_bytes()[:1000])
        return (f"{library} is corrupted: its SHA-256 differs from the one in manifest.json; "
                "compile the model again")
    raise AssertionError(how)


@pytest.mark.parametrize("how", ["no manifest", "bad json", "foreign json", "future version", "other tvm",
                                 "no library", "truncated library"])
def test_a_damaged_artifact_is_named(exported, tmp_path, how):
    import shutil

    copy = tmp_path / "damaged"
    shutil.copytree(exported, copy)
    message = _damage(copy, how)
    with pytest.raises(ArtifactError) as error:
        qc.backends.tvm.load(copy)
    assert str(error.value).startswith(message)


def test_loading_a_missing_directory_says_what_to_give(tmp_path):
    with pytest.raises(ArtifactError, match="is not a directory; give the directory `qcompiler compile"):
        qc.backends.tvm.load(tmp_path / "nowhere")


def test_benchmark_reports_median_and_a_per_kernel_profile(digits):
    graph, compiled, _ = digits
    result = compiled.benchmark(repeat=5, number=2, profile=True)
    assert result.min_ms <= result.median_ms <= result.max_ms and result.repeat == 5
    kernels = {row.function: row for row in result.per_op}
    conv = next(node for node in graph if node.op == "qconv2d")
    assert any(conv.name in row.nodes for row in kernels.values())
    assert abs(sum(row.share for row in result.per_op) - 1.0) < 1e-6
    assert "ms median" in str(result) and conv.name in str(result)


def test_profile_gives_each_kernel_its_gops_against_the_hosts_int8_peak(digits):
    """A convolution's row counts its own arithmetic (2 x MACs, by the MAC count every part of
    qcompiler uses: per sample on the symbolic graph, so times the compiled batch) over its own
    time, against the int8 peak of this host's ISA and threads."""
    from qcompiler.analysis.cost import node_macs
    from qcompiler.backends.tvm.peak import peak

    graph, compiled, x = digits
    result = compiled.benchmark(repeat=2, profile=True)
    conv = next(node for node in graph if node.op == "qconv2d")
    row = next(row for row in result.per_op if row.nodes == [conv.name])
    assert row.kernel.startswith("conv_int8_") and row.dtype == "int8"
    assert row.ops == 2 * node_macs(conv) * len(x) > 0
    assert row.gops == pytest.approx(row.ops / (row.total_ms * 1e6))
    expected = peak(compiled.target.isa, result.threads)
    assert result.peak == expected and row.peak_gops == expected.int8_gops
    assert row.of_peak == pytest.approx(row.gops / expected.int8_gops)
    assert f"{row.gops:7.1f} {row.of_peak:6.1%}" in str(result) and expected.describe() in str(result)
