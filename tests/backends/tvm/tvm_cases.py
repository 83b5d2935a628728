"""Shared pieces of the TVM backend tests: graphs of single integer ops drawn by hypothesis,
and the oracle check (TVM against the numpy interpreter, bit for bit).

Compiling costs about a second a graph, so one hypothesis example puts several drawn ops
(each with its own inputs) into one graph and compiles it once."""

from __future__ import annotations

import os

import numpy as np
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st

import qcompiler as qc
from qcompiler.ir import Graph
from qcompiler.numerics.fixed_point import quantize_multiplier

# Few examples (each compiles a graph), the same ones every run; QC_TVM_EXAMPLES=200 runs a
# longer randomized search (40 random examples per test passed when this was written).
_EXAMPLES = os.environ.get("QC_TVM_EXAMPLES")
SETTINGS = settings(max_examples=int(_EXAMPLES or 8), derandomize=_EXAMPLES is None, deadline=None,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
RANGES = {"u8": (0, 255), "i8": (-128, 127)}
# The int8 weights the host's kernels compute exactly (7 bits on AVX2-only machines: the
# vpmaddubsw kernels; docs/integer-spec.md section 8); the tests build for the host.
HOST_WEIGHTS = qc.backends.tvm.target.resolve_target("host").weight_range
NUMPY = {"u8": np.uint8, "i8": np.int8, "i32": np.int32, "f32": np.float32, "i64": np.int64}
# Real multipliers from 2**-30 (t = 61) to 2**8: far beyond what networks use on both sides.
multipliers = st.floats(2.0 ** -30, 2.0 ** 8).map(quantize_multiplier)


def int_array(draw, shape, dtype):
    low, high = RANGES[dtype]
    seed = draw(st.integers(0, 2**32 - 1))
    return np.random.default_rng(seed).integers(low, high + 1, size=shape).astype(NUMPY[dtype])


@st.composite
def output_params(draw):
    """Output zero point, a clamp inside the dtype's range (a fused activation), dtype."""
    dtype = draw(st.sampled_from(["u8", "i8"]))
    qmin, qmax = RANGES[dtype]
    zero_point = draw(st.integers(qmin, qmax))
    low = draw(st.sampled_from([qmin, max(qmin, zero_point)]))
    high = draw(st.sampled_from([qmax, draw(st.integers(low, qmax))]))
    return {"output_zero_point": zero_point, "output_min": low, "output_max": high,
            "output_dtype": dtype}


def per_channel(draw, channels: int):
    pairs = [draw(multipliers) for _ in range(channels)]
    return (np.array([p[0] for p in pairs], np.int32), np.array([p[1] for p in pairs], np.int32))


class OpCase:
    """One op of a test graph: its activation inputs (graph inputs), its constant inputs
    (None for an activation slot) and attributes."""

    def __init__(self, op: str, arrays: list, constants: list, attrs: dict):
        self.op, self.arrays, self.constants, self.attrs = op, arrays, constants, attrs


def graph_of(cases: list[OpCase]) -> tuple[Graph, list[np.ndarray]]:
    """One graph computing every case side by side; its inputs, in order."""
    graph = Graph("cases")
    inputs = []
    for index, case in enumerate(cases):
        arrays = iter(case.arrays)
        values = []
        for slot, constant in enumerate(case.constants):
            if constant is None:
                array = next(arrays)
                dtype = {np.dtype(v): k for k, v in NUMPY.items()}[array.dtype]
                values.append(graph.add_input(f"in{index}_{slot}", array.shape, dtype))
                inputs.append(array)
            else:
                values.append(graph.add_constant(f"c{index}_{slot}", constant))
        node = graph.add_node(case.op, values, case.attrs, name=f"{case.op}{index}")
        graph.outputs.extend(node.outputs)
    return graph.verify(), inputs


def assert_exact(graph: Graph, inputs: list, target="host", strict: bool = True):
    """TVM's outputs equal the interpreter's, element for element and dtype for dtype."""
    expected = qc.backends.interpreter.run(graph, *inputs, strict=strict)
    compiled = qc.backends.tvm.build(graph, target)
    actual = compiled.run(*inputs)
    expected = expected if isinstance(expected, tuple) else (expected,)
    actual = actual if isinstance(actual, tuple) else (actual,)
    for value, want, got in zip(graph.outputs, expected, actual, strict=True):
        assert got.dtype == want.dtype and got.shape == want.shape, value.name
        differing = int(np.count_nonzero(got != want))
        assert differing == 0, f"%{value.name}: {differing} of {want.size} differ"
    return compiled
