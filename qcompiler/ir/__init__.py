"""The IR: `Graph`, `Node`, `Value` (graph.py), the closed op table (ops.py, integer_ops.py),
the verifier (verify.py), the text form (text.py) and the pass manager (pipeline.py)."""

from qcompiler.ir.graph import (  # noqa: F401  (the package's public face)
    DTYPES,
    FLOAT_DTYPES,
    Graph,
    Node,
    QParams,
    Value,
    dtype_of_array,
    structurally_equal,
    type_key,
)
