"""Wall-clock latency of inference engines side by side, as `qcompiler bench` and the demo
measure it: torch eager, onnxruntime FP32 and INT8 (its own post-training quantization), and
anything else given as a zero-argument callable (a TVM build, the interpreter).

Engines are timed in rounds, round-robin: before each engine's block of calls the harness
pauses (so the worker threads the previous engine left spinning, TVM's, onnxruntime's or
torch's OpenMP pool, go idle instead of stealing the cores) and makes one untimed call; a
block lasts about `block_seconds`. The result per engine is the median over rounds of the
time per call, with the fastest and slowest round. Every engine pays its own per-call
overhead from Python, the same way.
"""

from __future__ import annotations

import os
import tempfile
import time
import warnings
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import numpy as np
import torch


@dataclass(frozen=True)
class Latency:
    median_ms: float
    min_ms: float
    max_ms: float
    calls: int  # timed calls over all rounds

    def __str__(self) -> str:
        return f"{self.median_ms:.2f} ms (min {self.min_ms:.2f}, max {self.max_ms:.2f})"


def compare_latencies(engines: dict[str, Callable[[], object]], rounds: int = 7,
                      block_seconds: float = 0.2, pause: float = 0.05) -> dict[str, Latency]:
    """Median time per call of each engine (see the module docstring)."""
    if rounds < 1:
        raise ValueError(f"rounds must be >= 1, got {rounds}")
    calls = {}
    for name, engine in engines.items():
        engine()  # warm-up: lazy initialisation, first-touch allocation
        start = time.perf_counter()
        engine()
        calls[name] = int(min(max(block_seconds / max(time.perf_counter() - start, 1e-6), 1), 1000))
    times: dict[str, list[float]] = {name: [] for name in engines}
    for _ in range(rounds):
        for name, engine in engines.items():
            time.sleep(pause)
            if calls[name] > 1:  # wake the engine's threads; pointless for a slow engine
                engine()
            start = time.perf_counter()
            for _ in range(calls[name]):
                engine()
            times[name].append((time.perf_counter() - start) / calls[name] * 1e3)
    return {name: Latency(float(np.median(t)), float(min(t)), float(max(t)), calls[name] * rounds)
            for name, t in times.items()}


@contextmanager
def torch_threads(threads: int) -> Iterator[None]:
    """torch's intra-op thread count set for the block and restored after it (the count is
    process-wide: a caller in the same process, a test session, keeps its own)."""
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def torch_engine(module: torch.nn.Module, inputs: tuple) -> Callable[[], object]:
    """Eager torch on `inputs`; time it inside `torch_threads(n)`."""

    def run():
        with torch.inference_mode():
            return module(*inputs)

    return run


def _session(path: str, threads: int):
    import onnxruntime

    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.log_severity_level = 3
    return onnxruntime.InferenceSession(path, options, providers=["CPUExecutionProvider"])


def onnxruntime_files(module: torch.nn.Module, inputs: tuple, calibration: Iterable
                      ) -> tuple[str, str]:
    """(FP32, INT8) ONNX files in a new temporary directory: the module exported to ONNX
    (opset 17, inputs named input0, input1...), and that model quantized by onnxruntime's
    `quantize_static` in QDQ form with uint8 activations and per-channel int8 weights (its
    U8S8 default, the pairing its x86 kernels are fastest with), calibrated on `calibration`
    (batches shaped like `inputs`)."""
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    names = [f"input{i}" for i in range(len(inputs))]

    class Reader(CalibrationDataReader):
        def __init__(self):
            self.batches = iter(calibration)

        def get_next(self):
            batch = next(self.batches, None)
            if batch is None:
                return None
            batch = batch if isinstance(batch, tuple | list) else (batch,)
            return {n: t.numpy() for n, t in zip(names, batch, strict=True)}

    directory = tempfile.mkdtemp(prefix="qcompiler-ort-")
    fp32, prepared, int8 = (os.path.join(directory, f"{name}.onnx") for name in ("fp32", "prepared", "int8"))
    with warnings.catch_warnings():  # the TorchScript exporter is deprecated; it needs no onnxscript
        warnings.simplefilter("ignore")
        torch.onnx.export(module, tuple(inputs), fp32, input_names=names, opset_version=17, dynamo=False)
    # onnxruntime's recommended preparation (shape inference, graph optimization) first.
    quant_pre_process(fp32, prepared)
    quantize_static(prepared, int8, Reader(), quant_format=QuantFormat.QDQ,
                    activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8, per_channel=True)
    return fp32, int8


def onnxruntime_engines(module: torch.nn.Module, inputs: tuple, calibration: Iterable, threads: int
                        ) -> tuple[Callable[[], object], Callable[[], object]]:
    """(FP32, INT8) onnxruntime callables on `inputs`, running `onnxruntime_files`."""
    fp32, int8 = onnxruntime_files(module, inputs, calibration)
    names = [f"input{i}" for i in range(len(inputs))]
    feeds = {n: t.numpy() for n, t in zip(names, inputs, strict=True)}
    sessions = [_session(path, threads) for path in (fp32, int8)]
    return tuple((lambda session=session: session.run(None, feeds)) for session in sessions)
