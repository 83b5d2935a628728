// qc_rpc_server: serve one TVM RPC session on an already connected socket with nothing but
// TVM's runtime (libtvm_runtime.so, libtvm_ffi.so): the session half of an RPC server. The
// tracker registration, the key handshake and the accepting stay in Python on the host (TVM's
// own server code, qcompiler.backends.tvm.remote_server), which hands the socket over; built
// for aarch64 and run under qemu-aarch64, it is an ARM device on loopback.
//
//   qc_rpc_server SOCKET_FD WORK_DIR
//
// It registers what the runtime's RPC session asks its host for (the work directory uploads
// go to, and loading a module from it) and runs the runtime's server loop until the client
// closes the session.

#include <tvm/ffi/extra/module.h>
#include <tvm/ffi/function.h>

#include <cstdlib>
#include <iostream>
#include <string>

namespace ffi = tvm::ffi;

int main(int argc, char** argv) {
  if (argc != 3) {
    std::cerr << "usage: qc_rpc_server SOCKET_FD WORK_DIR\n";
    return 2;
  }
  try {
    const int fd = std::atoi(argv[1]);
    const std::string work = argv[2];
    ffi::Function::SetGlobal("tvm.rpc.server.workpath", ffi::Function::FromTyped(
        [work](ffi::String name) { return ffi::String(work + "/" + std::string(name)); }), true);
    ffi::Function::SetGlobal("tvm.rpc.server.load_module", ffi::Function::FromTyped(
        [work](ffi::String name) { return ffi::Module::LoadFromFile(work + "/" + std::string(name)); }),
        true);
    auto loop = ffi::Function::GetGlobal("rpc.ServerLoop");
    if (!loop.has_value()) throw std::runtime_error("this TVM runtime has no rpc.ServerLoop");
    (*loop)(fd);
  } catch (const std::exception& error) {
    std::cerr << "qc_rpc_server: " << error.what() << "\n";
    return 1;
  }
  return 0;
}
