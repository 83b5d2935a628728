"""The pass API every pass follows: a function or a frozen dataclass of options, named for the
pass manager, declaring whether it works in place, and honest about it."""

import dataclasses
import inspect

import numpy as np
import pytest
import torch

import qcompiler as qc
from qcompiler import passes
from qcompiler.errors import PassError
from qcompiler.examples.models import digits_cnn
from qcompiler.ir import structurally_equal
from qcompiler.ir.dims import shape_at
from qcompiler.ir.pipeline import PassResult, Pipeline, pass_name, works_in_place

PASSES = sorted(name for name in dir(passes) if not name.startswith("_")
                and callable(getattr(passes, name)) and not inspect.ismodule(getattr(passes, name)))


def test_every_pass_is_listed():
    assert PASSES == ["absorb_high_bias", "binarize_activations", "calibrate", "cluster_weights",
                      "convert_batchnorm_to_conv", "convert_to_winograd", "correct_bias",
                      "decompose_low_rank",
                      "eliminate_dead_code", "equalize_cross_layer", "fold_batchnorm", "fold_constants",
                      "insert_fake_quant", "lower_to_integer", "merge_similar_neurons",
                      "migrate_activation_scales", "quantize_weights_grouped",
                      "quantize_weights_low_bit", "recalibrate_batchnorm", "remove_filters",
                      "round_adaptive", "sparsify_weights"]


@pytest.mark.parametrize("name", PASSES)
def test_every_pass_declares_whether_it_works_in_place_and_is_named_after_itself(name):
    entry = getattr(passes, name)
    assert works_in_place(entry) in (True, False)
    assert pass_name(entry) == name
    if inspect.isclass(entry):  # a pass with options: a frozen dataclass
        assert dataclasses.is_dataclass(entry) and entry.__dataclass_params__.frozen
        assert "__name__" not in vars(entry)  # named by its class, not by a faked __name__


@pytest.fixture(scope="module")
def digits():
    model, (x,) = digits_cnn(batch=4)
    generator = torch.Generator().manual_seed(0)
    batches = [torch.randn(x.shape, generator=generator) for _ in range(2)]
    graph = qc.trace(model, (x,))
    quantized = qc.quantize(graph, batches, bias_correction=False, progress=False)
    return graph, quantized, batches


def configured(name, batches):
    """Each pass as a pipeline would hold it, with the options it needs."""
    return {
        "binarize_activations": passes.binarize_activations(layers=("features.2",)),
        "calibrate": passes.calibrate(calibration_data=batches),
        "convert_to_winograd": passes.convert_to_winograd(tile=2),
        "cluster_weights": passes.cluster_weights(bits=2),
        "correct_bias": passes.correct_bias(calibration_data=batches),
        "decompose_low_rank": passes.decompose_low_rank(rank=0.5),
        "merge_similar_neurons": passes.merge_similar_neurons(ratio=0.25),
        "quantize_weights_low_bit": passes.quantize_weights_low_bit(scheme="ternary"),
        "migrate_activation_scales": passes.migrate_activation_scales(calibration_data=batches),
        "quantize_weights_grouped": passes.quantize_weights_grouped(method="rtn", group_size=1),
        "recalibrate_batchnorm": passes.recalibrate_batchnorm(calibration_data=batches),
        "remove_filters": passes.remove_filters(ratio=0.25),
        "round_adaptive": passes.round_adaptive(calibration_data=batches, iterations=2, rows=64),
        "sparsify_weights": passes.sparsify_weights(sparsity=0.5),
    }.get(name, getattr(passes, name))


INPUT = {"calibrate": "fake_quant", "correct_bias": "quantized", "lower_to_integer": "quantized",
         "round_adaptive": "quantized"}


@pytest.mark.parametrize("name", PASSES)
def test_the_declaration_is_honest(name, digits):
    graph, quantized, batches = digits
    if INPUT.get(name) == "quantized":
        given = quantized.copy()
    elif INPUT.get(name) == "fake_quant":
        given = passes.insert_fake_quant(graph.copy()).graph
    else:
        given = graph.copy()
    before = given.copy()
    p = configured(name, batches)
    result = p(given)
    assert isinstance(result, PassResult)
    if works_in_place(p):
        assert result.graph is given
    else:
        assert result.graph is not given and structurally_equal(given, before)
    assert pass_name(p) == name


def test_the_pipeline_refuses_a_pass_that_works_elsewhere_while_declaring_in_place(digits):
    graph, _, _ = digits

    def sneaky(g):
        return PassResult(g.copy(), False)

    sneaky.in_place = True
    with pytest.raises(PassError, match="pass 'sneaky' declares that it works in place but returned "
                                        "another graph"):
        Pipeline([sneaky]).run(graph)


def test_a_pipeline_of_passes_that_do_not_work_in_place_copies_nothing_it_does_not_need(digits):
    _, quantized, _ = digits
    result = Pipeline([passes.lower_to_integer]).run(quantized)
    assert result is not quantized and any(node.op == "qconv2d" for node in result)


def test_print_after_is_an_argument_and_wins_over_the_environment(monkeypatch, digits, capsys):
    import io

    graph, _, _ = digits
    monkeypatch.setenv("QC_PRINT_AFTER", "all")
    stream = io.StringIO()
    Pipeline([passes.eliminate_dead_code, passes.fold_batchnorm],
             print_after=["fold_batchnorm"]).run_with_report(graph, stream=stream)
    assert [line for line in stream.getvalue().splitlines() if line.startswith("// IR after")] == [
        "// IR after fold_batchnorm (modified)"]
    Pipeline([passes.fold_batchnorm], print_after=()).run(graph)  # nothing, whatever the variable
    assert capsys.readouterr().err == ""


def test_qc_lower_to_integer_returns_the_graph_and_the_pass_a_result(digits):
    _, quantized, _ = digits
    integer = qc.lower_to_integer(quantized)
    result = passes.lower_to_integer(quantized)
    assert isinstance(integer, qc.Graph) and isinstance(result, PassResult)
    assert structurally_equal(integer, result.graph) and result.notes
    x = np.zeros(shape_at(quantized.inputs[0].shape, 2), np.float32)
    run = qc.backends.interpreter.run
    assert np.array_equal(run(integer, x), run(result.graph, x))
