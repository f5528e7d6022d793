// Entry points into the CUDA backends (real and emulated) that engine/backend.cpp calls.
// Stubs with clear errors are linked when a flavour is not built (see engine/cuda/README.md).
#pragma once

#include <memory>

namespace sp {

class Backend;

// The CUDA backend compiled with g++ over kernels/emu (device "cuda-emu").
std::unique_ptr<Backend> make_cuda_emu_backend();
bool cuda_emu_backend_built();
// The real CUDA backend (device "cuda:N"); throws an Error naming the reason when unavailable.
std::unique_ptr<Backend> make_cuda_backend(int device_index);
// Number of usable GPUs: 0 when the real backend is not built or no GPU is present.
int cuda_device_count();

}  // namespace sp
