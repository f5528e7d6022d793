// kernels/emu/wmma.h: the emulated subset of CUDA's warp matrix API (nvcuda::wmma) that softprompt
// kernels use: 16x16x16 bf16 tiles with fp32 accumulators, fill / load / store / mma.
#pragma once

#include <cstddef>
#include <cstdint>
#include <source_location>
#include <type_traits>

#include "kernels/emu/emu.h"
#include "kernels/error.h"

namespace sp::emu::wmma {

// The fragment's element-to-lane mapping is unspecified in CUDA, so a portable kernel touches
// fragments only through these calls and through uniform element-wise loops over
// x[0 .. num_elements). Here every lane holds the whole tile (num_elements = rows * cols instead of
// the hardware's share), which is what such kernels cannot tell apart. Every *_sync call is a warp
// operation over the full warp, as on the hardware: lanes that meet in different calls, or that
// never arrive, are diagnosed. Each lane stores only its share (element e by lane e % 32), so a
// store that only some lanes make leaves holes, as on the device. Misaligned tiles are errors.

struct matrix_a {};
struct matrix_b {};
struct accumulator {};
struct row_major {};
struct col_major {};
enum layout_t { mem_row_major, mem_col_major };

template <class Use, int M, int N, int K, class T, class Layout = void>
struct fragment {
  static_assert(M == 16 && N == 16 && K == 16, "cuda-emu wmma: only 16x16x16 tiles are emulated");
  static_assert(std::is_same_v<Use, accumulator> ? std::is_same_v<T, float>
                                                 : std::is_same_v<T, builtin::__nv_bfloat16>,
                "cuda-emu wmma: bf16 operands with float accumulators only");
  static constexpr int kRows = std::is_same_v<Use, matrix_b> ? K : M;
  static constexpr int kCols = std::is_same_v<Use, matrix_a> ? K : N;
  static constexpr int num_elements = kRows * kCols;
  T x[num_elements];
};

namespace detail {

// Pointer and stride rules of the hardware: 256-bit aligned pointers, ldm a multiple of 16 bytes.
template <class T>
void check_tile_address(const char* call, const T* p, unsigned ldm,
                        const std::source_location& where) {
  if (reinterpret_cast<std::uintptr_t>(p) % 32 != 0 || (ldm * sizeof(T)) % 16 != 0)
    ::sp::fail(::sp::ErrorKind::kInternal, "cuda-emu: wmma::", call, " at ", where.file_name(), ":",
               where.line(), " needs a 32-byte aligned pointer and ldm * ", sizeof(T),
               " a multiple of 16 bytes, got ", static_cast<const void*>(p), " and ldm ", ldm);
}

// Which call a lane is in, so that lanes meeting in different wmma calls are diagnosed.
enum Call : int { kLoad = 1, kStore = 2, kMma = 3 };

// The warp operation every call starts with: all 32 lanes, all in the same kind of call.
inline void converge(Call call, const char* name, const std::source_location& where) {
  const int lane0_call = builtin::__shfl_sync(0xffffffffu, int(call), 0, 32, where);
  if (lane0_call != int(call))
    ::sp::fail(::sp::ErrorKind::kInternal, "cuda-emu: wmma::", name, " at ", where.file_name(), ":",
               where.line(), " met lanes of the warp that are in another wmma call: every ",
               "lane must make the same wmma calls");
}

inline int lane() {
  return int(builtin::threadIdx.x +
             builtin::blockDim.x *
                 (builtin::threadIdx.y + builtin::blockDim.y * builtin::threadIdx.z)) %
         32;
}

}  // namespace detail

template <class Use, class T, class Layout>
inline void fill_fragment(fragment<Use, 16, 16, 16, T, Layout>& f, T value) {
  for (T& e : f.x) e = value;
}

// matrix_a / matrix_b from memory laid out as the fragment's Layout says, leading dimension ldm.
template <class Use, class Layout>
inline void load_matrix_sync(fragment<Use, 16, 16, 16, builtin::__nv_bfloat16, Layout>& f,
                             const builtin::__nv_bfloat16* p, unsigned ldm,
                             const std::source_location& where = std::source_location::current()) {
  detail::converge(detail::kLoad, "load_matrix_sync", where);
  detail::check_tile_address("load_matrix_sync", p, ldm, where);
  using F = fragment<Use, 16, 16, 16, builtin::__nv_bfloat16, Layout>;
  for (int r = 0; r < F::kRows; ++r)
    for (int c = 0; c < F::kCols; ++c)
      f.x[r * F::kCols + c] = std::is_same_v<Layout, row_major> ? p[std::size_t(r) * ldm + c]
                                                                : p[std::size_t(c) * ldm + r];
}

inline void load_matrix_sync(fragment<accumulator, 16, 16, 16, float>& f, const float* p,
                             unsigned ldm, layout_t layout,
                             const std::source_location& where = std::source_location::current()) {
  detail::converge(detail::kLoad, "load_matrix_sync", where);
  detail::check_tile_address("load_matrix_sync", p, ldm, where);
  for (int r = 0; r < 16; ++r)
    for (int c = 0; c < 16; ++c)
      f.x[r * 16 + c] =
          layout == mem_row_major ? p[std::size_t(r) * ldm + c] : p[std::size_t(c) * ldm + r];
}

inline void store_matrix_sync(float* p, const fragment<accumulator, 16, 16, 16, float>& f,
                              unsigned ldm, layout_t layout,
                              const std::source_location& where = std::source_location::current()) {
  detail::converge(detail::kStore, "store_matrix_sync", where);
  detail::check_tile_address("store_matrix_sync", p, ldm, where);
  for (int e = detail::lane(); e < 256; e += 32) {
    const int r = e / 16, c = e % 16;
    (layout == mem_row_major ? p[std::size_t(r) * ldm + c] : p[std::size_t(c) * ldm + r]) = f.x[e];
  }
}

// d = a b + c with exact bf16 products summed in fp32, k in order (tensor cores sum in an
// unspecified order; tolerances must allow for that).
template <class LayoutA, class LayoutB>
inline void mma_sync(fragment<accumulator, 16, 16, 16, float>& d,
                     const fragment<matrix_a, 16, 16, 16, builtin::__nv_bfloat16, LayoutA>& a,
                     const fragment<matrix_b, 16, 16, 16, builtin::__nv_bfloat16, LayoutB>& b,
                     const fragment<accumulator, 16, 16, 16, float>& c,
                     const std::source_location& where = std::source_location::current()) {
  detail::converge(detail::kMma, "mma_sync", where);
  float result[256];
  for (int i = 0; i < 16; ++i)
    for (int j = 0; j < 16; ++j) {
      float sum = c.x[i * 16 + j];
      for (int k = 0; k < 16; ++k) sum += float(a.x[i * 16 + k]) * float(b.x[k * 16 + j]);
      result[i * 16 + j] = sum;
    }
  for (int e = 0; e < 256; ++e) d.x[e] = result[e];
}

}  // namespace sp::emu::wmma
