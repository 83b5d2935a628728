"""The wheel: built from a copy of the source (as pip would from an sdist), it holds every
package folder and module, and every module imports from it with the checkout out of
sight. setup.py finds the packages; this is the check that it finds them all, including
passes/ and backends/, which sit at the repository root and install as qcompiler.passes
and qcompiler.backends."""

import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
# Source folder -> where setup.py installs it.
PACKAGES = {"qcompiler": "qcompiler", "passes": "qcompiler/passes", "backends": "qcompiler/backends"}
BUILD_FILES = ("setup.py", "pyproject.toml", "README.md")


def expected_files() -> set[str]:
    """Every Python file of the packages, at its path inside the wheel."""
    return {"/".join([installed, *path.relative_to(ROOT / folder).parts])
            for folder, installed in PACKAGES.items() for path in (ROOT / folder).rglob("*.py")}


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    pytest.importorskip("setuptools", minversion="70.1")  # builds wheels without `wheel`
    source = tmp_path_factory.mktemp("source")
    for name in BUILD_FILES:
        shutil.copy(ROOT / name, source / name)
    for folder in PACKAGES:
        shutil.copytree(ROOT / folder, source / folder,
                        ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    out = tmp_path_factory.mktemp("wheel")
    # No build isolation: the test environment's setuptools builds it, with no download.
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation",
                    "--no-index", "--quiet", "--wheel-dir", str(out), str(source)],
                   check=True, capture_output=True, text=True, timeout=300)
    (built,) = out.glob("qcompiler-*.whl")
    return built


def test_every_package_folder_and_module_is_in_the_wheel(wheel):
    names = set(zipfile.ZipFile(wheel).namelist())
    packages = {name for name in expected_files() if name.endswith("/__init__.py")}
    assert len(packages) >= 11 and packages <= names  # every folder with an __init__.py
    assert expected_files() <= names
    assert f"{PACKAGES['passes']}/fold_batchnorm.py" in names  # a root folder, installed below qcompiler


def test_every_module_imports_from_the_wheel(wheel, tmp_path):
    site = tmp_path / "site"
    zipfile.ZipFile(wheel).extractall(site)
    modules = sorted(name.removesuffix(".py").removesuffix("/__init__").replace("/", ".")
                     for name in expected_files())
    script = (
        "import importlib, sys\n"
        f"site = {str(site)!r}\n"
        f"for name in {modules!r}:\n"
        "    module = importlib.import_module(name)\n"
        "    assert module.__file__.startswith(site), (name, module.__file__)\n"
        "print(len(sys.modules))\n"
    )
    # From an empty folder, with the unpacked wheel first on the path: the checkout (and its
    # editable install, which Python consults after the path) cannot supply a module.
    result = subprocess.run([sys.executable, "-c", script], cwd=tmp_path, capture_output=True,
                            text=True, timeout=300, env={"PYTHONPATH": str(site), "PATH": ""})
    assert result.returncode == 0, result.stderr
