"""Package discovery, the one thing pyproject.toml cannot say: passes/ and backends/ sit at
the repository root (as the design card asks) and install as qcompiler.passes and
qcompiler.backends, each with every subpackage found below it. tests/test_packaging.py
builds the wheel and imports every module from it."""

from setuptools import find_packages, setup

ROOT_SUBPACKAGES = ("passes", "backends")

packages = find_packages(include=["qcompiler", "qcompiler.*"])
package_dir = {"qcompiler": "qcompiler"}
for root in ROOT_SUBPACKAGES:
    for found in find_packages(include=[root, f"{root}.*"]):
        packages.append(f"qcompiler.{found}")
        package_dir[f"qcompiler.{found}"] = found.replace(".", "/")

setup(packages=packages, package_dir=package_dir)
