"""Run and time compiled models on remote devices through a TVM RPC tracker (docs/remote.md).

    result = remote.benchmark(compiled_or_directory, tracker="10.0.0.5:9190", key="rk3588")
    print(result)                     # median over every device's rounds, per-device lines
    outputs = remote.run(compiled_or_directory, x, tracker=..., key=...)

The tracker and the RPC servers are TVM's own (`python -m tvm.exec.rpc_tracker`,
`python -m tvm.exec.rpc_server --tracker HOST:PORT --key KEY`, or our aarch64 server,
`remote_server.py`). A benchmark asks the tracker for every free device under the key, uploads
the library to each, runs the inputs once (the outputs come back and are compared between
devices), then the devices take timing rounds from one shared queue until `repeat` rounds are
done: two devices finish in about half the time of one.

Nothing here waits forever. The tracker is talked to with socket timeouts (its own client
retries for minutes and waits without end for a key that has no device); every device works in
its own thread and one that makes no progress for `timeout` seconds is given up: its unfinished
rounds go back to the queue for the others. If every device is lost, what was measured is
returned with `partial=True` (or `DeviceLostError` is raised when nothing was).
"""

from __future__ import annotations

import gc
import socket
import struct
import tempfile
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from qcompiler.backends.tvm import artifact
from qcompiler.backends.tvm.errors import (
    DeviceLostError,
    NoDeviceError,
    RemoteError,
    TrackerUnreachableError,
)
from qcompiler.errors import QCompilerError

CONNECT_TIMEOUT = 10.0  # seconds to reach the tracker and get an answer from it
TIMEOUT = 60.0  # seconds a device may spend on one step (upload, load, one chunk of rounds)


def parse_address(address: str) -> tuple[str, int]:
    """`HOST:PORT` as a (host, port) pair."""
    host, _, port = str(address).rpartition(":")
    if not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise RemoteError(f"tracker address {address!r} is not HOST:PORT (e.g. 127.0.0.1:9190)")
    return host, int(port)


class Tracker:
    """A client of TVM's tracker protocol (`tvm.rpc.base`) whose every wait is bounded."""

    def __init__(self, address: str, timeout: float = CONNECT_TIMEOUT):
        self.address, self.timeout = address, timeout
        self.host, self.port = parse_address(address)

    def _connect(self, timeout: float) -> socket.socket:
        from tvm.rpc import base

        try:
            sock = socket.create_connection((self.host, self.port), timeout=self.timeout)
        except OSError as error:
            raise TrackerUnreachableError(
                f"cannot reach the RPC tracker at {self.address} ({error.strerror or error}); start "
                "it there with `python -m tvm.exec.rpc_tracker --host 0.0.0.0 --port "
                f"{self.port}` (docs/remote.md) or fix --rpc") from None
        sock.settimeout(timeout)
        try:
            sock.sendall(struct.pack("<i", base.RPC_TRACKER_MAGIC))
            magic = struct.unpack("<i", base.recvall(sock, 4))[0]
        except (OSError, AssertionError, struct.error):
            sock.close()
            raise TrackerUnreachableError(
                f"{self.address} accepted a connection but did not answer as an RPC tracker "
                f"within {timeout:g} s; is it a TVM tracker (not an RPC server)?") from None
        if magic != base.RPC_TRACKER_MAGIC:
            sock.close()
            raise TrackerUnreachableError(f"{self.address} is not a TVM RPC tracker (it answered "
                                          "with another protocol); an RPC server's port?")
        return sock

    def _ask(self, message: list, timeout: float, waiting_for: str):
        from tvm.rpc import base

        sock = self._connect(min(timeout, self.timeout))
        sock.settimeout(timeout)
        try:
            base.sendjson(sock, message)
            return base.recvjson(sock)
        except TimeoutError:
            raise NoDeviceError(f"{waiting_for} within {timeout:g} s") from None
        except (OSError, AssertionError, ValueError) as error:
            raise TrackerUnreachableError(f"the RPC tracker at {self.address} dropped the "
                                          f"connection ({error})") from None
        finally:
            sock.close()  # the tracker forgets a request whose connection is gone

    def summary(self) -> dict:
        """{"queue_info": {key: {"free": n, "pending": m}}, "server_info": [...]}."""
        from tvm.rpc.base import TrackerCode

        answer = self._ask([TrackerCode.SUMMARY], self.timeout,
                           f"the RPC tracker at {self.address} did not answer")
        return answer[1]

    def devices(self, key: str) -> list[str]:
        """The addresses (host:port) of the servers registered under `key`."""
        return [f"{s['addr'][0]}:{s['addr'][1]}" for s in self.summary()["server_info"]
                if s["key"].split(":", 1)[-1] == key]

    def check_key(self, key: str) -> int:
        """The number of devices free under `key`; NoDeviceError naming the keys there are."""
        summary = self.summary()
        servers = [s["key"].split(":", 1)[-1] for s in summary["server_info"]]
        if key not in servers:
            known = ", ".join(f"{k} ({servers.count(k)})" for k in sorted(set(servers))) or "none"
            raise NoDeviceError(f"the RPC tracker at {self.address} has no device under key "
                                f"{key!r} (keys there: {known}); start one with `python -m "
                                f"tvm.exec.rpc_server --tracker {self.address} --key {key}`")
        return int(summary["queue_info"].get(key, {}).get("free", 0))

    def request(self, key: str, timeout: float):
        """A session on a free device under `key`; NoDeviceError if none is free in time."""
        from tvm import rpc
        from tvm.rpc.base import TrackerCode

        answer = self._ask([TrackerCode.REQUEST, key, "", 1], timeout,
                           f"no device under key {key!r} became free at {self.address}")
        if answer[0] != TrackerCode.SUCCESS:
            raise RemoteError(f"the RPC tracker at {self.address} refused the request ({answer})")
        host, port, match_key = answer[1]
        return rpc.connect(host, port, match_key), f"{host}:{port}"


# ---- the model on the device ---------------------------------------------------------------


@dataclass
class _Library:
    path: Path
    manifest: dict
    model: object  # a CompiledModel over the manifest (inputs checking, example inputs)
    keep: object = None  # a temporary directory to keep alive


def _library(model) -> _Library:
    """The exported library of a CompiledModel, or an artifact directory, read and checked."""
    from qcompiler.backends.tvm.compiled import CompiledModel

    if isinstance(model, CompiledModel):
        if model.loaded_from is not None:
            directory, keep = model.loaded_from, None
        elif model._export_dir is not None:
            directory, keep = model._export_dir, None
        else:
            keep = tempfile.TemporaryDirectory(prefix="qcompiler-remote-")
            directory = model.export_library(Path(keep.name) / "model")
    elif isinstance(model, str | Path):
        directory, keep = Path(model), None
    else:
        raise QCompilerError(f"remote runs take a CompiledModel or a compiled-model directory, "
                             f"got {type(model).__name__}")
    manifest, library = artifact.read(directory)
    return _Library(library, manifest, CompiledModel(None, artifact.target_of(manifest), manifest), keep)


class _Session:
    """One device: the library uploaded and loaded, a Relax VM over it."""

    def __init__(self, tracker: Tracker, key: str, library: _Library, timeout: float):
        from tvm import relax

        self.session, self.name = tracker.request(key, timeout)
        self.session.upload(bytearray(library.path.read_bytes()), "model.so")
        try:
            module = self.session.load_module("model.so")
        except Exception as error:  # noqa: BLE001  (TVM's message, last line: the loader's reason)
            target = library.manifest["target"]
            raise RemoteError(f"device {self.name} cannot load the library built for "
                              f"{target['name']} ({target['arch']}): "
                              f"{str(error).strip().splitlines()[-1]}") from None
        self.device = self.session.cpu()
        self.vm = relax.VirtualMachine(module, self.device)
        self.outputs = len(library.manifest["outputs"])

    def set_inputs(self, arrays: list[np.ndarray]) -> None:
        import tvm

        self.vm.set_input("main", *[tvm.runtime.tensor(a, self.device) for a in arrays])

    def run(self, arrays: list[np.ndarray]) -> list[np.ndarray]:
        """Outputs through set_input / invoke_stateful / get_outputs: a tuple result of `main`
        would come back as a remote reference that cannot be read."""
        self.set_inputs(arrays)
        self.vm.invoke_stateful("main")
        result = self.vm.get_outputs("main")
        results = list(result) if isinstance(result, tuple | list) else [result]
        return [r.numpy() for r in results]

    def time(self, rounds: int, number: int) -> list[float]:
        """`rounds` times of the mean of `number` calls (ms), on the inputs last set."""
        timer = self.vm.time_evaluator("invoke_stateful", self.device, number=number, repeat=rounds)
        return [float(t) * 1e3 for t in timer("main").results]


# ---- benchmarking across devices -----------------------------------------------------------


@dataclass(frozen=True)
class DeviceRun:
    name: str  # the server's host:port (or "device N" if it never got one)
    rounds: int  # timing rounds it measured
    median_ms: float | None
    error: str | None = None


@dataclass(frozen=True)
class RemoteBenchmark:
    """Latency of one call on the devices under `key`: the median (min, max) over all
    measured rounds; `partial` when fewer than `repeat` rounds were measured (devices lost)."""

    tracker: str
    key: str
    target: str
    repeat: int
    number: int
    times_ms: list[float]
    devices: list[DeviceRun]
    outputs: list[np.ndarray] = field(repr=False)
    outputs_agree: bool = True  # every device computed the same outputs

    @property
    def partial(self) -> bool:
        return len(self.times_ms) < self.repeat

    @property
    def median_ms(self) -> float:
        return float(np.median(self.times_ms))

    @property
    def min_ms(self) -> float:
        return float(np.min(self.times_ms))

    @property
    def max_ms(self) -> float:
        return float(np.max(self.times_ms))

    def __str__(self) -> str:
        status = (f"PARTIAL: {len(self.times_ms)} of {self.repeat} rounds" if self.partial
                  else f"{self.repeat} rounds")
        lines = [f"{self.median_ms:.3f} ms median (min {self.min_ms:.3f}, max {self.max_ms:.3f}; "
                 f"{status} x {self.number} calls on {sum(d.rounds > 0 for d in self.devices)} "
                 f"device(s) under key {self.key!r} at {self.tracker}, target {self.target})"]
        for device in self.devices:
            timing = f"{device.median_ms:.3f} ms median" if device.median_ms is not None else "no timing"
            lines.append(f"  {device.name}: {device.rounds} rounds, {timing}"
                         + (f"; FAILED: {device.error}" if device.error else ""))
        if not self.outputs_agree:
            lines.append("  WARNING: the devices computed different outputs")
        return "\n".join(lines)


class _Worker:
    def __init__(self, index: int):
        self.name = f"device {index}"
        self.stage = "requesting a device"
        self.last = time.monotonic()
        self.chunk: int | None = None  # rounds taken from the queue, not yet measured
        self.times: list[float] = []
        self.outputs: list[np.ndarray] | None = None
        self.error: str | None = None
        self.finished = False  # the thread ended, or was given up


class _Fleet:
    """The shared queue of rounds and the workers' state, under one lock."""

    def __init__(self, tracker: Tracker, key: str, library: _Library, arrays, rounds: list[int],
                 number: int, timeout: float, progress=None):
        self.tracker, self.key, self.library, self.arrays = tracker, key, library, arrays
        self.queue, self.number, self.timeout = deque(rounds), number, timeout
        self.progress, self.measured = progress, 0
        self.lock = threading.Lock()
        # Timing starts when every device is ready (or lost), so that all share the rounds.
        self.start = threading.Event()
        self.workers: list[_Worker] = []

    def work(self, worker: _Worker) -> None:
        device = None
        try:
            device = _Session(self.tracker, self.key, self.library, self.timeout)
            with self.lock:
                worker.name, worker.stage, worker.last = device.name, "running the inputs", time.monotonic()
            outputs = device.run(self.arrays)
            with self.lock:
                if worker.finished:
                    return
                worker.outputs, worker.last = outputs, time.monotonic()
            device.set_inputs(self.arrays)
            while not self.start.wait(0.05):
                with self.lock:
                    worker.last = time.monotonic()  # waiting for the others is not silence
            while True:
                with self.lock:
                    if worker.finished:
                        break
                    if not self.queue:
                        # Rounds another device holds come back to the queue if it is lost.
                        if not any(w.chunk is not None for w in self.workers if not w.finished):
                            break
                        worker.last = time.monotonic()
                        worker.stage = "waiting for the rounds of the other devices"
                        continue_waiting = True
                    else:
                        worker.chunk = self.queue.popleft()
                        worker.stage = f"timing {worker.chunk} rounds"
                        continue_waiting = False
                if continue_waiting:
                    time.sleep(0.05)
                    continue
                times = device.time(worker.chunk, self.number)
                with self.lock:
                    if worker.finished:
                        return
                    worker.times += times
                    worker.chunk, worker.last = None, time.monotonic()
                    self.measured += len(times)
                    measured = self.measured
                if self.progress is not None:
                    self.progress(worker.name, measured)
        except Exception as error:  # noqa: BLE001  (a device's failure is reported, not raised)
            message = str(error).strip().splitlines()
            with self.lock:
                if not worker.finished:
                    worker.error = f"{worker.stage}: {message[-1] if message else type(error).__name__}"
                    self._give_back(worker)
        finally:
            with self.lock:
                worker.finished = True
            # The session's Python objects hold reference cycles; the server is released (free
            # for the next request) only when the session is collected.
            device = None
            gc.collect()

    def _give_back(self, worker: _Worker) -> None:
        if worker.chunk is not None:
            self.queue.appendleft(worker.chunk)
            worker.chunk = None

    def watch(self, workers: list[_Worker], poll: float = 0.05) -> None:
        """Wait until the rounds are done or every worker has finished or been given up."""
        while True:
            with self.lock:
                now = time.monotonic()
                for worker in workers:
                    if not worker.finished and now - worker.last > self.timeout:
                        worker.error = f"no answer for {self.timeout:g} s while {worker.stage}"
                        worker.finished = True
                        self._give_back(worker)
                busy = [w for w in workers if not w.finished]
                if all(w.outputs is not None for w in busy):
                    self.start.set()
                done = (not self.queue and all(w.chunk is None for w in busy)
                        and any(w.outputs is not None for w in workers))
                if not busy or done:
                    for worker in busy:  # still connecting while the others did the work
                        worker.finished = True
                    return
            time.sleep(poll)


def benchmark(model, tracker: str, key: str, *, repeat: int = 10, number: int = 1, inputs=None,
              devices: int | None = None, timeout: float = TIMEOUT,
              connect_timeout: float = CONNECT_TIMEOUT, progress=None) -> RemoteBenchmark:
    """Time `model` (a CompiledModel or a compiled-model directory) on the devices under `key`
    at the RPC tracker `tracker` ("HOST:PORT"): `repeat` rounds of the mean of `number` calls,
    shared among up to `devices` free devices (default: all). `inputs` default to the model's
    seeded example inputs. A device that makes no progress for `timeout` seconds is given up.
    `progress(device, rounds measured so far)` is called after each chunk of rounds."""
    if repeat < 1 or number < 1 or (devices is not None and devices < 1):
        raise QCompilerError(f"remote benchmark needs repeat, number and devices >= 1, got "
                             f"{repeat}, {number}, {devices}")
    library = _library(model)
    arrays = library.model.checked_inputs(inputs) if inputs is not None else library.model.example_inputs()
    client = Tracker(tracker, connect_timeout)
    free = client.check_key(key)
    count = max(1, min(devices or free, repeat))
    # Chunks of rounds small enough that a lost device's unfinished chunk is little to redo.
    size = max(1, repeat // (4 * count))
    rounds = [size] * (repeat // size) + ([repeat % size] if repeat % size else [])
    fleet = _Fleet(client, key, library, arrays, rounds, number, timeout, progress)
    workers = fleet.workers = [_Worker(i) for i in range(count)]
    for worker in workers:
        threading.Thread(target=fleet.work, args=(worker,), daemon=True,
                         name=f"qcompiler-remote-{worker.name}").start()
    fleet.watch(workers)
    with fleet.lock:
        runs = [DeviceRun(w.name, len(w.times), float(np.median(w.times)) if w.times else None, w.error)
                for w in workers]
        times = [t for w in workers for t in w.times]
        outputs = [w.outputs for w in workers if w.outputs is not None]
    if not times or not outputs:
        failures = "; ".join(f"{r.name}: {r.error}" for r in runs if r.error) or "no device answered"
        raise DeviceLostError(f"no timing from the devices under key {key!r} at {tracker}: {failures}")
    agree = all(len(o) == len(outputs[0]) and all(np.array_equal(a, b) for a, b in zip(o, outputs[0],
                                                                                          strict=True))
                for o in outputs)
    return RemoteBenchmark(tracker, key, library.manifest["target"]["name"], repeat, number, times[:repeat],
                           runs, outputs[0], agree)


def run(model, *inputs, tracker: str, key: str, timeout: float = TIMEOUT,
        connect_timeout: float = CONNECT_TIMEOUT):
    """The outputs of `model` on one device under `key` (one array, or a tuple of them)."""
    library = _library(model)
    arrays = library.model.checked_inputs(inputs)
    client = Tracker(tracker, connect_timeout)
    client.check_key(key)
    fleet = _Fleet(client, key, library, arrays, [], 1, timeout)
    worker = _Worker(0)
    fleet.workers = [worker]
    threading.Thread(target=fleet.work, args=(worker,), daemon=True).start()
    fleet.watch([worker])
    if worker.outputs is None:
        raise DeviceLostError(f"{worker.name} under key {key!r} at {tracker} failed: {worker.error}")
    return worker.outputs[0] if len(worker.outputs) == 1 else tuple(worker.outputs)
