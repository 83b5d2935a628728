"""Winograd convolution: rewrite 3x3 stride-1 convs as F(m x m, 3 x 3) in existing IR ops.

    %y = conv2d(%x, %w, %b) {3x3, stride 1}
        ->  %p = pad(%x)                                   input padded to whole tiles
            %v = conv2d(%p, B^T.B, stride m, groups C)     input transform, per tile
            %m = matmul(U, permute(reshape(%v)))           U = G w G^T: per position xi
            %o = conv2d(reshape(permute(%m)), A^T.A, %b')  output transform, 1x1, groups K
            %y = slice(reshape(permute(reshape(%o))))      tiles back to the image

The math and its numerics are in `qcompiler.numerics.winograd` (Lavin & Gray 2016). The
rewrite uses only pad, conv2d, reshape, permute, matmul and slice, so every backend runs it
unchanged; it is a layout of the same function, not a new kernel. The transforms are
expressed as convolutions with constant 0/+-1/+-2... kernels, so the cost model counts their
multiplies in full: a backend that does not specialise them does more work, not less
(measured in benchmarks/results/extreme_compression.md).

Options: `tile` (the output tile m: 2 or 4); `layers` / `ignore` (names or fnmatch
patterns; default every eligible conv).

Requires: a float graph. Preserves: the function up to float32 rounding: outputs within
rtol 1e-5 / atol 1e-5 of the direct conv (relative to the output's magnitude) for
F(2x2, 3x3), 1e-4 for F(4x4, 3x3), whose transform constants are larger (tests). Names:
the conv's output keeps its name. Errors, raised before the graph changes: a conv named in
`layers` that is not 3x3 / stride 1 / dilation 1 / groups 1 with a constant weight, with
the reason; an unknown tile.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import numpy as np

from qcompiler.compression.layer_weights import check_layer_options
from qcompiler.errors import OptionError, PassError
from qcompiler.ir import Graph, Node, Value
from qcompiler.ir.edit import layer_bias, rename_value, require_float_graph, select_layers
from qcompiler.ir.pipeline import PassResult
from qcompiler.numerics import winograd


def why_not_winograd(node: Node) -> str | None:
    """Why F(m x m, 3 x 3) cannot replace this conv (None if it can)."""
    weight = node.inputs[1]
    if not weight.is_constant:
        return "its weight is not a constant"
    if tuple(weight.shape[2:]) != (3, 3):
        return f"its kernel is {'x'.join(map(str, weight.shape[2:]))}, not 3x3"
    for attribute in ("stride", "dilation"):
        if list(node.attrs.get(attribute, [1, 1])) != [1, 1]:
            return f"its {attribute} is {node.attrs[attribute]}, not [1, 1]"
    if node.attrs.get("groups", 1) != 1:
        return f"it is grouped (groups={node.attrs['groups']}); only groups=1 is rewritten"
    if len(node.inputs[0].shape) != 4 or not all(isinstance(d, int) for d in node.inputs[0].shape[1:]):
        return "its input is not [N, C, H, W] with static C, H, W"
    bias = layer_bias(node)
    if bias is not None and not bias.is_constant:
        return "its bias is not a constant"
    return None


@dataclass(frozen=True)
class convert_to_winograd:  # lower case: with its options it reads like a function call
    """The configured Winograd rewrite (see the module docstring)."""

    in_place: ClassVar[bool] = True  # rewrites the graph it is given

    tile: int = 2
    layers: tuple[str, ...] | None = None
    ignore: tuple[str, ...] = ()

    def __post_init__(self):
        check_layer_options("convert_to_winograd", self.tile, self.layers, self.ignore)
        if self.tile not in winograd.TILES:
            raise OptionError(f"convert_to_winograd: tile must be one of {winograd.TILES} (the "
                              f"output tile of F(m x m, 3x3)), got {self.tile!r}")

    def __call__(self, graph: Graph) -> PassResult:
        require_float_graph(graph, "convert_to_winograd")
        convs = select_layers(graph, ["conv2d"], self.layers, self.ignore, "convert_to_winograd")
        chosen, notes = [], []
        for conv in convs:
            reason = why_not_winograd(conv)
            if reason is None:
                chosen.append(conv)
            elif self.layers is not None:  # asked for by name: say why not, change nothing
                raise PassError(f"convert_to_winograd: cannot rewrite {conv.describe()}: {reason}")
            else:
                notes.append(f"{conv.describe()} kept direct: {reason}")
        for conv in chosen:
            _rewrite(graph, conv, self.tile)
            notes.append(f"%{conv.name}: Winograd F({self.tile}x{self.tile}, 3x3)")
        return PassResult(graph, bool(chosen), notes)


def _rewrite(graph: Graph, conv: Node, m: int) -> None:
    x, weight, bias = conv.inputs[0], conv.inputs[1], layer_bias(conv)
    out_channels, channels = weight.shape[:2]
    _, _, height, width = x.shape
    pad_h, pad_w = conv.attrs["padding"]
    out_h, out_w = height + 2 * pad_h - 2, width + 2 * pad_w - 2
    nh, nw, t = winograd.tiles(out_h, m), winograd.tiles(out_w, m), m + 2
    name = conv.name

    def add(op: str, inputs: list, attrs: dict, step: str) -> Value:
        return graph.add_node(op, inputs, attrs, name=f"{name}.winograd.{step}", before=conv,
                              source=conv.source).output

    def constant(step: str, data: np.ndarray) -> Value:
        return graph.add_constant(graph.unique_name(f"{name}.winograd.{step}"), data.astype(np.float32))

    # Pad to whole tiles: the conv's own padding, plus enough on the bottom/right.
    pads = [pad_w, nw * m + 2 - width - pad_w, pad_h, nh * m + 2 - height - pad_h]
    padded = add("pad", [x], {"pads": pads, "mode": "constant", "value": 0.0}, "pad")
    v = add("conv2d", [padded, constant("input_transform", winograd.input_transform_kernel(m, channels)),
                       None], {"stride": [m, m], "padding": [0, 0], "dilation": [1, 1],
                               "groups": channels}, "input")
    v = add("reshape", [v], {"shape": [-1, channels, t * t, nh * nw]}, "input_tiles")
    v = add("permute", [v], {"dims": [2, 0, 1, 3]}, "input_by_position")  # [t^2, N, C, P]
    u = winograd.transformed_weight(weight.data, m)[:, None]  # [t^2, 1, K, C]
    product = add("matmul", [constant("weight", u), v], {}, "product")  # [t^2, N, K, P]
    product = add("permute", [product], {"dims": [1, 2, 0, 3]}, "product_by_channel")
    product = add("reshape", [product], {"shape": [-1, out_channels * t * t, nh, nw]}, "product_tiles")
    tiled_bias = None if bias is None else constant("bias", np.repeat(bias.data, m * m))
    y = add("conv2d", [product, constant("output_transform",
                                         winograd.output_transform_kernel(m, out_channels)), tiled_bias],
            {"stride": [1, 1], "padding": [0, 0], "dilation": [1, 1], "groups": out_channels}, "output")
    y = add("reshape", [y], {"shape": [-1, out_channels, m, m, nh, nw]}, "output_tiles")
    y = add("permute", [y], {"dims": [0, 1, 4, 2, 5, 3]}, "output_rows")
    y = add("reshape", [y], {"shape": [-1, out_channels, nh * m, nw * m]}, "output_image")
    if nh * m != out_h:
        y = add("slice", [y], {"axis": 2, "start": 0, "end": out_h, "step": 1}, "crop_height")
    if nw * m != out_w:
        y = add("slice", [y], {"axis": 3, "start": 0, "end": out_w, "step": 1}, "crop_width")
    old = conv.output
    graph.replace_all_uses(old, y)
    graph.remove_node(conv)
    for value in (weight, bias):
        if value is not None and not value.users:
            graph.remove_value(value)
    rename_value(graph, y, name if name not in graph.values else graph.unique_name(name))
