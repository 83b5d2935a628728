"""Bad input to remote runs fails fast with a clear error, never a hang: an address that is not
HOST:PORT, a port where nothing listens, a listener that never answers, a tracker without the
key. The tracker here is a stand-in speaking TVM's tracker protocol (magic number, then
length-prefixed JSON); the real tracker and servers are in test_tvm_remote.py (slow)."""

from __future__ import annotations

import json
import socket
import struct
import threading
import time

import pytest

pytest.importorskip("tvm")

from rpc_loopback import free_port  # noqa: E402
from tvm.rpc.base import RPC_TRACKER_MAGIC  # noqa: E402

import qcompiler as qc  # noqa: E402
from qcompiler.backends.tvm import remote  # noqa: E402


class StandIn:
    """Listens on loopback; answers the tracker handshake and a SUMMARY with `summary`, or
    (`silent`) accepts and says nothing."""

    def __init__(self, summary: dict | None = None, silent: bool = False):
        self.summary, self.silent = summary, silent
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.address = f"127.0.0.1:{self.sock.getsockname()[1]}"
        self.connections = []
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self):
        while True:
            try:
                connection, _ = self.sock.accept()
            except OSError:
                return
            self.connections.append(connection)
            if self.silent:
                continue
            connection.recv(4)
            connection.sendall(struct.pack("<i", RPC_TRACKER_MAGIC))
            size = struct.unpack("<i", connection.recv(4))[0]
            connection.recv(size)
            answer = json.dumps([0, self.summary]).encode()
            connection.sendall(struct.pack("<i", len(answer)) + answer)

    def close(self):
        self.sock.close()
        for connection in self.connections:
            connection.close()


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    """A compiled-model directory (the checks below fail before anything is uploaded)."""
    import torch

    graph = qc.trace(torch.nn.ReLU().eval(), (torch.randn(1, 4),))
    return qc.backends.tvm.build(graph, "host", batch=1).export_library(tmp_path_factory.mktemp("m") / "tiny")


def test_an_address_without_port_is_refused(model):
    with pytest.raises(qc.backends.tvm.RemoteError, match=r"'localhost' is not HOST:PORT"):
        remote.benchmark(model, "localhost", "board")


def test_a_port_where_nothing_listens_fails_at_once(model):
    start = time.monotonic()
    with pytest.raises(qc.backends.tvm.TrackerUnreachableError,
                       match=r"cannot reach the RPC tracker at 127.0.0.1:\d+ \(Connection refused\)"):
        remote.benchmark(model, f"127.0.0.1:{free_port()}", "board")
    assert time.monotonic() - start < 2


def test_a_listener_that_never_answers_fails_within_the_connect_timeout(model):
    silent = StandIn(silent=True)
    try:
        start = time.monotonic()
        with pytest.raises(qc.backends.tvm.TrackerUnreachableError,
                           match=r"did not answer as an RPC tracker within 1 s"):
            remote.benchmark(model, silent.address, "board", connect_timeout=1.0)
        assert time.monotonic() - start < 3
    finally:
        silent.close()


def test_a_key_without_devices_names_the_keys_there(model):
    summary = {"queue_info": {"rk3588": {"free": 1, "pending": 0}},
               "server_info": [{"addr": ["10.0.0.7", 9090], "key": "server:rk3588"},
                               {"addr": ["10.0.0.8", 9090], "key": "server:rk3588"}]}
    tracker = StandIn(summary)
    try:
        with pytest.raises(qc.backends.tvm.NoDeviceError,
                           match=r"no device under key 'pi5' \(keys there: rk3588 \(2\)\); start one "
                                 r"with `python -m tvm.exec.rpc_server --tracker 127.0.0.1:\d+ --key pi5`"):
            remote.benchmark(model, tracker.address, "pi5")
        assert remote.Tracker(tracker.address).devices("rk3588") == ["10.0.0.7:9090", "10.0.0.8:9090"]
    finally:
        tracker.close()


def test_the_cli_reports_an_unreachable_tracker_in_one_line(model, capsys):
    from qcompiler.cli import main

    assert main(["bench", str(model), "--rpc", f"127.0.0.1:{free_port()}", "--key", "board"]) != 0
    error = capsys.readouterr().err
    assert "cannot reach the RPC tracker" in error and "Traceback" not in error
