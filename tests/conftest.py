"""Test-session settings shared by every test file.

Tests run torch and BLAS on one thread: the suite's layers are small, and on a
shared 2-core machine a second intra-op thread made small convolutions up to 100x
slower (and a 320x960 SVD 10-100x slower) while other work ran. Benchmarks set
their own thread counts.

Hypothesis profiles: "default" (random examples, hypothesis's deadline) for local runs,
and "ci" (derandomized, so a CI run is repeatable; no deadline, as CI machines differ in
speed and load), chosen with the environment variable HYPOTHESIS_PROFILE (`.ci/run` sets it).

`builtin_stages` builds every built-in model at every stage (float, fake-quant, integer)
once per session, for the tests that check something of each (saving, any batch size).
"""

import importlib.util
import os
import sys
from pathlib import Path

import pytest
import torch
from hypothesis import settings
from threadpoolctl import threadpool_limits

from qcompiler.examples import models

torch.set_num_threads(1)
# Kept for the whole session: numpy may already have loaded its BLAS, so environment
# variables would come too late.
_BLAS_LIMIT = threadpool_limits(limits=1)

settings.register_profile("ci", derandomize=True, deadline=None)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "default"))


# ---- every built-in model at every stage, shared by the serialization and any-batch tests ----
# The examples each model is calibrated on: three batches of different sizes (the last one
# smaller), as a DataLoader gives them. MobileNetV2 runs at 32x32 here (the same graph as at
# 224 but for its spatial sizes); tests marked slow take the 224 one.
CALIBRATION_BATCHES = (3, 8, 1)
STAGE_MODELS = ("resnet_style", "mobilenet_v2", "bert_style", "audio_conv1d", "digits_cnn")


def like_inputs(inputs: tuple, batch: int, generator: torch.Generator) -> tuple:
    """Seeded inputs like the example ones at another batch size (token ids stay in range)."""
    return tuple(torch.randn(batch, *x.shape[1:], generator=generator) if x.is_floating_point()
                 else torch.randint(0, int(x.max()) + 1, (batch, *x.shape[1:]), generator=generator)
                 for x in inputs)


@pytest.fixture(scope="session")
def builtin_stages():
    """name -> (model, example inputs, float graph, fake-quant graph (int8), integer graph), each built
    once: captured with a symbolic batch, quantized on batches of sizes 3, 8 and 1, lowered
    (BERT keeps its float islands: strict=False)."""
    import qcompiler as qc

    cache = {}

    def get(name: str, resolution: int = 32):
        key = (name, resolution)
        if key not in cache:
            kwargs = {"resolution": resolution} if name == "mobilenet_v2" else {}
            model, inputs = getattr(models, name)(**kwargs)
            graph = qc.trace(model, inputs)
            generator = torch.Generator().manual_seed(0)
            calibration = [like_inputs(inputs, batch, generator) for batch in CALIBRATION_BATCHES]
            # The int8 preset for every model (qc.quantize would pick the transformer preset,
            # with 16-bit activations, for bert_style): the stages QDQ export and TVM take.
            quantized = qc.quantize(graph, calibration, config="int8", bias_correction=False,
                                    progress=False)
            integer = qc.lower_to_integer(quantized, strict=name != "bert_style")
            cache[key] = (model, inputs, graph, quantized, integer)
        return cache[key]
    return get


# Running a benchmark script's `main` inside a test (tests/benchmarks), with the process state
# it changes (torch's thread count, the thread variables) restored afterwards.
BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"


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
