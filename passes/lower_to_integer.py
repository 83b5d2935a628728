"""Lower a calibrated fake-quant graph to integer ops (`docs/integer-spec.md`).

    %x.fq = fake_quant(%x, ...)                     %x.fq = quantize(%x) {scale=.., zero_point=..}
    %w.fq = fake_quant(%w, ...) {axis=0}            %conv = qconv2d(%x.fq, %conv.weight_q, %conv.bias_q,
    %conv = conv2d(%x.fq, %w.fq, %b)         ->                     %conv.multiplier, %conv.shift)
    %relu = relu(%conv)                                     {input_zero_point=.., output_min=z_out, ...}
    %relu.fq = fake_quant(%relu, ...)               %out = dequantize(%conv) {scale=.., zero_point=..}

The result is a new graph (the input is never modified; the pass does not work in
place): `quantize` at float graph inputs, integer ops inside, `dequantize` at float graph
outputs. The driver is `qcompiler.quantization.lowering`; each rule (its `RULES`; the rules
are in `qcompiler.quantization.lowering_rules` and `lowering_rules_layout`, written against
the public `qcompiler.quantization.lowering_state.LoweringState`) replaces one compute op
together with the relu/clamp chain and the fake_quant that follow it; the weight arithmetic
(multipliers, int32 biases, lookup tables, overflow bounds) is in
`qcompiler.numerics.integer_params`. Value-moving
ops (reshape, permute, slice, split, max pooling, zero padding, concat) run on the
integers and keep their input's quantization parameters. Integer values carry
`qparams`.

Ops without an integer form (softmax, layer_norm, conv_transpose2d, excluded
nodes, ...) fall back to float: `dequantize -> float op -> quantize`; with `ibert=True`,
softmax and layer_norm become I-BERT's integer approximations instead (`qsoftmax`,
`qlayer_norm`, spec section 15; Kim et al. 2021), which do not reproduce the simulation's
float op exactly (their cost is measured in benchmarks/transformer_ptq.py). With
`strict=True` (the default) a fallback is an `IntegerOnlyError` naming the node;
with `strict=False` it is reported in `PassResult.notes`.

Requires: every fake_quant calibrated (finite, positive scales), weights quantized
symmetric (zero point 0), activations per tensor, 8-bit or 16-bit signed
activations, and on `target="x86"` uint8 activations and weights in [-64, 63] into
conv/linear, on `target="aarch64"` int8 activations (spec section 8). Refuses a
layer whose worst-case int32 accumulator can reach 2**31 (spec section 7) and
reports the largest bounds. Preserves: the function of the fake-quant graph, whose
`fake_quant_bias` nodes add the int32 bias stored here and whose fake_quant `rounding`
is each integer op's rule: the float64 simulation agrees bit for bit but for the
fixed-point multiplier's 2**-31 (docs/integer-spec.md, section 12); the float32 one, fed
the same integers, within one step at a few elements in a million (float32
accumulation), differences that deep networks can spread
(`qcompiler.backends.simulation_agreement` measures both).
Known limits: nearest resize, conv_transpose2d and ops with float operands of
their own fall back; 16-bit lookup tables are not built (fall back).
References: Jacob et al. 2018 (integer-only inference, sec. 2); the TFLite
quantization spec for the fixed-point multiplier.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from qcompiler.errors import OptionError, QuantizationError
from qcompiler.ir import Graph
from qcompiler.ir.ops import OPS
from qcompiler.ir.pipeline import PassResult
from qcompiler.quantization.lowering import check_calibrated, lower
from qcompiler.quantization.lowering_state import TARGETS


@dataclass(frozen=True)
class LowerToInteger:
    """The configured lowering pass (see the module docstring)."""

    target: str = "generic"
    strict: bool = True
    ibert: bool = False  # I-BERT integer softmax / layer_norm instead of float fall backs


    name: ClassVar[str] = "lower_to_integer"
    in_place: ClassVar[bool] = False  # returns a new graph; its input is left alone

    def __post_init__(self):
        if self.target not in TARGETS:
            raise OptionError(f"lower_to_integer: unknown target {self.target!r}; valid targets: "
                              f"{', '.join(TARGETS)}")
        if not isinstance(self.strict, bool):
            raise OptionError(f"lower_to_integer: strict must be True or False, got {self.strict!r}")
        if not isinstance(self.ibert, bool):
            raise OptionError(f"lower_to_integer: ibert must be True or False, got {self.ibert!r}")

    def __call__(self, graph: Graph) -> PassResult:
        if not check_calibrated(graph):
            integer = [node for node in graph if OPS[node.op].category == "integer"]
            if integer:
                raise QuantizationError(f"graph {graph.name} is already integer ({integer[0].describe()}"
                                        "): lower_to_integer takes the fake-quant graph qc.quantize "
                                        "returns")
            raise QuantizationError(f"graph {graph.name} has no fake_quant nodes, so there is "
                                    "nothing to lower: quantize it first (qg = qc.quantize(model, "
                                    "calibration_data); qc.lower_to_integer(qg))")
        state = lower(graph, target=self.target, strict=self.strict, ibert=self.ibert)
        return PassResult(state.new, True, state.notes)


def lower_to_integer(graph: Graph | None = None, /, *, target: str = "generic", strict: bool = True,
                     ibert: bool = False):
    """`lower_to_integer(graph)` runs the pass (a PassResult); `lower_to_integer(target=...)`
    returns the configured pass for a Pipeline."""
    configured = LowerToInteger(target, strict, ibert)
    return configured if graph is None else configured(graph)


lower_to_integer.in_place = False  # as the configured pass it runs

