"""QuantConfig and QScheme: presets, precedence of overrides, and every validation message."""

import numpy as np
import pytest

from qcompiler.errors import QuantizationError
from qcompiler.ir import Graph
from qcompiler.quantization.config import QOverride, QScheme, QuantConfig


def small_graph() -> Graph:
    g = Graph()
    x = g.add_input("x", (1, 3, 8, 8))
    w = g.add_constant("conv1.weight", np.ones((4, 3, 3, 3), np.float32))
    conv = g.add_node("conv2d", [x, w], {"stride": [1, 1], "padding": [1, 1], "dilation": [1, 1]},
                      name="conv1")
    relu = g.add_node("relu", [conv.output], name="relu1")
    g.outputs = [relu.output]
    return g


def test_int8_preset_is_per_channel_symmetric_weights_and_uint8_activations():
    config = QuantConfig.preset("int8")
    assert config.weight == QScheme(8, symmetric=True, per_channel=True, narrow_range=True)
    assert (config.weight.qmin, config.weight.qmax) == (-127, 127)
    assert config.activation == QScheme(8, signed=False)
    assert (config.activation.qmin, config.activation.qmax) == (0, 255)
    assert config == QuantConfig()
    assert str(config.weight) == "int8 symmetric per-channel narrow-range"


def test_other_presets():
    strict = QuantConfig.preset("int8-per-tensor")
    assert not strict.weight.per_channel and strict.weight.symmetric
    w4a8 = QuantConfig.preset("w4a8")
    assert (w4a8.weight.qmin, w4a8.weight.qmax) == (-7, 7) and w4a8.weight_observer == "mse"
    assert QuantConfig.preset("w8a16").activation.bits == 16
    assert QuantConfig.preset("int8", activation_observer="percentile").activation_observer == \
        "percentile"


def test_overrides_take_precedence_node_then_op_type_then_global():
    g = small_graph()
    conv, relu = g.nodes
    sixteen, four = QScheme(16), QScheme(4, symmetric=True, narrow_range=True)
    config = QuantConfig(op_type_overrides={"relu": QOverride(activation=sixteen),
                                            "conv2d": QOverride(weight=four)},
                         node_overrides={"conv1": QOverride(activation=QScheme(8))})
    assert config.weight_scheme(conv) == four
    # The group conv1 -> relu1: node overrides (any member) win over op-type overrides.
    assert config.activation_scheme([conv, relu]) == QScheme(8)
    assert config.activation_scheme([relu]) == sixteen
    assert config.activation_scheme([g.inputs[0]]) == config.activation
    config.check_names(g)


def test_exclusions():
    g = small_graph()
    conv, relu = g.nodes
    config = QuantConfig(exclude_nodes=["conv1"], exclude_op_types={"relu"})
    assert config.is_excluded(conv) and config.is_excluded(relu)
    assert not QuantConfig().is_excluded(conv)


@pytest.mark.parametrize(("make", "message"), [
    (lambda: QScheme(bits=9), r"QScheme bits must be an int in 2..8, or 16 \(activations only\), "
                              r"got 9"),
    (lambda: QScheme(bits=1), "got 1"),
    (lambda: QScheme(bits=True), "got True"),
    (lambda: QScheme(symmetric=True, signed=False),
     r"QScheme\(symmetric=True, signed=False\) makes no sense"),
    (lambda: QScheme(narrow_range=True, signed=False),
     r"QScheme\(narrow_range=True, signed=False\) makes no sense"),
    (lambda: QuantConfig(activation=QScheme(8, per_channel=True)),
     "QuantConfig.activation is per-channel; activations are quantized per tensor"),
    (lambda: QuantConfig(weight=QScheme(16, symmetric=True)),
     r"QuantConfig.weight has 16 bits; weights take 2..8 bits \(16-bit is for activations only\)"),
    (lambda: QuantConfig(activation_observer="histogram"),
     "QuantConfig.activation_observer 'histogram' is unknown; valid observers: minmax, "
     "moving_average, percentile, mse, kl"),
    (lambda: QuantConfig(activation_observer="percentile",
                         activation_observer_options={"percentile": 10}),
     r"QuantConfig.activation_observer_options do not suit the 'percentile' observer: "
     r"percentile must be in \(50, 100\]"),
    (lambda: QuantConfig(activation_observer="minmax", activation_observer_options={"bins": 10}),
     "do not suit the 'minmax' observer"),
    (lambda: QuantConfig(op_type_overrides={"conv": QOverride()}),
     "QuantConfig names op type 'conv', which is not an IR op; did you mean 'conv2d', 'conv1d'"),
    (lambda: QuantConfig(exclude_op_types=["sofmax"]), "did you mean 'softmax'"),
    (lambda: QuantConfig(node_overrides={"conv1": QScheme()}),
     r"QuantConfig.node_overrides\['conv1'\] must be a QOverride, got QScheme"),
    (lambda: QuantConfig(node_overrides={"conv1": QOverride(activation=QScheme(per_channel=True))}),
     r"QuantConfig.node_overrides\['conv1'\].activation is per-channel"),
    (lambda: QuantConfig(exclude_nodes="conv1"),
     r"QuantConfig.exclude_nodes takes a collection of names, got the string 'conv1'; "
     r"write \['conv1'\]"),
    (lambda: QuantConfig.preset("int4"),
     "unknown QuantConfig preset 'int4'; valid presets: int8, int8-per-tensor, int8-avx2, int8-aarch64, "
     "w4a8, w8a16"),
])
def test_invalid_configs_are_refused_with_clear_messages(make, message):
    with pytest.raises(QuantizationError, match=message):
        make()


def test_node_names_are_checked_against_the_graph_with_suggestions():
    g = small_graph()
    with pytest.raises(QuantizationError,
                       match="QuantConfig.exclude_nodes names 'conv_1', which is not a node or "
                             "input of graph main; did you mean 'conv1'"):
        QuantConfig(exclude_nodes=["conv_1"]).check_names(g)
    with pytest.raises(QuantizationError, match="QuantConfig.node_overrides names 'zzz'.*; "
                                                r"print\(graph\) lists the node names"):
        QuantConfig(node_overrides={"zzz": QOverride()}).check_names(g)
    QuantConfig(exclude_nodes=["x", "relu1"]).check_names(g)  # inputs and nodes are both fine


def test_config_is_immutable():
    config = QuantConfig(node_overrides={"conv1": QOverride()})
    with pytest.raises(TypeError):
        config.node_overrides["relu1"] = QOverride()
    with pytest.raises(AttributeError):
        config.weight = QScheme()
