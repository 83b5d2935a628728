"""Weight-only low-bit (default INT4) group-wise quantization of linear layers, by round to
nearest, AWQ or GPTQ.

    %y = linear(%x, %w, %b)     ->     %w.q = fake_quant_grouped(%w', %w.q.scale) {bits=4, group_size=128}
                                       %y = linear(%x, %w.q, %b)

Each selected linear weight [out, in] gets one float32 scale per group of `group_size`
input features and, by default (`asymmetric=True`), a zero point: unsigned codes in [0, 15]
for 4 bits; `asymmetric=False` keeps symmetric codes in [-7, 7]
(`qcompiler.numerics.grouped_quant` has the format and the three methods):
- "rtn": round to nearest; needs no data.
- "awq" (Lin et al. 2024): per input channel scales a from the mean |x| on the calibration
  data, searched for the lowest output error; the layers that share an input share a (their
  weights are searched as one matrix), x / a is folded into the layer_norm that produces x
  (into a copy of it when the residual path reads it too) or, elsewhere (after GELU, the
  attention context), made by a `mul` by the constant 1 / a (AWQ's ScaledActivation);
  `qcompiler.quantization.linear_inputs` has the graph side. %w' is W diag(a).
- "gptq" (Frantar et al. 2023): error feedback through the inverse Hessian of each layer's
  input (X^T X on the calibration data); %w' holds the dequantized result, so the
  fake_quant_grouped reproduces GPTQ's codes exactly. With `sequential=True` (the default,
  the paper's) the layers are quantized in graph order and each one's Hessian comes from
  the graph with the layers before it already quantized, so a layer corrects for the error
  its input carries; `sequential=False` takes every Hessian from one run of the float graph
  (faster: one run instead of one per input group). `act_order=True` quantizes the columns
  in order of decreasing Hessian diagonal, with the group scales fixed up front.

Padding: `token_mask` names the graph input holding the attention mask ("auto": an integer
input of rank 2 whose name says mask; None: count every token); the statistics AWQ and GPTQ
read (mean |x|, X^T X) then count only real tokens, not the padding a batch of sentences
carries, whose activations no output depends on.

Activations stay float: this is weight-only quantization (what `qc.cost` and
`qcompiler.analysis.model_size` count as packed 4-bit codes plus scales). Running
`insert_fake_quant` afterwards quantizes the activations and leaves these weights alone.

Requires: a float graph with constant linear weights (no fake_quant yet), `group_size`
dividing every selected layer's input features, calibration data for "awq" and "gptq".
Preserves: shapes, names, the graph outputs. Integer lowering turns each such linear,
once its input and output are quantized, into a `qlinear_grouped` with packed int4 codes
(docs/integer-spec.md, section 14), bit-exact with the float64 simulation. Known limits:
linear layers only (a conv selected by `layers=` is refused); integer lowering packs codes
of at most 4 bits (wider group-wise weights fall back).
"""

from __future__ import annotations

import sys
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import ClassVar

import numpy as np
from tqdm.auto import tqdm

from qcompiler.errors import OptionError
from qcompiler.ir import Graph, Node
from qcompiler.ir.edit import replace_constant, require_float_graph, select_layers
from qcompiler.ir.evaluate import input_batches
from qcompiler.ir.pipeline import PassResult
from qcompiler.numerics import grouped_quant as gq
from qcompiler.quantization.linear_inputs import (
    divide_input_channels,
    find_token_mask,
    linear_input_groups,
    record_linear_inputs,
)

METHODS = ("rtn", "awq", "gptq")


@dataclass(frozen=True, eq=False)  # eq=False: the data may hold tensors
class QuantizeWeightsGrouped:
    """The configured pass (see the module docstring)."""

    calibration_data: Iterable | None = None
    method: str = "gptq"
    group_size: int = 128
    bits: int = 4
    layers: Sequence[str] | None = None
    ignore: Sequence[str] = ()
    asymmetric: bool = True
    sequential: bool = True  # gptq: each layer's Hessian from the graph quantized before it
    act_order: bool = False  # gptq: columns by decreasing Hessian diagonal
    token_mask: str | None = "auto"  # the graph input that marks real tokens (module docstring)
    progress: bool | None = None  # a tqdm bar over the layer groups; None: on a terminal only

    name: ClassVar[str] = "quantize_weights_grouped"
    in_place: ClassVar[bool] = True

    def __post_init__(self):
        if self.method not in METHODS:
            raise OptionError(f"quantize_weights_grouped(method={self.method!r}): choose one of "
                              f"{', '.join(METHODS)}")
        if isinstance(self.bits, bool) or self.bits not in range(2, 9):
            raise OptionError(f"quantize_weights_grouped(bits={self.bits!r}): weights take 2..8 bits")
        if isinstance(self.group_size, bool) or not isinstance(self.group_size, int) or self.group_size < 1:
            raise OptionError(f"quantize_weights_grouped(group_size={self.group_size!r}): a "
                              "positive int such as 32, 64 or 128")
        if self.method != "rtn" and self.calibration_data is None:
            raise OptionError(f"quantize_weights_grouped(method={self.method!r}) needs "
                              "calibration_data (its layer inputs); method='rtn' needs none")

    def __call__(self, graph: Graph) -> PassResult:
        require_float_graph(graph, "quantize_weights_grouped")
        scope = "quantize_weights_grouped(layers=...)"
        chosen = select_layers(graph, ["linear"], self.layers, self.ignore, scope)
        for node in chosen:
            if node.inputs[1].shape[1] % self.group_size:
                divisors = [d for d in (32, 64, 128) if node.inputs[1].shape[1] % d == 0]
                hint = f" (e.g. {', '.join(map(str, divisors))})" if divisors else ""
                raise OptionError(f"quantize_weights_grouped(group_size={self.group_size}) does "
                                  f"not divide the {node.inputs[1].shape[1]} input features of "
                                  f"{node.describe()}; choose a divisor{hint}, or leave the "
                                  "layer out with ignore=[...]")
        selected = {id(node) for node in chosen}
        groups = [(value, [n for n in linears if id(n) in selected])
                  for value, linears in linear_input_groups(graph)]
        groups = [(value, linears) for value, linears in groups if linears]
        stats, batches, mask = {}, None, self._token_mask(graph)
        sequential = self.method == "gptq" and self.sequential
        if self.method != "rtn":
            batches = input_batches(self.calibration_data, graph)
            if not sequential:
                stats = record_linear_inputs(graph, batches, [value for value, _ in groups],
                                             hessian=True, token_mask=mask)
        notes, count = [], 0
        show = sys.stderr.isatty() if self.progress is None else self.progress
        for value, linears in tqdm(groups, desc=self.method, disable=not show):
            if sequential:  # the graph now holds the layers before this one quantized
                stats = record_linear_inputs(graph, batches, [value], hessian=True, token_mask=mask)
            if self.method == "awq":
                notes.append(self._awq(graph, value, linears, stats[value.name]))
            for linear in linears:
                weight = linear.inputs[1].data
                if self.method == "gptq":
                    codes, scales, zeros = gq.gptq(weight, stats[value.name].gram, self.bits,
                                                   self.group_size, asymmetric=self.asymmetric,
                                                   act_order=self.act_order)
                    replace_constant(graph, linear, 1,
                                     gq.dequantize_grouped(codes, scales, self.group_size, zeros),
                                     graph.unique_name(f"{linear.inputs[1].name}.gptq"))
                else:  # rtn, and awq on its rescaled weights
                    scales, zeros = gq.group_grid(weight, self.bits, self.group_size, self.asymmetric)
                self._insert_quantizer(graph, linear, scales, zeros)
                count += 1
        skipped = len(chosen) - count
        grid = "asymmetric" if self.asymmetric else "symmetric"
        notes.insert(0, f"{self.method}: {count} linear weight(s) to {grid} int{self.bits}, group size "
                        f"{self.group_size}" + (f"; {skipped} left float (weight shared or not "
                                                 "constant)" if skipped else "")
                     + ("" if self.method == "rtn" or mask is None
                        else f"; statistics over the tokens %{graph.inputs[mask].name} marks"))
        return PassResult(graph, count > 0, notes)

    def _token_mask(self, graph: Graph) -> int | None:
        if self.token_mask is None:
            return None
        if self.token_mask == "auto":
            return find_token_mask(graph)
        names = [value.name for value in graph.inputs]
        if self.token_mask not in names:
            raise OptionError(f"quantize_weights_grouped(token_mask={self.token_mask!r}): graph "
                              f"{graph.name} has no such input; its inputs are {', '.join(names)} "
                              "(or pass 'auto' or None)")
        return names.index(self.token_mask)

    def _awq(self, graph: Graph, value, linears: list[Node], stats) -> str:
        stacked = np.concatenate([linear.inputs[1].data for linear in linears])
        channel, _, alpha = gq.awq_search(stacked, stats.gram, stats.abs_mean, self.bits,
                                          self.group_size, asymmetric=self.asymmetric)
        how = divide_input_channels(graph, value, linears, channel, allow_mul=True)
        return f"awq %{value.name}: alpha {alpha:.2f}, {how}"

    def _insert_quantizer(self, graph: Graph, linear: Node, scales: np.ndarray,
                          zeros: np.ndarray | None) -> None:
        weight = linear.inputs[1]
        name = graph.unique_name(f"{weight.name}.q")
        inputs = [weight, graph.add_constant(f"{name}.scale", scales.astype(np.float32))]
        if zeros is not None:
            inputs.append(graph.add_constant(f"{name}.zero_point", zeros.astype(np.uint8)))
        node = graph.add_node("fake_quant_grouped", inputs,
                              {"bits": self.bits, "group_size": self.group_size}, name=name,
                              before=linear, source=linear.source)
        linear.replace_input(weight, node.output)


def quantize_weights_grouped(graph: Graph | None = None, /, **options):
    """`quantize_weights_grouped(method="gptq", group_size=128, calibration_data=...)` returns
    the configured pass; with a graph first, it runs it (-> PassResult)."""
    configured = QuantizeWeightsGrouped(**options)
    return configured if graph is None else configured(graph)


quantize_weights_grouped.in_place = True
