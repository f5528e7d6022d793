// tests/cuda/cuda_test_util.h: helpers of the CUDA backend tests: the cpu, cuda-emu and kernel
// test backends, deterministic data, moving tensors between them, and element-wise comparisons.
#pragma once

#include <gtest/gtest.h>

#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>
#include <vector>

#include "engine/backend.h"
#include "engine/cuda/cuda_backend.h"
#include "engine/ops/ops.h"
#include "engine/tensor.h"

#if defined(__SANITIZE_THREAD__)
#define SP_CUDA_TEST_TSAN 1
#elif defined(__has_feature)
#if __has_feature(thread_sanitizer)
#define SP_CUDA_TEST_TSAN 1
#endif
#endif
#ifndef SP_CUDA_TEST_TSAN
#define SP_CUDA_TEST_TSAN 0
#endif

namespace sp::cuda_test {

inline Device emu_device() {
  return Device::cuda_emu();
}
inline Backend& cpu() {
  return backend_for(Device::cpu());
}
inline Backend& emu() {
  return backend_for(Device::cuda_emu());
}
inline cuda_emu::CudaBackend& emu_backend() {
  return dynamic_cast<cuda_emu::CudaBackend&>(emu());
}

// The device the kernel suites (CudaKernels, CudaAttention, CudaLargeShapes, CudaGemmEpilogues)
// run on: cuda-emu, or the one SOFTPROMPT_CUDA_TEST_DEVICE names (scripts/gpu_check.sh sets
// cuda:0), so the same comparisons with the CPU run on a real GPU. An unavailable device is an
// error, not a skip.
inline Device kernel_device() {
  static const Device device = [] {
    const char* name = std::getenv("SOFTPROMPT_CUDA_TEST_DEVICE");
    const Device d = name != nullptr && *name != '\0' ? Device::parse(name) : Device::cuda_emu();
    if (d.is_cpu() || !backend_available(d)) {
      std::fprintf(stderr,
                   "SOFTPROMPT_CUDA_TEST_DEVICE=%s: expected an available cuda:N or cuda-emu\n",
                   name);
      std::abort();
    }
    return d;
  }();
  return device;
}
inline Backend& kernel_backend() {
  return backend_for(kernel_device());
}
inline bool kernel_device_is_emulated() {
  return kernel_device() == Device::cuda_emu();
}
// Large shapes on a real GPU, small ones under the emulator (whose fibers run ~10^4 blocks/s).
inline int64_t on_gpu_or_emu(int64_t gpu, int64_t emu) {
  return kernel_device_is_emulated() ? emu : gpu;
}

// N(0, std) data, rounded to bf16 when the test runs in bf16 (so the CPU reference sees exactly
// the values the device computes on and only the kernels' own rounding differs).
inline Tensor data(const Shape& shape, uint64_t seed, DType dtype = DType::F32, float std = 1.0f) {
  Tensor t = randn(shape, seed, 0, 0.0f, std);
  return dtype == DType::F32 ? t : t.to(dtype).to(DType::F32);
}

// A host F32 tensor on the emulated device in `dtype`.
inline Tensor on_emu(const Tensor& host, DType dtype = DType::F32) {
  Tensor t = host.to(emu_device());
  return t.dtype() == dtype ? t : t.to(dtype);
}

// A host F32 tensor on the kernel test device in `dtype`.
inline Tensor on_kernel_device(const Tensor& host, DType dtype = DType::F32) {
  Tensor t = host.to(kernel_device());
  return t.dtype() == dtype ? t : t.to(dtype);
}

inline Tensor empty_like_on(const Tensor& like, Device device, DType dtype = DType::F32) {
  return Tensor::empty(like.shape(), dtype, device);
}

// |want - got| <= atol + rtol * |want| everywhere; reports the worst element.
inline ::testing::AssertionResult all_close(const Tensor& want, const Tensor& got, float atol,
                                            float rtol) {
  std::vector<float> w = want.to_floats(), g = got.to_floats();
  if (w.size() != g.size())
    return ::testing::AssertionFailure() << "sizes differ: " << w.size() << " vs " << g.size();
  for (size_t i = 0; i < w.size(); ++i) {
    const bool both_nan = std::isnan(w[i]) && std::isnan(g[i]);
    const bool same_inf = std::isinf(w[i]) && w[i] == g[i];
    if (both_nan || same_inf) continue;
    if (!(std::abs(w[i] - g[i]) <= atol + rtol * std::abs(w[i])))
      return ::testing::AssertionFailure()
             << "element " << i << " of " << w.size() << ": want " << w[i] << ", got " << g[i]
             << " (|diff| " << std::abs(w[i] - g[i]) << ")";
  }
  return ::testing::AssertionSuccess();
}

// Bit-for-bit equality of two tensors' bytes (after moving both to the host).
inline ::testing::AssertionResult bitwise_equal(const Tensor& want, const Tensor& got) {
  Tensor w = want.to(Device::cpu()).contiguous(), g = got.to(Device::cpu()).contiguous();
  if (w.dtype() != g.dtype() || w.shape() != g.shape())
    return ::testing::AssertionFailure() << w.describe() << " vs " << g.describe();
  const auto* a = static_cast<const unsigned char*>(w.raw_data());
  const auto* b = static_cast<const unsigned char*>(g.raw_data());
  const size_t element = dtype_size(w.dtype());
  for (size_t i = 0; i < w.nbytes(); ++i)
    if (a[i] != b[i])
      return ::testing::AssertionFailure() << "byte " << i << " (element " << i / element
                                           << ") differs: " << int(a[i]) << " vs " << int(b[i]);
  return ::testing::AssertionSuccess();
}

// The tolerance of a kernel output in `dtype` against the fp32 CPU reference on the same (bf16-
// representable) inputs: fp32 kernels differ from the reference only in summation order (a few
// ulps of values whose magnitude is O(1) here); bf16 outputs add one final rounding of 2^-9
// relative, and bf16 intermediates that a kernel re-reads (a gradient accumulated in bf16) one
// more.
inline float atol_for(DType dtype) {
  return dtype == DType::F32 ? 2e-5f : 1e-2f;
}
inline float rtol_for(DType dtype) {
  return dtype == DType::F32 ? 1e-4f : 8e-3f;
}

inline std::string dtype_label(DType dtype) {
  return dtype_name(dtype);
}

}  // namespace sp::cuda_test
