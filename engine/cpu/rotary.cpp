// CPU rotary position embedding: the reference of kernels/rotary.cuh, parallel over rows.
#include "engine/cpu/cpu_backend.h"
#include "engine/error.h"
#include "engine/thread_pool.h"

namespace sp {

void CpuBackend::rotary_embedding(const Tensor& x, const Tensor& cos, const Tensor& sin,
                                  bool inverse, const Tensor& out) {
  const std::optional<int64_t> ldx = rotary_row_stride(x), ldo = rotary_row_stride(out);
  SP_ASSERT(x.dtype() == DType::F32 && out.dtype() == DType::F32 && ldx && ldo &&
            cos.is_contiguous() && sin.is_contiguous());
  const int64_t rows = x.size(0) * x.size(1), heads = x.size(2), half = x.size(3) / 2;
  const float* in = x.data<float>();
  const float* c = cos.data<float>();
  const float* s = sin.data<float>();
  float* y = out.data<float>();
  const float sign = inverse ? -1.0f : 1.0f;
  parallel_for(0, rows, 64, [&](int64_t lo, int64_t hi) {
    for (int64_t row = lo; row < hi; ++row)
      for (int64_t h = 0; h < heads; ++h) {
        const float* from = in + row * *ldx + h * 2 * half;
        float* to = y + row * *ldo + h * 2 * half;
        for (int64_t i = 0; i < half; ++i) {
          const float ci = c[row * half + i], si = sign * s[row * half + i];
          const float a = from[i], b = from[half + i];
          to[i] = a * ci - b * si;
          to[half + i] = b * ci + a * si;
        }
      }
  });
}

}  // namespace sp
