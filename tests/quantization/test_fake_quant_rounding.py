"""How fake_quant rounds: torch's kernels in float32; in float64 exactly the integer path's rule
at each quantization point (`rounding`), which makes a `.double()` simulation agree with the
interpreter bit for bit (docs/integer-spec.md, section 12)."""

import numpy as np
import pytest
import torch

import qcompiler as qc
from qcompiler.backends.interpreter import Interpreter
from qcompiler.backends.simulation_agreement import compare_with_simulation, local_agreement_by_op
from qcompiler.examples.models import bert_style, resnet_style
from qcompiler.ir.ops import run_op
from qcompiler.numerics.quant import quantize
from qcompiler.passes import insert_fake_quant, lower_to_integer
from qcompiler.quantization.calibrate import calibrate

ATTRS = {"axis": None, "bits": 8, "signed": False, "narrow_range": False, "symmetric": False}


def fake_quant(x, scale, zero_point, rounding, **attrs):
    return run_op("fake_quant", [x, torch.tensor([scale], dtype=torch.float32),
                                 torch.tensor([zero_point], dtype=torch.int32)],
                  {**ATTRS, **attrs, "rounding": rounding})[0]


def test_float64_rounds_ties_half_up_at_requantization_points_and_half_to_even_elsewhere():
    x = torch.tensor([0.25, 0.75, 1.25, -0.25], dtype=torch.float64)  # q = x / 0.5 + 1
    up = fake_quant(x, 0.5, 1, "half_up")
    even = fake_quant(x, 0.5, 1, "half_to_even")
    assert up.dtype == even.dtype == torch.float64
    # 0.5 + 1 -> 2, 1.5 + 1 -> 3, 2.5 + 1 -> 4, -0.5 + 1 -> 1 (half up) ...
    assert ((up / 0.5) + 1).tolist() == [2.0, 3.0, 4.0, 1.0]
    # ... and 0 + 1, 2 + 1, 2 + 1, 0 + 1 (half to even), as torch's float32 kernel gives.
    assert ((even / 0.5) + 1).tolist() == [1.0, 3.0, 3.0, 1.0]
    torch_kernel = fake_quant(x.float(), 0.5, 1, "half_up")  # float32 ignores `rounding`
    assert torch_kernel.double().tolist() == even.tolist()


def test_float64_half_up_is_the_exact_quotient_rounded_where_float32_is_not():
    """x / s a hair above a half: the exact quotient rounds up; float32's x * (1 / s) can land
    on or below the half and round down. The float64 path is the exact rule."""
    rng = np.random.default_rng(0)
    scale = np.float32(0.0371)
    exact_half = (rng.integers(-100, 100, 2000) + 0.5) * np.float64(scale)
    x = np.nextafter(exact_half, np.inf)  # just above each tie, in float64
    up = fake_quant(torch.from_numpy(x), float(scale), 0, "half_up", signed=True, bits=16)
    expected = np.floor(x / np.float64(scale) + 0.5) * np.float64(scale)
    np.testing.assert_array_equal(up.numpy(), expected)
    # The float32 simulation of the same values (rounded to float32 first) often disagrees.
    f32 = fake_quant(torch.from_numpy(x.astype(np.float32)), float(scale), 0, "half_up", signed=True,
                     bits=16)
    assert (f32.double().numpy() != expected).mean() > 0.1


def test_float64_boundary_rule_is_the_graph_boundary_quantize_and_gradients_pass_inside():
    rng = np.random.default_rng(1)
    x32 = (rng.standard_normal(4000) * 3).astype(np.float32)
    x = torch.from_numpy(x32.astype(np.float64)).requires_grad_()
    out = fake_quant(x, 0.02, 128, "half_to_even")
    integers = quantize(x32, np.float32(0.02), 128, 0, 255)  # the interpreter's boundary rule
    np.testing.assert_array_equal(np.rint(out.detach().numpy() / np.float64(np.float32(0.02))) + 128,
                                  integers)
    out.sum().backward()
    inside = (np.rint(x32 * (np.float32(1) / np.float32(0.02))) + 128 >= 0) & \
        (np.rint(x32 * (np.float32(1) / np.float32(0.02))) + 128 <= 255)
    assert 0 < inside.mean() < 1
    np.testing.assert_array_equal(x.grad.numpy(), inside.astype(np.float64))


def test_insert_fake_quant_marks_requantization_points_half_up():
    model, example = bert_style(batch=1, tokens=8)
    graph = insert_fake_quant(qc.trace(model, example)).graph
    rounding = {node.inputs[0].producer.op if node.inputs[0].producer else "input":
                node.attrs["rounding"] for node in graph if node.op == "fake_quant"
                and not node.inputs[0].is_constant}
    for op in ("linear", "matmul", "add", "div"):
        assert rounding[op] == "half_up", op
    for op in ("layer_norm", "softmax", "gelu", "tanh", "embedding"):
        assert rounding[op] == "half_to_even", op  # lookup tables, float islands, boundary
    weights = {node.attrs["rounding"] for node in graph if node.op == "fake_quant"
               and node.inputs[0].is_constant}
    assert weights == {"half_to_even"}


def test_lowering_notes_a_fake_quant_that_rounds_unlike_its_integer_op():
    model, _ = resnet_style(batch=2, seed=0)
    generator = torch.Generator().manual_seed(0)
    data = [torch.randn(2, 3, 32, 32, generator=generator) for _ in range(2)]
    graph = qc.quantize(model, data, bias_correction=False, progress=False)
    assert not any("rounding=" in note for note in lower_to_integer(graph.copy()).notes)
    fq = graph.values["relu"].users[0]
    fq.attrs["rounding"] = "half_to_even"
    notes = lower_to_integer(graph).notes
    assert f"{fq.describe()} has rounding='half_to_even' but its value comes from qconv2d " \
           "(half_up); re-run insert_fake_quant for a float64 simulation that rounds as the " \
           "integer path does" in notes


@pytest.fixture(scope="module")
def resnet_case():
    model, _ = resnet_style(batch=4, seed=0)
    generator = torch.Generator().manual_seed(0)
    data = [torch.randn(4, 3, 32, 32, generator=generator) for _ in range(4)]
    return qc.quantize(model, data[:3], bias_correction=False, progress=False), data[3]


def test_float64_simulation_agrees_with_the_interpreter_bit_for_bit(resnet_case):
    fake_quant, x = resnet_case
    exact = compare_with_simulation(fake_quant, (x,), precision="float64")
    assert exact.outputs[0].differing == 0 and exact.outputs[0].max_steps == 0
    assert sum(op.differing for op in local_agreement_by_op(exact)) == 0
    assert exact.simulation_outputs[0].dtype == np.float32  # float32 at the module boundary
    # The float32 simulation of the same graph does not (float32 accumulation).
    approximate = compare_with_simulation(fake_quant, (x,))
    assert sum(op.differing for op in local_agreement_by_op(approximate)) > 0


def test_exact_to_torch_returns_the_interpreters_numbers_with_float32_at_the_boundary(resnet_case):
    fake_quant, x = resnet_case
    module = qc.to_torch(fake_quant, exact=True)
    assert all(b.dtype != torch.float32 for b in module.buffers())  # computes in float64
    simulated = module(x)
    assert simulated.dtype == torch.float32
    integer = lower_to_integer(fake_quant).graph
    interpreted = Interpreter(integer).run(x.numpy())[0]
    np.testing.assert_array_equal(simulated.detach().numpy(), interpreted)
    # Float graphs compute the same function, to float32 precision.
    float_graph = qc.trace(resnet_style(batch=4, seed=0)[0], (x,))
    torch.testing.assert_close(qc.to_torch(float_graph, exact=True)(x), qc.to_torch(float_graph)(x))


@pytest.mark.parametrize(("op", "attrs"), [("layer_norm", {"normalized_shape": [4096]}),
                                           ("softmax", {"dim": -1})])
def test_exact_to_torch_evaluates_float_islands_in_float32_as_the_interpreter_does(op, attrs):
    """Float fall backs run in float32 on the integer path, so the exact simulation runs them in
    float32 too: evaluated in float64, some of these 262,144 16-bit outputs land on the other
    side of a rounding boundary (measured: 70 for layer_norm, 4 for softmax)."""
    graph = qc.Graph("island")
    x = graph.add_input("x", (64, 4096))
    graph.outputs = [graph.add_node(op, [x], attrs, name="y").output]
    config = qc.QuantConfig.preset("w8a16")  # 16-bit steps: many values near a rounding boundary
    fake_quant = insert_fake_quant(graph, config=config).graph
    generator = torch.Generator().manual_seed(0)
    data = [torch.randn(64, 4096, generator=generator) * 4 for _ in range(3)]
    calibrated = calibrate(fake_quant, data[:2], config, progress=False)
    integer = lower_to_integer(calibrated, strict=False).graph
    interpreted = Interpreter(integer, strict=False).run(data[2].numpy())[0]
    with torch.no_grad():
        exact = qc.to_torch(calibrated, exact=True)(data[2]).numpy()
    np.testing.assert_array_equal(exact, interpreted)


def test_float64_simulation_trains_like_the_float32_one(resnet_case):
    """`.double()` keeps the simulation differentiable with the same straight-through gradients.
    The forward values differ where float32 rounding flips a step, so the gradients agree in
    direction (cosine > 0.99 per parameter), not bit for bit."""
    fake_quant, x = resnet_case
    gradients = {}
    for dtype in (torch.float32, torch.float64):
        module = qc.to_torch(fake_quant).to(dtype)
        module(x.to(dtype)).square().sum().backward()
        gradients[dtype] = {name: p.grad.double().flatten() for name, p in module.named_parameters()}
    assert gradients[torch.float32].keys() == gradients[torch.float64].keys()
    for name, grad in gradients[torch.float64].items():
        similarity = torch.nn.functional.cosine_similarity(gradients[torch.float32][name], grad, dim=0)
        assert similarity > 0.99, (name, float(similarity))
