"""aarch64 for real, from an x86 machine: cross-compile the model library, look inside it,
and run it under `qemu-aarch64` with TVM's own aarch64 runtime.

- `cross_compiler()`: the `export_library` linker for aarch64 (`aarch64-linux-gnu-g++`,
  from the apt package `g++-aarch64-linux-gnu`).
- `instruction_counts(library)`: `sdot`/`udot` and NEON vector instructions per kernel, from
  `aarch64-linux-gnu-objdump -d`: the check that `+dotprod` builds use the dot-product
  instructions and plain `aarch64` builds only NEON.
- `runtime()`: `libtvm_runtime.so` and `libtvm_ffi.so` for aarch64, taken from the registry's
  manylinux aarch64 wheels of exactly the installed TVM and tvm-ffi versions (fetched with
  pip into a cache directory on first use, `$QCOMPILER_CACHE` or `~/.cache/qcompiler`).
- `run_in_qemu(directory, inputs)`: builds our runner (`runner/qc_runner.cc`: load the
  library, start the Relax VM, call `main`, write the outputs) against that runtime, once,
  and runs it under `qemu-aarch64` with `QEMU_LD_PREFIX=/usr/aarch64-linux-gnu`. Timings
  under qemu mean nothing; the outputs are bit for bit what an ARM board computes.

`python -m qcompiler.backends.tvm.aarch64 fetch` fetches the runtime and builds the runner
(what `.ci/run` does after installing the apt packages).
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import subprocess
import sys
import tempfile
import zipfile
from collections import Counter
from dataclasses import dataclass
from importlib.metadata import version
from pathlib import Path

import numpy as np

from qcompiler.backends.tvm import artifact
from qcompiler.backends.tvm.errors import TargetError

CROSS_CXX = "aarch64-linux-gnu-g++"
OBJDUMP = "aarch64-linux-gnu-objdump"
QEMU = "qemu-aarch64"
SYSROOT = "/usr/aarch64-linux-gnu"
WHEEL_PLATFORM = "manylinux_2_28_aarch64"
RUNNER_SOURCE = Path(__file__).with_name("runner") / "qc_runner.cc"
_CODES = {"int": 0, "uint": 1, "float": 2}
_NUMPY_KIND = {0: "i", 1: "u", 2: "f"}


def _require(tool: str, package: str) -> str:
    path = shutil.which(tool)
    if path is None:
        raise TargetError(f"{tool} is not installed; aarch64 builds need it: "
                          f"apt-get install -y {package}")
    return path


def require_cross_compiler() -> str:
    """The path of the aarch64 C++ cross compiler (TargetError naming the package if absent)."""
    return _require(CROSS_CXX, "g++-aarch64-linux-gnu")


def cross_compiler():
    """`export_library`'s fcompile for aarch64 shared libraries."""
    from tvm.support import cc

    return cc.cross_compiler(require_cross_compiler())


# ---- looking inside a library -------------------------------------------------------------------


@dataclass(frozen=True)
class InstructionCounts:
    dot_product: int  # sdot / udot / usdot
    neon: int  # instructions on NEON vector registers (v0.4s, ...), dot products included
    total: int
    dot_product_kernels: list[str]  # the functions holding dot products


def instruction_counts(library) -> InstructionCounts:
    """Count the dot-product and NEON vector instructions in an aarch64 library (a .so, or
    an artifact directory)."""
    library = Path(library)
    if library.is_dir():
        library = library / artifact.LIBRARY
    objdump = _require(OBJDUMP, "binutils-aarch64-linux-gnu")
    text = subprocess.run([objdump, "-d", "--no-show-raw-insn", str(library)], check=True,
                          capture_output=True, text=True).stdout
    function, dots, neon, total = "?", Counter(), 0, 0
    for line in text.splitlines():
        header = re.match(r"^[0-9a-f]+ <(.+)>:$", line)
        if header:
            function = header.group(1)
            continue
        parts = line.split("\t")
        if len(parts) < 2 or not re.match(r"^\s*[0-9a-f]+:$", parts[0]):
            continue
        mnemonic = parts[1].strip().split()[0] if parts[1].strip() else ""
        total += 1
        operands = parts[2] if len(parts) > 2 else ""
        if mnemonic in ("sdot", "udot", "usdot"):
            dots[function] += 1
        if re.search(r"\bv\d+\.\d*[bhsd]\b", operands):
            neon += 1
    return InstructionCounts(sum(dots.values()), neon, total, sorted(dots))


# ---- the aarch64 runtime and the runner ----------------------------------------------------------


def cache_directory() -> Path:
    root = os.environ.get("QCOMPILER_CACHE") or Path.home() / ".cache" / "qcompiler"
    return Path(root) / f"tvm-{version('apache-tvm')}-ffi-{version('apache-tvm-ffi')}-aarch64"


def runtime(fetch: bool = True) -> Path:
    """The directory holding the aarch64 `lib/` (libtvm_runtime.so, libtvm_ffi.so) and the
    tvm-ffi headers `include/`, fetched from the registry's wheels if missing."""
    directory = cache_directory()
    needed = [directory / "lib" / "libtvm_runtime.so", directory / "lib" / "libtvm_ffi.so",
              directory / "include" / "tvm" / "ffi" / "function.h"]
    if all(p.exists() for p in needed):
        return directory
    if not fetch:
        raise TargetError(f"the aarch64 TVM runtime is not in {directory}; fetch it with "
                          f"`{sys.executable} -m qcompiler.backends.tvm.aarch64 fetch`")
    staging = Path(tempfile.mkdtemp(prefix="aarch64-runtime-", dir=_parent(directory)))
    try:
        wheels = staging / "wheels"
        command = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:",
                   "--platform", WHEEL_PLATFORM, "--python-version",
                   f"{sys.version_info.major}.{sys.version_info.minor}", "-d", str(wheels),
                   f"apache-tvm=={version('apache-tvm')}", f"apache-tvm-ffi=={version('apache-tvm-ffi')}"]
        done = subprocess.run(command, capture_output=True, text=True)
        if done.returncode != 0:
            raise TargetError("could not download the aarch64 TVM wheels with pip (`"
                              f"{' '.join(command)}`): {done.stderr.strip().splitlines()[-1:]}")
        for wheel in wheels.glob("*.whl"):
            _extract(wheel, staging)
        shutil.rmtree(wheels)
        if directory.exists():
            shutil.rmtree(directory)
        os.replace(staging, directory)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return directory


def _parent(directory: Path) -> Path:
    directory.parent.mkdir(parents=True, exist_ok=True)
    return directory.parent


def _extract(wheel: Path, destination: Path) -> None:
    """The runtime libraries and tvm-ffi's C++ headers (with dlpack) out of one wheel."""
    with zipfile.ZipFile(wheel) as archive:
        for member in archive.namelist():
            name = Path(member).name
            if member in ("tvm/lib/libtvm_runtime.so", "tvm_ffi/lib/libtvm_ffi.so"):
                target = destination / "lib" / name
            elif member.startswith("tvm_ffi/include/") and not member.endswith("/"):
                target = destination / "include" / Path(member).relative_to("tvm_ffi/include")
            else:
                continue
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(archive.read(member))


def runner(source_path: Path = RUNNER_SOURCE) -> Path:
    """Our runner (or another program of runner/), cross-compiled for aarch64 against the
    cached runtime (rebuilt when its source changes)."""
    directory = runtime()
    source = source_path.read_bytes()
    binary = directory / f"{source_path.stem}-{hashlib.sha256(source).hexdigest()[:12]}"
    if binary.exists():
        return binary
    compiler = _require(CROSS_CXX, "g++-aarch64-linux-gnu")
    staging = binary.with_suffix(".tmp")
    command = [compiler, "-std=c++17", "-O2", str(source_path), "-o", str(staging),
               f"-I{directory / 'include'}", f"-L{directory / 'lib'}",
               # DT_RPATH (not RUNPATH) so that libtvm_runtime finds libtvm_ffi beside it too.
               f"-Wl,--disable-new-dtags,-rpath,{directory / 'lib'}", "-Wl,--no-as-needed",
               "-ltvm_runtime", "-ltvm_ffi"]
    done = subprocess.run(command, capture_output=True, text=True)
    if done.returncode != 0:
        raise TargetError(f"building the aarch64 {source_path.stem} failed: {done.stderr.strip()[-2000:]}")
    os.replace(staging, binary)
    return binary


def run_in_qemu(directory, inputs: list[np.ndarray]) -> list[np.ndarray]:
    """Run the aarch64 model in `directory` (an exported artifact) on `inputs` under
    qemu-aarch64; the outputs, as numpy arrays."""
    manifest, library = artifact.read(directory)
    qemu = _require(QEMU, "qemu-user")
    if not Path(SYSROOT).is_dir():
        raise TargetError(f"{SYSROOT} (the aarch64 C library qemu loads) is missing: "
                          "apt-get install -y g++-aarch64-linux-gnu")
    program = runner()
    with tempfile.TemporaryDirectory(prefix="qcompiler-qemu-") as work:
        work = Path(work)
        lines = []
        for index, array in enumerate(inputs):
            path = work / f"input{index}.bin"
            np.asarray(array, dtype=array.dtype.newbyteorder("<"), order="C").tofile(path)
            kind = {"i": "int", "u": "uint", "f": "float", "b": "uint"}[array.dtype.kind]
            lines.append(" ".join(str(v) for v in (_CODES[kind], array.dtype.itemsize * 8, array.ndim,
                                                   *array.shape, path)))
        (work / "spec.txt").write_text("\n".join(lines) + "\n")
        environment = {**os.environ, "QEMU_LD_PREFIX": SYSROOT, "TVM_NUM_THREADS": "1"}
        done = subprocess.run([qemu, str(program), str(library), str(work / "spec.txt"), str(work)],
                              capture_output=True, text=True, env=environment)
        if done.returncode != 0:
            raise TargetError(f"running {library} under {QEMU} failed (exit {done.returncode}): "
                              f"{done.stderr.strip()[-2000:]}")
        outputs = []
        for line in done.stdout.splitlines():
            fields = line.split()
            if not fields or fields[0] != "output":
                continue
            index, code, bits, rank = (int(v) for v in fields[1:5])
            shape = [int(v) for v in fields[5:5 + rank]]
            dtype = np.dtype(f"<{_NUMPY_KIND[code]}{bits // 8}")
            outputs.append(np.fromfile(work / f"output{index}.bin", dtype=dtype).reshape(shape))
    if len(outputs) != len(manifest["outputs"]):
        raise TargetError(f"the aarch64 runner returned {len(outputs)} outputs, the manifest "
                          f"lists {len(manifest['outputs'])}: {done.stderr.strip()[-500:]}")
    return outputs


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv != ["fetch"]:
        print("usage: python -m qcompiler.backends.tvm.aarch64 fetch", file=sys.stderr)
        return 2
    print(f"aarch64 TVM runtime: {runtime()}")
    print(f"runner: {runner()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
