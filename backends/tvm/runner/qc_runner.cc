// qc_runner: run a model library exported by qcompiler's TVM backend on its Relax VM, with
// nothing but TVM's runtime (libtvm_runtime.so, libtvm_ffi.so). Built for aarch64 by
// qcompiler.backends.tvm.aarch64 and run under qemu-aarch64 (or on an ARM board).
//
//   qc_runner MODEL.so SPEC OUT_DIR
//
// SPEC has one line per input, in the model's order:
//   <dtype code> <bits> <rank> <dim>... <path of the raw little-endian data>
// (dtype codes as in DLPack: 0 int, 1 uint, 2 float). Each output i is written to
// OUT_DIR/output<i>.bin, and stdout gets one line per output: "output <i> <code> <bits>
// <rank> <dim>...". Errors go to stderr with exit code 1.

#include <tvm/ffi/container/array.h>
#include <tvm/ffi/container/tensor.h>
#include <tvm/ffi/extra/module.h>
#include <tvm/ffi/function.h>

#include <cstdlib>
#include <cstring>
#include <fstream>
#include <iostream>
#include <sstream>
#include <string>
#include <vector>

namespace ffi = tvm::ffi;

namespace {

struct HostAllocator {
  void AllocData(DLTensor* tensor) {
    size_t bytes = ffi::GetDataSize(*tensor);
    tensor->data = std::aligned_alloc(64, (bytes + 63) / 64 * 64);
    if (tensor->data == nullptr) throw std::runtime_error("out of memory");
  }
  void FreeData(DLTensor* tensor) { std::free(tensor->data); }
};

ffi::Tensor ReadInput(const std::string& line) {
  std::istringstream fields(line);
  int code = 0, bits = 0, rank = 0;
  fields >> code >> bits >> rank;
  std::vector<int64_t> shape(rank);
  for (auto& dim : shape) fields >> dim;
  std::string path;
  fields >> path;
  if (!fields) throw std::runtime_error("bad spec line: " + line);
  DLDataType dtype{static_cast<uint8_t>(code), static_cast<uint8_t>(bits), 1};
  ffi::Tensor tensor = ffi::Tensor::FromNDAlloc(HostAllocator(), ffi::Shape(shape), dtype,
                                                DLDevice{kDLCPU, 0});
  size_t bytes = ffi::GetDataSize(*tensor.GetDLTensorPtr());
  std::ifstream file(path, std::ios::binary);
  file.read(static_cast<char*>(tensor.data_ptr()), static_cast<std::streamsize>(bytes));
  if (static_cast<size_t>(file.gcount()) != bytes) throw std::runtime_error("short input file " + path);
  return tensor;
}

void WriteOutput(const ffi::Tensor& tensor, int index, const std::string& directory) {
  const DLTensor* dl = tensor.GetDLTensorPtr();
  std::string path = directory + "/output" + std::to_string(index) + ".bin";
  std::ofstream file(path, std::ios::binary);
  file.write(static_cast<const char*>(dl->data), static_cast<std::streamsize>(ffi::GetDataSize(*dl)));
  if (!file) throw std::runtime_error("cannot write " + path);
  std::cout << "output " << index << " " << int(dl->dtype.code) << " " << int(dl->dtype.bits) << " "
            << dl->ndim;
  for (int i = 0; i < dl->ndim; ++i) std::cout << " " << dl->shape[i];
  std::cout << "\n";
}

}  // namespace

int main(int argc, char** argv) {
  if (argc != 4) {
    std::cerr << "usage: qc_runner MODEL.so SPEC OUT_DIR\n";
    return 2;
  }
  try {
    ffi::Module library = ffi::Module::LoadFromFile(argv[1]);
    ffi::Module machine = library->GetFunction("vm_load_executable").value()().cast<ffi::Module>();
    // One CPU device with the pooled allocator (what relax.VirtualMachine(lib, tvm.cpu()) does).
    machine->GetFunction("vm_initialization").value()(static_cast<int>(kDLCPU), 0, 2);
    std::vector<ffi::Any> inputs;
    std::ifstream spec(argv[2]);
    for (std::string line; std::getline(spec, line);) {
      if (!line.empty()) inputs.emplace_back(ReadInput(line));
    }
    std::vector<ffi::AnyView> views(inputs.begin(), inputs.end());
    ffi::Any result;
    machine->GetFunction("main").value().CallPacked(views.data(), static_cast<int>(views.size()), &result);
    if (auto tensor = result.try_cast<ffi::Tensor>()) {
      WriteOutput(*tensor, 0, argv[3]);
    } else {
      auto outputs = result.cast<ffi::Array<ffi::Any>>();
      for (size_t i = 0; i < outputs.size(); ++i) WriteOutput(outputs[i].cast<ffi::Tensor>(), i, argv[3]);
    }
  } catch (const std::exception& error) {
    std::cerr << "qc_runner: " << error.what() << "\n";
    return 1;
  }
  return 0;
}
