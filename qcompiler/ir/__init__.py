"""The IR: `Graph`, `Node`, `Value` (graph.py; dtype names in dtypes.py, symbolic
dimensions such as the batch `N` in dims.py), the closed op
table and the op kinds derived from it (ops.py; integer and fake-quant semantics in
integer_ops.py and fake_quant_ops.py), the verifier (verify.py), the text form (printer.py,
text.py), the graph-editing library (edit.py), the node-by-node evaluator (evaluate.py)
and the pass manager (pipeline.py)."""

from qcompiler.ir.dims import BATCH, Dim  # noqa: F401
from qcompiler.ir.dtypes import DTYPES, FLOAT_DTYPES, dtype_of_array  # noqa: F401  (the public face)
from qcompiler.ir.graph import Graph, Node, QParams, Value, structurally_equal  # noqa: F401
from qcompiler.ir.verify import type_key  # noqa: F401
