"""A compiled model on disk: a directory holding the shared library (`model.so`) and
`manifest.json`, which says what the library computes and for what:

- `inputs`, `outputs`: name, shape, dtype and quantization parameters (those of the
  `quantize` that reads a float input and of the `dequantize` that produces a float output,
  or the value's own for an integer one);
- `target`: its name, TVM target dict, architecture, SIMD level and int8 weight range;
- `versions`: qcompiler, TVM and tvm-ffi; the library's SHA-256; the float fall backs; the
  kernel of each node (for profiles).

`write` is atomic: the files go into a fresh sibling directory, which is renamed into place
(replacing an older artifact by two renames), so a reader never sees half of one. `read`
checks everything it relies on and names what is wrong.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

from qcompiler.backends.tvm.errors import ArtifactError
from qcompiler.backends.tvm.target import TargetSpec

FORMAT = "qcompiler-tvm-artifact"
FORMAT_VERSION = 1
MANIFEST = "manifest.json"
LIBRARY = "model.so"


def _boundary_qparams(value) -> dict | None:
    """The (scale, zero point) a float boundary value is quantized with, or an integer
    value's own qparams."""
    if value.qparams is not None:
        qparams = value.qparams
        return {"scale": qparams.scale.tolist(), "zero_point": qparams.zero_point.tolist(),
                "axis": qparams.axis, "qmin": qparams.qmin, "qmax": qparams.qmax}
    for user in value.users:
        if user.op == "quantize":
            return {"scale": [float(user.attrs["scale"])],
                    "zero_point": [int(user.attrs["zero_point"])], "axis": None,
                    "qmin": int(user.attrs["qmin"]), "qmax": int(user.attrs["qmax"])}
    if value.producer is not None and value.producer.op == "dequantize":
        attrs = value.producer.attrs
        source = value.producer.inputs[0].qparams
        return {"scale": [float(attrs["scale"])], "zero_point": [int(attrs["zero_point"])],
                "axis": None, "qmin": source.qmin if source else None,
                "qmax": source.qmax if source else None}
    return None


def _tensor(value) -> dict:
    return {"name": value.name, "shape": [int(d) for d in value.shape], "dtype": value.dtype,
            "qparams": _boundary_qparams(value)}


def versions() -> dict:
    from importlib.metadata import PackageNotFoundError, version

    import tvm
    import tvm_ffi

    try:
        own = version("qcompiler")
    except PackageNotFoundError:
        own = "unknown"
    return {"qcompiler": own, "tvm": tvm.__version__, "tvm_ffi": getattr(tvm_ffi, "__version__", "?")}


def manifest_for(graph, spec: TargetSpec, fall_backs: list[str], functions: dict,
                 kernels: dict | None = None) -> dict:
    return {
        "format": FORMAT, "format_version": FORMAT_VERSION, "graph": graph.name,
        "library": LIBRARY, "library_sha256": None,
        "target": {"name": spec.name, "config": spec.config, "arch": spec.arch, "isa": spec.isa,
                   "description": spec.description, "weight_range": list(spec.weight_range)},
        "inputs": [_tensor(v) for v in graph.inputs],
        "outputs": [_tensor(v) for v in graph.outputs],
        "fall_backs": list(fall_backs),
        "functions": {name: list(nodes) for name, nodes in functions.items()},
        "kernels": dict(kernels or {}),
        "versions": versions(),
    }


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as file:
        for block in iter(lambda: file.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def write(directory, manifest: dict, write_library: Callable[[Path], None]) -> Path:
    """Write `manifest.json` and the library (`write_library(path)` creates it) into
    `directory` atomically. An existing directory is replaced only if it is an artifact
    (holds a manifest) or empty; anything else is refused, never deleted."""
    directory = Path(directory).resolve()
    if directory.exists() and (not directory.is_dir() or (
            any(directory.iterdir()) and not (directory / MANIFEST).is_file())):
        raise ArtifactError(f"{directory} exists and is not a compiled-model directory (no "
                            f"{MANIFEST}); choose a new or empty directory")
    directory.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{directory.name}.", dir=directory.parent))
    try:
        library = staging / LIBRARY
        write_library(library)
        manifest = {**manifest, "library_sha256": _sha256(library),
                    "created": datetime.now(UTC).isoformat(timespec="seconds")}
        with open(staging / MANIFEST, "w") as file:
            json.dump(manifest, file, indent=2, sort_keys=False)
            file.write("\n")
            file.flush()
            os.fsync(file.fileno())
        staging.chmod(0o755)
        if directory.exists():
            retired = Path(tempfile.mkdtemp(prefix=f".{directory.name}.old.", dir=directory.parent))
            os.replace(directory, retired / "artifact")
            os.replace(staging, directory)
            shutil.rmtree(retired, ignore_errors=True)
        else:
            os.replace(staging, directory)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return directory


def read(directory) -> tuple[dict, Path]:
    """The manifest and library path of an artifact directory, checked: the manifest parses
    and is ours, the library exists and has the hash the manifest records."""
    directory = Path(directory)
    if not directory.is_dir():
        raise ArtifactError(f"{directory} is not a directory; give the directory `qcompiler "
                            "compile ... -o DIR` (or CompiledModel.export_library) wrote")
    path = directory / MANIFEST
    if not path.is_file():
        raise ArtifactError(f"{directory} is not a compiled model: it has no {MANIFEST}")
    try:
        manifest = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise ArtifactError(f"{path} is corrupted: not valid JSON ({error}); compile the model "
                            "again") from None
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise ArtifactError(f"{path} is not a qcompiler TVM manifest (format "
                            f"{manifest.get('format') if isinstance(manifest, dict) else None!r})")
    if manifest.get("format_version") != FORMAT_VERSION:
        raise ArtifactError(f"{path} has format version {manifest.get('format_version')!r}; this "
                            f"qcompiler reads version {FORMAT_VERSION}: compile the model again")
    missing = [key for key in ("library", "library_sha256", "target", "inputs", "outputs")
               if key not in manifest]
    if missing:
        raise ArtifactError(f"{path} is corrupted: it lacks {', '.join(missing)}")
    library = directory / manifest["library"]
    if not library.is_file():
        raise ArtifactError(f"{directory} is incomplete: the library {manifest['library']} is "
                            "missing; compile the model again")
    if _sha256(library) != manifest["library_sha256"]:
        raise ArtifactError(f"{library} is corrupted: its SHA-256 differs from the one in "
                            f"{MANIFEST}; compile the model again")
    return manifest, library


def target_of(manifest: dict) -> TargetSpec:
    target = manifest["target"]
    try:
        return TargetSpec(target["name"], dict(target["config"]), target["arch"], target["isa"],
                          target.get("description", ""))
    except (KeyError, TypeError) as error:
        raise ArtifactError(f"the manifest's target is corrupted ({error!r})") from None


def load_library(library: Path):
    """The library as a TVM runtime module (what a Relax VM runs)."""
    import tvm

    try:
        return tvm.runtime.load_module(str(library))
    except Exception as error:  # TVM's message, last line: the loader's reason
        raise ArtifactError(f"TVM cannot load {library}: "
                            f"{str(error).strip().splitlines()[-1]}") from None
