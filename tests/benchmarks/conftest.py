"""Running a benchmark script's `main` inside a test, with the process state it changes
(torch's thread count, the thread variables) restored afterwards."""

import importlib.util
import sys
from pathlib import Path

import pytest
import torch

BENCHMARKS = Path(__file__).resolve().parents[2] / "benchmarks"


@pytest.fixture
def run_benchmark(monkeypatch):
    """run_benchmark("compression", ["--quick", ...]): imports benchmarks/compression.py as a
    module and returns what its `main(argv)` returns."""

    def run(name: str, argv: list[str]):
        spec = importlib.util.spec_from_file_location(f"{name}_benchmark", BENCHMARKS / f"{name}.py")
        benchmark = importlib.util.module_from_spec(spec)
        monkeypatch.setitem(sys.modules, spec.name, benchmark)  # dataclasses look their module up
        spec.loader.exec_module(benchmark)
        for variable in ("TVM_NUM_THREADS", "OMP_NUM_THREADS"):
            monkeypatch.delenv(variable, raising=False)  # restored (or removed) after the test
        threads = torch.get_num_threads()
        try:
            return benchmark.main(argv)
        finally:
            torch.set_num_threads(threads)

    return run
