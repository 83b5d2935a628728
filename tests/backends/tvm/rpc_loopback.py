"""A TVM RPC tracker and RPC servers on loopback, started and always stopped by a test.

Each process runs in its own process group (an RPC server forks a child per session), so
stopping kills the whole group; `pause` and `kill` let a test make a device hang or die
mid-run. Starting is bounded: each process imports TVM (5-50 s on a loaded 2-core machine)."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time

from qcompiler.backends.tvm import RemoteError, remote

START_TIMEOUT = 240.0  # seconds for the tracker and every server to register


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class Loopback:
    def __init__(self):
        self.tracker = ""
        self.processes: list[subprocess.Popen] = []
        self.servers: dict[str, list[subprocess.Popen]] = {}
        self.ports: dict[int, int] = {}  # server pid -> the port it binds (the first it tries)

    def _start(self, command: list[str], env: dict | None = None) -> subprocess.Popen:
        # QC_RPC_DEBUG=1 shows the tracker's and servers' logs.
        errors = None if os.environ.get("QC_RPC_DEBUG") else subprocess.DEVNULL
        process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=errors,
                                   start_new_session=True, env={**os.environ, **(env or {})})
        self.processes.append(process)
        return process

    def start_tracker(self) -> str:
        port = free_port()
        self._start([sys.executable, "-m", "tvm.exec.rpc_tracker", "--host", "127.0.0.1",
                     "--port", str(port), "--port-end", str(port + 1), "--silent"])
        self.tracker = f"127.0.0.1:{port}"
        return self.tracker

    def start_server(self, key: str, command: list[str] | None = None, env: dict | None = None):
        port = free_port()
        command = command or [sys.executable, "-m", "tvm.exec.rpc_server", "--host", "127.0.0.1",
                              "--port", str(port), "--port-end", str(port + 50),
                              "--tracker", self.tracker, "--key", key, "--silent"]
        process = self._start(command, {"TVM_NUM_THREADS": "1", **(env or {})})
        self.ports[process.pid] = port
        self.servers.setdefault(key, []).append(process)
        return process

    def start_aarch64_server(self, key: str):
        """An ARM device: our aarch64 session server under qemu-aarch64 behind TVM's Python
        server (`qcompiler.backends.tvm.remote_server`)."""
        port = free_port()
        return self.start_server(key, [sys.executable, "-m", "qcompiler.backends.tvm.remote_server",
                                       "--tracker", self.tracker, "--key", key, "--port", str(port),
                                       "--port-end", str(port + 50), "--silent"])

    def wait_free(self, key: str, count: int, timeout: float = START_TIMEOUT) -> None:
        """Until `count` devices are free under `key` (servers re-register after a session)."""
        deadline = time.monotonic() + timeout
        while True:
            try:
                summary = remote.Tracker(self.tracker, 2.0).summary()
                if summary["queue_info"].get(key, {}).get("free", 0) >= count:
                    return
            except RemoteError:
                pass
            if time.monotonic() > deadline:
                raise TimeoutError(f"{count} devices under {key!r} not free after {timeout:g} s")
            time.sleep(0.5)

    @staticmethod
    def signal(process: subprocess.Popen, number: int) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, number)

    def stop(self) -> None:
        for process in self.processes:
            self.signal(process, signal.SIGCONT)
            self.signal(process, signal.SIGKILL)
        for process in self.processes:
            process.wait(timeout=10)


@contextlib.contextmanager
def loopback():
    fleet = Loopback()
    try:
        fleet.start_tracker()
        yield fleet
    finally:
        fleet.stop()
