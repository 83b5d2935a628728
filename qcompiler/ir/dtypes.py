"""The IR's dtype names and their numpy types."""

from __future__ import annotations

import numpy as np

# Short dtype names used in the IR and its text form, and their numpy types.
DTYPES: dict[str, np.dtype] = {
    "f32": np.dtype(np.float32),
    "f16": np.dtype(np.float16),
    "f64": np.dtype(np.float64),
    "i64": np.dtype(np.int64),
    "i32": np.dtype(np.int32),
    "i16": np.dtype(np.int16),
    "i8": np.dtype(np.int8),
    "u8": np.dtype(np.uint8),
    "bool": np.dtype(np.bool_),
}
NUMPY_TO_DTYPE = {v: k for k, v in DTYPES.items()}
FLOAT_DTYPES = frozenset({"f32", "f16", "f64"})


def dtype_of_array(array: np.ndarray) -> str:
    """The IR dtype name of a numpy array, or a ValueError naming the dtype."""
    try:
        return NUMPY_TO_DTYPE[array.dtype]
    except KeyError:
        raise ValueError(
            f"numpy dtype {array.dtype} has no IR dtype; supported: {', '.join(DTYPES)}"
        ) from None
