"""Insert `fake_quant` nodes where an integer-only runtime would quantize.

    %c = conv2d(%x.fq, %w, %b)            %w.fq = fake_quant(%w, %w.fq.scale, %w.fq.zero_point) {axis=0}
    %r = clamp(%c) {min=0, max=6}   ->    %c = conv2d(%x.fq, %w.fq, %b)
                                          %r = clamp(%c) {min=0, max=6}
                                          %r.fq = fake_quant(%r, %r.fq.scale, %r.fq.zero_point)

The interface of `fake_quant(x, scale, zero_point) {axis, bits, signed, narrow_range,
symmetric, rounding}`: scale is an f32[C] constant and zero_point an i32[C] constant
(C = 1 per tensor, else the size of `axis`); real = scale * (q - zero_point) with q in
the integer range of (bits, signed, narrow_range). `symmetric` says how calibration
chooses the scale (zero_point = 0). `rounding` is the integer path's rule at that point:
"half_up" after ops whose integer form requantizes an accumulator
(the op table's `requantizing` ops, `qcompiler.ir.ops`), "half_to_even" (the graph-boundary rule)
elsewhere; a float64 simulation applies it exactly (`qcompiler.ir.ops`). Until
calibrated, the scale is NaN and the output value's `qparams` is None; calibration
(`qcompiler.quantization.calibrate`) fills the constants and sets the output's `qparams` to the
same numbers, which is what integer lowering reads. Several fake_quant nodes may share
one scale constant: they then share their qparams (see concat below).

Placement (the quantization points of integer runtimes such as TFLite and
onnxruntime QDQ; Jacob et al. 2018, sec. 2-3; Krishnamoorthi 2018, sec. 3):
- float graph inputs;
- the weight of each conv1d / conv2d / conv_transpose2d / linear (per output
  channel when the scheme says so: axis 0, or axis 1 for conv_transpose2d with
  groups == 1; grouped transposed convs fall back to per tensor, with a note);
- the bias of each conv1d / conv2d / linear whose weight is quantized symmetrically along
  its output channels and whose input is quantized: `fake_quant_bias(%b, %x.fq.scale,
  %w.fq.scale)` rounds it to the int32 grid of step s_in * s_w[c] that the integer kernel
  adds (docs/integer-spec.md, section 1), reading the two scale constants when it runs, so
  the grid follows calibration, bias correction and training with nothing to keep in
  sync (`qcompiler.quantization.quantizers.quantize_layer_bias`). `layer_bias` and
  `set_layer_bias` (`qcompiler.ir.edit`) read and replace the float bias behind it;
- the output of every op that computes new values (conv, linear, matmul, add,
  mul, pooling by averaging, softmax, layer_norm, gelu, ...). A relu or clamp
  (ReLU6) that is the only user of such an output is fused into it, as integer
  kernels apply it while requantizing: the fake_quant goes after the activation,
  never between them;
- residual adds (and the other binary ops): both inputs are quantized (by their
  producers, or here if they are not yet, e.g. a constant operand) and the output too;
- ops that only move or select values (reshape, flatten, permute, transpose,
  slice, split, max pooling, zero padding, nearest resize) keep their input's
  quantization exactly and get no fake_quant of their own (on a float input they
  stay float, and the next integer op quantizes what it reads);
- concat (and where, for its two branches: the op table's `shares_quantization` ops): all
  inputs share one scale and zero point, which are also the output's:
  integer concat then copies bytes without requantizing, and fake-quantizing
  the inputs with the output's parameters is exactly what the integer op computes.
  The fake_quant nodes that produce the inputs (traced back through the
  value-moving ops) are re-pointed at one shared scale/zero-point pair; calibration
  observes all of their inputs together (the range of the concat output);
- comparisons: a constant operand stays float (the integer form is a table that holds the
  comparison with it exactly); casts of integer inputs to float are quantized like any
  output that computes new values;
- graph outputs that are not quantized yet.

Excluded nodes (`QuantConfig.exclude_nodes` / `exclude_op_types`) run in float: no
weight or output fake_quant; their inputs are whatever reaches them.

Requires: batch norms folded first (`fold_batchnorm`; a remaining batch_norm is
quantized as an op of its own), equalization done (weights must be final, since
calibration reads them), and no fake_quant in the graph yet (the pass refuses
to quantize twice). Preserves: shapes, dtypes, node names; changes the function
(that is the point). Known limits: only float32 values are quantized; constant
operands of binary ops use the activation scheme per tensor.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar

import numpy as np

from qcompiler.errors import QuantizationError
from qcompiler.ir import Graph, Node, Value
from qcompiler.ir.edit import moves_values_only, remove_if_unused, single_user_chain
from qcompiler.ir.ops import LOOKUP_OPS, OPS, WEIGHTED_OPS
from qcompiler.ir.pipeline import PassResult
from qcompiler.quantization.config import QScheme, QuantConfig, as_quant_config
from qcompiler.quantization.quantizers import INTEGER_BIAS_OPS, quantize_layer_bias, source_fake_quants


@dataclass(frozen=True)
class InsertFakeQuant:
    """The configured fake-quant insertion pass (see the module docstring)."""

    config: QuantConfig = field(default_factory=QuantConfig)

    name: ClassVar[str] = "insert_fake_quant"
    in_place: ClassVar[bool] = True  # rewrites the graph it is given

    def __post_init__(self):
        object.__setattr__(self, "config", as_quant_config(self.config, "insert_fake_quant(config=)"))

    def __call__(self, graph: Graph) -> PassResult:
        for node in graph:
            if node.op == "fake_quant":
                raise QuantizationError(
                    f"graph {graph.name} already has fake_quant nodes ({node.describe()}); "
                    "insert_fake_quant quantizes a float graph once")
        self.config.check_names(graph)
        return _Placement(graph, self.config).run()


def insert_fake_quant(graph: Graph | None = None, /, *, config: QuantConfig | None = None):
    """`insert_fake_quant(graph)` runs with the int8 preset; `insert_fake_quant(config=...)`
    returns the configured pass."""
    configured = InsertFakeQuant(as_quant_config(config))
    return configured if graph is None else configured(graph)


insert_fake_quant.in_place = True  # as the configured pass it runs


def _is_float(value: Value | None) -> bool:
    return value is not None and value.dtype == "f32"


def _feeds_layer(value: Value) -> bool:
    """Whether a conv/linear/matmul reads `value` as data, or a lookup-table op (GELU, tanh:
    integer lowering builds tables for 8-bit inputs), through value-moving ops and the ops
    that share their input's quantization (which carry its format to their readers)."""
    for user in value.users:
        spec = OPS[user.op]
        if user.op in WEIGHTED_OPS and user.inputs[0] is value or user.op == "matmul" \
                or user.op in LOOKUP_OPS:
            return True
        if (moves_values_only(user) or spec.shares_quantization) and len(user.outputs) == 1 \
                and _feeds_layer(user.output):
            return True
    return False


def _rounding(producer: Node | None) -> str:
    """How the fake_quant after `producer` rounds in a float64 simulation: half up where the
    integer op requantizes an accumulator, else the graph-boundary rule (see the module
    docstring)."""
    return "half_up" if producer is not None and OPS[producer.op].requantizing else "half_to_even"


class _Placement:
    def __init__(self, graph: Graph, config: QuantConfig):
        self.graph, self.config = graph, config
        self.order = graph.nodes  # the original nodes; inserted fake_quants are not visited
        self.following = {id(n): nxt for n, nxt in zip(self.order, [*self.order[1:], None], strict=True)}
        self.quantized: set[int] = set()  # ids of values that hold quantized numbers
        self.requantized: dict[int, Value] = {}  # value id -> its fake-quantized version
        self.fused: set[int] = set()  # activation nodes fused into the group before them
        self.weights: dict[int, Value] = {}
        self.counts = {"weight": 0, "activation": 0, "bias": 0}
        self.notes: list[str] = []

    def run(self) -> PassResult:
        first = self.order[0] if self.order else None
        for value in self.graph.inputs:
            if _is_float(value) and value.name not in self.config.exclude_nodes:
                fq = self._fake_quant(value, self.config.activation_scheme([value]), None, first)
                self.graph.replace_all_uses(value, fq.output)
        for node in self.order:
            if id(node) in self.fused or self.config.is_excluded(node) or node.op == "fake_quant_grouped":
                continue  # (a group-wise weight is quantized already: its layer reads the codes)
            if node.op in WEIGHTED_OPS:
                self._quantize_weight(node)
            spec = OPS[node.op]
            indices = spec.data_inputs if spec.data_inputs is not None else range(len(node.inputs))
            shares = spec.shares_quantization
            # Value-moving ops run on whatever they get; a concat (or where) of quantized and
            # float values must quantize the float ones (to the shared qparams, below).
            if moves_values_only(node) or (shares and not any(
                    id(node.inputs[i]) in self.quantized for i in indices if _is_float(node.inputs[i]))):
                indices = ()
            elif spec.category == "compare":
                # A constant operand of a comparison is exact in its lookup table.
                indices = [i for i in indices if not node.inputs[i].is_constant]
            for index in indices:
                value = node.inputs[index] if index < len(node.inputs) else None
                if _is_float(value) and id(value) not in self.quantized:
                    node.replace_input(value, self._requantize(value, node))
            if shares:
                self._share_concat_qparams(node, indices)
            if moves_values_only(node) or shares:
                carried = [node.inputs[i] for i in indices] if shares else node.inputs
                if carried and all(id(v) in self.quantized for v in carried if _is_float(v)):
                    self.quantized.update(id(v) for v in node.outputs)
            elif len(node.outputs) == 1 and _is_float(node.output):
                self._quantize_output(node)
        self._quantize_graph_outputs()
        # Last, once every quantization point and shared (concat) scale is in place.
        for node in self.order:
            if node.op in INTEGER_BIAS_OPS and not self.config.is_excluded(node) \
                    and quantize_layer_bias(self.graph, node) is not None:
                self.counts["bias"] += 1
        total = self.counts["weight"] + self.counts["activation"]
        self.notes.insert(0, f"inserted {total} fake_quant node(s): {self.counts['weight']} on "
                             f"weights, {self.counts['activation']} on activations; "
                             f"{self.counts['bias']} fake_quant_bias node(s)")
        return PassResult(self.graph, total + self.counts["bias"] > 0, self.notes)

    def _fake_quant(self, value: Value, scheme: QScheme, axis: int | None, before: Node | None,
                    name: str | None = None, role: str = "activation",
                    rounding: str = "half_to_even") -> Node:
        """A fake_quant of `value` with uncalibrated (NaN) scale, inserted before `before`."""
        name = self.graph.unique_name(name or f"{value.name}.fq")
        channels = 1 if axis is None else value.shape[axis]
        scale = self.graph.add_constant(f"{name}.scale", np.full(channels, np.nan, np.float32))
        zero_point = self.graph.add_constant(f"{name}.zero_point", np.zeros(channels, np.int32))
        attrs = {"axis": axis, "bits": scheme.bits, "signed": scheme.signed,
                 "narrow_range": scheme.narrow_range, "symmetric": scheme.symmetric,
                 "rounding": rounding}
        source = value.producer.source if value.producer is not None else ""
        node = self.graph.add_node("fake_quant", [value, scale, zero_point], attrs, name=name,
                                   before=before, source=source)
        self.quantized.add(id(node.output))
        self.counts[role] += 1
        return node

    def _quantize_weight(self, node: Node) -> None:
        weight = node.inputs[1]
        if weight.producer is not None and weight.producer.op == "fake_quant_grouped":
            return
        if not _is_float(weight) or not weight.is_constant:
            self.notes.append(f"the weight of {node.describe()} is not a float constant; left float")
            return
        if id(weight) in self.weights:  # a shared weight is quantized once
            node.replace_input(weight, self.weights[id(weight)])
            return
        scheme = self.config.weight_scheme(node)
        axis = None
        if scheme.per_channel:
            axis = OPS[node.op].weight_out_axis
            if axis != 0 and node.attrs.get("groups", 1) != 1:
                # A grouped transposed weight [C_in, C_out / groups, ...] repeats its axis 1.
                axis = None
                self.notes.append(f"{node.describe()}: grouped {node.op} weights have "
                                  "no single output-channel axis; quantized per tensor")
        fq = self._fake_quant(weight, scheme, axis, node, role="weight")
        self.weights[id(weight)] = fq.output
        node.replace_input(weight, fq.output)

    def _requantize(self, value: Value, consumer: Node) -> Value:
        """The fake-quantized version of a float value that reaches `consumer` unquantized
        (a constant operand, or the output of an excluded node); made once, reused."""
        if id(value) not in self.requantized:
            owners = [value.producer] if value.producer is not None else [value]
            fq = self._fake_quant(value, self.config.activation_scheme(owners), None, consumer)
            self.requantized[id(value)] = fq.output
        return self.requantized[id(value)]

    def _quantize_output(self, node: Node) -> None:
        """Quantize the output of `node`, after the relu/clamp chain fused into it."""
        chain, value = single_user_chain(self.graph, node.output, lambda user: OPS[user.op].fusable
                                         and not self.config.is_excluded(user))
        owners = [node, *chain]
        self.fused.update(id(user) for user in chain)
        fq = self._fake_quant(value, self._output_scheme(owners, value), None,
                              self.following[id(owners[-1])], rounding=_rounding(node))
        self.graph.replace_all_uses(value, fq.output)

    def _output_scheme(self, owners: list, value: Value) -> QScheme:
        """The activation scheme of `value`, or the config's non-MAC scheme when no
        conv/linear/matmul multiplies it (see QuantConfig.non_mac_activation)."""
        # An embedding's output precision is its table's storage precision (integer lowering
        # gathers from the quantized table): keep it narrow.
        if self.config.non_mac_activation is None or owners[0].op == "embedding" or _feeds_layer(value):
            return self.config.activation_scheme(owners)
        return self.config.non_mac_scheme(owners)

    def _share_concat_qparams(self, node: Node, indices) -> None:
        """The data inputs of a concat or where, and so its output, share one scale and zero
        point (the first input's)."""
        sources = list({id(fq): fq for v in (node.inputs[i] for i in indices) if _is_float(v)
                        for fq in source_fake_quants(v)}.values())
        if len(sources) < 2:
            return
        scheme = self.config.activation_scheme([node])
        attrs = {"axis": None, "bits": scheme.bits, "signed": scheme.signed,
                 "narrow_range": scheme.narrow_range, "symmetric": scheme.symmetric}
        shared_scale, shared_zero_point = sources[0].inputs[1], sources[0].inputs[2]
        for fq in sources:
            if fq.attrs.get("axis") is not None:
                raise QuantizationError(f"{node.describe()} reads a per-channel quantized value "
                                        f"({fq.describe()}); {node.op} needs shared per-tensor qparams")
            fq.attrs.update(attrs)
            for old, new in ((fq.inputs[1], shared_scale), (fq.inputs[2], shared_zero_point)):
                if old is not new:
                    fq.replace_input(old, new)
                    remove_if_unused(self.graph, old)
        names = ", ".join(f"%{fq.name}" for fq in sources)
        self.notes.append(f"{node.op} %{node.name}: {names} share one scale and zero point")

    def _quantize_graph_outputs(self) -> None:
        for value in list(self.graph.outputs):
            if not _is_float(value) or id(value) in self.quantized:
                continue
            producer = value.producer
            excluded = (self.config.is_excluded(producer) if producer is not None
                        else value.name in self.config.exclude_nodes or value.is_constant)
            if excluded:
                continue
            owners = [producer] if producer is not None else [value]
            fq = self._fake_quant(value, self._output_scheme(owners, value), None, None,
                                  rounding=_rounding(producer))
            self.graph.outputs = [fq.output if v is value else v for v in self.graph.outputs]
