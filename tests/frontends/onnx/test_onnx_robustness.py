"""Every kind of broken ONNX file is a clear OnnxImportError naming the file (and the node),
never a crash, a hang or a huge allocation."""

from __future__ import annotations

import tracemalloc

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper
from onnx_cases import model_of, random

import qcompiler as qc


def small_model(opset: int = 17) -> onnx.ModelProto:
    """Conv -> Relu -> Flatten -> Gemm: the shape of the models the tests mutate."""
    nodes = [
        helper.make_node("Conv", ["x", "w"], ["c"], name="conv", pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["c"], ["r"], name="relu"),
        helper.make_node("Flatten", ["r"], ["f"], name="flatten"),
        helper.make_node("Gemm", ["f", "fc", "fb"], ["y"], name="fc", transB=1),
    ]
    return model_of(
        nodes,
        {"x": ((1, 2, 4, 4), np.float32)},
        ["y"],
        {"w": random((3, 2, 3, 3)), "fc": random((5, 48), 1), "fb": random((5,), 2)},
        opset=opset,
    )


def write(tmp_path, model_or_bytes, name="model.onnx"):
    path = tmp_path / name
    data = model_or_bytes if isinstance(model_or_bytes, bytes) else model_or_bytes.SerializeToString()
    path.write_bytes(data)
    return path


def load_error(path, match: str, kind=qc.OnnxImportError):
    with pytest.raises(kind, match=match) as caught:
        qc.load_onnx(path)
    assert str(path) in str(caught.value)
    return caught.value


def test_the_small_model_imports(tmp_path):
    assert [n.op for n in qc.load_onnx(write(tmp_path, small_model()))] == [
        "conv2d",
        "relu",
        "flatten",
        "linear",
    ]


def test_missing_empty_and_garbage_files(tmp_path):
    load_error(tmp_path / "nothing.onnx", "no such file")
    load_error(write(tmp_path, b""), "the file is empty")
    load_error(write(tmp_path, b"\xff\xfe not protobuf at all \x00" * 10), "not an ONNX model")
    load_error(tmp_path, "not a file")


def test_truncated_files(tmp_path):
    data = small_model().SerializeToString()
    for cut in (len(data) // 3, len(data) // 2, len(data) - 7):
        error = load_error(write(tmp_path, data[:cut]), "")
        assert "truncated" in str(error) or "not an ONNX model" in str(error) or "dangling" in str(error)


def test_future_and_old_opsets(tmp_path):
    newest = onnx.defs.onnx_opset_version()
    model = small_model()
    model.opset_import[0].version = newest + 5
    load_error(write(tmp_path, model), f"opset {newest + 5}, newer than the newest .* upgrade onnx")
    model.opset_import[0].version = 7
    load_error(write(tmp_path, model), "opset 7 is older than the oldest the importer reads .11.")


def test_missing_initializer_and_dangling_input(tmp_path):
    model = small_model()
    del model.graph.initializer[0]  # the conv weight
    load_error(
        write(tmp_path, model),
        r"node 'conv' \(Conv, #0\) reads 'w', which no graph input, "
        "initializer or node defines",
    )
    model = small_model()
    model.graph.node[1].input[0] = "ghost"
    load_error(write(tmp_path, model), "node 'relu' .* reads 'ghost'")


def test_cycle(tmp_path):
    model = small_model()
    model.graph.node[0].input[0] = "r"  # conv reads relu's output, relu reads conv's
    load_error(write(tmp_path, model), "the graph has a cycle through node")


def test_a_tensor_defined_twice(tmp_path):
    model = small_model()
    model.graph.node[1].output[0] = "c"
    load_error(write(tmp_path, model), "writes tensor 'c', which is already defined")


def test_absurd_shapes_are_refused_without_allocating(tmp_path):
    tracemalloc.start()
    try:
        model = small_model()
        huge = TensorProto(name="w", data_type=TensorProto.FLOAT, dims=[1 << 20, 1 << 20, 3, 3])
        model.graph.initializer[0].CopyFrom(huge)
        load_error(
            write(tmp_path, model, "a.onnx"), "initializer 'w' has shape .* more than 2147483648 elements"
        )
        model = small_model()
        model.graph.input[0].type.tensor_type.shape.dim[1].dim_value = 1 << 40
        load_error(write(tmp_path, model, "b.onnx"), "graph input 'x' has shape .* more than")
        # A constant the file asks to be made at import time.
        nodes = [
            helper.make_node("ConstantOfShape", ["s"], ["z"], name="zeros"),
            helper.make_node("Add", ["x", "z"], ["y"]),
        ]
        model = model_of(
            nodes,
            {"x": ((1, 4), np.float32)},
            [],
            {"s": np.array([1 << 20, 1 << 20], np.int64)},
            batch_param=False,
        )
        model.graph.output.append(helper.make_tensor_value_info("y", TensorProto.FLOAT, None))
        load_error(write(tmp_path, model, "c.onnx"), "node 'zeros' .* refused rather than allocated")
        # An op whose output would be absurd.
        nodes = [helper.make_node("Expand", ["x", "s"], ["y"], name="expand")]
        model = model_of(
            nodes,
            {"x": ((1, 1), np.float32)},
            [],
            {"s": np.array([1 << 20, 1 << 20], np.int64)},
            batch_param=False,
        )
        model.graph.output.append(helper.make_tensor_value_info("y", TensorProto.FLOAT, None))
        load_error(write(tmp_path, model, "d.onnx"), "node 'expand' .* more than 2147483648 elements")
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 64 << 20  # no array of the absurd sizes was made


def test_stored_data_shorter_than_the_shape(tmp_path):
    model = small_model()
    weight = model.graph.initializer[0]
    weight.raw_data = weight.raw_data[:20]
    load_error(write(tmp_path, model), "initializer 'w' has shape .* but stores 5; the file is truncated")


def test_external_data(tmp_path):
    model = small_model()
    onnx.save_model(
        model,
        tmp_path / "model.onnx",
        save_as_external_data=True,
        all_tensors_to_one_file=True,
        location="weights.bin",
        size_threshold=0,
    )
    graph = qc.load_onnx(tmp_path / "model.onnx")  # present: read
    np.testing.assert_array_equal(
        graph.values["w"].data, numpy_helper.to_array(small_model().graph.initializer[0])
    )
    (tmp_path / "weights.bin").write_bytes((tmp_path / "weights.bin").read_bytes()[:50])
    load_error(tmp_path / "model.onnx", "external data file is truncated")
    (tmp_path / "weights.bin").unlink()
    load_error(tmp_path / "model.onnx", "stored in the external file 'weights.bin', which does not exist")
    loaded = onnx.load(tmp_path / "model.onnx", load_external_data=False)
    loaded.graph.initializer[0].external_data[0].value = "../../etc/passwd"
    load_error(write(tmp_path, loaded, "escape.onnx"), "not a file inside the model's directory")


def test_unsupported_op_is_named_with_node_and_opset(tmp_path):
    model = small_model()
    model.graph.node[1].op_type = "Celu"
    error = load_error(
        write(tmp_path, model),
        r"node 'relu' \(Celu, opset 17\): op Celu has no IR mapping",
        qc.OnnxUnsupportedOpError,
    )
    assert isinstance(error, qc.UnsupportedOpError)
    model.graph.node[1].op_type, model.graph.node[1].domain = "FusedRelu", "com.example"
    model.opset_import.append(helper.make_opsetid("com.example", 1))
    load_error(write(tmp_path, model), "op domain 'com.example' is not imported", qc.OnnxUnsupportedOpError)


def test_integer_model_inputs_are_refused_by_node(tmp_path):
    nodes = [helper.make_node("DequantizeLinear", ["x", "s", "z"], ["y"], name="dq")]
    model = model_of(nodes, {}, [], {"s": np.float32(0.1), "z": np.int8(0)})
    model.graph.input.append(helper.make_tensor_value_info("x", TensorProto.INT8, ["N", 4]))
    model.graph.output.append(helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 4]))
    load_error(
        write(tmp_path, model),
        r"node 'dq' \(DequantizeLinear, opset 17\): it dequantizes 'x'",
        qc.OnnxUnsupportedOpError,
    )


def test_errors_are_qcompiler_errors():
    assert issubclass(qc.OnnxImportError, qc.LoadError) and issubclass(qc.OnnxImportError, qc.QCompilerError)
