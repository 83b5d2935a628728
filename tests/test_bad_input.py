"""Bad input is a clear error: a `QCompilerError` subclass exported as `qc.<Name>`, whose message
names the node, option or data at fault and says what to do. One test per kind of bad input,
each asserting the message."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import qcompiler as qc
from qcompiler.examples.models import digits_cnn
from qcompiler.passes import decompose_low_rank, merge_similar_neurons, remove_filters


@pytest.fixture(scope="module")
def digits():
    model, inputs = digits_cnn(batch=4)
    generator = torch.Generator().manual_seed(0)
    batches = [torch.randn(inputs[0].shape, generator=generator) for _ in range(2)]
    quantized = qc.quantize(model, batches, bias_correction=False, progress=False)
    return model, inputs, batches, quantized


def test_the_error_classes_are_exported():
    for name in ("QCompilerError", "CaptureError", "UnsupportedOpError", "VerificationError",
                 "PassError", "ParseError", "QuantizationError", "CalibrationDataError",
                 "IntegerOnlyError", "BudgetError", "OptionError", "OutputPathError", "InputError",
                 "MissingDependencyError"):
        assert issubclass(getattr(qc, name), qc.QCompilerError), name
        assert name in qc.__all__


# ---- calibration data -------------------------------------------------------------------------


def test_one_huge_outlier_in_a_calibration_batch_is_named():
    model, inputs = digits_cnn(batch=4)
    generator = torch.Generator().manual_seed(0)
    batches = [torch.randn(inputs[0].shape, generator=generator) for _ in range(3)]
    batches[1][2, 0, 3, 4] = 3e38
    with pytest.raises(qc.CalibrationDataError, match=r"calibration batch 1: input %\S+ holds 3e\+38 "
                       r"at index \[2, 0, 3, 4\], .* times the median magnitude of its values: an "
                       r"8-bit grid spanning .* round nearly every value of %\S+ .* to zero, so the "
                       r"quantized model would ignore its input\. Remove or clip that batch"):
        qc.quantize(model, batches, progress=False)


def test_a_huge_additive_mask_is_named_with_what_to_do():
    class Scores(nn.Module):
        def forward(self, x, mask):
            scores = x @ x.transpose(-1, -2)
            return scores + (1.0 - mask[:, None, :].float()) * torch.finfo(torch.float32).min

    mask = torch.tensor([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1]])
    with pytest.raises(qc.QuantizationError, match=r"calibration: node %add \(add\) .* reaches "
                       r"3\.403e\+38 in calibration batch 0 .* If it is an attention mask .* mask "
                       r"the scores with scores\.masked_fill\(mask == 0, float\('-inf'\)\) instead"):
        qc.quantize(Scores().eval(), [(torch.randn(2, 5, 4), mask)], progress=False)


# ---- the interpreter, lowering, compression ----------------------------------------------------


@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_nan_or_inf_input_to_the_interpreter_is_refused(digits, bad):
    _, inputs, _, quantized = digits
    integer = qc.lower_to_integer(quantized)
    x = inputs[0].numpy().copy()
    x[1, 0, 2, 3] = bad
    with pytest.raises(qc.InputError, match=rf"input %\S+ holds {bad} at index \[1, 0, 2, 3\] \(1 "
                       r"of 256 values are NaN or infinite\); the graph quantizes it.* clean the input "
                       r"first"):
        qc.backends.interpreter.run(integer, x)


def test_lowering_an_integer_graph_again_is_refused(digits):
    integer = qc.lower_to_integer(digits[3])
    with pytest.raises(qc.QuantizationError, match=r"is already integer \(node %\S+ \(qconv2d\) at .*\): "
                       "lower_to_integer takes the fake-quant graph qc.quantize returns"):
        qc.lower_to_integer(integer)


@pytest.mark.parametrize(("name", "compression"), [
    ("remove_filters", remove_filters(ratio=0.5)), ("decompose_low_rank", decompose_low_rank(energy=0.5)),
    ("merge_similar_neurons", merge_similar_neurons(ratio=0.5))])
def test_compression_passes_refuse_quantized_graphs(digits, name, compression):
    """Before, they found nothing they could change and silently did nothing."""
    for graph in (digits[3], qc.lower_to_integer(digits[3])):
        with pytest.raises(qc.PassError, match=rf"{name} rewrites float graphs, but graph DigitsCNN "
                           r"is quantized \(\d+ quantization or integer nodes, e\.g\. node .*\): run "
                           rf"{name} on the float graph, then quantize the result \(qc\.quantize\)"):
            qc.Pipeline([compression]).run(graph)


def test_an_error_inside_a_pipeline_keeps_its_class():
    """`except qc.QuantizationError` catches what quantization raises inside qc.quantize."""
    model, inputs = digits_cnn(batch=4)
    with pytest.raises(qc.QuantizationError) as raised:
        qc.quantize(model, [torch.full(inputs[0].shape, float("nan"))], progress=False)
    assert isinstance(raised.value, qc.PassError)
    assert type(raised.value).__name__ in ("QuantizationError", "CalibrationDataError")
    assert str(raised.value).startswith("pass '")


# ---- configuration and options -----------------------------------------------------------------


def test_a_preset_name_is_accepted_as_config(digits):
    model, _, batches, _ = digits
    by_name = qc.quantize(model, batches, config="w4a8", bias_correction=False, progress=False)
    by_config = qc.quantize(model, batches, config=qc.QuantConfig.preset("w4a8"),
                            bias_correction=False, progress=False)
    assert str(by_name) == str(by_config)


@pytest.mark.parametrize(("config", "message"), [
    ("int9", r"unknown QuantConfig preset 'int9'; valid presets: int8, .*; did you mean 'int8'\?"),
    (8, r"config must be a QuantConfig or a preset name \(int8, .*\), got int"),
])
def test_a_bad_config_says_what_config_takes(digits, config, message):
    model, _, batches, _ = digits
    with pytest.raises(qc.QuantizationError, match=message):
        qc.quantize(model, batches, config=config, progress=False)


@pytest.mark.parametrize(("make", "message"), [
    (lambda: qc.QuantConfig(activation_observr="minmax"),
     r"QuantConfig has no field 'activation_observr'; did you mean 'activation_observer'"),
    (lambda: qc.QuantConfig.preset("int8", wieght=qc.QScheme()),
     r"QuantConfig has no field 'wieght'; did you mean 'weight'"),
    (lambda: qc.QScheme(bit=4), r"QScheme has no field 'bit'; did you mean 'bits'\? its fields are "
                                r"bits, symmetric, per_channel, narrow_range, signed"),
    (lambda: qc.QOverride(activations=qc.QScheme()), r"QOverride has no field 'activations'; did "
                                                      r"you mean 'activation'"),
])
def test_misspelt_config_fields_are_named(make, message):
    with pytest.raises(qc.QuantizationError, match=message):
        make()


def test_a_module_given_to_sensitivity_analysis_is_refused(digits):
    model, _, batches, _ = digits
    with pytest.raises(qc.QuantizationError, match=r"sensitivity_analysis takes the quantized Graph, "
                       r"not the DigitsCNN module: quantized = qc\.quantize\(model, data\)"):
        qc.sensitivity_analysis(model, batches)


def test_a_generator_for_several_epochs_of_finetune_is_refused(digits):
    model, inputs, _, _ = digits
    graph = qc.trace(model, inputs)
    batches = ((torch.randn(4, 1, 8, 8), torch.randint(0, 10, (4,))) for _ in range(3))
    with pytest.raises(qc.OptionError, match=r"train_data is a one-shot iterator \(generator\), but "
                       r"epochs=3 reads it 3 times: the epochs after the first would see no batch\. "
                       r"Pass a list of batches or a DataLoader"):
        qc.finetune(graph, batches, epochs=3)
    with pytest.raises(qc.OptionError, match=r"finetune takes a qcompiler Graph, got DigitsCNN "
                                             r"\(capture it first: qc\.trace"):
        qc.finetune(model, [], epochs=1)


@pytest.mark.parametrize(("call", "message"), [
    (lambda g, b: remove_filters(ratio=1.5), r"remove_filters: ratio must be in \[0, 1\), got 1\.5"),
    (lambda g, b: remove_filters(g), r"remove_filters takes options, not a graph"),
    (lambda g, b: decompose_low_rank(energy=2.0), r"energy must be in \(0, 1\], got 2\.0"),
    (lambda g, b: qc.passes.equalize_cross_layer(iterations=0), r"iterations must be >= 1"),
    (lambda g, b: qc.passes.lower_to_integer(target="arm"), r"unknown target 'arm'; valid targets"),
    (lambda g, b: qc.finetune(g, [b], lr=-1.0), r"lr must be positive, got -1\.0"),
    (lambda g, b: qc.search_budget(g, [b], target_ratio=1.5), r"target_ratio must be in \(0, 1\)"),
    (lambda g, b: qc.search_budget(g, [b], target_ratio=0.5, metric="flops"), r"unknown metric 'flops'"),
    (lambda g, b: qc.Pipeline(["fold_batchnorm"]), r"pipeline step 'fold_batchnorm' is not a pass"),
])
def test_option_errors_are_qcompiler_errors(digits, call, message):
    model, inputs, batches, _ = digits
    graph = qc.trace(model, inputs)
    with pytest.raises(qc.OptionError, match=message) as raised:
        call(graph, batches[0])
    assert isinstance(raised.value, qc.QCompilerError) and isinstance(raised.value, ValueError)


def test_a_missing_optional_package_names_its_extra():
    from qcompiler.errors import import_optional

    with pytest.raises(qc.MissingDependencyError, match=r"the demo needs the package "
                       r"'no_such_package', which is not installed .*install qcompiler's 'onnx' "
                       r"extra: pip install -c constraints\.txt -e \"\.\[onnx\]\""):
        import_optional("no_such_package.sub", "onnx", "the demo")


def test_output_paths_are_checked_before_the_work(tmp_path):
    from qcompiler.analysis.report_render import check_output_path

    (tmp_path / "file").write_text("x")
    cases = [(tmp_path / "missing" / "r.html", r"directory .*missing does not exist \(qcompiler does "
                                               r"not create directories; mkdir it first\)"),
             (tmp_path / "file" / "r.html", r": .*file is a file, not a directory"),
             (tmp_path, r"is a directory; give a file name in it")]
    for path, message in cases:
        with pytest.raises(qc.OutputPathError, match=message):
            check_output_path(path, "report")
    assert not (tmp_path / "missing").exists()
