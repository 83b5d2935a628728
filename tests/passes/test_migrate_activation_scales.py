"""migrate_activation_scales (SmoothQuant): function-preserving in float, and what justifies
it: smaller activation outliers, and a lower W8A8 error on an encoder with outliers."""

import numpy as np
import pytest
from oracles import assert_same_function, run
from transformer_models import outlier_encoder

import qcompiler as qc
from qcompiler.errors import OptionError, PassError
from qcompiler.ir.evaluate import input_batches
from qcompiler.numerics.smoothing import smoothing_scales, weight_column_max
from qcompiler.passes import migrate_activation_scales
from qcompiler.quantization.config import QuantConfig
from qcompiler.quantization.linear_inputs import linear_input_groups, record_linear_inputs


def test_smoothing_scales_by_hand():
    scales = smoothing_scales([4.0, 9.0, 0.0], [1.0, 4.0, 2.0], alpha=0.5)
    np.testing.assert_allclose(scales, [2.0, 1.5, 1.0])  # sqrt(4)/1, sqrt(9)/sqrt(4), dead -> 1
    np.testing.assert_allclose(smoothing_scales([4.0], [2.0], alpha=1.0), [4.0])
    np.testing.assert_allclose(weight_column_max([[[1, -3]], [[-2, 1]]]), [2, 3])


@pytest.mark.parametrize("alpha", [0.25, 0.5, 0.85])
def test_preserves_the_float_function(alpha):
    graph, calibration, held_out = outlier_encoder()
    result = migrate_activation_scales(graph.copy(), calibration_data=calibration, alpha=alpha)
    assert result.modified
    result.graph.verify()
    # Relative to the output size: the outlier channels make values of ~1e2.
    assert_same_function(graph, result.graph, [[b] for b in held_out], rtol=1e-5, atol=1e-5,
                         scale_relative=True)


def test_post_ln_residual_keeps_the_unscaled_layer_norm():
    graph, calibration, _ = outlier_encoder()
    result = migrate_activation_scales(graph.copy(), calibration_data=calibration)
    smoothed = [node for node in result.graph if node.name.endswith(".smoothed")]
    # Each layer_norm that feeds linears and a residual add gets one copy.
    assert len(smoothed) == 4  # embedding_norm, then attention_norm and output_norm but the last
    assert all(user.op == "linear" for node in smoothed for user in node.output.users)
    assert any("folded into a copy" in note for note in result.notes)


def test_flattens_the_outlier_channels():
    graph, calibration, _ = outlier_encoder()
    smoothed = migrate_activation_scales(graph.copy(), calibration_data=calibration).graph

    def worst_ratio(g):  # max channel range / median channel range at linear inputs
        groups = linear_input_groups(g)
        stats = record_linear_inputs(g, input_batches(calibration, g), [v for v, _ in groups])
        return max(s.abs_max.max() / np.median(s.abs_max) for s in stats.values())

    assert worst_ratio(smoothed) < worst_ratio(graph) / 3


def test_lowers_w8a8_error_on_outliers():
    graph, calibration, held_out = outlier_encoder()
    errors = {}
    for alpha in (None, 0.5):
        # 16-bit where no layer multiplies (the residual stream), so the 8-bit layer inputs
        # that smoothing targets are what limits the error.
        config = QuantConfig.preset("transformer", smoothing_alpha=alpha)
        quantized = qc.quantize(graph, calibration, config=config, bias_correction=False)
        want = np.concatenate([run(graph, b)[0].numpy() for b in held_out])
        got = np.concatenate([run(quantized, b)[0].numpy() for b in held_out])
        errors[alpha] = float(np.mean((want - got) ** 2))
    assert errors[0.5] < errors[None] / 2


def test_bad_options_name_the_option():
    graph, calibration, _ = outlier_encoder()
    with pytest.raises(OptionError, match=r"alpha=1.5\): alpha is the migration strength"):
        migrate_activation_scales(calibration_data=calibration, alpha=1.5)
    with pytest.raises(OptionError, match="needs calibration_data"):
        migrate_activation_scales(calibration_data=None)
    quantized = qc.quantize(graph, calibration, bias_correction=False)
    with pytest.raises(PassError, match="migrate_activation_scales rewrites float graphs"):
        migrate_activation_scales(quantized, calibration_data=calibration)


def test_alpha_search_and_default_config_for_attention_graphs():
    graph, calibration, held_out = outlier_encoder()
    config, scores = qc.search_smoothing_alpha(graph, calibration, held_out, alphas=(0.0, 0.5),
                                               bias_correction=False)
    assert set(scores) == {0.0, 0.5} and config.smoothing_alpha == 0.5 and scores[0.5] > scores[0.0]
    # qc.quantize(config=None) picks the transformer preset (with SmoothQuant) for this graph.
    quantized = qc.quantize(graph, calibration, bias_correction=False)
    assert any(node.name.endswith(".smoothed") for node in quantized)
    assert {n.attrs["bits"] for n in quantized if n.op == "fake_quant"} == {8, 16}
