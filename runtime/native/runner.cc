// edgecnn's small bundle runner: loads a bundle's model.so with TVM's runtime and runs its
// Relax VM `main` on float32 inputs read from raw files. Built with a cross compiler for
// aarch64 and run under qemu-user by edgecnn.runtime.emulate; it needs only the tvm_ffi
// headers (TVM's own runtime headers are not usable from the wheel) and links the wheel's
// libtvm_runtime.so and libtvm_ffi.so.
//
// usage: runner MODEL.so WORK_DIR REPEAT WARMUP
//   WORK_DIR/inputs.txt   one line per input, in the order of `main`'s parameters:
//                         FILE NDIM D0 D1 ...   (FILE relative to WORK_DIR, raw float32)
//   WORK_DIR/output_K.bin written raw float32, one per output
//   WORK_DIR/outputs.txt  one line per output: output_K.bin NDIM D0 D1 ...
//   WORK_DIR/times.txt    seconds per timed call, one per line (REPEAT lines; 0 when REPEAT is 0)
// TVM_NUM_THREADS in the environment sizes TVM's thread pool; its workers are left unpinned
// (TVM_BIND_THREADS=0) unless the environment says otherwise, as in edgecnn.runtime.bundle. Exit status 0 on success;
// errors go to stderr.
#include <tvm/ffi/any.h>
#include <tvm/ffi/container/array.h>
#include <tvm/ffi/container/tensor.h>
#include <tvm/ffi/error.h>
#include <tvm/ffi/extra/module.h>
#include <tvm/ffi/function.h>

#include <chrono>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <iostream>
#include <sstream>
#include <string>
#include <vector>

namespace ffi = tvm::ffi;

namespace {

constexpr int kDeviceCPU = 1;        // kDLCPU
constexpr int kPooledAllocator = 2;  // the Relax VM's pooled allocator

struct HostAlloc {
  void AllocData(DLTensor* tensor) {
    size_t bytes = ffi::GetDataSize(*tensor);
    tensor->data = std::malloc(bytes == 0 ? 1 : bytes);
    if (tensor->data == nullptr) throw std::runtime_error("out of memory");
  }
  void FreeData(DLTensor* tensor) { std::free(tensor->data); }
};

std::vector<uint8_t> ReadFile(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) throw std::runtime_error("cannot open " + path);
  return std::vector<uint8_t>((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
}

std::vector<ffi::Tensor> ReadInputs(const std::string& dir) {
  std::ifstream spec(dir + "/inputs.txt");
  if (!spec) throw std::runtime_error("cannot open " + dir + "/inputs.txt");
  std::vector<ffi::Tensor> inputs;
  std::string line;
  while (std::getline(spec, line)) {
    if (line.empty()) continue;
    std::istringstream fields(line);
    std::string file;
    int ndim = 0;
    fields >> file >> ndim;
    std::vector<int64_t> shape(ndim);
    for (auto& d : shape) fields >> d;
    if (!fields) throw std::runtime_error("malformed line in inputs.txt: " + line);
    DLDataType f32{kDLFloat, 32, 1};
    DLDevice cpu{kDLCPU, 0};
    ffi::Tensor t = ffi::Tensor::FromNDAlloc(HostAlloc(), ffi::Shape(shape), f32, cpu);
    std::vector<uint8_t> bytes = ReadFile(dir + "/" + file);
    if (bytes.size() != ffi::GetDataSize(*t.GetDLTensorPtr())) {
      throw std::runtime_error(file + ": size " + std::to_string(bytes.size()) + " bytes does not match its shape");
    }
    std::memcpy(t.data_ptr(), bytes.data(), bytes.size());
    inputs.push_back(t);
  }
  return inputs;
}

ffi::Any Call(const ffi::Function& main_fn, const std::vector<ffi::Tensor>& inputs) {
  std::vector<ffi::AnyView> args(inputs.begin(), inputs.end());
  ffi::Any result;
  main_fn.CallPacked(args.data(), static_cast<int32_t>(args.size()), &result);
  return result;
}

void WriteOutputs(const std::string& dir, const ffi::Any& result) {
  std::vector<ffi::Tensor> outputs;
  if (auto single = result.try_cast<ffi::Tensor>()) {
    outputs.push_back(*single);
  } else if (auto many = result.try_cast<ffi::Array<ffi::Tensor>>()) {
    for (const ffi::Tensor& t : *many) outputs.push_back(t);
  } else {
    throw std::runtime_error("main returned neither a tensor nor a tuple of tensors");
  }
  std::ofstream spec(dir + "/outputs.txt");
  for (size_t k = 0; k < outputs.size(); ++k) {
    const DLTensor* t = outputs[k].GetDLTensorPtr();
    if (t->dtype.code != kDLFloat || t->dtype.bits != 32 || !outputs[k].IsContiguous()) {
      throw std::runtime_error("output " + std::to_string(k) + " is not a contiguous float32 tensor");
    }
    std::string file = "output_" + std::to_string(k) + ".bin";
    std::ofstream out(dir + "/" + file, std::ios::binary);
    out.write(static_cast<const char*>(t->data) + t->byte_offset,
              static_cast<std::streamsize>(ffi::GetDataSize(*t)));
    spec << file << " " << t->ndim;
    for (int i = 0; i < t->ndim; ++i) spec << " " << t->shape[i];
    spec << "\n";
  }
}

int Run(int argc, char** argv) {
  if (argc != 5) {
    std::cerr << "usage: " << argv[0] << " MODEL.so WORK_DIR REPEAT WARMUP\n";
    return 2;
  }
  std::string library = argv[1], dir = argv[2];
  int repeat = std::atoi(argv[3]), warmup = std::atoi(argv[4]);
  ffi::Module lib = ffi::Module::LoadFromFile(library);
  auto load_executable = lib->GetFunction("vm_load_executable", true);
  if (!load_executable) throw std::runtime_error(library + " has no vm_load_executable (not a Relax VM library)");
  ffi::Module vm = (*load_executable)().cast<ffi::Module>();
  auto init = vm->GetFunction("vm_initialization", false);
  if (!init) throw std::runtime_error("the VM has no vm_initialization");
  (*init)(kDeviceCPU, 0, kPooledAllocator);
  auto main_fn = vm->GetFunction("main", false);
  if (!main_fn) throw std::runtime_error(library + " has no function main");

  std::vector<ffi::Tensor> inputs = ReadInputs(dir);
  ffi::Any result = Call(*main_fn, inputs);
  WriteOutputs(dir, result);

  for (int i = 0; i < warmup; ++i) Call(*main_fn, inputs);
  std::ofstream times(dir + "/times.txt");
  for (int i = 0; i < repeat; ++i) {
    auto start = std::chrono::steady_clock::now();
    Call(*main_fn, inputs);
    std::chrono::duration<double> spent = std::chrono::steady_clock::now() - start;
    times << spent.count() << "\n";
  }
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  // a pinned worker can share a core with the unpinned calling thread: see unpin_thread_pool()
  setenv("TVM_BIND_THREADS", "0", /*overwrite=*/0);
  try {
    return Run(argc, argv);
  } catch (const std::exception& e) {
    std::cerr << "edgecnn runner: " << e.what() << "\n";
    return 1;
  }
}
