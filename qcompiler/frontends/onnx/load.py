"""Reading an ONNX file safely: `qc.load_onnx(path)`.

Everything a file says is checked before it is believed, so a malformed, truncated,
hostile or simply unsupported file is an `OnnxImportError` naming the file (and the node),
never a crash, a hang or a huge allocation:

- the bytes must parse as an ONNX ModelProto with a graph that has outputs;
- the default-domain opset must be within `MIN_OPSET`..the newest the installed onnx
  package knows (a newer file says to upgrade);
- every initializer's element count (the product of its dims, checked before any array is
  made) is at most `MAX_ELEMENTS`, and its stored bytes match that count; external data
  must be a file inside the model's directory, long enough for its offset and length;
- the node graph must be acyclic, each node input a graph input, an initializer or a node
  output, each name defined once;
- every value the import creates has at most `MAX_ELEMENTS` elements (at batch 1).

Then `qcompiler.frontends.onnx.convert` builds the IR graph (onnx-graphsurgeon's view of
the model) and the graph is verified.
"""

from __future__ import annotations

import heapq
import os
from pathlib import Path

from qcompiler.errors import OnnxImportError, OnnxUnsupportedOpError, QCompilerError, import_optional
from qcompiler.frontends.onnx.checks import ITEM_SIZES, check_tensor, node_name, tensor_elements
from qcompiler.ir import Graph

# Opsets the importer reads: from 11 (Clip's min/max inputs, Resize's sizes, Pad's pads
# input; what torch.onnx has written by default since 2020) to the newest the installed
# onnx package defines.
MIN_OPSET = 11
# Above this many nodes a file is refused rather than converted for minutes.
MAX_NODES = 1 << 20


def load_onnx(path: str | os.PathLike, *, name: str | None = None) -> Graph:
    """Import an ONNX model file into a verified IR graph (float, or calibrated fake-quant
    for QDQ files). A leading input dimension written as a `dim_param` (or left unknown)
    becomes the symbolic batch `N`; every other dimension must be a number."""
    onnx = import_optional("onnx", "onnx", "ONNX import")
    path = Path(path)
    model = _read_model(onnx, path)
    opset = check_opset(model, path)
    order = check_graph_structure(model.graph, path)
    _load_external_data(onnx, model, path)
    for tensor in model.graph.initializer:
        check_tensor(tensor, path)
    from qcompiler.frontends.onnx.convert import convert

    try:
        graph = convert(model, order, opset, where=str(path), name=name)
        graph.verify()
    except OnnxImportError:
        raise
    except QCompilerError as error:
        raise OnnxImportError(f"{path}: {error}") from None
    return graph


def _read_model(onnx, path: Path):
    if not path.is_file():
        raise OnnxImportError(f"{path}: no such file" if not path.exists() else f"{path}: not a file")
    try:
        data = path.read_bytes()
    except OSError as error:
        raise OnnxImportError(f"{path}: cannot be read ({error.strerror or error})") from None
    if not data:
        raise OnnxImportError(f"{path}: the file is empty, not an ONNX model")
    model = onnx.ModelProto()
    try:
        model.ParseFromString(data)
    except Exception as error:  # protobuf's DecodeError, or a RuntimeError from its C++ parser
        raise OnnxImportError(
            f"{path}: not an ONNX model (the protobuf does not parse: "
            f"{str(error) or type(error).__name__}); the file may be truncated "
            "or not ONNX at all"
        ) from None
    if not model.HasField("graph") or not model.graph.output:
        raise OnnxImportError(f"{path}: not an ONNX model, or a truncated one: it has no graph outputs")
    return model


def check_opset(model, path) -> int:
    """The default-domain opset, checked to be one the importer reads."""
    import onnx

    newest = onnx.defs.onnx_opset_version()
    versions = {entry.domain: entry.version for entry in model.opset_import}
    if "" not in versions and "ai.onnx" not in versions:
        raise OnnxImportError(f"{path}: the model declares no opset for the default ONNX domain")
    version = versions.get("", versions.get("ai.onnx"))
    if version > newest:
        raise OnnxImportError(
            f"{path}: written with opset {version}, newer than the newest this "
            f"onnx package ({onnx.__version__}) knows, {newest}; upgrade onnx "
            "or re-export the model at an older opset"
        )
    if version < MIN_OPSET:
        raise OnnxImportError(
            f"{path}: opset {version} is older than the oldest the importer "
            f"reads ({MIN_OPSET}); convert it first: "
            f"onnx.version_converter.convert_version(model, 17)"
        )
    return version


def check_graph_structure(graph, path) -> list[int]:
    """Each name defined once, each node input defined, no cycle (Kahn's algorithm); returns
    the node indices in a topological order (the file's order where it already is one)."""
    if len(graph.node) > MAX_NODES:
        raise OnnxImportError(
            f"{path}: {len(graph.node)} nodes, more than the {MAX_NODES} the importer takes"
        )
    defined: dict[str, str] = {}
    for kind, names in (
        ("graph input", [v.name for v in graph.input]),
        ("initializer", [t.name for t in graph.initializer]),
    ):
        for tensor_name in names:
            if tensor_name in defined and not (
                kind == "initializer" and defined[tensor_name] == "graph input"
            ):
                raise OnnxImportError(
                    f"{path}: tensor '{tensor_name}' is defined twice ({defined[tensor_name]} and {kind})"
                )
            defined[tensor_name] = kind
    producers: dict[str, int] = {}
    for index, node in enumerate(graph.node):
        for output in node.output:
            if not output:
                continue
            if output in defined or output in producers:
                raise OnnxImportError(
                    f"{path}: {node_name(node, index)} writes tensor '{output}', which is already defined"
                )
            producers[output] = index
    waiting = [0] * len(graph.node)
    users: dict[int, list[int]] = {}
    for index, node in enumerate(graph.node):
        for tensor_name in node.input:
            if not tensor_name or tensor_name in defined:
                continue
            if tensor_name not in producers:
                raise OnnxImportError(
                    f"{path}: {node_name(node, index)} reads '{tensor_name}', "
                    "which no graph input, initializer or node defines (a "
                    "dangling input, or a missing initializer)"
                )
            waiting[index] += 1
            users.setdefault(producers[tensor_name], []).append(index)
    ready = [i for i, count in enumerate(waiting) if count == 0]
    heapq.heapify(ready)
    order = []
    while ready:
        index = heapq.heappop(ready)
        order.append(index)
        for user in users.get(index, []):
            waiting[user] -= 1
            if waiting[user] == 0:
                heapq.heappush(ready, user)
    if len(order) < len(graph.node):
        stuck = next(i for i, count in enumerate(waiting) if count > 0)
        raise OnnxImportError(
            f"{path}: the graph has a cycle through "
            f"{node_name(graph.node[stuck], stuck)}; ONNX graphs must be acyclic"
        )
    for output in graph.output:
        if output.name not in defined and output.name not in producers:
            raise OnnxImportError(f"{path}: graph output '{output.name}' is not computed by any node")
    for index, node in enumerate(graph.node):
        for attribute in node.attribute:
            if attribute.HasField("t"):
                check_tensor(attribute.t, path, f"attribute '{attribute.name}' of {node_name(node, index)}")
            if attribute.HasField("g") or attribute.graphs:
                raise OnnxUnsupportedOpError(
                    f"{path}: {node_name(node, index)} holds a subgraph "
                    "(control flow); the IR has no control flow ops"
                )
    return order


def _load_external_data(onnx, model, path: Path) -> None:
    """Read the tensors stored in files beside the model, after checking each reference: a
    relative path inside the model's directory, a file that exists and holds the bytes."""
    base = path.parent.resolve()
    external = [t for t in model.graph.initializer if t.data_location == onnx.TensorProto.EXTERNAL]
    for tensor in external:
        info = {entry.key: entry.value for entry in tensor.external_data}
        location = info.get("location", "")
        what = f"initializer '{tensor.name}'"
        target = (base / location).resolve()
        if not location or Path(location).is_absolute() or base not in target.parents:
            raise OnnxImportError(
                f"{path}: {what} refers to external data '{location}', which is "
                "not a file inside the model's directory"
            )
        if not target.is_file():
            raise OnnxImportError(
                f"{path}: {what} is stored in the external file '{location}', "
                f"which does not exist (expected at {target}); copy it beside "
                "the model"
            )
        try:
            offset, length = int(info.get("offset", 0)), int(info.get("length", -1))
        except ValueError:
            raise OnnxImportError(
                f"{path}: {what} has a non-numeric external data offset or length"
            ) from None
        count = tensor_elements(tensor.dims, what, path)
        item = ITEM_SIZES.get(tensor.data_type, 1)
        needed = count * item if length < 0 else length
        if offset < 0 or offset + needed > target.stat().st_size or needed != count * item:
            raise OnnxImportError(
                f"{path}: {what} needs {count * item} bytes at offset {offset} of "
                f"'{location}' ({target.stat().st_size} bytes); the external "
                "data file is truncated or does not belong to this model"
            )
        with open(target, "rb") as file:
            file.seek(offset)
            tensor.raw_data = file.read(count * item)
        del tensor.external_data[:]
        tensor.data_location = onnx.TensorProto.DEFAULT
