"""Checks of ONNX tensors before numpy sees them: element counts and stored sizes (shared
by the file checks in `load.py` and the node walk)."""

from __future__ import annotations

import numpy as np

from qcompiler.errors import OnnxImportError

# The largest element count of one tensor (2**31: 8 GiB of float32), far above any weight of
# a model the IR runs, far below what would exhaust memory quietly.
MAX_ELEMENTS = 1 << 31
ITEM_SIZES = {1: 4, 2: 1, 3: 1, 4: 2, 5: 2, 6: 4, 7: 8, 9: 1, 10: 2, 11: 8, 12: 4, 13: 8, 16: 2}


def node_name(node, index: int) -> str:
    return (
        f"node '{node.name}' ({node.op_type}, #{index})" if node.name else f"node #{index} ({node.op_type})"
    )


def tensor_elements(dims, what: str, path) -> int:
    count = 1
    for dim in dims:
        if dim < 0:
            raise OnnxImportError(f"{path}: {what} has a negative dimension ({list(dims)})")
        count *= int(dim)
        if count > MAX_ELEMENTS:
            raise OnnxImportError(
                f"{path}: {what} has shape {list(dims)}, more than "
                f"{MAX_ELEMENTS} elements; refused rather than allocated"
            )
    return count


def check_tensor(tensor, path, what: str | None = None) -> None:
    """A tensor's element count and stored size, before numpy sees it."""
    what = what or f"initializer '{tensor.name}'"
    count = tensor_elements(tensor.dims, what, path)
    item = ITEM_SIZES.get(tensor.data_type)
    if item is None:
        raise OnnxImportError(
            f"{path}: {what} has ONNX data type {tensor.data_type}, which the importer does not read"
        )
    if tensor.data_location == 1:  # external: checked and read by _load_external_data
        return
    if tensor.HasField("raw_data"):
        stored = len(tensor.raw_data) // item
        if len(tensor.raw_data) != count * item:
            raise OnnxImportError(
                f"{path}: {what} has shape {list(tensor.dims)} ({count} elements) "
                f"but stores {stored}; the file is truncated or corrupted"
            )
        return
    typed = {1: tensor.float_data, 11: tensor.double_data, 7: tensor.int64_data, 13: tensor.uint64_data}.get(
        tensor.data_type, tensor.int32_data
    )
    if tensor.data_type == 10 or tensor.data_type == 16:  # float16 / bfloat16 in int32_data
        typed = tensor.int32_data
    if len(typed) != count:
        raise OnnxImportError(
            f"{path}: {what} has shape {list(tensor.dims)} ({count} elements) "
            f"but stores {len(typed)}; the file is truncated or corrupted"
        )


def as_array(tensor, path) -> np.ndarray:
    """A checked initializer or Constant value as a numpy array."""
    from onnx import numpy_helper

    check_tensor(tensor, path)
    try:
        return np.array(numpy_helper.to_array(tensor))  # a writable copy (torch warns on read-only ones)
    except Exception as error:
        raise OnnxImportError(f"{path}: tensor '{tensor.name}' cannot be read: {error}") from None
