"""Replace linear and convolution layers by two (or three) thinner layers of low rank.

    %y = linear(%x, %w, %b)            %y.factor1 = linear(%x, %a, _)         a: (r, in)
                                 ->    %y = linear(%y.factor1, %c, %b)        c: (out, r)

    %y = conv2d(%x, %w, %b)  k x k     channel:  k x k conv to r channels, then 1 x 1 conv
                                       spatial:  k x 1 conv to r channels, then 1 x k conv
                                       tucker2:  1 x 1 to r_in, k x k to r_out, 1 x 1 to C_out

The factors are truncated SVDs of the weight (the math and its references,
Jaderberg et al. 2014, Zhang et al. 2016, Kim et al. 2016, are in
`qcompiler.numerics.low_rank`). `method` picks the conv decomposition: "auto"
(linear layers by SVD, convolutions by the channel method), "svd" (linear layers
only), "channel", "spatial" or "tucker2" (convolutions only); a layer of another
kind is outside the pass.

The rank comes from exactly one of:
- `rank`: an int, or a float in (0, 1] as a fraction of each layer's full rank
  (tucker2 applies it to both channel modes);
- `energy`: the smallest rank keeping that fraction of the squared singular
  values (per mode for tucker2);
- `target_macs_ratio`: the decomposed layers' MACs must fall to this fraction of
  their original MACs, either for each layer (`budget="per_layer"`: the largest
  rank that fits) or in total (`budget="global"`: ranks picked greedily by the
  least relative energy lost per MAC saved; for tucker2 the energy lost is the
  HOSVD bound, the sum of both modes' dropped fractions).

`round_to` keeps the ranks the pass chooses (from `energy`, `target_macs_ratio` or
a fractional `rank`) at multiples of it, or at a layer's full rank: a rank is the
width of the tensor between the factors, and kernels work on blocks of channels
(16 for torch's AVX2 convolutions; see `qc.search_budget`). An energy rank is
rounded up, so it keeps at least that energy. An int `rank` is taken as given.

Carried onto the factors: the first factor of the channel and Tucker core takes
the original stride, padding and dilation (the 1 x 1 factors take none); the
spatial method splits them, the vertical factor taking (stride_h, 1), (pad_h, 0),
(dil_h, 1) and the horizontal one (1, stride_w), (0, pad_w), (1, dil_w). That is
exact because the factors before the last have no bias, so the zero padding of
the input stays zero through them. The bias goes on the last factor.

Requires: constant weights without quantization parameters (decompose before
quantizing), groups=1; fold batch norms first if the decomposition should see
them. Skipped with a note: grouped or depthwise convolutions, non-constant or
quantized weights, and a layer whose decomposition would not have fewer MACs
than the layer itself (unless `require_fewer_macs=False`; a full-rank
decomposition never has fewer). Errors (raised before the graph is touched):
an unknown name in `layers` or `ignore` (with close names suggested), a layer
named in `layers` that the method cannot decompose, an int rank above a layer's
full rank.

Preserves: the function at full rank (to float32 rounding); otherwise changes it
by the truncation error. The last factor keeps the layer's output name, shape
and dtype. New constants are `<layer>.factor<i>.weight`; the old weight goes when
nothing else uses it.

Known limits: conv1d takes the channel and tucker2 methods, not spatial;
conv_transpose2d and matmul are not decomposed; the global budget compares
losses across layers by relative weight energy, not by their effect on the
network output.
"""

from __future__ import annotations

import math
import sys
from dataclasses import dataclass
from typing import ClassVar

import numpy as np

from qcompiler.analysis.cost import node_macs
from qcompiler.errors import OptionError, PassError
from qcompiler.ir import Graph, Node, Value
from qcompiler.ir.dims import shape_at
from qcompiler.ir.edit import (
    optional_input,
    remove_if_unused,
    rename_value,
    require_float_graph,
    select_layers,
    why_not_float_constant,
)
from qcompiler.ir.ops import attrs_with_defaults
from qcompiler.ir.pipeline import PassResult
from qcompiler.numerics import low_rank

# The layers each method decomposes (their weights are [C_out, C_in, *kernel]).
_METHOD_OPS = {"auto": ("linear", "conv1d", "conv2d"), "svd": ("linear",),
               "channel": ("conv1d", "conv2d"), "spatial": ("conv2d",),
               "tucker2": ("conv1d", "conv2d")}


@dataclass(frozen=True)
class decompose_low_rank:  # lower case: with its options it reads like a function call
    in_place: ClassVar[bool] = True  # rewrites the graph it is given

    rank: int | float | None = None
    energy: float | None = None
    target_macs_ratio: float | None = None
    budget: str = "global"
    method: str = "auto"
    layers: tuple[str, ...] | None = None
    ignore: tuple[str, ...] = ()
    require_fewer_macs: bool = True
    round_to: int = 1

    def __post_init__(self):
        given = [n for n in ("rank", "energy", "target_macs_ratio") if getattr(self, n) is not None]
        if len(given) != 1:
            raise OptionError("decompose_low_rank needs exactly one of rank=, energy= or "
                              f"target_macs_ratio=; got {given or 'none'}")
        if self.rank is not None:
            # Checks type and range; a layer's own full rank is checked when the pass runs.
            low_rank.resolve_rank(self.rank, full_rank=sys.maxsize)
        if self.energy is not None and not 0.0 < self.energy <= 1.0:
            raise OptionError(f"energy must be in (0, 1], got {self.energy}")
        if self.target_macs_ratio is not None and not 0.0 < self.target_macs_ratio < 1.0:
            raise OptionError(f"target_macs_ratio must be in (0, 1), got {self.target_macs_ratio}")
        if isinstance(self.round_to, bool) or not isinstance(self.round_to, int) or self.round_to < 1:
            raise OptionError(f"round_to must be a positive int (ranks are kept at multiples of it), "
                              f"got {self.round_to!r}")
        if self.budget not in ("global", "per_layer"):
            raise OptionError(f"budget must be 'global' or 'per_layer', got {self.budget!r}")
        if self.method not in _METHOD_OPS:
            raise OptionError(f"unknown method {self.method!r}; choose one of {', '.join(_METHOD_OPS)}")
        for option in ("layers", "ignore"):
            names = getattr(self, option)
            if isinstance(names, str):  # a bare string would be read letter by letter
                raise OptionError(f"{option} must be a tuple of names, got the string {names!r}")

    def __call__(self, graph: Graph) -> PassResult:
        require_float_graph(graph, "decompose_low_rank")
        notes: list[str] = []
        layers = []
        for node in select_layers(graph, _METHOD_OPS[self.method], self.layers, self.ignore,
                                  f"method {self.method!r}"):
            reason = _why_not_decomposable(node)
            if reason is None:
                layers.append(_Layer(node, self._method_for(node.op), self.round_to))
            else:
                notes.append(f"{node.describe()} not decomposed: {reason}")
        choices = self._choose(layers, notes)  # may raise: nothing is touched before this
        decomposed = 0
        for layer, spec in zip(layers, choices, strict=True):
            if spec is None:
                continue
            new_macs, old_macs = layer.macs(spec), layer.original_macs
            if self.require_fewer_macs and new_macs >= old_macs:
                notes.append(f"{layer.node.describe()} not decomposed: {layer.method} at rank "
                              f"{spec} would take {new_macs} MACs, not fewer than {old_macs}")
                continue
            # For Tucker-2 the kept energy is the HOSVD lower bound, not the exact figure.
            kept = ">= " if layer.method == "tucker2" else ""
            notes.append(f"{layer.node.describe()} decomposed by {layer.method} at rank {spec}: "
                         f"MACs {old_macs} -> {new_macs}, "
                         f"energy kept {kept}{1.0 - layer.loss(spec):.4f}")
            _rewrite(graph, layer, spec)
            decomposed += 1
        return PassResult(graph, decomposed > 0, notes)

    def _method_for(self, op: str) -> str:
        if self.method == "auto":
            return "svd" if op == "linear" else "channel"
        return self.method

    def _choose(self, layers: list[_Layer], notes: list[str]) -> list:
        """The rank (int, or (r_out, r_in) for tucker2) of each layer, None to leave it."""
        if self.rank is not None:
            return [layer.spec_for_rank(self.rank) for layer in layers]
        if self.energy is not None:
            return [layer.spec_for_energy(self.energy) for layer in layers]
        candidates = [layer.candidates() for layer in layers]
        macs = [np.array([layer.macs(c) for c in cs]) for layer, cs in zip(layers, candidates, strict=True)]
        losses = [np.array([layer.loss(c) for c in cs]) for layer, cs in zip(layers, candidates, strict=True)]
        original = [layer.original_macs for layer in layers]
        if self.budget == "per_layer":
            picks = []
            for layer, layer_macs, layer_losses in zip(layers, macs, losses, strict=True):
                fits = np.flatnonzero(layer_macs <= self.target_macs_ratio * layer.original_macs)
                picks.append(None if fits.size == 0 else int(fits[np.argmin(layer_losses[fits])]))
                if fits.size == 0:
                    notes.append(f"{layer.node.describe()} not decomposed: no rank reaches "
                                 f"{self.target_macs_ratio} of its {layer.original_macs} MACs")
        else:
            budget = self.target_macs_ratio * sum(original)
            picks = low_rank.allocate_to_budget(macs, losses, original, budget)
            reached = sum(o if p is None else m[p] for o, m, p in zip(original, macs, picks, strict=True))
            if reached > budget:
                notes.append(f"target_macs_ratio {self.target_macs_ratio} not reached: the "
                              f"lowest ranks give {reached / max(sum(original), 1):.3f} of the MACs")
        return [None if p is None else cs[p] for cs, p in zip(candidates, picks, strict=True)]


# ---- one layer ---------------------------------------------------------------------------


class _Layer:
    """A decomposable node with its weight's singular values and MAC arithmetic."""

    def __init__(self, node: Node, method: str, round_to: int = 1):
        self.node, self.method, self.round_to = node, method, round_to
        self.weight = node.inputs[1].data
        shape = self.weight.shape
        # The SVDs are computed once: both choosing the rank and building the factors use them.
        if method == "spatial":
            matrices = [low_rank.spatial_matrix(self.weight)]
        elif method == "tucker2":
            matrices = [low_rank.channel_matrix(self.weight),
                        low_rank.input_channel_matrix(self.weight)]
        else:
            matrices = [low_rank.channel_matrix(self.weight)]
        self.decompositions = [low_rank.svd(m) for m in matrices]
        self.spectra = [s for _, s, _ in self.decompositions]
        self.kept = [low_rank.retained_energy_curve(s) for s in self.spectra]
        self.full_ranks = [len(s) for s in self.spectra]
        # Positions of one sample: MACs and the budget count a symbolic batch as 1.
        out_shape, in_shape = shape_at(node.output.shape, 1), shape_at(node.inputs[0].shape, 1)
        channel_axis = -1 if node.op == "linear" else -1 - (len(shape) - 2)
        self.out_positions = math.prod(out_shape) // shape[0]
        self.in_positions = math.prod(in_shape) // in_shape[channel_axis]
        self.original_macs = node_macs(node)
        if method == "spatial":  # the vertical factor's output keeps the input's width
            self.vertical_positions = math.prod(out_shape[:-1]) // shape[0] * in_shape[-1]

    def _wrap(self, ranks: list[int]):
        return tuple(ranks) if self.method == "tucker2" else ranks[0]

    def _check_rank(self, rank: int | float) -> list[int]:
        try:
            return [low_rank.resolve_rank(rank, full) for full in self.full_ranks]
        except ValueError as error:
            full = " x ".join(str(f) for f in self.full_ranks)
            raise PassError(f"{self.node.describe()}: {error} of its {self.method} "
                            f"decomposition (full rank {full}); give a smaller rank, a fraction "
                            "such as rank=0.5, or leave the layer out with ignore=") from None

    def _rounded(self, ranks: list[int]) -> list[int]:
        """Each rank up to a multiple of `round_to`, at most its mode's full rank."""
        step = self.round_to
        return [min(full, -(-rank // step) * step) for rank, full in zip(ranks, self.full_ranks, strict=True)]

    def spec_for_rank(self, rank: int | float):
        ranks = self._check_rank(rank)
        return self._wrap(self._rounded(ranks) if isinstance(rank, float) else ranks)

    def spec_for_energy(self, energy: float):
        return self._wrap(self._rounded([low_rank.rank_for_energy(s, energy) for s in self.spectra]))

    def candidates(self) -> list:
        if self.method != "tucker2":
            specs = set(range(1, self.full_ranks[0] + 1))
        else:
            # Both modes shrink together along a shared fraction of their full ranks.
            steps = max(self.full_ranks)
            specs = {tuple(math.ceil(k * full / steps) for full in self.full_ranks)
                     for k in range(1, steps + 1)}
        if self.round_to > 1:
            specs = {self._wrap(self._rounded(list(spec) if isinstance(spec, tuple) else [spec]))
                     for spec in specs}
        return sorted(specs)

    def loss(self, spec) -> float:
        ranks = spec if isinstance(spec, tuple) else (spec,)
        return sum(1.0 - float(kept[r - 1]) for kept, r in zip(self.kept, ranks, strict=True))

    def macs(self, spec) -> int:
        shape = self.weight.shape
        c_out, c_in, kernel = shape[0], shape[1], math.prod(shape[2:])
        if self.method == "spatial":
            kh, kw = shape[2:]
            return spec * (self.vertical_positions * c_in * kh + self.out_positions * c_out * kw)
        if self.method == "tucker2":
            rank_out, rank_in = spec
            return (self.in_positions * c_in * rank_in
                    + self.out_positions * (rank_in * kernel * rank_out + rank_out * c_out))
        return low_rank.channel_decomposition_macs(shape, self.out_positions, spec)


def _why_not_decomposable(node: Node) -> str | None:
    weight = node.inputs[1]
    problem = why_not_float_constant(weight, "decompose")
    if problem is not None:
        return f"its weight %{weight.name} {problem}"
    if node.op != "linear" and node.attrs.get("groups", 1) != 1:
        return (f"it has groups={node.attrs['groups']}; grouped and depthwise convolutions "
                "are not decomposed")
    return None


# ---- rewriting --------------------------------------------------------------------------------


def _per_axis(value, dims: int) -> list:
    return [value] * dims if isinstance(value, int) else list(value)


def _factor_attrs(node: Node, method: str) -> list[dict]:
    """Attributes of each factor, first to last."""
    if node.op == "linear":
        return [{}, {}]
    attrs = attrs_with_defaults(node.op, node.attrs)
    dims = 2 if node.op == "conv2d" else 1
    plain = {"stride": [1] * dims, "padding": [0] * dims, "dilation": [1] * dims, "groups": 1}
    if method == "channel":
        return [{**attrs, "groups": 1}, plain]
    if method == "tucker2":
        return [plain, {**attrs, "groups": 1}, plain]
    stride, dilation = _per_axis(attrs["stride"], 2), _per_axis(attrs["dilation"], 2)
    padding = attrs["padding"]
    # A string padding ('same', 'valid') means the same thing for each 1-D factor.
    pad_v, pad_h = (padding, padding) if isinstance(padding, str) else (
        [_per_axis(padding, 2)[0], 0], [0, _per_axis(padding, 2)[1]])
    return [{"stride": [stride[0], 1], "padding": pad_v, "dilation": [dilation[0], 1], "groups": 1},
            {"stride": [1, stride[1]], "padding": pad_h, "dilation": [1, dilation[1]], "groups": 1}]


def _factor_weights(layer: _Layer, spec) -> tuple[np.ndarray, ...]:
    weight, decompositions = layer.weight, layer.decompositions
    if layer.method == "spatial":
        return low_rank.spatial_factors(weight, spec, decompositions[0])
    if layer.method == "tucker2":
        return low_rank.tucker2_factors(weight, *spec, decompositions)
    return low_rank.channel_factors(weight, spec, decompositions[0])


def _rewrite(graph: Graph, layer: _Layer, spec) -> None:
    node = layer.node
    weight, old_output = node.inputs[1], node.output
    bias = optional_input(node, 2)
    base = weight.name[: -len(".weight")] if weight.name.endswith(".weight") else node.name
    weights = _factor_weights(layer, spec)
    all_attrs = _factor_attrs(node, layer.method)
    current: Value = node.inputs[0]
    for index, (factor, attrs) in enumerate(zip(weights, all_attrs, strict=True), start=1):
        last = index == len(weights)
        constant = graph.add_constant(f"{base}.factor{index}.weight", factor)
        created = graph.add_node(node.op, [current, constant, bias if last else None], attrs,
                                 name=f"{node.name}.factor{index}", before=node, source=node.source)
        current = created.output
    current.qparams = old_output.qparams
    graph.replace_all_uses(old_output, current)
    name = old_output.name
    graph.remove_node(node)
    remove_if_unused(graph, weight)
    # The last factor takes over the layer's output name, so what came after it (and the
    # graph outputs) keep their names.
    rename_value(graph, current, name)
