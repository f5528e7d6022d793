// kernels/rotary.cuh: rotary position embedding (Llama's rotate_half form) of [B, T, H, D]
// activations with per-position cos/sin [B, T, D/2]; a thread per rotated pair, fp32 math.
#pragma once

#include "kernels/kernel_common.cuh"

namespace sp::SP_CUDA_NS {

// Pair (row, h, i) of x, row = b * T + t: rotates (x[i], x[i + D/2]) by the angle of (row, i);
// `sign` -1 rotates backwards (the gradient). Rows of x and out start ldx and ldo elements apart
// (heads of a packed projection); out may be x.
template <class T>
__global__ void rotary_embedding_kernel(const T* x, int64_t ldx, const float* cos, const float* sin,
                                        float sign, int64_t rows, int64_t heads, int64_t half,
                                        T* out, int64_t ldo) {
  const int64_t pairs = rows * heads * half;
  for (int64_t p = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; p < pairs;
       p += int64_t(gridDim.x) * blockDim.x) {
    const int64_t i = p % half, head = (p / half) % heads, row = p / (heads * half);
    const int64_t in = row * ldx + head * 2 * half, at = row * ldo + head * 2 * half;
    const float c = cos[row * half + i], s = sign * sin[row * half + i];
    const float lo = to_float(x[in + i]), hi = to_float(x[in + half + i]);
    out[at + i] = from_float<T>(lo * c - hi * s);
    out[at + half + i] = from_float<T>(hi * c + lo * s);
  }
}

}  // namespace sp::SP_CUDA_NS
