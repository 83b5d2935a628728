"""QuantConfig for transformers: observers chosen per activation (the 16-bit bug), per op
kind, the non-MAC activation scheme, the `transformer` preset and smoothing_alpha."""

import pytest
from transformer_models import outlier_encoder

from qcompiler.errors import QuantizationError
from qcompiler.passes import insert_fake_quant
from qcompiler.quantization.calibrate import quant_points
from qcompiler.quantization.config import QScheme, QuantConfig
from qcompiler.quantization.observers import MinMaxObserver, PercentileObserver


def observers(config):
    graph, _, _ = outlier_encoder()
    quantized = insert_fake_quant(graph, config=config).graph
    return {point.name: point for point in quant_points(quantized, config)}


def test_16_bit_activations_get_minmax_whatever_the_preset():
    # The reported bug: this kept the 99.99th percentile while preset("w8a16") used min/max.
    points = observers(QuantConfig.preset("int8", activation=QScheme(16)))
    activations = [p for p in points.values() if p.activation_inputs]
    assert activations and all(isinstance(p.observer, MinMaxObserver) for p in activations)
    points = observers(QuantConfig.preset("int8"))
    assert all(isinstance(p.observer, PercentileObserver) for p in points.values() if p.activation_inputs)


def test_an_explicit_observer_and_op_type_observers_are_honoured():
    config = QuantConfig(activation=QScheme(16), activation_observer="percentile")
    assert config.activation_observer_for(QScheme(16), "add") == "percentile"
    config = QuantConfig(op_type_observers={"softmax": "minmax"})
    points = observers(config)
    softmax = [p for p in points.values() if p.activation_inputs
               and p.activation_inputs[0].producer.op == "softmax"]
    assert softmax and all(isinstance(p.observer, MinMaxObserver) for p in softmax)
    assert isinstance(points["layers.0.add.fq"].observer, PercentileObserver)


def test_bad_observer_fields_are_named():
    with pytest.raises(QuantizationError, match=r"op_type_observers\['softmax'\] 'minimax' is unknown"):
        QuantConfig(op_type_observers={"softmax": "minimax"})
    with pytest.raises(QuantizationError, match="names op type 'softmx'.*did you mean 'softmax'"):
        QuantConfig(op_type_observers={"softmx": "minmax"})
    with pytest.raises(QuantizationError, match=r"smoothing_alpha must be a number in \[0, 1\]"):
        QuantConfig(smoothing_alpha=2)
    with pytest.raises(QuantizationError, match="non_mac_activation is per-channel"):
        QuantConfig(non_mac_activation=QScheme(16, per_channel=True))


def test_transformer_preset_keeps_layer_inputs_8_bit_and_the_residual_stream_16():
    graph, _, _ = outlier_encoder()
    quantized = insert_fake_quant(graph, config="transformer").graph
    bits = {node.inputs[0].name: node.attrs["bits"] for node in quantized if node.op == "fake_quant"}
    for node in quantized:
        if node.op in ("linear", "matmul"):
            for value in node.inputs[:1] if node.op == "linear" else node.inputs:
                fq = value.producer
                while fq.op != "fake_quant":  # through reshapes and transposes
                    fq = fq.inputs[0].producer
                assert fq.attrs["bits"] == 8, node.describe()
    assert bits["layers.0.add"] == 16 and bits["layers.0.softmax"] == 8
    assert bits["word_embeddings"] == 8  # the table is stored at its output precision
    assert bits["layers.0.div"] == 16 and bits["layers.0.matmul"] == 16  # the scores: softmax reads them
    assert QuantConfig.preset("transformer").smoothing_alpha == 0.5
