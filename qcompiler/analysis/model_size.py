"""The bytes a quantized model stores once deployed, from its fake-quant graph.

`qc.cost(graph).weight_bytes` counts constants at their stored dtype, which for a
fake-quant graph is float32 everywhere. A deployment stores the quantized numbers:

- a weight read by `fake_quant` (b bits): b bits an element, packed (two 4-bit codes a
  byte), plus its scales and zero points (counted as the constants they are);
- a weight read by `fake_quant_grouped` (weight-only group-wise): b bits an element,
  packed, plus its float32 group scales and its zero points, if any, b bits each
  (`qcompiler.numerics.grouped_quant.packed_bytes`);
- an embedding table whose output only a per-tensor `fake_quant` reads: b bits an element
  (integer lowering gathers from the table quantized, `lowering_rules_layout.lower_embedding`);
- a bias read by `fake_quant_bias`: int32;
- every other constant at its dtype (float32 for what stays float).
Each constant is counted once, however many nodes read it.
"""

from __future__ import annotations

from qcompiler.ir import Graph, Value
from qcompiler.ir.dtypes import DTYPES


def stored_bits(value: Value) -> int | None:
    """Bits an element `value` is stored with once deployed, or None for its dtype's."""
    for user in value.users:
        if user.op == "fake_quant_grouped" and len(user.inputs) > 2 and user.inputs[2] is value:
            return int(user.attrs.get("bits", 4))  # group zero points, packed as the codes
        if user.inputs[0] is not value:
            continue
        if user.op in ("fake_quant", "fake_quant_grouped"):
            return int(user.attrs.get("bits", 8))
        if user.op == "fake_quant_bias":
            return 32
    for user in value.users:
        if user.op == "embedding" and len(user.inputs) > 1 and user.inputs[1] is value:
            readers = user.output.users
            if readers and all(r.op == "fake_quant" and r.attrs.get("axis") is None for r in readers):
                return int(readers[0].attrs.get("bits", 8))
    return None


def stored_bytes(graph: Graph) -> int:
    """The deployed bytes of every constant the graph's nodes read (module docstring)."""
    seen: set[int] = set()
    total = 0
    for node in graph:
        for value in node.inputs:
            if value is None or not value.is_constant or id(value) in seen:
                continue
            seen.add(id(value))
            bits = stored_bits(value)
            elements = value.numel
            total += (elements * DTYPES[value.dtype].itemsize if bits is None
                      else -(-elements * bits // 8))
    return total
