// CPU strided copy, dtype casts and fills.
#include <cstring>

#include "engine/cpu/cpu_backend.h"
#include "engine/cpu/strided_loop.h"
#include "engine/error.h"

namespace sp {

namespace {

template <class T>
void copy_rows(const Tensor& src, const Tensor& dst) {
  const T* s = static_cast<const T*>(src.raw_data());
  T* d = static_cast<T*>(dst.raw_data());
  cpu::for_each_row<2>(
      dst.shape(), {dst.strides(), src.strides()},
      [&](const std::array<int64_t, 2>& off, int64_t n, const std::array<int64_t, 2>& st) {
        T* out = d + off[0];
        const T* in = s + off[1];
        if (st[0] == 1 && st[1] == 1) {
          std::memcpy(out, in, size_t(n) * sizeof(T));
        } else {
          for (int64_t i = 0; i < n; ++i) out[i * st[0]] = in[i * st[1]];
        }
      });
}

float load_as_float(const void* data, DType dtype, int64_t i) {
  switch (dtype) {
    case DType::F32:
      return static_cast<const float*>(data)[i];
    case DType::BF16:
      return bf16_to_float(static_cast<const uint16_t*>(data)[i]);
    case DType::F16:
      return f16_to_float(static_cast<const uint16_t*>(data)[i]);
    case DType::I32:
      return float(static_cast<const int32_t*>(data)[i]);
    case DType::I64:
      return float(static_cast<const int64_t*>(data)[i]);
  }
  return 0;
}

void store_float(void* data, DType dtype, int64_t i, float value) {
  switch (dtype) {
    case DType::F32:
      static_cast<float*>(data)[i] = value;
      return;
    case DType::BF16:
      static_cast<uint16_t*>(data)[i] = float_to_bf16(value);
      return;
    case DType::F16:
      static_cast<uint16_t*>(data)[i] = float_to_f16(value);
      return;
    case DType::I32:
      static_cast<int32_t*>(data)[i] = int32_t(value);
      return;
    case DType::I64:
      static_cast<int64_t*>(data)[i] = int64_t(value);
      return;
  }
}

}  // namespace

void CpuBackend::copy(const Tensor& src, const Tensor& dst) {
  SP_CHECK(src.dtype() == dst.dtype(), "copy: dtype mismatch ", src.describe(), " -> ",
           dst.describe());
  SP_CHECK(src.shape() == dst.shape(), "copy: shape mismatch ", src.describe(), " -> ",
           dst.describe());
  if (dst.numel() == 0) return;
  switch (dtype_size(src.dtype())) {
    case 2:
      copy_rows<uint16_t>(src, dst);
      break;
    case 4:
      copy_rows<uint32_t>(src, dst);
      break;
    case 8:
      copy_rows<uint64_t>(src, dst);
      break;
    default:
      SP_ASSERT(false);
  }
}

void CpuBackend::cast(const Tensor& src, const Tensor& dst) {
  SP_ASSERT(src.is_contiguous() && dst.is_contiguous() && src.numel() == dst.numel());
  const void* in = src.raw_data();
  void* out = dst.raw_data();
  DType from = src.dtype(), to = dst.dtype();
  if (from == DType::I64 && to == DType::I32) {
    auto* o = static_cast<int32_t*>(out);
    auto* i = static_cast<const int64_t*>(in);
    for (int64_t e = 0; e < src.numel(); ++e) o[e] = int32_t(i[e]);
    return;
  }
  if (from == DType::I32 && to == DType::I64) {
    auto* o = static_cast<int64_t*>(out);
    auto* i = static_cast<const int32_t*>(in);
    for (int64_t e = 0; e < src.numel(); ++e) o[e] = i[e];
    return;
  }
  // The bf16 model casts every GEMM input: tight loops the compiler vectorises. The element
  // functions go in as lambdas: a function pointer would be an indirect call per element.
  auto convert = [&](auto* o, const auto* i, auto element) {
    parallel_for(0, src.numel(), 1 << 16, [&](int64_t lo, int64_t hi) {
      for (int64_t e = lo; e < hi; ++e) o[e] = element(i[e]);
    });
  };
  if (from == DType::F32 && to == DType::BF16) {
    convert(static_cast<uint16_t*>(out), static_cast<const float*>(in),
            [](float v) { return float_to_bf16(v); });
    return;
  }
  if (from == DType::BF16 && to == DType::F32) {
    convert(static_cast<float*>(out), static_cast<const uint16_t*>(in),
            [](uint16_t v) { return bf16_to_float(v); });
    return;
  }
  parallel_for(0, src.numel(), 1 << 16, [&](int64_t lo, int64_t hi) {
    for (int64_t e = lo; e < hi; ++e) store_float(out, to, e, load_as_float(in, from, e));
  });
}

void CpuBackend::fill(const Tensor& dst, float value) {
  SP_ASSERT(dst.is_contiguous());
  void* out = dst.raw_data();
  DType dtype = dst.dtype();
  if (dtype == DType::F32) {
    float* o = static_cast<float*>(out);
    parallel_for(0, dst.numel(), 1 << 16, [&](int64_t lo, int64_t hi) {
      for (int64_t e = lo; e < hi; ++e) o[e] = value;
    });
    return;
  }
  for (int64_t e = 0; e < dst.numel(); ++e) store_float(out, dtype, e, value);
}

}  // namespace sp
