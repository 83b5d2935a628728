"""Integer lowering rules for casts, comparisons, masks and selection (`cast`, `eq` ... `le`,
the logical ops, `where`, `argmax`; the table of all rules is
`qcompiler.quantization.lowering.RULES`).

Integers and bools that are not quantized (an int64 attention mask, a bool mask computed from
it) are not numbers of the quantized region: ops on them only are copied as they are, and run
on the integers (docs/integer-spec.md, section 16). Where a quantized value meets them:

- a cast of an integer input to float followed by a fake_quant is a `quantize` of the
  integers themselves (the boundary rule converts to float32 first, exactly the cast);
- a cast or a comparison of one quantized value with constants is a function of the 8-bit
  input, so it is a `qlookup` gather from a table of the result (bool or integer) at every
  input level: `table[q - qmin] = f(dequantize(q))`, no quantize (section 9);
- a comparison of two values with one quantization compares their integers (dequantize is
  strictly increasing, section 16), and so does argmax;
- `where(c, a, b)` shares one quantization between a, b and its output (insert_fake_quant
  gives them one, as for concat): a select on the integers.
"""

from __future__ import annotations

import numpy as np
import torch

from qcompiler.ir import DTYPES, FLOAT_DTYPES, Node, Value
from qcompiler.ir.ops import run_op
from qcompiler.numerics.integer_params import lookup_values
from qcompiler.numerics.quant import fake_quantize
from qcompiler.quantization.lowering_rules import finish, int_inputs, quantized_output
from qcompiler.quantization.lowering_state import LoweringState, fake_quant_qparams


def _is_float(value: Value | None) -> bool:
    return value is not None and value.dtype in FLOAT_DTYPES


def copy_node(state: LoweringState, node: Node) -> None:
    """An op on integers or bools that are not quantized: the same op in the new graph."""
    state.copy_as_float(node)


def _emit_unquantized(state: LoweringState, node: Node, op: str, inputs: list, attrs: dict) -> None:
    """Emit `op` whose (bool or integer, unquantized) output stands for `node`'s."""
    result = state.emit(op, inputs, attrs, node.name, node.source).output
    state.float_of[id(node.output)] = result


def constant_operand(value: Value) -> np.ndarray | None:
    """The data of a constant operand as the simulation sees it (fake-quantized, if it is), or
    None if the value is not a constant."""
    producer = value.producer
    if value.is_constant:
        return value.data
    if producer is not None and producer.op == "fake_quant" and producer.inputs[0].is_constant:
        q = fake_quant_qparams(producer)
        return fake_quantize(producer.inputs[0].data, q.scale, q.zero_point, q.qmin, q.qmax, q.axis)
    return None


def _emit_table(state: LoweringState, node: Node, x: Value, function) -> None:
    """`node`'s non-float result as a gather from the table of `function` at every level of x."""
    table = lookup_values(function, float(x.qparams.scale[0]), int(x.qparams.zero_point[0]),
                          (x.qparams.qmin, x.qparams.qmax))
    table = state.constant(f"{node.name}.table", table.astype(DTYPES[node.output.dtype]),
                           node.output.dtype)
    _emit_unquantized(state, node, "qlookup", [x, table], {"input_min": x.qparams.qmin})


def lower_cast(state: LoweringState, node: Node):
    x, out = node.inputs[0], node.output
    if not _is_float(x) and not _is_float(out):
        return copy_node(state, node)
    if not _is_float(x):  # integers (a mask) to float: quantize them, if the result is quantized
        found = quantized_output(state, node)
        if isinstance(found, str):
            return found
        chain, fake_quant, out_q = found
        if chain:
            return "a relu or clamp follows the cast"
        result = state.quantize(state.as_float(x), out_q, node.name, node.source)
        finish(state, node, chain, fake_quant, result)
        return None
    if _is_float(out):
        return f"a cast from {x.dtype} to {out.dtype} keeps a float value"
    inputs = int_inputs(state, node, [0])
    if isinstance(inputs, str):
        return inputs
    if inputs[0].qparams.bits > 8:
        return f"its input is {inputs[0].qparams.bits}-bit; lookup tables are built for up to 8 bits"
    _emit_table(state, node, inputs[0], lambda real: run_op("cast", [torch.from_numpy(real)],
                                                             node.attrs)[0].numpy())
    return None


def lower_compare(state: LoweringState, node: Node):
    """Comparisons and logical ops (see the module docstring)."""
    if not any(_is_float(v) for v in node.inputs):
        return copy_node(state, node)
    if node.op.startswith("logical"):
        return "logical operations take bools; compare the float values first"
    a, b = node.inputs
    qa, qb = state.as_int(a), state.as_int(b)
    if qa is not None and qb is not None and qa.qparams == qb.qparams \
            and qa.qparams.axis is None:
        _emit_unquantized(state, node, node.op, [qa, qb], {})
        return None
    for index, (quantized, other) in enumerate(((qa, b), (qb, a))):
        constant = constant_operand(other)
        if quantized is None or constant is None or quantized.qparams.axis is not None:
            continue
        if quantized.qparams.bits > 8:
            return f"its input is {quantized.qparams.bits}-bit; lookup tables are built for up to 8 bits"
        flat = np.asarray(constant).reshape(-1)
        if flat.size != 1 and not (flat == flat[0]).all():
            return "it compares with a constant that is not one number"
        scalar = torch.tensor(flat[0], dtype=torch.from_numpy(np.asarray(constant)).dtype)

        def function(real, scalar=scalar, index=index):
            operands = [torch.from_numpy(real), scalar]
            return run_op(node.op, operands if index == 0 else operands[::-1], {})[0].numpy()

        _emit_table(state, node, quantized, function)
        return None
    return ("its operands are not one quantized value and a constant, nor two values with "
            "the same quantization")


def lower_where(state: LoweringState, node: Node):
    condition, a, b = node.inputs
    if not _is_float(node.output):
        return copy_node(state, node)
    if _is_float(condition):
        return "its condition is a float value"
    branches = int_inputs(state, node, [1, 2])
    if isinstance(branches, str):
        return branches
    if branches[0].qparams != branches[1].qparams:
        return ("its two branches are quantized differently (insert_fake_quant gives them one "
                "quantization; re-run it)")
    result = state.emit("where", [state.as_float(condition), *branches], {}, node.name,
                        node.source).output
    state.set_int(node.output, result, branches[0].qparams)
    return None


def lower_argmax(state: LoweringState, node: Node):
    if not _is_float(node.inputs[0]):
        return copy_node(state, node)
    inputs = int_inputs(state, node, [0])
    if isinstance(inputs, str):
        return inputs
    _emit_unquantized(state, node, "argmax", inputs, dict(node.attrs))
    return None

