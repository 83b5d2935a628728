"""Fuzzing the importer (slow): at least 5,000 mutated ONNX files, each of which must either
import into a verified graph or raise OnnxImportError, within a few seconds and without a
large allocation. The test prints how many files each class of mutation produced and how
they ended, and writes the table to fuzz_report.json in pytest's temporary directory."""

from __future__ import annotations

import collections
import json
import time
import traceback
import tracemalloc

import onnx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import qcompiler as qc
from qcompiler.examples import models

pytestmark = pytest.mark.slow

EXAMPLES = int(__import__("os").environ.get("QC_FUZZ_EXAMPLES", 5200))
# Slower than this or a larger peak allocation is a failure (a hang or an absurd allocation).
# The time limit catches hangs, not slowness: under tracemalloc, on a 2-core machine with a
# load average of 12, one successful import of the digits CNN took 10.6 s.
SECONDS, PEAK_BYTES = 60.0, 256 << 20


def _seeds(tmp_path_factory) -> list[bytes]:
    """A float file and a QDQ file (our export of the digits CNN) and a small hand-written one."""
    from test_onnx_robustness import small_model

    directory = tmp_path_factory.mktemp("seeds")
    model, inputs = models.digits_cnn()
    graph = qc.trace(model, inputs)
    quantized = qc.quantize(graph, [inputs], bias_correction=False, progress=False)
    return [
        qc.backends.onnx.export(graph, directory / "float.onnx").read_bytes(),
        qc.backends.onnx.export(quantized, directory / "qdq.onnx").read_bytes(),
        small_model().SerializeToString(),
    ]


def _flip_bytes(data: bytes, draw) -> bytes:
    array = bytearray(data)
    for _ in range(draw(st.integers(1, 8))):
        position = draw(st.integers(0, len(array) - 1))
        array[position] ^= draw(st.integers(1, 255))
    return bytes(array)


def _truncate(data: bytes, draw) -> bytes:
    return data[: draw(st.integers(0, len(data) - 1))]


def _splice(data: bytes, draw) -> bytes:
    position = draw(st.integers(0, len(data)))
    return data[:position] + draw(st.binary(min_size=1, max_size=64)) + data[position:]


def _proto(data: bytes, draw) -> bytes:
    """A structural edit of the model: ops, wiring, shapes, attributes, opsets, initializers."""
    model = onnx.ModelProto()
    model.ParseFromString(data)
    graph = model.graph
    kind = draw(
        st.sampled_from(
            [
                "op_type",
                "rewire",
                "drop_initializer",
                "dims",
                "attribute",
                "opset",
                "drop_node",
                "swap_nodes",
                "input_shape",
                "raw_data",
            ]
        )
    )
    node = graph.node[draw(st.integers(0, len(graph.node) - 1))]
    if kind == "op_type":
        node.op_type = draw(
            st.sampled_from(
                [
                    "Conv",
                    "Relu",
                    "Gemm",
                    "Reshape",
                    "Concat",
                    "Slice",
                    "QuantizeLinear",
                    "DequantizeLinear",
                    "Loop",
                    "Foo",
                    "Pad",
                    "Resize",
                    "Gather",
                    "Expand",
                    "Split",
                    "Softmax",
                    "",
                ]
            )
        )
    elif kind == "rewire" and node.input:
        names = [n for other in graph.node for n in other.output] + [i.name for i in graph.initializer]
        node.input[draw(st.integers(0, len(node.input) - 1))] = draw(st.sampled_from(names + ["", "ghost"]))
    elif kind == "drop_initializer" and graph.initializer:
        del graph.initializer[draw(st.integers(0, len(graph.initializer) - 1))]
    elif kind == "dims" and graph.initializer:
        tensor = graph.initializer[draw(st.integers(0, len(graph.initializer) - 1))]
        if tensor.dims:
            tensor.dims[draw(st.integers(0, len(tensor.dims) - 1))] = draw(
                st.sampled_from([0, 1, 2, 3, -1, 1 << 31, 1 << 62])
            )
    elif kind == "attribute" and node.attribute:
        attribute = node.attribute[draw(st.integers(0, len(node.attribute) - 1))]
        if attribute.ints:
            attribute.ints[draw(st.integers(0, len(attribute.ints) - 1))] = draw(
                st.sampled_from([-(1 << 40), -3, -1, 0, 5, 1 << 40])
            )
        elif attribute.type == onnx.AttributeProto.INT:
            attribute.i = draw(st.sampled_from([-(1 << 40), -1, 0, 2, 1 << 40]))
        elif attribute.type == onnx.AttributeProto.FLOAT:
            attribute.f = draw(st.sampled_from([float("nan"), float("inf"), -1.0, 0.0, 1e30]))
    elif kind == "opset":
        model.opset_import[0].version = draw(st.integers(-5, 40))
    elif kind == "drop_node" and len(graph.node) > 1:
        del graph.node[draw(st.integers(0, len(graph.node) - 1))]
    elif kind == "swap_nodes" and len(graph.node) > 1:
        i, j = draw(st.integers(0, len(graph.node) - 1)), draw(st.integers(0, len(graph.node) - 1))
        first, second = onnx.NodeProto(), onnx.NodeProto()
        first.CopyFrom(graph.node[i])
        second.CopyFrom(graph.node[j])
        graph.node[i].CopyFrom(second)
        graph.node[j].CopyFrom(first)
    elif kind == "input_shape":
        dims = graph.input[0].type.tensor_type.shape.dim
        dim = dims[draw(st.integers(0, len(dims) - 1))]
        choice = draw(st.sampled_from([0, -2, 1 << 40, "M", None]))
        if choice is None:
            dim.Clear()
        elif isinstance(choice, str):
            dim.dim_param = choice
        else:
            dim.dim_value = choice
    elif kind == "raw_data" and graph.initializer:
        tensor = graph.initializer[draw(st.integers(0, len(graph.initializer) - 1))]
        if tensor.raw_data:
            tensor.raw_data = tensor.raw_data[: draw(st.integers(0, len(tensor.raw_data)))]
    return model.SerializeToString()


MUTATIONS = {"flip_bytes": _flip_bytes, "truncate": _truncate, "splice": _splice, "proto": _proto}


@pytest.fixture(scope="module")
def seeds(tmp_path_factory):
    return _seeds(tmp_path_factory)


def test_fuzz_importer(seeds, tmp_path):
    outcomes: dict[str, collections.Counter] = collections.defaultdict(collections.Counter)
    failures: list[str] = []
    path = tmp_path / "fuzzed.onnx"

    @settings(max_examples=EXAMPLES, deadline=None, database=None, suppress_health_check=list(HealthCheck))
    @given(st.data())
    def run(data):
        seed = data.draw(st.sampled_from(range(len(seeds))))
        mutation = data.draw(st.sampled_from(sorted(MUTATIONS)))
        mutated = MUTATIONS[mutation](seeds[seed], data.draw)
        path.write_bytes(mutated)
        tracemalloc.start()
        start = time.perf_counter()
        try:
            qc.load_onnx(path)
            outcome = "imported"
        except qc.OnnxImportError as error:
            unsupported = isinstance(error, qc.OnnxUnsupportedOpError)
            outcome = "OnnxImportError (unsupported op)" if unsupported else "OnnxImportError"
            assert str(path) in str(error)
        except Exception as error:  # noqa: BLE001  (the defect the fuzzer looks for)
            outcome = f"CRASH {type(error).__name__}"
            where = traceback.extract_tb(error.__traceback__)[-1]
            failures.append(f"{mutation}: {type(error).__name__}: {error} at {where.filename}:{where.lineno}")
        finally:
            _, peak = tracemalloc.get_traced_memory()
            tracemalloc.stop()
        seconds = time.perf_counter() - start
        if seconds > SECONDS or peak > PEAK_BYTES:
            failures.append(f"{mutation}: {outcome} took {seconds:.1f} s, peak {peak >> 20} MiB")
        outcomes[mutation][outcome] += 1

    run()
    total = sum(sum(c.values()) for c in outcomes.values())
    report = {mutation: dict(counter) for mutation, counter in sorted(outcomes.items())}
    print(f"\nfuzzed {total} files:")
    for mutation, counter in report.items():
        print(
            f"  {mutation:11s} {sum(counter.values()):5d}: "
            + ", ".join(f"{k} {v}" for k, v in sorted(counter.items()))
        )
    (tmp_path / "fuzz_report.json").write_text(json.dumps({"total": total, "outcomes": report}, indent=1))
    assert not failures, "\n".join(failures[:20])
    assert total >= min(5000, EXAMPLES)
