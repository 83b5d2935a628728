"""Targets and bad input: host detection, the x86 targets this machine can and cannot run
(run where it can, a clear error where it cannot, never SIGILL), the weight-range rule of
docs/integer-spec.md section 8 and the preset it names, unknown targets, ops the backend
cannot lower, a missing cross compiler and wrong inputs, with their messages."""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("tvm")

import tvm  # noqa: E402
from tvm_cases import OpCase, assert_exact, graph_of  # noqa: E402

import qcompiler as qc  # noqa: E402
from qcompiler.backends.tvm import target as targets  # noqa: E402
from qcompiler.backends.tvm.errors import LoweringError, TargetError, WeightRangeError  # noqa: E402

# /proc/cpuinfo flags of the two kinds of machine this project runs on (abridged).
ZEN3_FLAGS = frozenset("sse4_1 sse4_2 ssse3 avx avx2 fma f16c bmi1 bmi2".split())
ROCKETLAKE_FLAGS = ZEN3_FLAGS | frozenset(
    "avx512f avx512bw avx512cd avx512dq avx512vl avx512_vnni avx512ifma avx512vbmi".split())


def linear_graph(weight: list[list[int]]):
    """One qlinear with the given int8 weights on a u8[1, K] input, and that input."""
    weight = np.array(weight, np.int8)
    channels, depth = weight.shape
    case = OpCase("qlinear", [np.arange(depth, dtype=np.uint8).reshape(1, depth) * 7],
                  [None, weight, np.zeros(channels, np.int32),
                   np.full(channels, 1 << 30, np.int32), np.full(channels, 4, np.int32)],
                  {"input_zero_point": 3, "output_zero_point": 0, "output_min": 0, "output_max": 255,
                   "output_dtype": "u8"})
    return graph_of([case])


def test_host_target_is_detected_not_hard_coded():
    spec = targets.resolve_target("host")
    assert spec.config["mcpu"] == tvm.target.codegen.llvm_get_system_cpu()
    assert spec.config["mtriple"] == "x86_64-linux-gnu" and spec.arch == "x86_64"
    assert spec.isa == targets.x86_isa(targets.cpu_flags())
    targets.check_host_can_run(spec)  # the host runs its own code


@pytest.mark.parametrize(("flags", "isa"), [(ZEN3_FLAGS, "avx2"), (ROCKETLAKE_FLAGS, "vnni"),
                                            (ROCKETLAKE_FLAGS - {"avx512_vnni"}, "avx512"),
                                            (frozenset({"sse4_2"}), "generic")])
def test_simd_level_from_cpu_flags(flags, isa):
    assert targets.x86_isa(flags) == isa


@pytest.mark.parametrize("name", ["x86", "x86-avx2", "x86-avx512", "x86-vnni"])
def test_each_x86_target_runs_exactly_or_is_refused_clearly(name):
    """7-bit weights fit every target. Where this CPU has the target's features the model runs
    bit for bit; where it lacks them, running is refused before any instruction executes."""
    graph, inputs = linear_graph([[63, -63, 5], [-1, 0, 2]])
    spec = targets.resolve_target(name)
    missing = targets.unsupported_features(spec)
    if not missing:
        assert_exact(graph, inputs, target=name)
        return
    compiled = qc.backends.tvm.build(graph, name)  # building for another CPU is fine
    with pytest.raises(TargetError) as error:
        compiled.run(*inputs)
    assert str(error.value) == (
        f"this CPU ({targets.cpu_model()}) cannot run code built for target {name}: it lacks "
        f"{', '.join(missing)}; build for 'host' (detected: {targets.isa_of(targets.cpu_flags())}) or run "
        "the model on a machine that has them")


def test_vnni_code_on_an_avx2_machine_is_a_clear_error():
    spec = targets.resolve_target("x86-vnni")
    missing = targets.unsupported_features(spec, ZEN3_FLAGS)
    assert {"avx512f", "avx512bw", "avx512_vnni"} <= set(missing)
    with pytest.raises(TargetError) as error:
        targets.check_host_can_run(spec, ZEN3_FLAGS)
    assert str(error.value) == (
        f"this CPU ({targets.cpu_model()}) cannot run code built for target x86-vnni: it lacks "
        "avx512_vnni, avx512bw, avx512cd, avx512dq, avx512f, avx512vl; build for 'host' (detected: "
        "avx2) or run the model on a machine that has them")
    assert targets.unsupported_features(spec, ROCKETLAKE_FLAGS) == []


def test_unknown_target_lists_the_valid_ones():
    graph, _ = linear_graph([[1]])
    with pytest.raises(TargetError) as error:
        qc.backends.tvm.build(graph, "x86-sse")
    assert str(error.value) == (
        "unknown TVM target 'x86-sse'; valid targets: host, x86, x86-avx2, x86-avx512, x86-vnni, "
        "aarch64, aarch64-dotprod, or a TVM target dict such as {'kind': 'llvm', 'mtriple': "
        "'x86_64-linux-gnu', 'mcpu': 'znver3'}")


def test_a_tvm_target_dict_builds_and_bad_ones_are_explained():
    graph, inputs = linear_graph([[5, -7, 9]])
    assert_exact(graph, inputs, target={"kind": "llvm", "mtriple": "x86_64-linux-gnu",
                                        "mcpu": "x86-64-v2"})
    with pytest.raises(TargetError, match="needs \"kind\": \"llvm\""):
        qc.backends.tvm.build(graph, {"kind": "cuda"})
    with pytest.raises(TargetError, match="LLVM does not know the CPU 'pentium9'"):
        qc.backends.tvm.build(graph, {"kind": "llvm", "mtriple": "x86_64-linux-gnu", "mcpu": "pentium9"})
    with pytest.raises(TargetError, match="give an \"mtriple\" of x86_64-linux-gnu or aarch64-linux-gnu"):
        qc.backends.tvm.build(graph, {"kind": "llvm"})


def test_full_range_weights_are_refused_for_vpmaddubsw_targets_naming_the_preset():
    graph, _ = linear_graph([[100, -63, 5], [-1, 0, -127]])
    for name in ("x86-avx2", "x86-avx512"):
        with pytest.raises(WeightRangeError) as error:
            qc.backends.tvm.build(graph, name)
        level = targets.resolve_target(name).isa
        assert str(error.value) == (
            f"target {name} ({level}) computes int8 layers exactly only with weights in [-64, 63] "
            "(docs/integer-spec.md, section 8), and 1 layer(s) exceed it: %qlinear0 [-127, 100]. "
            "Quantize for this target with qc.QuantConfig.preset('int8-avx2') "
            f"(qc.backends.tvm.quant_preset('{name}')), or build for a target with full-range "
            "int8 kernels (x86-vnni, aarch64, aarch64-dotprod)")
    for name in ("x86-vnni", "aarch64", "aarch64-dotprod"):
        qc.backends.tvm.build(graph, name)  # full-range int8 kernels: accepted


@pytest.mark.parametrize(("name", "preset", "lowering"), [
    ("x86", "int8-avx2", "x86"), ("x86-avx2", "int8-avx2", "x86"), ("x86-avx512", "int8-avx2", "x86"),
    ("x86-vnni", "int8", "generic"),
    ("aarch64", "int8-aarch64", "aarch64"), ("aarch64-dotprod", "int8-aarch64", "aarch64")])
def test_quant_preset_gives_operands_the_target_computes_exactly(name, preset, lowering):
    """The preset's weights fit the target's range, and `lower_to_integer` with the matching
    lowering target (which checks spec section 8's ranges) accepts the quantized graph."""
    from qcompiler.examples.models import digits_cnn

    assert qc.backends.tvm.quant_preset(name) == preset
    assert qc.backends.tvm.lowering_target(name) == lowering
    weights = qc.QuantConfig.preset(preset).weight
    assert targets.resolve_target(name).weight_range[0] <= weights.qmin
    assert weights.qmax <= targets.resolve_target(name).weight_range[1]
    model, inputs = digits_cnn()
    quantized = qc.quantize(model, [inputs[0]], config=qc.QuantConfig.preset(preset), progress=False,
                            equalize=False, bias_correction=False)
    qc.backends.tvm.build(qc.lower_to_integer(quantized, target=lowering), name, batch=1)


def test_a_fake_quant_graph_is_refused_naming_the_node():
    from qcompiler.examples.models import digits_cnn

    model, inputs = digits_cnn()
    quantized = qc.quantize(model, [inputs[0]], progress=False, equalize=False, bias_correction=False)
    first = next(node for node in quantized if node.op == "fake_quant")
    with pytest.raises(LoweringError) as error:
        qc.backends.tvm.build(quantized, "host", batch=1)
    assert str(error.value) == (
        f"the TVM backend cannot lower {first.describe()}: a fake-quant graph is a simulation; "
        "lower it to integers first (qc.lower_to_integer(graph)) or build the float graph")


def test_an_op_the_lowering_cannot_express_is_named():
    graph = qc.Graph("cropping")
    x = graph.add_input("x", (1, 2, 5), "u8")
    node = graph.add_node("pad", [x], {"pads": [-1, 0]}, name="crop")
    graph.outputs.append(node.output)
    with pytest.raises(LoweringError) as error:
        qc.backends.tvm.build(graph.verify(), "host")
    assert str(error.value) == (f"{node.describe()}: negative padding (cropping) has no lowering; "
                                "use slice")


def test_missing_cross_compiler_says_what_to_install(tmp_path, monkeypatch):
    graph, _ = linear_graph([[1, 2]])
    compiled = qc.backends.tvm.build(graph, "aarch64")
    monkeypatch.setenv("PATH", str(tmp_path))  # no aarch64-linux-gnu-g++ on it
    with pytest.raises(TargetError) as error:
        compiled.export_library(tmp_path / "model")
    assert str(error.value) == ("aarch64-linux-gnu-g++ is not installed; aarch64 builds need it: "
                                "apt-get install -y g++-aarch64-linux-gnu")
    assert not (tmp_path / "model").exists()


def test_wrong_inputs_are_named():
    graph, inputs = linear_graph([[1, 2]])
    compiled = qc.backends.tvm.build(graph, "host")
    with pytest.raises(qc.QCompilerError,
                       match=r"input %in0_0 expects u8\[1, 2\], got int8\[1, 2\] \(its dtype is int8\)"):
        compiled.run(inputs[0].astype(np.int8))
    with pytest.raises(qc.QCompilerError, match=r"takes 1 input\(s\) \(in0_0: u8\[1, 2\]\), got 2"):
        compiled.run(*inputs, *inputs)


def test_a_symbolic_batch_stays_symbolic_unless_a_batch_is_given():
    from qcompiler.examples.models import digits_cnn

    model, inputs = digits_cnn()
    graph = qc.trace(model, inputs)  # f32[N,1,8,8]
    symbolic = qc.backends.tvm.build(graph, "host")
    assert symbolic.symbols == ["N"] and symbolic.inputs[0]["shape"] == ["N", 1, 8, 8]
    assert symbolic.outputs[0]["shape"] == ["N", 10]
    fixed = qc.backends.tvm.build(graph, "host", batch=3)
    assert fixed.symbols == [] and fixed.inputs[0]["shape"] == [3, 1, 8, 8]
    x = np.random.default_rng(0).standard_normal((3, 1, 8, 8)).astype(np.float32)
    np.testing.assert_allclose(symbolic.run(x), fixed.run(x), rtol=1e-5, atol=1e-6)
    assert symbolic.run(x[:1]).shape == (1, 10)
    with pytest.raises(qc.QCompilerError) as error:
        fixed.run(x[:2])
    assert str(error.value) == ("input %x expects f32[3, 1, 8, 8], got float32[2, 1, 8, 8] (it has "
                                "size 2 on axis 0, expected 3)")


def test_a_wrong_rank_or_shape_on_a_symbolic_build_is_named():
    from qcompiler.examples.models import digits_cnn

    model, inputs = digits_cnn()
    compiled = qc.backends.tvm.build(qc.trace(model, inputs), "host")
    with pytest.raises(qc.QCompilerError) as error:
        compiled.run(np.zeros((1, 8, 8), np.float32))
    assert str(error.value) == ("input %x expects f32[N, 1, 8, 8], got float32[1, 8, 8] (it has rank "
                                "3, expected 4)")
    with pytest.raises(qc.QCompilerError) as error:
        compiled.run(np.zeros((2, 1, 8, 9), np.float32))
    assert str(error.value) == ("input %x expects f32[N, 1, 8, 8], got float32[2, 1, 8, 9] (it has "
                                "size 9 on axis 3, expected 8)")
    with pytest.raises(qc.QCompilerError) as error:
        compiled.run(np.zeros((0, 1, 8, 8), np.float32))
    assert "expected a positive multiple of 1 (N)" in str(error.value)


def test_an_op_that_needs_the_batch_as_a_number_names_the_node_and_the_way_out():
    graph = qc.ir.Graph("batch_mean")
    x = graph.add_input("x", (qc.ir.BATCH, 4), "f32")
    node = graph.add_node("var", [x], {"dim": [0], "keepdim": False, "correction": 1}, name="spread")
    graph.outputs.append(node.output)
    with pytest.raises(LoweringError) as error:
        qc.backends.tvm.build(graph, "host", schedules=False)
    assert str(error.value) == (
        f"the TVM backend cannot keep the batch symbolic in {node.describe()}: its lowering needs "
        "the size of the symbolic dimension N as a number; compile at a fixed batch size, "
        "qc.backends.tvm.build(graph, target, batch=8)")
    compiled = qc.backends.tvm.build(graph, "host", batch=2, schedules=False)
    data = np.arange(8, dtype=np.float32).reshape(2, 4)
    np.testing.assert_allclose(compiled.run(data), data.var(axis=0, ddof=1), rtol=1e-6)
