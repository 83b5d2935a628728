"""An aarch64 TVM RPC server on an x86 machine: an ARM device for the tracker, run under
qemu-aarch64 with TVM's own aarch64 runtime (docs/remote.md).

    python -m qcompiler.backends.tvm.remote_server --tracker 127.0.0.1:9190 --key aarch64-qemu

The aarch64 wheel holds no Python interpreter to run `python -m tvm.exec.rpc_server` with, so
the server is split where TVM's own server splits it. Listening, the tracker registration and
the key handshake are TVM's Python server code (`tvm.rpc.server`), running on the host; each
accepted session, which TVM serves in a forked child calling the runtime's `rpc.ServerLoop`
on the socket, is instead handed (the socket's file descriptor) to `runner/qc_rpc_server.cc`,
cross-compiled against the aarch64 runtime and run under qemu-aarch64. Everything the client
sends (the uploaded library, `load_module`, the Relax VM calls, `time_evaluator`) is executed
by the aarch64 runtime, so outputs are bit for bit an ARM board's. Timings under qemu mean
nothing.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys

from qcompiler.backends.tvm import aarch64
from qcompiler.backends.tvm.remote import parse_address

SERVER_SOURCE = aarch64.RUNNER_SOURCE.with_name("qc_rpc_server.cc")


def serve_in_qemu(sock, load_library, work_path) -> None:
    """Serve one session (the forked child of TVM's server) with the aarch64 session loop."""
    del load_library  # libraries to preload are the host's, not the device's
    descriptor = sock.fileno()
    environment = {**os.environ, "QEMU_LD_PREFIX": aarch64.SYSROOT, "TVM_NUM_THREADS": "1"}
    done = subprocess.run([aarch64.QEMU, str(aarch64.runner(SERVER_SOURCE)), str(descriptor),
                           work_path.path], pass_fds=(descriptor,), env=environment)
    if done.returncode != 0:
        sys.exit(done.returncode)


def serve(tracker: str, key: str, host: str = "127.0.0.1", port: int = 9090, port_end: int = 9199,
          custom_addr: str | None = None, silent: bool = False) -> None:
    """Register with `tracker` under `key` and serve sessions under qemu until killed."""
    from tvm.rpc import server

    aarch64._require(aarch64.QEMU, "qemu-user")
    aarch64.runner(SERVER_SOURCE)  # build (once) before registering: a session must not wait
    server._serve_loop = serve_in_qemu  # the one piece of TVM's server that runs the session
    state = server.PopenRPCServerState(host, port, port_end, tracker_addr=parse_address(tracker),
                                       key=key, custom_addr=custom_addr, silent=silent)
    state.thread.join()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m qcompiler.backends.tvm.remote_server",
                                     description="an aarch64 TVM RPC server under qemu-aarch64")
    parser.add_argument("--tracker", required=True, metavar="HOST:PORT")
    parser.add_argument("--key", default="aarch64-qemu", help="device key (default aarch64-qemu)")
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on")
    parser.add_argument("--port", type=int, default=9090, help="first port to try (default 9090)")
    parser.add_argument("--port-end", type=int, default=9199, help="last port to try, exclusive")
    parser.add_argument("--custom-addr", default=None, help="address to report to the tracker")
    parser.add_argument("--silent", action="store_true")
    args = parser.parse_args(argv)
    serve(args.tracker, args.key, args.host, args.port, args.port_end, args.custom_addr, args.silent)
    return 0


if __name__ == "__main__":
    sys.exit(main())
