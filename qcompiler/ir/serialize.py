"""Saving and loading graphs: `qc.save(graph, "model.qc")`, `qc.load("model.qc")`.

A float, fake-quant or integer graph round-trips exactly: the same text form, the same
source lines, every constant with the same bits.

The file is a zip archive (the container numpy's `.npz` uses) holding:

- `header.json`: `format` ("qcompiler-graph"), `format_version` (FORMAT_VERSION), the
  `qcompiler_version` that wrote it, the `constants` (value name -> member), the nodes'
  `sources` (name -> file:line of the user's model) and `content_sha256`, a hash of the
  graph text and of every constant's name, dtype, shape and bytes;
- `graph.txt`: the IR text (`qcompiler.ir.text`), qparams included; float32 scales print as
  the shortest decimal that reads back to the same float32, so they are exact;
- `constants/<i>.npy`: each constant in numpy's `.npy` format (small constants are in the
  text too; the stored array is the one loaded, so NaN payloads and -0.0 survive).

Why not pickle or torch.save: loading a pickle runs code from the file. Loading here reads
JSON, the IR text (parsed with `ast.literal_eval`, which evaluates literals only) and
`.npy` arrays with `allow_pickle=False`, so a file cannot run code. The `.npy` members make a
safetensors dependency unnecessary: both store raw little-endian arrays with a header.

Writing is atomic: the archive goes to a temporary file in the target's directory, is
flushed to disk, and replaces the target with `os.replace`; a failure leaves the old file
(or none). Loading checks the zip's CRCs, the header, the format version (a newer version
is refused: upgrade qcompiler), the content hash, the text, and finally `graph.verify()`;
each failure is a `LoadError` naming the file and what is wrong.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import tempfile
import zipfile
import zlib
from importlib import metadata
from pathlib import Path

import numpy as np

from qcompiler.errors import LoadError, ParseError, VerificationError
from qcompiler.ir.dtypes import NUMPY_TO_DTYPE
from qcompiler.ir.graph import Graph
from qcompiler.ir.printer import print_graph
from qcompiler.ir.text import parse

FORMAT = "qcompiler-graph"
FORMAT_VERSION = 1
_HEADER, _TEXT = "header.json", "graph.txt"


def qcompiler_version() -> str:
    try:
        return metadata.version("qcompiler")
    except metadata.PackageNotFoundError:
        return "unknown"


def save(graph: Graph, path: str | os.PathLike) -> Path:
    """Write `graph` to `path` (by convention `*.qc`), atomically; returns the path. The graph
    must verify: an invalid graph is refused rather than written."""
    graph.verify()
    path = Path(path)
    write_bytes_atomically(path, to_bytes(graph))
    return path


def write_bytes_atomically(path: Path, payload: bytes) -> None:
    """Write `payload` to a temporary file in `path`'s directory, flush it to disk and rename
    it over `path`: a failure leaves the old file (or none), never a half-written one."""
    directory = path.parent if str(path.parent) else Path(".")
    handle, temporary = tempfile.mkstemp(dir=directory, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(handle, "wb") as file:
            file.write(payload)
            file.flush()
            os.fsync(file.fileno())
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise


def load(path: str | os.PathLike) -> Graph:
    """Read a graph written by `save`; LoadError names the file and what is wrong with it."""
    path = Path(path)
    try:
        data = path.read_bytes()
    except OSError as error:
        raise LoadError(f"{path}: cannot read: {error.strerror or error}") from None
    return from_bytes(data, str(path))


def to_bytes(graph: Graph) -> bytes:
    """The saved form of `graph` (see the module docstring) as bytes."""
    text = print_graph(graph)
    constants = graph.constants
    members = {value.name: f"constants/{index}.npy" for index, value in enumerate(constants)}
    header = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "qcompiler_version": qcompiler_version(),
        "constants": members,
        "sources": {node.name: node.source for node in graph if node.source},
        "content_sha256": _content_hash(text, [(v.name, v.data) for v in constants]),
    }
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        archive.writestr(_HEADER, json.dumps(header, indent=1, sort_keys=True),
                         compress_type=zipfile.ZIP_DEFLATED)
        archive.writestr(_TEXT, text, compress_type=zipfile.ZIP_DEFLATED)
        for value in constants:  # stored: weights hardly compress, and stored members map fast
            with archive.open(members[value.name], "w") as member:
                np.lib.format.write_array(member, np.ascontiguousarray(value.data), allow_pickle=False)
    return buffer.getvalue()


def from_bytes(data: bytes, where: str = "<bytes>") -> Graph:
    """A graph from its saved form; `where` names the source in errors."""
    try:
        archive = zipfile.ZipFile(io.BytesIO(data))
    except zipfile.BadZipFile:
        raise LoadError(f"{where}: not a qcompiler graph file (not a zip archive, or truncated: "
                        f"{len(data)} bytes)") from None
    with archive:
        header = _header(archive, where)
        text = _member(archive, _TEXT, where).decode("utf-8", errors="replace")
        arrays = {name: _array(archive, name, member, where)
                  for name, member in header["constants"].items()}
    if _content_hash(text, list(arrays.items())) != header.get("content_sha256"):
        raise LoadError(f"{where}: the content hash does not match the header: the file is "
                        "corrupted or was edited")
    try:
        graph = parse(text, arrays)
    except ParseError as error:
        raise LoadError(f"{where}: graph.txt does not parse: {error}") from None
    if {v.name for v in graph.constants} != set(arrays):
        raise LoadError(f"{where}: the stored constants do not match the constants of graph.txt")
    for value in graph.constants:
        stored = arrays[value.name]
        if stored.shape != value.data.shape or stored.dtype != value.data.dtype:
            raise LoadError(f"{where}: stored constant %{value.name} is {stored.dtype}"
                            f"{list(stored.shape)}, but graph.txt says {value.type_str}")
        value.data = stored  # the stored bits (the text's inline numbers lose NaN payloads)
    sources = header.get("sources", {})
    for node in graph:
        node.source = sources.get(node.name, "")
    try:
        return graph.verify()
    except VerificationError as error:
        raise LoadError(f"{where}: the stored graph is not valid: {error}") from None


def _header(archive: zipfile.ZipFile, where: str) -> dict:
    try:
        header = json.loads(_member(archive, _HEADER, where))
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise LoadError(f"{where}: {_HEADER} is not valid JSON ({error})") from None
    if not isinstance(header, dict) or header.get("format") != FORMAT:
        raise LoadError(f"{where}: not a qcompiler graph file ({_HEADER} does not say "
                        f"format '{FORMAT}')")
    version = header.get("format_version")
    if isinstance(version, bool) or not isinstance(version, int) or version < 1:
        raise LoadError(f"{where}: bad format_version {version!r} in {_HEADER}")
    if version > FORMAT_VERSION:
        raise LoadError(f"{where}: written by qcompiler {header.get('qcompiler_version', '?')} in "
                        f"format version {version}; this qcompiler ({qcompiler_version()}) reads "
                        f"format version {FORMAT_VERSION}: upgrade qcompiler to load it")
    constants = header.get("constants")
    if not isinstance(constants, dict) or not all(
            isinstance(k, str) and isinstance(v, str) for k, v in constants.items()):
        raise LoadError(f"{where}: {_HEADER} lacks the constants table")
    return header


def _member(archive: zipfile.ZipFile, name: str, where: str) -> bytes:
    try:
        return archive.read(name)
    except KeyError:
        raise LoadError(f"{where}: the archive has no {name}") from None
    except (zipfile.BadZipFile, EOFError, OSError, zlib.error) as error:
        raise LoadError(f"{where}: {name} is corrupted ({error})") from None


def _array(archive: zipfile.ZipFile, name: str, member: str, where: str) -> np.ndarray:
    try:
        array = np.lib.format.read_array(io.BytesIO(_member(archive, member, where)),
                                         allow_pickle=False)
    except ValueError as error:  # object arrays (pickles) and malformed .npy headers
        raise LoadError(f"{where}: constant %{name} ({member}) is not a plain array: {error}") from None
    if array.dtype not in NUMPY_TO_DTYPE:
        raise LoadError(f"{where}: constant %{name} has dtype {array.dtype}, which the IR lacks")
    return array


def _content_hash(text: str, constants: list[tuple[str, np.ndarray]]) -> str:
    digest = hashlib.sha256(text.encode())
    for name, array in sorted(constants, key=lambda item: item[0]):
        digest.update(f"\0{name}\0{array.dtype.str}\0{array.shape}\0".encode())
        digest.update(np.ascontiguousarray(array).tobytes())
    return digest.hexdigest()
