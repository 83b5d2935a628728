"""Remote runs through TVM's RPC tracker on loopback: a tracker and RPC servers started (and
always stopped) here. Two devices share the timing rounds; a model with two outputs comes back
bit for bit the interpreter's; a device that hangs is given up after the timeout and the other
finishes its rounds; the only device dying mid-run leaves a partial result; an aarch64 build
runs on an ARM device (our session server under qemu-aarch64) bit for bit the interpreter's.

Slow: the tracker and each server import TVM (5-50 s each on a loaded 2-core machine)."""

from __future__ import annotations

import signal
import time

import numpy as np
import pytest
import torch

pytest.importorskip("tvm")

from rpc_loopback import loopback  # noqa: E402

import qcompiler as qc  # noqa: E402
from qcompiler.backends.tvm import remote  # noqa: E402

pytestmark = pytest.mark.slow


class TwoHeads(torch.nn.Module):
    """A feature map and logits: a tuple result of the VM's `main`."""

    def __init__(self):
        super().__init__()
        self.conv = torch.nn.Conv2d(3, 8, 3)
        self.head = torch.nn.Linear(8 * 6 * 6, 5)

    def forward(self, x):
        features = torch.relu(self.conv(x))
        return features, self.head(features.flatten(1))


@pytest.fixture(scope="module")
def integer_model(tmp_path_factory):
    torch.manual_seed(0)
    model = TwoHeads().eval()
    config = qc.QuantConfig.preset(qc.backends.tvm.quant_preset("host"))
    quantized = qc.quantize(model, [torch.randn(1, 3, 8, 8) for _ in range(4)], config=config,
                            progress=False)
    graph = qc.lower_to_integer(quantized, target=qc.backends.tvm.lowering_target("host"))
    compiled = qc.backends.tvm.build(graph, "host")  # symbolic batch: the device runs any batch
    return graph, compiled, compiled.export_library(tmp_path_factory.mktemp("remote") / "two_heads")


@pytest.fixture(scope="module")
def fleet():
    with loopback() as fleet:
        for _ in range(2):
            fleet.start_server("pair")
        fleet.wait_free("pair", 2)
        yield fleet


def test_two_devices_share_the_rounds_and_return_the_interpreters_outputs(fleet, integer_model):
    graph, compiled, directory = integer_model
    fleet.wait_free("pair", 2)
    result = remote.benchmark(directory, fleet.tracker, "pair", repeat=16, number=20000)
    assert not result.partial and len(result.times_ms) == 16 and result.outputs_agree
    assert len(result.devices) == 2 and all(d.rounds > 0 and d.error is None for d in result.devices)
    assert sum(d.rounds for d in result.devices) == 16
    expected = qc.backends.interpreter.run(graph, *compiled.example_inputs())
    assert len(result.outputs) == 2
    assert all(np.array_equal(a, b) for a, b in zip(result.outputs, expected, strict=True))


def test_run_takes_inputs_and_returns_a_tuple_bit_exact(fleet, integer_model):
    graph, compiled, _ = integer_model
    fleet.wait_free("pair", 1)
    for batch in (1, 3):  # one symbolic artifact, two batch sizes
        x = np.random.default_rng(3).standard_normal((batch, 3, 8, 8)).astype(np.float32)
        outputs = remote.run(compiled, x, tracker=fleet.tracker, key="pair")
        expected = qc.backends.interpreter.run(graph, x)
        assert isinstance(outputs, tuple) and len(outputs) == 2 and outputs[0].shape[0] == batch
        assert all(np.array_equal(a, b) for a, b in zip(outputs, expected, strict=True))


def test_a_device_that_hangs_is_given_up_and_the_other_finishes(fleet, integer_model):
    _, _, directory = integer_model
    fleet.wait_free("pair", 2)
    stopped = []

    def hang_the_first_to_report(device, measured):
        if not stopped:
            port = int(device.rsplit(":", 1)[1])
            process = next(p for p in fleet.servers["pair"] if fleet.ports[p.pid] == port)
            fleet.signal(process, signal.SIGSTOP)
            stopped.append((device, process))

    start = time.monotonic()
    result = remote.benchmark(directory, fleet.tracker, "pair", repeat=16, number=200, timeout=5,
                              progress=hang_the_first_to_report)
    assert time.monotonic() - start < 60
    device, process = stopped[0]
    fleet.signal(process, signal.SIGCONT)
    assert not result.partial and len(result.times_ms) == 16
    hung = next(d for d in result.devices if d.name == device)
    assert hung.error.startswith("no answer for 5 s while timing")


def test_the_only_device_dying_mid_run_leaves_a_partial_result(integer_model):
    _, _, directory = integer_model
    with loopback() as fleet:
        server = fleet.start_server("single")
        fleet.wait_free("single", 1)
        result = remote.benchmark(directory, fleet.tracker, "single", repeat=40, number=50,
                                  progress=lambda device, measured: fleet.signal(server, signal.SIGKILL))
    assert result.partial and len(result.times_ms) == 10  # one chunk of a quarter of the rounds
    assert "PARTIAL: 10 of 40 rounds" in str(result)
    assert result.devices[0].error.startswith("timing 10 rounds:")


def test_cli_bench_uploads_a_compiled_directory(fleet, integer_model, capsys):
    from qcompiler.cli import main

    _, _, directory = integer_model
    fleet.wait_free("pair", 2)
    assert main(["bench", str(directory), "--rpc", fleet.tracker, "--key", "pair", "--repeat", "8"]) == 0
    text = capsys.readouterr().out
    assert "8 rounds x 1 calls on 2 device(s) under key 'pair'" in text


def test_an_aarch64_build_runs_on_the_qemu_rpc_server_bit_exact(tmp_path):
    """The ARM device: our aarch64 session server under qemu-aarch64 behind TVM's Python
    server; the aarch64 library is uploaded, loaded and run by the aarch64 runtime."""
    import shutil

    from qcompiler.backends.tvm import aarch64

    missing = [tool for tool in (aarch64.CROSS_CXX, aarch64.QEMU) if shutil.which(tool) is None]
    if missing:
        pytest.fail(f"install the aarch64 toolchain first: {', '.join(missing)} (.ci/run does)")
    torch.manual_seed(0)
    config = qc.QuantConfig.preset(qc.backends.tvm.quant_preset("aarch64-dotprod"))
    quantized = qc.quantize(TwoHeads().eval(), [torch.randn(1, 3, 8, 8) for _ in range(4)],
                            config=config, progress=False)
    graph = qc.lower_to_integer(quantized, target=qc.backends.tvm.lowering_target("aarch64-dotprod"))
    compiled = qc.backends.tvm.build(graph, "aarch64-dotprod", batch=1)
    x = np.random.default_rng(5).standard_normal((1, 3, 8, 8)).astype(np.float32)
    with loopback() as fleet:
        fleet.start_aarch64_server("arm")
        fleet.wait_free("arm", 1)
        outputs = remote.run(compiled, x, tracker=fleet.tracker, key="arm", timeout=120)
        fleet.wait_free("arm", 1)
        result = remote.benchmark(compiled, fleet.tracker, "arm", repeat=2, number=2, timeout=120)
    expected = qc.backends.interpreter.run(graph, x)
    assert all(np.array_equal(a, b) for a, b in zip(outputs, expected, strict=True))
    assert result.target == "aarch64-dotprod" and not result.partial
    on_examples = qc.backends.interpreter.run(graph, *compiled.example_inputs())
    assert all(np.array_equal(a, b) for a, b in zip(result.outputs, on_examples, strict=True))
