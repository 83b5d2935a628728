"""sparsify_weights: exactly the asked fraction zeroed, the lowest-scored ones; global vs local;
saliency criteria that agree with their definitions on a graph whose gradients are known;
bad input refused with the graph untouched."""

import numpy as np
import pytest
import torch

import qcompiler as qc
from qcompiler.compression.saliency import weight_saliency
from qcompiler.errors import OptionError, PassError
from qcompiler.examples.models import digits_cnn
from qcompiler.ir import Graph
from qcompiler.passes import fold_batchnorm, sparsify_weights


@pytest.fixture(scope="module")
def digits():
    model, example = digits_cnn(batch=4)
    return fold_batchnorm(qc.trace(model, example)).graph, example


def weights_of(graph):
    return {node.inputs[1].name: node.inputs[1].data for node in graph if node.op in ("conv2d", "linear")}


def labelled_batches(count=3, seed=0):
    generator = torch.Generator().manual_seed(seed)
    return [(torch.randn(16, 1, 8, 8, generator=generator), torch.randint(0, 10, (16,), generator=generator))
            for _ in range(count)]


@pytest.mark.parametrize("fraction", [0.0, 0.5, 0.9])
def test_local_sparsity_zeroes_that_fraction_of_each_weight_the_smallest_first(digits, fraction):
    graph, _ = digits
    before = weights_of(graph)
    result = sparsify_weights(sparsity=fraction)(graph.copy())
    assert result.modified == (fraction > 0)
    for name, weight in weights_of(result.graph).items():
        original = before[name]
        zeroed = weight == 0
        assert zeroed.sum() == round(fraction * weight.size)
        np.testing.assert_array_equal(weight[~zeroed], original[~zeroed])  # the rest untouched
        if zeroed.any():
            assert np.abs(original[zeroed]).max() <= np.abs(original[~zeroed]).min()


def test_global_sparsity_uses_one_threshold(digits):
    graph, _ = digits
    # Leave out the classifier, whose small weights a global magnitude would remove entirely.
    layers = ("features.2", "features.6")
    before = weights_of(graph)
    after = weights_of(sparsify_weights(sparsity=0.6, scope="global", layers=layers)(graph.copy()).graph)
    pruned = np.concatenate([before[n].ravel()[after[n].ravel() == 0] for n in
                             ("features.2.weight.folded", "features.6.weight.folded")])
    kept = np.concatenate([before[n].ravel()[after[n].ravel() != 0] for n in
                           ("features.2.weight.folded", "features.6.weight.folded")])
    assert len(pruned) == round(0.6 * (512 + 2048))
    assert np.abs(pruned).max() <= np.abs(kept).min()
    np.testing.assert_array_equal(after["classifier.weight"], before["classifier.weight"])


def test_a_higher_sparsity_continues_from_the_zeros_already_there(digits):
    graph, _ = digits
    first = sparsify_weights(sparsity=0.5)(graph.copy()).graph
    second = sparsify_weights(sparsity=0.8)(first.copy()).graph
    for name, weight in weights_of(second).items():
        assert (weights_of(first)[name] == 0)[...].sum() <= (weight == 0).sum()
        assert np.all(weight[weights_of(first)[name] == 0] == 0)
        assert (weight == 0).sum() == round(0.8 * weight.size)


@pytest.mark.parametrize("options, message", [
    ({"sparsity": 1.0},
     r"sparsity must be a fraction in \[0, 1\) \(1\.0 would remove every weight\), got 1\.0"),
    ({"sparsity": -0.2}, r"sparsity must be a fraction in \[0, 1\)"),
    ({"scope": "layer"}, "scope must be 'global' or 'local', got 'layer'"),
    ({"criterion": "l1"},
     "unknown criterion 'l1'; choose one of magnitude, binary_angle, ternary_angle, obd, taylor"),
    ({"criterion": "obd"}, "criterion 'obd' needs calibration_data"),
    ({"ignore": "classifier"}, "ignore must be a tuple of names"),
])
def test_bad_options_are_refused_at_construction(options, message):
    with pytest.raises(OptionError, match=message):
        sparsify_weights(**options)


def test_zeroing_a_whole_layer_is_refused_and_the_graph_untouched(digits):
    graph = digits[0].copy()
    text = str(graph)
    before = {n: w.copy() for n, w in weights_of(graph).items()}
    # Global magnitude at 0.8: the classifier's small weights would all go.
    with pytest.raises(PassError, match=r"sparsity 0\.8 would zero every weight of %classifier\.weight; "
                       "lower the sparsity or add the layer to ignore"):
        sparsify_weights(sparsity=0.8, scope="global")(graph)
    assert str(graph) == text
    for name, weight in weights_of(graph).items():
        np.testing.assert_array_equal(weight, before[name])


def linear_model(weight: np.ndarray) -> Graph:
    graph = Graph("linear")
    x = graph.add_input("x", (4, weight.shape[1]))
    w = graph.add_constant("fc.weight", weight)
    graph.outputs = [graph.add_node("linear", [x, w, None], {}, name="fc").output]
    return graph.verify()


def test_taylor_saliency_equals_the_squared_gradient_times_weight_summed_over_batches():
    weight = np.random.default_rng(0).standard_normal((3, 5)).astype(np.float32)
    graph = linear_model(weight)
    generator = torch.Generator().manual_seed(1)
    batches = [(torch.randn(4, 5, generator=generator), torch.randint(0, 3, (4,), generator=generator))
               for _ in range(2)]
    expected = np.zeros(weight.shape)
    for x, y in batches:  # d CE / d W in closed form: (softmax(xW^T) - onehot(y))^T x / N
        p = torch.softmax(x.double() @ torch.from_numpy(weight).double().T, dim=1)
        gradient = ((p - torch.nn.functional.one_hot(y, 3).double()).T @ x.double() / len(y)).numpy()
        expected += (gradient * weight) ** 2
    scores = weight_saliency(graph, [graph.values["fc.weight"]], "taylor", batches)["fc.weight"]
    np.testing.assert_allclose(scores, expected, rtol=1e-4)


def test_obd_hessian_estimate_approaches_the_gauss_newton_diagonal():
    # For linear + softmax cross-entropy the Gauss-Newton (Fisher) diagonal is known in closed
    # form: H[k, j] = mean over... of p_k (1 - p_k) x_j^2 for a one-sample batch.
    weight = np.random.default_rng(0).standard_normal((3, 4)).astype(np.float32) * 0.5
    graph = Graph("linear")
    x = graph.add_input("x", (1, 4))
    w = graph.add_constant("fc.weight", weight)
    graph.outputs = [graph.add_node("linear", [x, w, None], {}, name="fc").output]
    graph.verify()
    sample = torch.randn(1, 4, generator=torch.Generator().manual_seed(3))
    p = torch.softmax(sample.double() @ torch.from_numpy(weight).double().T, dim=1)[0].numpy()
    fisher = (p * (1 - p))[:, None] * sample.double().numpy()[0][None, :] ** 2
    scores = weight_saliency(graph, [graph.values["fc.weight"]], "obd", [sample], probes=4000)
    np.testing.assert_allclose(scores["fc.weight"], 0.5 * fisher * weight.astype(np.float64) ** 2,
                               rtol=0.15)  # a Monte-Carlo estimate: 4000 draws, about 3% noise


@pytest.mark.parametrize("criterion", ["obd", "taylor"])
def test_the_pass_zeroes_the_lowest_saliency_weights(digits, criterion):
    graph, _ = digits
    batches = labelled_batches()
    weights = [node.inputs[1] for node in graph if node.op in ("conv2d", "linear")]
    scores = weight_saliency(graph, weights, criterion, batches)
    result = sparsify_weights(sparsity=0.5, criterion=criterion, calibration_data=batches)(graph.copy())
    for name, weight in weights_of(result.graph).items():
        zeroed = weight == 0
        assert zeroed.sum() == round(0.5 * weight.size)
        assert scores[name][zeroed].max() <= scores[name][~zeroed].min()


def test_saliency_needs_a_classifier_output():
    graph = Graph("two")
    x = graph.add_input("x", (2, 3))
    w = graph.add_constant("fc.weight", np.ones((4, 3), np.float32))
    y = graph.add_node("linear", [x, w, None], {}, name="fc").output
    graph.outputs = [y, graph.add_node("relu", [y], {}, name="act").output]
    graph.verify()
    with pytest.raises(OptionError, match=r"needs a graph with one \[N, classes\] output"):
        sparsify_weights(sparsity=0.5, criterion="obd", calibration_data=[torch.ones(2, 3)])(graph)
