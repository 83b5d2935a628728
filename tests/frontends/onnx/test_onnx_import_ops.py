"""Each imported ONNX op computes what onnxruntime computes (the independent oracle): a model
of one node (or a few) built with onnx.helper, imported with qc.load_onnx and run with the
torch backend at two batch sizes, against onnxruntime on the same inputs (float32, 1e-5)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

import qcompiler as qc

pytest.importorskip("onnxruntime")
from onnx import helper  # noqa: E402
from onnx_cases import model_of, ort_run, random  # noqa: E402

X4 = {"x": ((2, 4, 6, 6), np.float32)}
W = random((8, 4, 3, 3), 1)
B = random((8,), 2)


def _case(op, attrs=None, inputs=("x",), initializers=None, shapes=X4, opset=17, outputs=1, extra=()):
    names = [f"y{i}" for i in range(outputs)]
    node = helper.make_node(op, list(inputs), names, **(attrs or {}))
    return model_of([*extra, node], shapes, names, initializers, opset=opset)


CASES = {
    "conv": _case("Conv", {"pads": [1, 1, 1, 1]}, ("x", "w", "b"), {"w": W, "b": B}),
    "conv_asymmetric_pads": _case("Conv", {"pads": [0, 1, 2, 1], "strides": [2, 1]}, ("x", "w"), {"w": W}),
    "conv_same_upper": _case("Conv", {"auto_pad": "SAME_UPPER", "strides": [2, 2]}, ("x", "w"), {"w": W}),
    "conv_depthwise": _case(
        "Conv", {"group": 4, "pads": [1, 1, 1, 1]}, ("x", "w"), {"w": random((4, 1, 3, 3))}
    ),
    "conv1d": _case(
        "Conv",
        {"pads": [1, 1], "dilations": [2]},
        ("x", "w"),
        {"w": random((5, 4, 3))},
        shapes={"x": ((2, 4, 9), np.float32)},
    ),
    "conv_transpose": _case(
        "ConvTranspose",
        {"strides": [2, 2], "pads": [1, 1, 1, 1], "output_padding": [1, 1]},
        ("x", "w", "b"),
        {"w": random((4, 3, 3, 3)), "b": random((3,))},
    ),
    "gemm": _case(
        "Gemm",
        {"transB": 1},
        ("x", "w", "b"),
        {"w": random((5, 7)), "b": random((5,))},
        shapes={"x": ((2, 7), np.float32)},
    ),
    "gemm_untransposed": _case(
        "Gemm", {}, ("x", "w"), {"w": random((7, 5))}, shapes={"x": ((2, 7), np.float32)}
    ),
    "matmul_weight": _case(
        "MatMul", {}, ("x", "w"), {"w": random((7, 5))}, shapes={"x": ((2, 3, 7), np.float32)}
    ),
    "matmul": _case(
        "MatMul", {}, ("x", "z"), shapes={"x": ((2, 3, 7), np.float32), "z": ((2, 7, 4), np.float32)}
    ),
    "batch_norm": _case(
        "BatchNormalization",
        {"epsilon": 1e-3},
        ("x", "s", "b", "m", "v"),
        {
            "s": random((4,), 1),
            "b": random((4,), 2),
            "m": random((4,), 3),
            "v": np.abs(random((4,), 4)) + 0.5,
        },
    ),
    "layer_norm": _case(
        "LayerNormalization", {"axis": -1}, ("x", "s", "b"), {"s": random((6,)), "b": random((6,), 1)}
    ),
    "relu": _case("Relu"),
    "sigmoid": _case("Sigmoid"),
    "tanh": _case("Tanh"),
    "hardswish": _case("HardSwish"),
    "hardsigmoid_torch": _case("HardSigmoid", {"alpha": 1 / 6, "beta": 0.5}),
    "hardsigmoid_onnx": _case("HardSigmoid"),
    "leaky_relu": _case("LeakyRelu", {"alpha": 0.2}),
    "prelu_channels": _case("PRelu", {}, ("x", "s"), {"s": random((4, 1, 1))}),
    "prelu_scalar": _case("PRelu", {}, ("x", "s"), {"s": np.array([0.3], np.float32)}),
    "elu": _case("Elu", {"alpha": 0.7}),
    "selu": _case("Selu"),
    "softplus": _case("Softplus"),
    "erf": _case("Erf"),
    "exp": _case("Exp"),
    "abs": _case("Abs"),
    "neg": _case("Neg"),
    "gelu": _case("Gelu", opset=20),
    "gelu_tanh": _case("Gelu", {"approximate": "tanh"}, opset=20),
    "mish": _case("Mish", opset=18),
    "clip": _case("Clip", {}, ("x", "lo", "hi"), {"lo": np.float32(-0.5), "hi": np.float32(0.7)}),
    "relu6": _case("Clip", {}, ("x", "lo", "hi"), {"lo": np.float32(0), "hi": np.float32(6)}),
    "pow": _case("Pow", {}, ("x", "p"), {"p": np.float32(2.0)}),
    "softmax": _case("Softmax", {"axis": 1}),
    "add_constant": _case("Add", {}, ("x", "c"), {"c": random((6,))}),
    "mul_div_sub": _case("Mul", {}, ("x", "c"), {"c": random((4, 1, 1))}),
    "where": _case("Where", {}, ("m", "x", "c"), {"m": random((6, 6)) > 0, "c": np.float32(-1.0)}),
    "greater_cast": _case(
        "Cast",
        {"to": 1},
        ("g",),
        extra=[helper.make_node("Greater", ["x", "c"], ["g"])],
        initializers={"c": np.float32(0.1)},
    ),
    "max_pool": _case("MaxPool", {"kernel_shape": [3, 3], "strides": [2, 2], "pads": [1, 1, 1, 1]}),
    "max_pool_ceil": _case(
        "MaxPool",
        {"kernel_shape": [2, 2], "strides": [2, 2], "ceil_mode": 1},
        shapes={"x": ((2, 3, 7, 7), np.float32)},
    ),
    "avg_pool_exclude_pad": _case("AveragePool", {"kernel_shape": [3, 3], "pads": [1, 1, 1, 1]}),
    "avg_pool_include_pad": _case(
        "AveragePool", {"kernel_shape": [3, 3], "pads": [1, 1, 1, 1], "count_include_pad": 1}
    ),
    "global_average_pool": _case("GlobalAveragePool"),
    "global_max_pool": _case("GlobalMaxPool"),
    "reduce_mean": _case("ReduceMean", {"axes": [2, 3], "keepdims": 1}),
    "reduce_sum": _case("ReduceSum", {"keepdims": 0}, ("x", "a"), {"a": np.array([1], np.int64)}),
    "reduce_max": _case("ReduceMax", {"axes": [-1], "keepdims": 0}),
    "reduce_l2": _case("ReduceL2", {"axes": [1], "keepdims": 1}),
    "argmax": _case("ArgMax", {"axis": 1, "keepdims": 0}),
    "concat": _case("Concat", {"axis": 1}, ("x", "x")),
    "split": _case("Split", {"axis": 1}, ("x", "s"), {"s": np.array([1, 3], np.int64)}, outputs=2),
    "slice": _case(
        "Slice",
        {},
        ("x", "st", "en", "ax", "sp"),
        {
            "st": np.array([1, -5], np.int64),
            "en": np.array([3, 1000], np.int64),
            "ax": np.array([1, 3], np.int64),
            "sp": np.array([1, 2], np.int64),
        },
    ),
    "reshape_zero_minus_one": _case("Reshape", {}, ("x", "s"), {"s": np.array([0, -1, 6], np.int64)}),
    "flatten": _case("Flatten", {"axis": 1}),
    "flatten_axis2": _case("Flatten", {"axis": 2}),
    "transpose": _case("Transpose", {"perm": [0, 2, 3, 1]}),
    "squeeze_unsqueeze": _case(
        "Squeeze",
        {},
        ("u", "a"),
        {"a": np.array([2], np.int64)},
        extra=[helper.make_node("Unsqueeze", ["x", "a"], ["u"])],
    ),
    "pad_reflect": _case(
        "Pad", {"mode": "reflect"}, ("x", "p"), {"p": np.array([0, 0, 1, 2, 0, 0, 2, 1], np.int64)}
    ),
    "pad_constant": _case(
        "Pad", {}, ("x", "p", "v"), {"p": np.array([0, 1, 0, 0, 0, 2, 0, 3], np.int64), "v": np.float32(0.5)}
    ),
    "resize_nearest": _case(
        "Resize",
        {"mode": "nearest", "coordinate_transformation_mode": "asymmetric", "nearest_mode": "floor"},
        ("x", "", "sc"),
        {"sc": np.array([1, 1, 2, 2], np.float32)},
    ),
    "resize_linear": _case(
        "Resize",
        {"mode": "linear", "coordinate_transformation_mode": "half_pixel"},
        ("x", "", "sc"),
        {"sc": np.array([1, 1, 1.5, 2], np.float32)},
    ),
    "gather_embedding": _case(
        "Gather", {"axis": 0}, ("t", "x"), {"t": random((10, 5))}, shapes={"x": ((2, 7), np.int64)}
    ),
    "gather_token": _case(
        "Gather", {"axis": 1}, ("x", "i"), {"i": np.array(0, np.int64)}, shapes={"x": ((2, 5, 8), np.float32)}
    ),
    "expand": _case(
        "Expand",
        {},
        ("x", "s"),
        {"s": np.array([1, 4, 3, 5], np.int64)},
        shapes={"x": ((2, 4, 1, 5), np.float32)},
    ),
    # The shape arithmetic exporters write for x.view(x.size(0), -1): folded at import.
    "shape_arithmetic": _case(
        "Reshape",
        {},
        ("x", "target"),
        {"zero": np.array([0], np.int64), "minus_one": np.array([-1], np.int64)},
        extra=[
            helper.make_node("Shape", ["x"], ["shape"]),
            helper.make_node("Gather", ["shape", "zero"], ["batch"], axis=0),
            helper.make_node("Concat", ["batch", "minus_one"], ["target"], axis=0),
        ],
    ),
}


def _feeds(model, batch: int) -> dict:
    feeds = {}
    for index, value in enumerate(model.graph.input):
        dims = [batch if d.dim_param else d.dim_value for d in value.type.tensor_type.shape.dim]
        if value.type.tensor_type.elem_type == 7:
            feeds[value.name] = np.random.default_rng(index).integers(0, 10, dims).astype(np.int64)
        else:
            feeds[value.name] = random(dims, index + batch)
    return feeds


@pytest.mark.parametrize("name", sorted(CASES))
def test_imported_op_matches_onnxruntime(name, tmp_path):
    model = CASES[name]
    path = tmp_path / f"{name}.onnx"
    path.write_bytes(model.SerializeToString())
    graph = qc.load_onnx(path)
    module = qc.to_torch(graph)
    for batch in (2, 3):  # the symbolic batch
        feeds = _feeds(model, batch)
        expected = ort_run(model, feeds)
        with torch.no_grad():
            got = module(*[torch.from_numpy(feeds[v.name]) for v in graph.inputs])
        got = got if isinstance(got, tuple) else (got,)
        assert len(got) == len(expected)
        for ours, theirs in zip(got, expected, strict=True):
            assert tuple(ours.shape) == theirs.shape
            np.testing.assert_allclose(ours.numpy(), theirs, rtol=1e-5, atol=1e-5)


def test_gelu_opset17_decomposition_computes_gelu(tmp_path):
    """torch.onnx at opset 17 writes Gelu as x * 0.5 * (1 + erf(x / sqrt 2)); imported, it computes gelu."""
    nodes = [
        helper.make_node("Div", ["x", "r2"], ["d"]),
        helper.make_node("Erf", ["d"], ["e"]),
        helper.make_node("Add", ["e", "one"], ["a"]),
        helper.make_node("Mul", ["x", "a"], ["m"]),
        helper.make_node("Mul", ["m", "half"], ["y"]),
    ]
    model = model_of(
        nodes, X4, ["y"], {"r2": np.float32(math.sqrt(2)), "one": np.float32(1), "half": np.float32(0.5)}
    )
    path = tmp_path / "gelu.onnx"
    path.write_bytes(model.SerializeToString())
    graph = qc.load_onnx(path)
    x = torch.from_numpy(random((2, 4, 6, 6)))
    with torch.no_grad():
        np.testing.assert_allclose(
            qc.to_torch(graph)(x).numpy(), torch.nn.functional.gelu(x).numpy(), rtol=1e-5, atol=1e-6
        )
