"""Static cost of a graph: MACs, parameters, memory and a first-order energy estimate.

`cost(graph)` walks the graph once, in topological order, and returns a
`CostReport` with totals and one `NodeCost` row per node. Nothing is run; every
number follows from shapes, dtypes and attributes. A symbolic batch dimension (`N`)
counts as 1, so the report is per sample (`cost(graph, batch=8)` counts 8); a graph
captured with a static batch is counted at that batch. The rules, in brief (the full
write-up with worked examples is `docs/cost-model.md`):

- **MACs** (multiply-accumulates) of the dot-product ops: conv1d/conv2d
  `out.numel * (C_in/groups) * prod(kernel)` (stride and dilation act through the
  output shape, padded zeros count), conv_transpose2d `in.numel * (C_out/groups) *
  prod(kernel)`, linear `out.numel * in_features`, matmul `out.numel * K` (batched
  or not). Bias adds are elementwise ops, not MACs.
- **ops**: the other arithmetic, counted per element from `_PER_ELEMENT` (adds,
  multiplies); a compare counts as an add, a divide, exp, erf or rsqrt as a
  multiply. These are nominal counts for a straightforward kernel. An integer op
  `q<op>` is priced like `<op>` plus one requantization per output element. The
  binary-network layers have no multiplies: an XNOR layer costs three adds (XNOR,
  popcount, accumulate) per 64 packed products, a shift layer a shift and an add per
  nonzero weight.
- **params** follow torch's `model.parameters()`: every constant a node reads,
  counted once however many nodes share it, except batch-norm running statistics
  (buffers in torch), quantization numbers (scales, zero points, requantization
  multipliers and shifts, lookup tables) and one-element constants (literals such as
  attention's 1/sqrt(d)). **weight_bytes** counts every constant a node reads, statistics and
  literals included, at its stored dtype (an int8 weight is 1 byte an element):
  it is what a deployed model stores.
- **Memory**: the executor is assumed to materialise every node output (views
  such as reshape included). A value is live from its producer until its last
  user; graph inputs are live from the start; graph outputs until the end;
  constants are not activations. `peak_activation_bytes` is the largest live
  total seen right after a node allocates its outputs.
- **Energy** uses Horowitz, "Computing's energy problem", ISSCC 2014 (45 nm, the
  table in `HOROWITZ_45NM`). A MAC is one multiply plus one add in the operand
  dtype class (int8, fp16, int32 or fp32; the wider of the activation and the
  weight); requantization is priced as int32. Memory-access model: each constant
  is read once per inference from DRAM (640 pJ per 32-bit word, 160 pJ a byte
  since narrow values pack into words) and then stays on chip; every node reads
  each activation input once and writes its outputs once to SRAM (5 pJ per 32-bit
  word, writes priced as reads). This is a best-case traffic model (no re-reads
  for tiling) and an 8 KB SRAM price, so the energy is a lower bound for
  comparing graphs, not a measurement.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from types import MappingProxyType

import numpy as np

from qcompiler.analysis.units import format_bytes, format_count, format_energy
from qcompiler.ir import DTYPES, Graph, Node, Value


@dataclass(frozen=True)
class EnergyModel:
    """Energy of one arithmetic operation per dtype class, and of one 32-bit memory word, in pJ."""

    name: str
    add_pj: MappingProxyType
    mult_pj: MappingProxyType
    sram_word_pj: float
    dram_word_pj: float


HOROWITZ_45NM = EnergyModel(
    name="Horowitz ISSCC 2014, 45 nm",
    add_pj=MappingProxyType({"int8": 0.03, "int32": 0.1, "fp16": 0.4, "fp32": 0.9}),
    mult_pj=MappingProxyType({"int8": 0.2, "int32": 3.1, "fp16": 1.1, "fp32": 3.7}),
    sram_word_pj=5.0,  # 32-bit read from an 8 KB SRAM
    dram_word_pj=640.0,  # 32-bit DRAM read
)

# Which row of the energy table prices arithmetic on each IR dtype. f64 and i64 have no
# entry in the paper; they are priced as fp32 and int32 (an underestimate).
_ARITHMETIC_CLASS = {"f64": "fp32", "f32": "fp32", "f16": "fp16", "i64": "int32", "i32": "int32",
                     "i16": "int32", "i8": "int8", "u8": "int8", "bool": "int8"}
_CLASS_WIDTH = {"int8": 0, "fp16": 1, "int32": 2, "fp32": 3}

# Nominal (adds, multiplies) per output element of elementwise and normalisation ops.
_PER_ELEMENT = MappingProxyType({
    "add": (1, 0), "sub": (1, 0), "mul": (0, 1), "div": (0, 1),
    "relu": (1, 0),  # max(x, 0)
    "hardsigmoid": (3, 1),  # x/6 + 1/2, then two compares
    "hardswish": (3, 2),  # x * hardsigmoid(x)
    "sigmoid": (1, 2),  # 1 / (1 + exp(-x))
    "tanh": (2, 3),  # (e^2x - 1) / (e^2x + 1)
    "silu": (1, 3),  # x * sigmoid(x)
    "batch_norm": (1, 1),  # x * scale + shift, scale and shift precomputed at inference
    "softmax": (3, 2),  # running max, subtract, exp, sum, divide
    "quantize": (4, 1),  # divide, round, add zero point, clamp (2)
    "dequantize": (1, 1),  # subtract zero point, multiply
    "requantize": (4, 1),  # fixed-point multiply, rounding shift, add zero point, clamp (2)
    "fake_quant": (4, 2),  # quantize, then dequantize
    "fake_quant_bias": (4, 3),  # step = s_in * s_w, then fake_quant on that step
    "fake_quant_grouped": (4, 2),  # quantize, then dequantize, with the element's group scale
    "qlookup": (1, 0),  # index = q - input_min, then a table read
    "sign": (1, 0),  # a compare
    # Nominal counts of the other elementwise functions (float; integer graphs use qlookup).
    "abs": (1, 0), "leaky_relu": (1, 1), "prelu": (1, 1), "pow": (0, 1), "reciprocal": (0, 1),
    "sqrt": (1, 2), "rsqrt": (1, 2), "exp": (2, 3), "log": (2, 3), "erf": (3, 4), "elu": (2, 3),
    "softplus": (2, 3), "mish": (3, 5),  # x * tanh(softplus(x))
    **{op: (1, 0) for op in ("eq", "ne", "gt", "ge", "lt", "le", "logical_and", "logical_or",
                             "logical_not", "where")},
})
_POOLS = frozenset({"max_pool2d", "max_pool1d", "avg_pool2d", "avg_pool1d"})
# Every input element summed (or compared) once, one divide per output; var and vector_norm
# also square every element (counted as the divide's multiply: an underestimate).
_REDUCTIONS = frozenset({"adaptive_avg_pool2d", "adaptive_avg_pool1d", "mean", "sum", "amax", "amin",
                         "argmax", "var", "vector_norm"})
_SPECIAL = frozenset({"clamp", "gelu", "layer_norm", "resize"})
# Constant inputs that are not parameters in torch's sense (buffers or derived numbers):
# batch-norm running statistics, quantization scales and zero points, requantization
# multipliers and shifts, lookup tables computed from an activation function.
_NOT_PARAMETERS = MappingProxyType({
    "batch_norm": (3, 4), "fake_quant": (1, 2), "fake_quant_bias": (1, 2), "fake_quant_grouped": (1,),
    "qconv2d": (3, 4),
    "qconv1d": (3, 4), "qlinear": (3, 4), "qlookup": (1,),
    **{op: (3, 4) for op in ("qxnor_conv2d", "qxnor_linear", "qshift_conv2d", "qshift_linear")},
    "qlinear_grouped": (2, 3, 5),
})
# Ops that only move or reinterpret data: no arithmetic (their memory traffic still counts).
_DATA_MOVEMENT = frozenset({"concat", "split", "slice", "reshape", "flatten", "permute",
                            "transpose", "pad", "embedding", "expand", "cast"})


@dataclass(frozen=True)
class NodeCost:
    """One node's share of the totals (a shared constant is charged to its first reader)."""

    name: str
    op: str
    macs: int
    ops: int
    params: int
    weight_bytes: int
    output_bytes: int
    live_bytes: int  # activation memory live right after this node allocates its outputs
    energy_pj: float


@dataclass(frozen=True)
class CostReport:
    macs: int
    ops: int
    params: int
    weight_bytes: int
    activation_bytes: int  # every graph input and node output, once
    peak_activation_bytes: int
    energy_pj: float
    compute_energy_pj: float
    weight_energy_pj: float
    activation_energy_pj: float
    per_node: tuple[NodeCost, ...] = field(repr=False)
    # Ops that have no cost rule here; their arithmetic is counted as zero.
    uncounted_ops: tuple[str, ...] = ()
    energy_model: EnergyModel = field(default=HOROWITZ_45NM, repr=False)

    def by_op(self) -> dict[str, dict[str, float]]:
        """Totals per op name: node count, MACs, ops, params, energy; largest MACs first."""
        rows: dict[str, Counter] = {}
        for row in self.per_node:
            totals = rows.setdefault(row.op, Counter())
            totals.update(nodes=1, macs=row.macs, ops=row.ops, params=row.params,
                          energy_pj=row.energy_pj)
        return {op: dict(c) for op, c in sorted(rows.items(), key=lambda kv: -kv[1]["macs"])}

    def summary(self) -> str:
        energy = (f"{format_energy(self.energy_pj)} (compute {format_energy(self.compute_energy_pj)}, "
                  f"weights {format_energy(self.weight_energy_pj)}, "
                  f"activations {format_energy(self.activation_energy_pj)})")
        lines = [
            f"nodes                 {len(self.per_node)}",
            f"MACs                  {format_count(self.macs)}",
            f"other ops             {format_count(self.ops)}",
            f"params                {format_count(self.params)}",
            f"weight bytes          {format_bytes(self.weight_bytes)}",
            f"activation bytes      {format_bytes(self.activation_bytes)}",
            f"peak activation bytes {format_bytes(self.peak_activation_bytes)}",
            f"energy (estimate)     {energy}",
        ]
        if self.uncounted_ops:
            lines.append(f"no cost rule (counted as 0 arithmetic): {', '.join(self.uncounted_ops)}")
        return "\n".join(lines)

    def table(self, top: int | None = None) -> str:
        """Per-node table (the `top` nodes by MACs if given, else all in graph order) and totals."""
        rows = list(self.per_node)
        if top is not None:
            rows = sorted(rows, key=lambda r: (-r.macs, -r.energy_pj))[:top]
        header = ("node", "op", "MACs", "ops", "params", "weights", "output", "live", "energy")
        body = [(r.name, r.op, format_count(r.macs), format_count(r.ops), format_count(r.params),
                 format_bytes(r.weight_bytes), format_bytes(r.output_bytes),
                 format_bytes(r.live_bytes), format_energy(r.energy_pj)) for r in rows]
        body.append(("total", "", format_count(self.macs), format_count(self.ops),
                     format_count(self.params), format_bytes(self.weight_bytes),
                     format_bytes(self.activation_bytes),
                     "peak " + format_bytes(self.peak_activation_bytes),
                     format_energy(self.energy_pj)))
        widths = [max(len(str(row[i])) for row in [header, *body]) for i in range(len(header))]

        def line(row):
            cells = [str(c).ljust(w) if i < 2 else str(c).rjust(w)
                     for i, (c, w) in enumerate(zip(row, widths, strict=True))]
            return "  ".join(cells).rstrip()

        rule = "  ".join("-" * w for w in widths)
        return "\n".join([line(header), rule, *map(line, body[:-1]), rule, line(body[-1])])

    def __str__(self) -> str:
        return self.summary()


def cost(graph: Graph, energy_model: EnergyModel = HOROWITZ_45NM, *, batch: int = 1) -> CostReport:
    """The static cost of `graph` (see the module docstring for every rule). A graph with a
    symbolic batch is counted at batch size `batch` (default 1: the cost of one sample); a
    static graph at its own shapes."""
    if batch != 1 and not graph.is_static:
        graph = graph.at_batch(batch)
    nodes = graph.nodes
    parameter_ids = _parameter_constant_ids(nodes)
    liveness = _live_bytes_after_each_node(graph, nodes)
    charged: set[int] = set()
    rows: list[NodeCost] = []
    uncounted: set[str] = set()
    compute_total = weight_total = activation_total = 0.0
    for node, live in zip(nodes, liveness, strict=True):
        counts = arithmetic(node)
        if counts is None:
            uncounted.add(node.op)
            counts = (0, 0, 0)
        macs, adds, mults = counts
        # An integer op's requantization works on int32 accumulators: price it as int32.
        requantize_adds, requantize_mults = (n * _requantized_elements(node)
                                             for n in _PER_ELEMENT["requantize"])
        kind = _arithmetic_class(node)
        compute = (macs * (energy_model.add_pj[kind] + energy_model.mult_pj[kind])
                   + (adds - requantize_adds) * energy_model.add_pj[kind]
                   + (mults - requantize_mults) * energy_model.mult_pj[kind]
                   + requantize_adds * energy_model.add_pj["int32"]
                   + requantize_mults * energy_model.mult_pj["int32"])
        params = weight_bytes = 0
        activation_read = 0
        seen_inputs: set[int] = set()
        for value in node.inputs:
            if value is None or id(value) in seen_inputs:
                continue
            seen_inputs.add(id(value))
            if not value.is_constant:
                activation_read += _nbytes(value)
            elif id(value) not in charged:
                charged.add(id(value))
                weight_bytes += _nbytes(value)
                params += _numel(value) if id(value) in parameter_ids else 0
        output_bytes = sum(_nbytes(v) for v in node.outputs)
        weight_energy = weight_bytes / 4 * energy_model.dram_word_pj
        activation_energy = (activation_read + output_bytes) / 4 * energy_model.sram_word_pj
        compute_total += compute
        weight_total += weight_energy
        activation_total += activation_energy
        rows.append(NodeCost(node.name, node.op, macs, adds + mults, params, weight_bytes,
                             output_bytes, live, compute + weight_energy + activation_energy))
    activation_values = list(graph.inputs) + [v for node in nodes for v in node.outputs]
    return CostReport(
        macs=sum(r.macs for r in rows), ops=sum(r.ops for r in rows),
        params=sum(r.params for r in rows), weight_bytes=sum(r.weight_bytes for r in rows),
        activation_bytes=sum(_nbytes(v) for v in activation_values),
        peak_activation_bytes=max([sum(_nbytes(v) for v in graph.inputs), *liveness]),
        energy_pj=compute_total + weight_total + activation_total,
        compute_energy_pj=compute_total, weight_energy_pj=weight_total,
        activation_energy_pj=activation_total, per_node=tuple(rows),
        uncounted_ops=tuple(sorted(uncounted)), energy_model=energy_model)


def arithmetic(node: Node) -> tuple[int, int, int] | None:
    """(MACs, adds, multiplies) of one node, or None if no rule covers its op.

    An integer op `q<op>` (qconv2d, qlinear, qadd, qavg_pool2d...) is priced like `<op>`,
    plus one requantization per output element when it has an output zero point. The
    input zero-point corrections inside the dot products are not counted (kernels fold
    them into the bias ahead of time).
    """
    counts = _arithmetic_of(node, _base_op(node.op))
    if counts is None:
        return None
    requantized = _requantized_elements(node)
    adds, mults = _PER_ELEMENT["requantize"]
    return counts[0], counts[1] + adds * requantized, counts[2] + mults * requantized


def node_macs(node: Node) -> int:
    """The MACs of one node (0 for ops that do none): the one MAC count every part of
    qcompiler uses (the budget search and low-rank decomposition included)."""
    counts = arithmetic(node)
    return 0 if counts is None else counts[0]


def _requantized_elements(node: Node) -> int:
    """Output elements an integer `q<op>` requantizes (its int32 accumulators to 8 bits)."""
    if not node.op.startswith("q") or "output_zero_point" not in node.attrs:
        return 0
    return sum(_numel(v) for v in node.outputs)


def _arithmetic_of(node: Node, op: str) -> tuple[int, int, int] | None:
    inputs = node.inputs
    out = sum(_numel(v) for v in node.outputs)
    if op in _RULES:
        return _RULES[op](node)
    if op in _PER_ELEMENT:
        adds, mults = _PER_ELEMENT[op]
        return 0, adds * out, mults * out
    if op in _DATA_MOVEMENT:
        return 0, 0, 0
    if op == "clamp":
        bounds = sum(node.attrs.get(k) is not None for k in ("min", "max"))
        return 0, bounds * out, 0
    if op == "gelu":  # erf form: x/sqrt2, erf, +1, *x, *0.5; tanh form adds the cubic
        return (0, 1 * out, 4 * out) if node.attrs.get("approximate", "none") == "none" \
            else (0, 4 * out, 8 * out)
    if op == "layer_norm":  # mean, subtract, square, variance sum, scale; then the affine
        affine_mults = int(len(inputs) > 1 and inputs[1] is not None)
        affine_adds = int(len(inputs) > 2 and inputs[2] is not None)
        return 0, (3 + affine_adds) * out, (2 + affine_mults) * out
    if op in _POOLS:
        window = int(np.prod(node.attrs["kernel_size"]))
        return 0, window * out, out if op.startswith("avg") else 0
    if op in _REDUCTIONS:
        return 0, _numel(inputs[0]), out  # every input summed once, one divide per output
    if op == "resize":  # bilinear blend of 4 neighbours; nearest only copies
        return (0, 0, 0) if node.attrs.get("mode", "nearest") == "nearest" else (0, 3 * out, 4 * out)
    return None


def has_cost_rule(op: str) -> bool:
    """Whether `arithmetic` knows the op (an op without a rule is reported as uncounted)."""
    return _base_op(op) in _KNOWN_OPS


def _base_op(op: str) -> str:
    """`qconv2d` -> `conv2d`: an integer op is priced like its float counterpart."""
    return op[1:] if op not in _KNOWN_OPS and op.startswith("q") and op[1:] in _KNOWN_OPS else op


def _bias_adds(node: Node) -> int:
    has_bias = len(node.inputs) > 2 and node.inputs[2] is not None
    return _numel(node.outputs[0]) if has_bias else 0


def _conv_macs(node: Node):
    # weight [C_out, C_in/groups, *kernel]: each output element is one dot product of that length.
    weight = node.inputs[1]
    return _numel(node.outputs[0]) * int(np.prod(weight.shape[1:])), _bias_adds(node), 0


def _conv_transpose_macs(node: Node):
    # weight [C_in, C_out/groups, *kernel]: each input element scatters into that many outputs.
    weight = node.inputs[1]
    return _numel(node.inputs[0]) * int(np.prod(weight.shape[1:])), _bias_adds(node), 0


def _linear_macs(node: Node):
    return _numel(node.outputs[0]) * node.inputs[1].shape[-1], _bias_adds(node), 0


def _grouped_linear_macs(node: Node):
    """qlinear_grouped: the dot products, then per output element one multiply-add per group
    (its accumulator times the group multiplier), the bias and one requantization."""
    out, groups = _numel(node.outputs[0]), node.inputs[2].shape[-1]
    adds, mults = _PER_ELEMENT["requantize"]
    return out * node.inputs[0].shape[-1], out * (groups + 1 + adds), out * (groups + mults)


def _matmul_macs(node: Node):
    # Every output element is a dot product over the last axis of the left operand.
    return _numel(node.outputs[0]) * node.inputs[0].shape[-1], 0, 0


def _xnor_ops(node: Node):
    # No multiplies: per output element, per 64 packed products one XNOR, one popcount and
    # one add (three adds in the energy table, which has no logic-op row: an upper bound).
    products = int(np.prod(node.attrs["weight_shape"][1:]))
    return 0, 3 * -(-products // 64) * _numel(node.outputs[0]) + _bias_adds(node), 0


def _shift_ops(node: Node):
    # No multiplies: per nonzero weight a shift and an add (both priced as adds); zero
    # weights cost nothing.
    codes = node.inputs[1]
    nonzero_per_output = np.count_nonzero(codes.data) / codes.shape[0]
    return 0, int(round(2 * nonzero_per_output * _numel(node.outputs[0]))) + _bias_adds(node), 0


_RULES = MappingProxyType({
    "conv1d": _conv_macs, "conv2d": _conv_macs, "conv_transpose2d": _conv_transpose_macs,
    "linear": _linear_macs, "matmul": _matmul_macs, "qlinear_grouped": _grouped_linear_macs,
    # Binary networks (docs/integer-spec.md, section 13).
    "qxnor_conv2d": _xnor_ops, "qxnor_linear": _xnor_ops,
    "qshift_conv2d": _shift_ops, "qshift_linear": _shift_ops,
})
_KNOWN_OPS = frozenset(_RULES.keys() | _PER_ELEMENT.keys() | _DATA_MOVEMENT | _POOLS | _REDUCTIONS
                       | _SPECIAL)


def _arithmetic_class(node: Node) -> str:
    """The energy-table row for a node's arithmetic: its activation's dtype class, or for a
    dot-product op the wider of the activation's and the weight's."""
    operands = [v for v in node.inputs[:2 if _base_op(node.op) in _RULES else 1] if v is not None]
    if not operands:
        operands = node.outputs
    classes = [_ARITHMETIC_CLASS.get(v.dtype, "fp32") for v in operands]
    return max(classes, key=_CLASS_WIDTH.__getitem__)


def _parameter_constant_ids(nodes: list[Node]) -> set[int]:
    """Constants that count as parameters: all that nodes read, except the `_NOT_PARAMETERS`
    inputs (batch-norm running statistics, quantization numbers) and one-element literals."""
    excluded: dict[int, bool] = {}
    for node in nodes:
        for index, value in enumerate(node.inputs):
            if value is None or not value.is_constant:
                continue
            not_parameter = index in _NOT_PARAMETERS.get(node.op, ()) or value.numel <= 1
            excluded[id(value)] = excluded.get(id(value), True) and not_parameter
    return {key for key, is_excluded in excluded.items() if not is_excluded}


def _live_bytes_after_each_node(graph: Graph, nodes: list[Node]) -> list[int]:
    """Bytes of live activations right after each node allocates its outputs."""
    never_freed = len(nodes)
    last_use: dict[int, int] = {id(v): -1 for v in graph.inputs}
    for index, node in enumerate(nodes):
        for value in node.outputs:
            last_use[id(value)] = index  # an unused output dies right after its producer
        for value in node.inputs:
            if value is not None and not value.is_constant:
                last_use[id(value)] = index
    for value in graph.outputs:
        last_use[id(value)] = never_freed
    freed_after: dict[int, int] = Counter()
    for value in list(graph.inputs) + [v for n in nodes for v in n.outputs]:
        if not value.is_constant:
            freed_after[last_use[id(value)]] += _nbytes(value)
    live = sum(_nbytes(v) for v in graph.inputs) - freed_after[-1]
    result = []
    for index, node in enumerate(nodes):
        live += sum(_nbytes(v) for v in node.outputs)
        result.append(live)
        live -= freed_after[index]
    return result


def _numel(value: Value) -> int:
    """Elements of a value; a symbolic batch counts as one sample."""
    return value.numel_at(1)


def _nbytes(value: Value) -> int:
    return _numel(value) * DTYPES[value.dtype].itemsize
