"""An IR graph -> a Relax IRModule with one function, `main`, built through
`relax.BlockBuilder`: one lowering function per IR op, keyed by op name (the interpreter's
KERNELS, for Relax): integer ops in `lower_integer.py`, float ops (of float graphs and of
the reported float fall backs, `dequantize -> float op -> quantize`) in `lower_float.py`.

With a layout plan (`plan.py`, the default: `build(..., schedules=True)`), the nodes it
puts in the blocked layout are lowered by `lower_blocked.py` to the hand-scheduled kernels
of `kernel_table.py`, the rest as above, with layout conversions where the two meet; the
schedules are applied to the kernels' PrimFuncs once the module is built. Without a plan
every node is the generic compute of `kernels.py` / Relax's operators: the reference the
scheduled build is tested against (identical integers).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import tvm
from tvm import relax

from qcompiler.backends.tvm.errors import LoweringError
from qcompiler.backends.tvm.lower_blocked import BLOCKED_LOWERINGS
from qcompiler.backends.tvm.lower_common import FLOAT_DTYPES, TVM_DTYPES, Lowering, shape_of
from qcompiler.backends.tvm.lower_float import FLOAT_LOWERINGS
from qcompiler.backends.tvm.lower_integer import INTEGER_LOWERINGS
from qcompiler.backends.tvm.plan import Plan
from qcompiler.ir import Graph
from qcompiler.ir.ops import attrs_with_defaults

LOWERINGS = {**FLOAT_LOWERINGS, **INTEGER_LOWERINGS}


@dataclass
class LoweredGraph:
    module: tvm.IRModule
    # Float ops inside the integer region (dequantize -> op -> quantize), by node.
    fall_backs: list[str] = field(default_factory=list)
    # PrimFunc name -> the graph nodes whose lowering emitted it (for per-op profiles).
    functions: dict[str, list[str]] = field(default_factory=dict)
    plan: Plan | None = None
    # PrimFunc name -> (its compute before scheduling, its schedule): tuning's workloads and
    # the seed records (`tuning.py`).
    scheduled: dict[str, tuple] = field(default_factory=dict)


def lower_graph(graph: Graph, arch: str = "x86_64", plan: Plan | None = None) -> LoweredGraph:
    """The Relax module of `graph`: `main(*graph inputs) -> output or tuple of outputs`, with
    kernels chosen for the architecture `arch` ("x86_64" or "aarch64") and, given a `plan`,
    the blocked scheduled kernels it selects. Raises LoweringError naming the first node
    without a lowering."""
    lowerings = LOWERINGS
    for node in graph:
        if node.op in ("fake_quant", "fake_quant_bias", "fake_quant_grouped"):
            raise LoweringError(f"the TVM backend cannot lower {node.describe()}: a fake-quant "
                                "graph is a simulation; lower it to integers first "
                                "(qc.lower_to_integer(graph)) or build the float graph")
        if node.op not in lowerings:
            raise LoweringError(f"the TVM backend cannot lower {node.describe()}: op '{node.op}' "
                                f"has no Relax lowering; it lowers {', '.join(sorted(lowerings))}")
    builder = relax.BlockBuilder()
    ctx = Lowering(builder, signed_operands=arch == "aarch64", plan=plan)
    params = []
    for value in graph.inputs:
        var = relax.Var(value.name, relax.TensorType(shape_of(value), TVM_DTYPES[value.dtype]))
        ctx.exprs[value.name] = var
        params.append(var)
    fall_backs, dequantized = [], set()  # dequantized: float values computed from integers
    with builder.function("main", params):
        with builder.dataflow():
            for node in graph:
                _lower_node(ctx, node, lowerings)
                from_integers = node.op == "dequantize" or any(
                    v is not None and v.name in dequantized for v in node.inputs)
                if from_integers and node.op != "quantize":
                    dequantized.update(v.name for v in node.outputs if v.dtype in FLOAT_DTYPES)
                    if node.op not in INTEGER_LOWERINGS:  # float arithmetic on them: spec 9
                        fall_backs.append(node.describe())
            outputs = [ctx[v] for v in graph.outputs]
            result = builder.emit_output(outputs[0] if len(outputs) == 1 else relax.Tuple(outputs))
        builder.emit_func_output(result)
    module = builder.get()
    scheduled = {name: (module[name], schedule) for name, schedule in ctx.schedules.items()}
    module = apply_schedules(module, ctx.schedules, ctx.functions)
    return LoweredGraph(module, fall_backs, ctx.functions, plan, scheduled)


def _lower_node(ctx: Lowering, node, lowerings) -> None:
    plan = ctx.plan
    if plan is not None and node.name in plan.fused:
        return  # computed by the kernel of plan.fused[node.name]
    blocked = plan is not None and node.name in plan.blocked
    lowering = BLOCKED_LOWERINGS[node.op] if blocked else lowerings[node.op]
    try:
        results = lowering(ctx, node, attrs_with_defaults(node.op, node.attrs))
    except TypeError as error:  # Dim.__index__: the lowering needs a symbolic size as a number
        if "symbolic dimension" not in str(error):
            raise
        dim = str(error).split(" has no value")[0]  # "symbolic dimension N"
        raise LoweringError(f"the TVM backend cannot keep the batch symbolic in {node.describe()}: "
                            f"its lowering needs the size of the {dim} as a number; compile at a "
                            "fixed batch size, qc.backends.tvm.build(graph, target, "
                            "batch=8)") from None
    if results is None:  # a blocked lowering stored its outputs itself
        return
    results = results if isinstance(results, list) else [results]
    for value, expr in zip(node.outputs, results, strict=True):
        ctx.exprs[value.name] = expr


def apply_schedules(module: tvm.IRModule, schedules: dict, functions: dict) -> tvm.IRModule:
    """Each kernel's PrimFunc replaced by its scheduled form."""
    from tvm.s_tir import Schedule

    for name, schedule in schedules.items():
        variable = module.get_global_var(name)
        sch = Schedule(module[variable])
        try:
            schedule(sch)
        except Exception as error:  # TVM's own error types; name the nodes, keep the reason
            reason = str(error).strip().splitlines()[-1] if str(error).strip() else type(error).__name__
            raise LoweringError(f"scheduling kernel {name} (nodes {', '.join(functions.get(name, []))}) "
                                f"failed: {reason}; build with schedules=False to use the generic "
                                "kernels") from error
        module.update_func(variable, sch.mod["main"])
    return module
