"""Random integer networks for the schedule tests: chains of the layer kinds the blocked
kernels handle (dense, pointwise, strided, padded and dilated convolutions, whole-block and
partial grouped convolutions, 3x3 and other depthwise convolutions, residual adds, pooling,
means, dense layers), with every shape, zero point, dtype and multiplier drawn from a seed,
and channel counts chosen around the target's lane count (multiples and not)."""

from __future__ import annotations

import numpy as np

from qcompiler.ir import Graph
from qcompiler.numerics.fixed_point import quantize_multipliers

RANGES = {"u8": (0, 255), "i8": (-128, 127)}


class NetworkBuilder:
    """Appends integer layers to a graph, drawing their parameters from `rng`; weights lie in
    `weight_range` (the target's exact range, docs/integer-spec.md section 8)."""

    def __init__(self, rng: np.random.Generator, weight_range: tuple[int, int]):
        self.rng, self.weight_range = rng, weight_range
        self.graph = Graph("schedule_case")
        self.zero_points: dict[str, int] = {}

    def input(self, shape, dtype: str):
        value = self.graph.add_input("x", shape, dtype)
        self.zero_points[value.name] = int(self.rng.integers(*RANGES[dtype]))
        return value

    def _output(self, dtype: str | None = None, relu: bool | None = None) -> dict:
        dtype = dtype or str(self.rng.choice(["u8", "i8"]))
        low, high = RANGES[dtype]
        zero_point = int(self.rng.integers(low, high + 1))
        relu = bool(self.rng.integers(2)) if relu is None else relu
        return {"output_zero_point": zero_point, "output_min": zero_point if relu else low,
                "output_max": high, "output_dtype": dtype}

    def _finish(self, node, attrs):
        self.zero_points[node.output.name] = attrs["output_zero_point"]
        return node.output

    def _requantization(self, channels: int, depth: int, gain: float = 1.0):
        """Per-channel (M0, shift) putting the accumulator's spread on a few dozen steps,
        each channel's factor within 4x of that; `gain` moves them all (gain > 1 gives
        real multipliers above 1, shifts below 0)."""
        low, high = self.weight_range
        spread = np.sqrt(max(depth, 1)) * 74.0 * (high - low) / 3.5
        factors = gain * 40.0 / spread * np.exp2(self.rng.uniform(-2, 2, channels))
        return quantize_multipliers(factors)

    def conv(self, x, out_channels: int, kernel: int, *, stride=1, padding=0, dilation=1,
             groups=1, dtype=None, gain=1.0, relu=None):
        in_channels = int(x.shape[1])
        low, high = self.weight_range
        weight = self.rng.integers(low, high + 1, (out_channels, in_channels // groups, kernel,
                                                    kernel)).astype(np.int8)
        bias = self.rng.integers(-2**14, 2**14, out_channels).astype(np.int32)
        m0, shift = self._requantization(out_channels, weight[0].size, gain)
        attrs = {"stride": [stride, stride], "padding": [padding, padding],
                 "dilation": [dilation, dilation], "groups": groups,
                 "input_zero_point": self.zero_points[x.name], **self._output(dtype, relu)}
        node = self.graph.add_node("qconv2d", [x, *self._constants(weight, bias, m0, shift)], attrs)
        return self._finish(node, attrs)

    def depthwise(self, x, kernel: int, **options):
        return self.conv(x, int(x.shape[1]), kernel, groups=int(x.shape[1]), **options)

    def linear(self, x, out_features: int, dtype=None):
        low, high = self.weight_range
        weight = self.rng.integers(low, high + 1, (out_features, int(x.shape[-1]))).astype(np.int8)
        bias = self.rng.integers(-2**14, 2**14, out_features).astype(np.int32)
        m0, shift = self._requantization(out_features, weight.shape[1])
        attrs = {"input_zero_point": self.zero_points[x.name], **self._output(dtype)}
        node = self.graph.add_node("qlinear", [x, *self._constants(weight, bias, m0, shift)], attrs)
        return self._finish(node, attrs)

    def add(self, a, b, dtype=None):
        m0, shift = quantize_multipliers(np.array([0.6]))
        attrs = {"a_zero_point": self.zero_points[a.name], "b_zero_point": self.zero_points[b.name],
                 "a_multiplier": int(m0[0]), "b_multiplier": int(m0[0] * 0.7), "shift": int(shift[0]),
                 **self._output(dtype)}
        return self._finish(self.graph.add_node("qadd", [a, b], attrs), attrs)

    def max_pool(self, x, kernel: int, stride: int, padding: int):
        node = self.graph.add_node("qmax_pool2d", [x], {
            "kernel_size": [kernel, kernel], "stride": [stride, stride],
            "padding": [padding, padding], "dilation": [1, 1]})
        self.zero_points[node.output.name] = self.zero_points[x.name]
        return node.output

    def average_pool(self, x, kernel: int, stride: int, padding: int):
        from qcompiler.numerics.integer_params import average_multipliers

        multipliers, shifts = average_multipliers(0.05, 0.04, kernel * kernel)
        attrs = {"kernel_size": [kernel, kernel], "stride": [stride, stride],
                 "padding": [padding, padding], "count_include_pad": bool(self.rng.integers(2)),
                 "multipliers": multipliers, "shifts": shifts,
                 "input_zero_point": self.zero_points[x.name], **self._output()}
        return self._finish(self.graph.add_node("qavg_pool2d", [x], attrs), attrs)

    def mean(self, x, keepdim: bool):
        count = int(x.shape[2]) * int(x.shape[3])
        m0, shift = quantize_multipliers(np.array([0.8 / count]))
        attrs = {"dim": [2, 3], "keepdim": keepdim, "input_zero_point": self.zero_points[x.name],
                 "multiplier": int(m0[0]), "shift": int(shift[0]), **self._output()}
        return self._finish(self.graph.add_node("qmean", [x], attrs), attrs)

    def flatten(self, x):
        node = self.graph.add_node("flatten", [x], {"start_dim": 1, "end_dim": -1})
        self.zero_points[node.output.name] = self.zero_points[x.name]
        return node.output

    def _constants(self, *arrays):
        return [self.graph.add_constant("c", array) for array in arrays]


def conv_network(seed: int, lanes: int, weight_range: tuple[int, int]) -> tuple[Graph, np.ndarray]:
    """A network of every convolution kind around `lanes` channels, and an input for it."""
    rng = np.random.default_rng(seed)
    net = NetworkBuilder(rng, weight_range)
    size = int(rng.integers(9, 13))
    dtype = str(rng.choice(["u8", "i8"]))
    x = net.input((1, 3, size, size), dtype)
    stem = net.conv(x, lanes + 4, 3, stride=2, padding=1)  # 3 colours, a partial last block
    wide = net.conv(stem, 2 * lanes, 1, gain=8.0)  # pointwise, real multipliers above 1
    dw = net.depthwise(wide, 3, padding=1)
    dw_strided = net.depthwise(dw, 3, stride=2, padding=1)
    spread = int(rng.integers(1, 3))
    dw_five = net.depthwise(dw, 5, padding=2 * spread, dilation=spread)
    valid = net.conv(dw, lanes, 3, stride=2)  # no padding
    grouped = net.conv(dw, 2 * lanes, 3, padding=1, groups=2)  # whole blocks per group
    partial = net.conv(dw, 6, 1, groups=2)  # 6 channels a group: not whole blocks
    dilated = net.conv(grouped, lanes - 2, 3, padding=2, dilation=2)
    residual = net.add(net.conv(dilated, 2 * lanes, 1), dw_five)
    pooled = net.max_pool(residual, 3, 2, 1)
    averaged = net.average_pool(dw_strided, 3, 1, 1)
    joined = net.add(net.conv(averaged, pooled.shape[1], 1), pooled)
    flat = net.flatten(net.mean(joined, keepdim=True))
    head = net.linear(net.linear(flat, 2 * lanes + 3), 10)
    kept = net.mean(partial, keepdim=False)
    net.graph.outputs.extend([head, kept, net.mean(valid, keepdim=False)])
    return net.graph.verify(), np.random.default_rng(seed + 1).integers(
        *RANGES[dtype], size=(1, 3, size, size), endpoint=True).astype(RANGES_NUMPY[dtype])


RANGES_NUMPY = {"u8": np.uint8, "i8": np.int8}
