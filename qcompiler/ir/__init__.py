"""The IR: `Graph`, `Node`, `Value` (graph.py), the closed op table (ops.py, integer_ops.py),
the verifier (verify.py), the text form (text.py) and the pass manager (pipeline.py)."""

from qcompiler.ir.dtypes import DTYPES, FLOAT_DTYPES, dtype_of_array  # noqa: F401  (the public face)
from qcompiler.ir.graph import Graph, Node, QParams, Value, structurally_equal  # noqa: F401
from qcompiler.ir.verify import type_key  # noqa: F401
