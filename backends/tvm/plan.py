"""The layout plan: which nodes run in the blocked layout (NCHW[b]c, `packing.py`) and with
which kernel (`kernel_table.py`), and which float nodes fold into the kernel before them.
Pure Python over the graph; `lower.py` follows it, and `layout conversions` appear only
where a blocked value meets a node that needs the plain layout (or is a graph output).

The rules, in topological order:

- a weighted op (qconv2d, conv2d, qlinear, linear) with constant weights gets the table's
  kernel for its kind on the target, if there is one and the kernel computes it exactly:
  its int8 weights within the kernel's range (else `WeightRangeError`: the guarantee of
  docs/integer-spec.md section 8, checked against the kernel that runs), the zero point
  foldable into the bias in int32 (`packing.fold_zero_point`), and for a grouped
  convolution whole channel blocks per group. Convolutions produce blocked outputs; dense
  layers read a flattened blocked value or a plain one and produce plain outputs;
- float convolutions absorb a following batch norm (constant statistics: folded into the
  weights) and then a following relu / clamp (the epilogue's clamp), when the value in
  between has no other user and is not a graph output; a float add absorbs a relu / clamp;
- ops that work lane by lane (qadd, requantize, pooling, qmean and mean over H and W,
  flatten of a 1x1 map, dequantize, add, relu, clamp) run blocked when an input is
  blocked; a quantize runs blocked (writing the blocked layout directly) when a user
  does.

Integer values are stored in the dtype the dot instructions take (`kernel_table
.storage_dtype`: uint8 on x86, int8 on ARM), with an offset of 128 where the IR dtype is the
other one (`Blocked.offset`, see `blocked.py`).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from qcompiler.backends.tvm import kernel_table, packing
from qcompiler.backends.tvm.errors import WeightRangeError
from qcompiler.backends.tvm.kernel_table import Kernel
from qcompiler.ir import Graph, Node, Value

INT8 = ("u8", "i8")
STORAGE_RANGES = {"uint8": (0, 255), "int8": (-128, 127)}
# Ops computed lane by lane: blocked whenever an input is.
LANEWISE_INTEGER = ("qadd", "requantize", "qmax_pool2d", "qavg_pool2d", "qmean", "dequantize")
LANEWISE_FLOAT = ("add", "relu", "clamp", "max_pool2d", "avg_pool2d", "adaptive_avg_pool2d", "mean")
ACTIVATIONS = ("relu", "clamp")


@dataclass(frozen=True)
class Blocked:
    """How a blocked value is stored: `(N, ceil(C / block), H, W, block)` of `dtype`, each
    element the IR value plus `offset`; `flat` marks an `[N, C]` value stored with H = W = 1."""

    block: int
    channels: int
    offset: int
    dtype: str
    flat: bool = False

    @property
    def blocks(self) -> int:
        return -(-self.channels // self.block)

    @property
    def padded(self) -> int:
        return self.blocks * self.block


@dataclass
class Plan:
    isa: str
    kernels: dict[str, Kernel] = field(default_factory=dict)  # weighted node -> kernel
    blocked: set[str] = field(default_factory=set)  # nodes lowered by lower_blocked
    fused: dict[str, str] = field(default_factory=dict)  # node -> the node whose kernel computes it
    epilogue: dict[str, list[Node]] = field(default_factory=dict)  # node -> nodes fused after it

    @property
    def storage_dtype(self) -> str:
        return kernel_table.storage_dtype(self.isa)

    def offset(self, ir_dtype: str) -> int:
        """What is added to an integer IR value of `ir_dtype` to store it blocked."""
        if ir_dtype == "u8" and self.storage_dtype == "int8":
            return -128
        if ir_dtype == "i8" and self.storage_dtype == "uint8":
            return 128
        return 0

    def integer_layout(self, value: Value, block: int, flat: bool = False) -> Blocked:
        return Blocked(block, _channels(value), self.offset(value.dtype), self.storage_dtype, flat)

    def default_layout(self, value: Value, block: int | None = None) -> Blocked:
        """The layout a plain 4-D value is converted to: blocks of the kernels' lanes, or one
        block of all its channels when it has fewer (the first convolution's 3 colours;
        int8 blocks are multiples of 4, the dot intrinsics' depth)."""
        channels = _channels(value)
        if value.dtype == "f32":
            lanes = kernel_table.float_lanes(self.isa)
            return Blocked(block or (lanes if channels >= lanes else channels), channels, 0, "float32")
        lanes = kernel_table.int8_lanes(self.isa)
        return self.integer_layout(value, block or (lanes if channels >= lanes else
                                                    packing.round_up(channels, 4)))


def _channels(value: Value) -> int:
    return int(value.shape[1])


def conv_kind(node: Node) -> str | None:
    """conv, depthwise, depthwise3x3 (dilation 1), or None for a grouped convolution whose
    groups are not whole blocks (checked against the lanes by the caller)."""
    weight = node.inputs[1]
    groups = int(node.attrs.get("groups", 1))
    channels = _channels(node.inputs[0])
    if groups == 1:
        return "conv"
    if groups == channels and weight.shape[0] == channels and weight.shape[1] == 1:
        three = list(weight.shape[2:]) == [3, 3] and list(node.attrs.get("dilation", [1, 1])) == [1, 1]
        return "depthwise3x3" if three else "depthwise"
    return "grouped"


def _grouped_as_conv(node: Node, kind: str, lanes: int | None) -> str | None:
    """A grouped convolution runs as a blocked conv when each group is whole blocks."""
    if kind != "grouped":
        return kind
    groups = int(node.attrs["groups"])
    inputs, outputs = _channels(node.inputs[0]) // groups, int(node.inputs[1].shape[0]) // groups
    return "conv" if lanes and inputs % lanes == 0 and outputs % lanes == 0 else None


def _constant(value: Value | None) -> bool:
    return value is None or value.is_constant


def _integer_kernel(node: Node, plan: Plan) -> Kernel | None:
    x, weight, bias, multiplier, shift = node.inputs[:5]
    if x.dtype not in INT8 or node.output.dtype not in INT8 or len(x.shape) not in (2, 3, 4):
        return None
    if not all(v is not None and v.is_constant for v in (weight, bias, multiplier, shift)):
        return None
    if node.op == "qconv2d":
        if len(x.shape) != 4:
            return None
        kind = _grouped_as_conv(node, conv_kind(node), kernel_table.int8_lanes(plan.isa))
    else:
        kind = "dense"
    kernel = kernel_table.lookup(kind, plan.isa) if kind else None
    if kernel is None:
        return None
    low, high = kernel.weight_range
    data = weight.data
    if data.size and (int(data.min()) < low or int(data.max()) > high):
        raise WeightRangeError(
            f"{node.describe()}: kernel {kernel.name} computes int8 layers exactly only with "
            f"weights in [{low}, {high}] (docs/integer-spec.md, section 8), and this layer's are "
            f"in [{int(data.min())}, {int(data.max())}]; quantize with the target's preset "
            "(qc.backends.tvm.quant_preset) or build with schedules=False")
    stored_zero_point = int(node.attrs["input_zero_point"]) + plan.offset(x.dtype)
    if packing.fold_zero_point(data, bias.data, stored_zero_point,
                               STORAGE_RANGES[plan.storage_dtype]) is None:
        return None  # the raw sum of x * w could overflow int32: the generic kernel subtracts z_x
    return kernel


def _float_kernel(node: Node, plan: Plan) -> Kernel | None:
    x, weight = node.inputs[:2]
    bias = node.inputs[2] if len(node.inputs) > 2 else None
    if x.dtype != "f32" or not (weight.is_constant and _constant(bias)):
        return None
    if node.op == "conv2d":
        if len(x.shape) != 4:
            return None
        kind = _grouped_as_conv(node, conv_kind(node), kernel_table.float_lanes(plan.isa))
        kind = {"depthwise3x3": "depthwise"}.get(kind, kind)
    else:
        kind = "dense"
    return kernel_table.lookup(f"{kind}_float", plan.isa) if kind else None


def _sole_user(value: Value, graph: Graph) -> Node | None:
    if len(value.users) != 1 or value in graph.outputs:
        return None
    return value.users[0]


def _fuse_float_epilogue(node: Node, graph: Graph, plan: Plan, batch_norm: bool) -> None:
    """Fold a following constant batch norm (convolutions) and then a relu / clamp."""
    chain, value = [], node.output
    user = _sole_user(value, graph)
    if batch_norm and user is not None and user.op == "batch_norm" and all(
            _constant(v) for v in user.inputs[1:]):
        chain.append(user)
        value, user = user.output, _sole_user(user.output, graph)
    if user is not None and user.op in ACTIVATIONS:
        chain.append(user)
    for fused in chain:
        plan.fused[fused.name] = node.name
    plan.epilogue[node.name] = chain


def _lanewise(node: Node, blocked: set[str]) -> bool:
    activations = [v for v in node.inputs if v is not None and not v.is_constant]
    if not activations or not any(v.name in blocked for v in activations):
        return False
    if node.op in ("qadd", "add"):
        return all(list(v.shape) == list(node.output.shape) for v in node.inputs)
    if node.op in ("qmean", "mean"):
        rank = len(node.inputs[0].shape)
        dims = node.attrs["dim"] if isinstance(node.attrs["dim"], list | tuple) else [node.attrs["dim"]]
        return rank == 4 and sorted(int(d) % rank for d in dims) == [2, 3]
    if node.op == "adaptive_avg_pool2d":
        return list(node.output.shape[2:]) == [1, 1]
    return len(node.inputs[0].shape) == 4 or node.op == "dequantize"


def plan_graph(graph: Graph, isa: str) -> Plan:
    """The plan for `graph` on a target of SIMD level `isa` (module docstring)."""
    plan = Plan(isa)
    blocked_values: set[str] = set()
    for node in graph:
        if node.op in ("qconv2d", "qlinear"):
            kernel = _integer_kernel(node, plan)
        elif node.op in ("conv2d", "linear"):
            kernel = _float_kernel(node, plan)
        else:
            kernel = None
        if kernel is not None:
            plan.kernels[node.name] = kernel
    for node in graph:
        if node.name in plan.fused:  # its kernel (lowered with its owner) decided its layout
            continue
        if node.name in plan.kernels:
            plan.blocked.add(node.name)
            if node.op in ("conv2d", "linear"):
                _fuse_float_epilogue(node, graph, plan, batch_norm=node.op == "conv2d")
            if node.op in ("qconv2d", "conv2d"):
                blocked_values.add(node.output.name)
                blocked_values.update(fused.output.name for fused in plan.epilogue.get(node.name, []))
            continue
        if node.op == "quantize" and len(node.output.shape) == 4 and kernel_table.int8_lanes(isa) \
                and any(user.name in plan.kernels for user in node.output.users):
            plan.blocked.add(node.name)
            blocked_values.add(node.output.name)
        elif node.op in (*LANEWISE_INTEGER, *LANEWISE_FLOAT) and _lanewise(node, blocked_values):
            plan.blocked.add(node.name)
            if node.op == "add":
                _fuse_float_epilogue(node, graph, plan, batch_norm=False)
                blocked_values.update(fused.output.name for fused in plan.epilogue[node.name])
            if node.op != "dequantize":
                blocked_values.add(node.output.name)
        elif node.op in ("flatten", "reshape") and node.inputs[0].name in blocked_values \
                and len(node.inputs[0].shape) == 4 and list(node.inputs[0].shape[2:]) == [1, 1] \
                and list(node.output.shape) == list(node.inputs[0].shape[:2]):
            plan.blocked.add(node.name)
            blocked_values.add(node.output.name)
    return plan


def kernel_names(plan: Plan) -> dict[str, str]:
    """node -> the kernel that computes it (weighted ops and what they absorb)."""
    names = {node: kernel.name for node, kernel in plan.kernels.items()}
    names.update({node: names[owner] for node, owner in plan.fused.items() if owner in names})
    return names

