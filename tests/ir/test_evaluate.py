"""The node-by-node evaluator (`qcompiler.ir.evaluate`) against an independent executor, the
torch backend's fx module, and the batch converter's checks."""

import numpy as np
import pytest
import torch

import qcompiler as qc
from qcompiler.errors import CalibrationDataError, PassError, QuantizationError
from qcompiler.examples import models
from qcompiler.ir.dims import shape_at
from qcompiler.ir.evaluate import (
    Evaluator,
    evaluate,
    graph_inputs,
    graph_runs,
    input_batches,
    is_fake_quant,
)


@pytest.fixture(scope="module")
def resnet():
    model, inputs = models.resnet_style(batch=2)
    return qc.trace(model, inputs), inputs


def random_inputs(graph, seed):
    generator = torch.Generator().manual_seed(seed)
    return [torch.randn(2, *v.shape[1:], generator=generator) for v in graph.inputs]


def test_outputs_equal_the_torch_backend_bit_for_bit(resnet):
    graph, _ = resnet
    module = qc.to_torch(graph, trainable=False)
    for seed in range(2):
        inputs = random_inputs(graph, seed)
        with torch.no_grad():
            expected = module(*inputs)
        assert torch.equal(evaluate(graph, inputs)[0], expected)


def test_batches_together_equal_batches_one_at_a_time(resnet):
    graph, _ = resnet
    batches = [random_inputs(graph, seed) for seed in range(3)]
    together = Evaluator(graph).run(batches)[0]
    assert len(together) == 3
    for batch, output in zip(batches, together, strict=True):
        assert torch.equal(output, evaluate(graph, batch)[0])


def test_wanted_values_only_and_the_rest_freed(resnet):
    graph, _ = resnet
    evaluator = Evaluator(graph)
    inner = graph.nodes[3].output
    (values,) = evaluator.run([random_inputs(graph, 0)], [inner])
    assert values[0].shape == shape_at(inner.shape, 2)
    assert set(evaluator.env) == {id(inner)}  # every other value was freed after its last use
    assert len(evaluator.nodes_for([inner])) == 4


def test_constants_replaced_by_name_equal_a_rewritten_graph(resnet):
    graph, _ = resnet
    weight = next(node for node in graph if node.op == "conv2d").inputs[1]
    zeroed = np.zeros_like(weight.data)
    rewritten = graph.copy()
    rewritten.values[weight.name].data = zeroed
    inputs = random_inputs(graph, 1)
    replaced = evaluate(graph, inputs, constants={weight.name: zeroed})[0]
    assert torch.equal(replaced, evaluate(rewritten, inputs)[0])
    assert not torch.equal(replaced, evaluate(graph, inputs)[0])


def test_bypassing_fake_quants_gives_the_float_graph(resnet):
    graph, inputs = resnet
    quantized = qc.quantize(graph, [inputs], equalize=False, bias_correction=False, progress=False)
    x = random_inputs(graph, 2)
    float_output = evaluate(quantized, x, bypass=is_fake_quant)[0]
    torch.testing.assert_close(float_output, evaluate(graph, x)[0], rtol=1e-5, atol=1e-5)
    assert not torch.equal(float_output, evaluate(quantized, x)[0])


def test_store_sees_every_value_as_it_is_computed(resnet):
    graph, _ = resnet

    class Recorder(Evaluator):
        def __init__(self, graph):
            super().__init__(graph)
            self.seen = []

        def store(self, value, result):
            self.seen.append(value.name)
            super().store(value, result)

    recorder = Recorder(graph)
    recorder.run([random_inputs(graph, 0)])
    assert recorder.seen == [v.name for v in graph.inputs] + [v.name for n in graph for v in n.outputs]


def test_graph_inputs_checks_the_batch(resnet):
    graph, inputs = resnet
    assert graph_inputs(inputs[0].numpy(), graph)[0].dtype == torch.float32
    with pytest.raises(CalibrationDataError, match=r"calibration batch 3: input %x expects f32\[N,3,32,32\], "
                                                   r"got f64\[2,3,32,32\]"):
        graph_inputs(inputs[0].double(), graph, 3)
    with pytest.raises(CalibrationDataError, match=r"calibration batch 1: input %x expects f32\[N,3,32,32\], "
                                                   r"got f32\[2,3,31,32\] \(input %x has size 31 on axis 2"):
        graph_inputs(inputs[0][:, :, 1:], graph, 1)
    with pytest.raises(CalibrationDataError, match="calibration batch 0 has 2 tensor"):
        graph_inputs((inputs[0], inputs[0]), graph)
    bad = inputs[0].clone()
    bad[0, 0, 0, 0] = float("nan")
    with pytest.raises(CalibrationDataError, match="contains NaN or Inf"):
        graph_inputs(bad, graph)
    # Both a quantization and a compression error, for the callers of either.
    assert issubclass(CalibrationDataError, QuantizationError)
    assert issubclass(CalibrationDataError, PassError)


def test_graph_runs_cut_a_multiple_of_the_batch_size(resnet):
    """A static graph (captured with dynamic_batch=False) runs its own batch size at a time;
    a symbolic one runs any batch whole."""
    symbolic, inputs = resnet
    big = torch.cat([inputs[0]] * 3)
    assert [run[0].shape[0] for run in graph_runs(big, symbolic)] == [6]
    assert [run[0].shape[0] for run in graph_runs(big[:5], symbolic)] == [5]
    graph = qc.trace(models.resnet_style(batch=2)[0], inputs, dynamic_batch=False)
    runs = graph_runs(big, graph)
    assert len(runs) == 3 and all(torch.equal(run[0], inputs[0]) for run in runs)
    assert input_batches([big], graph)[0][0].shape[0] == 6  # runs whole
    with pytest.raises(CalibrationDataError, match="calibration_data is empty"):
        input_batches([], graph)
