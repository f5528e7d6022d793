// kernels/emu/emu.h: the CPU emulation of the CUDA execution model (blocks of fiber threads) and
// of CUDA's device built-ins, so g++ compiles ordinary kernel source. Include
// kernels/cuda_compat.h.
#pragma once

#if defined(__CUDACC__)
#error \
    "kernels/emu/emu.h is the g++ stand-in for CUDA; nvcc builds take the real headers via kernels/cuda_compat.h"
#endif
#if defined(__CUDA_RUNTIME_H__) || defined(__CUDA_BF16_H__) || defined(__VECTOR_TYPES_H__)
#error "kernels/emu/emu.h cannot share a translation unit with the real CUDA headers"
#endif

#include <math.h>

#include <atomic>
#include <bit>
#include <cfloat>
#include <chrono>
#include <climits>
#include <cmath>
#include <concepts>
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <functional>
#include <source_location>
#include <string>
#include <string_view>
#include <tuple>
#include <type_traits>
#include <utility>
#include <vector>

// Lets shared code tell the two flavours apart (cuda_compat.h defines it to 0 under nvcc).
#define SP_CUDA_EMU 1

namespace sp::emu {

// ---------------------------------------------------------------------------------------------
// Configuration. Barrier bugs only show under some interleavings, so the order in which runnable
// fibers get the CPU is a knob: tests run every kernel under several orders.

enum class Schedule {
  kRoundRobin,    // the next runnable thread after the one that just blocked (default)
  kLowestFirst,   // always the runnable thread with the lowest linear index
  kHighestFirst,  // always the runnable thread with the highest linear index
  kRandom,        // a uniformly random runnable thread (seeded, reproducible)
};

struct ScheduleSpec {
  Schedule order = Schedule::kRoundRobin;
  std::uint64_t seed = 0;  // meaningful for kRandom only
};

// Programmatic selection wins over SP_EMU_SCHEDULE; kRandom restarts its generator from `seed`.
void set_schedule(Schedule order, std::uint64_t seed = 0);
void set_schedule(const ScheduleSpec& spec);
ScheduleSpec schedule();
// Parses the SP_EMU_SCHEDULE syntax: round_robin | lowest_first | highest_first | random |
// random:SEED. Throws sp::Error naming the accepted spellings.
ScheduleSpec parse_schedule(std::string_view text);
std::string schedule_name(const ScheduleSpec& spec);
// The orders a test should try: the three deterministic ones plus a few random seeds.
std::vector<ScheduleSpec> test_schedules();

class ScopedSchedule {
 public:
  explicit ScopedSchedule(const ScheduleSpec& spec) : saved_(schedule()) { set_schedule(spec); }
  explicit ScopedSchedule(Schedule order, std::uint64_t seed = 0)
      : ScopedSchedule(ScheduleSpec{order, seed}) {}
  ~ScopedSchedule() { set_schedule(saved_); }
  ScopedSchedule(const ScopedSchedule&) = delete;
  ScopedSchedule& operator=(const ScopedSchedule&) = delete;

 private:
  ScheduleSpec saved_;
};

// What a kernel bug the emulator diagnoses (deadlock, mismatched warp operation, __trap) does:
// print the diagnosis and abort (default, env SP_EMU_ON_ERROR=abort), or throw sp::Error
// (SP_EMU_ON_ERROR=throw; tests use it). Launch-configuration errors always throw.
enum class OnError { kAbort, kThrow };
void set_on_error(OnError mode);
OnError on_error();

class ScopedOnError {
 public:
  explicit ScopedOnError(OnError mode) : saved_(on_error()) { set_on_error(mode); }
  ~ScopedOnError() { set_on_error(saved_); }
  ScopedOnError(const ScopedOnError&) = delete;
  ScopedOnError& operator=(const ScopedOnError&) = delete;

 private:
  OnError saved_;
};

struct ExecStats {
  std::uint64_t launches = 0;
  std::uint64_t blocks = 0;
  std::uint64_t threads = 0;   // fibers run to completion
  std::uint64_t switches = 0;  // fiber context switches
};
ExecStats exec_stats();
// Bytes of stack each emulated thread gets (env SP_EMU_STACK_KB, read at the first launch).
std::size_t fiber_stack_bytes();
// True on a fiber, i.e. inside kernel code.
bool in_kernel();

// ---------------------------------------------------------------------------------------------
// Device built-in types. CUDA declares them globally; here they live in a namespace that
// sp::cuda_emu imports, so a binary can hold this flavour next to code built against real CUDA.
namespace builtin {

struct uint3 {
  unsigned int x, y, z;
};

struct dim3 {
  unsigned int x, y, z;
  constexpr dim3(unsigned int vx = 1, unsigned int vy = 1, unsigned int vz = 1)
      : x(vx), y(vy), z(vz) {}
  constexpr dim3(uint3 v) : x(v.x), y(v.y), z(v.z) {}
  constexpr operator uint3() const { return uint3{x, y, z}; }
};

// Alignments match CUDA's so reinterpret_cast<const float4*> loads have the same contract.
struct alignas(4) char4 {
  signed char x, y, z, w;
};
struct alignas(4) uchar4 {
  unsigned char x, y, z, w;
};
struct alignas(4) short2 {
  short x, y;
};
struct alignas(4) ushort2 {
  unsigned short x, y;
};
struct alignas(8) int2 {
  int x, y;
};
struct int3 {
  int x, y, z;
};
struct alignas(16) int4 {
  int x, y, z, w;
};
struct alignas(8) uint2 {
  unsigned int x, y;
};
struct alignas(16) uint4 {
  unsigned int x, y, z, w;
};
struct alignas(8) float2 {
  float x, y;
};
struct float3 {
  float x, y, z;
};
struct alignas(16) float4 {
  float x, y, z, w;
};
struct alignas(16) double2 {
  double x, y;
};
struct alignas(16) longlong2 {
  long long x, y;
};
struct alignas(16) ulonglong2 {
  unsigned long long x, y;
};

constexpr char4 make_char4(signed char x, signed char y, signed char z, signed char w) {
  return {x, y, z, w};
}
constexpr uchar4 make_uchar4(unsigned char x, unsigned char y, unsigned char z, unsigned char w) {
  return {x, y, z, w};
}
constexpr short2 make_short2(short x, short y) {
  return {x, y};
}
constexpr ushort2 make_ushort2(unsigned short x, unsigned short y) {
  return {x, y};
}
constexpr int2 make_int2(int x, int y) {
  return {x, y};
}
constexpr int3 make_int3(int x, int y, int z) {
  return {x, y, z};
}
constexpr int4 make_int4(int x, int y, int z, int w) {
  return {x, y, z, w};
}
constexpr uint2 make_uint2(unsigned int x, unsigned int y) {
  return {x, y};
}
constexpr uint3 make_uint3(unsigned int x, unsigned int y, unsigned int z) {
  return {x, y, z};
}
constexpr uint4 make_uint4(unsigned int x, unsigned int y, unsigned int z, unsigned int w) {
  return {x, y, z, w};
}
constexpr float2 make_float2(float x, float y) {
  return {x, y};
}
constexpr float3 make_float3(float x, float y, float z) {
  return {x, y, z};
}
constexpr float4 make_float4(float x, float y, float z, float w) {
  return {x, y, z, w};
}
constexpr double2 make_double2(double x, double y) {
  return {x, y};
}
constexpr longlong2 make_longlong2(long long x, long long y) {
  return {x, y};
}
constexpr ulonglong2 make_ulonglong2(unsigned long long x, unsigned long long y) {
  return {x, y};
}

}  // namespace builtin

namespace detail {

// Round to nearest even, NaN -> canonical 0x7fff, exactly as CUDA's __float2bfloat16.
constexpr std::uint16_t float_to_bf16_bits(float f) {
  std::uint32_t u = std::bit_cast<std::uint32_t>(f);
  if ((u & 0x7fffffffu) > 0x7f800000u) return 0x7fff;
  u += 0x7fffu + ((u >> 16) & 1u);
  return static_cast<std::uint16_t>(u >> 16);
}
constexpr float bf16_bits_to_float(std::uint16_t b) {
  return std::bit_cast<float>(static_cast<std::uint32_t>(b) << 16);
}
// Rounding a double through float with round-to-odd keeps the final bf16 rounding correct
// (no double rounding): 24 bits of float comfortably exceed bf16's 8 + 2.
constexpr float double_to_float_round_odd(double d) {
  float f = static_cast<float>(d);
  if (static_cast<double>(f) == d) return f;
  std::uint32_t u = std::bit_cast<std::uint32_t>(f);
  if ((u & 1u) == 0) u += std::fabs(static_cast<double>(f)) > std::fabs(d) ? -1u : 1u;
  return std::bit_cast<float>(u);
}
// IEEE binary16, round to nearest even, NaN -> 0x7fff like CUDA's __float2half.
constexpr std::uint16_t float_to_half_bits(float f) {
  const std::uint32_t x = std::bit_cast<std::uint32_t>(f);
  const std::uint32_t sign = (x >> 16) & 0x8000u;
  const std::uint32_t ax = x & 0x7fffffffu;
  if (ax > 0x7f800000u) return 0x7fff;
  if (ax >= 0x477ff000u) return static_cast<std::uint16_t>(sign | 0x7c00u);  // rounds to inf
  if (ax < 0x38800000u) {
    // Subnormal range: the value in units of 2^-24, rounded to nearest even by hand.
    if (ax < 0x33000000u) return static_cast<std::uint16_t>(sign);  // below half the smallest
    const std::uint32_t exp = ax >> 23;                             // 102..112
    const std::uint32_t mant = (ax & 0x7fffffu) | 0x800000u;
    const std::uint32_t shift = 126 - exp;  // 14..24
    std::uint32_t q = mant >> shift;
    const std::uint32_t rem = mant & ((1u << shift) - 1);
    const std::uint32_t half = 1u << (shift - 1);
    if (rem > half || (rem == half && (q & 1u))) ++q;
    return static_cast<std::uint16_t>(sign | q);
  }
  const std::uint32_t r = ax + 0xfffu + ((ax >> 13) & 1u);
  return static_cast<std::uint16_t>(sign | ((r >> 13) - (112u << 10)));
}
constexpr float half_bits_to_float(std::uint16_t h) {
  const std::uint32_t sign = static_cast<std::uint32_t>(h & 0x8000u) << 16;
  const std::uint32_t exp = (h >> 10) & 0x1fu;
  const std::uint32_t mant = h & 0x3ffu;
  if (exp == 0) {
    const float v = static_cast<float>(mant) * 5.9604644775390625e-08f;  // 2^-24, exact
    return sign ? -v : v;
  }
  if (exp == 31) return std::bit_cast<float>(sign | 0x7f800000u | (mant << 13));
  return std::bit_cast<float>(sign | ((exp + 112u) << 23) | (mant << 13));
}

}  // namespace detail

namespace builtin {

// bf16 with CUDA's conversions and operators; arithmetic rounds to bf16 after every operation,
// as sm_80 hardware does, and mixing with float is as ambiguous as it is under nvcc.
struct alignas(2) __nv_bfloat16 {
  __nv_bfloat16() = default;
  constexpr __nv_bfloat16(float f) : bits(detail::float_to_bf16_bits(f)) {}
  constexpr __nv_bfloat16(double d)
      : bits(detail::float_to_bf16_bits(detail::double_to_float_round_odd(d))) {}
  template <std::integral I>
  constexpr __nv_bfloat16(I v) : __nv_bfloat16(static_cast<double>(v)) {}
  constexpr operator float() const { return detail::bf16_bits_to_float(bits); }

  std::uint16_t bits;
};

struct alignas(4) __nv_bfloat162 {
  __nv_bfloat16 x, y;
};

struct alignas(2) __half {
  __half() = default;
  constexpr __half(float f) : bits(detail::float_to_half_bits(f)) {}
  constexpr __half(double d) : __half(detail::double_to_float_round_odd(d)) {}
  template <std::integral I>
  constexpr __half(I v) : __half(static_cast<double>(v)) {}
  constexpr operator float() const { return detail::half_bits_to_float(bits); }

  std::uint16_t bits;
};

struct alignas(4) __half2 {
  __half x, y;
};

using nv_bfloat16 = __nv_bfloat16;
using nv_bfloat162 = __nv_bfloat162;
using half = __half;
using half2 = __half2;

#define SP_EMU_HALF_OPERATORS(T)                   \
  inline T operator+(const T& a, const T& b) {     \
    return T(float(a) + float(b));                 \
  }                                                \
  inline T operator-(const T& a, const T& b) {     \
    return T(float(a) - float(b));                 \
  }                                                \
  inline T operator*(const T& a, const T& b) {     \
    return T(float(a) * float(b));                 \
  }                                                \
  inline T operator/(const T& a, const T& b) {     \
    return T(float(a) / float(b));                 \
  }                                                \
  inline T operator-(const T& a) {                 \
    T r = a;                                       \
    r.bits ^= 0x8000u;                             \
    return r;                                      \
  }                                                \
  inline T operator+(const T& a) {                 \
    return a;                                      \
  }                                                \
  inline T& operator+=(T& a, const T& b) {         \
    return a = a + b;                              \
  }                                                \
  inline T& operator-=(T& a, const T& b) {         \
    return a = a - b;                              \
  }                                                \
  inline T& operator*=(T& a, const T& b) {         \
    return a = a * b;                              \
  }                                                \
  inline T& operator/=(T& a, const T& b) {         \
    return a = a / b;                              \
  }                                                \
  inline bool operator==(const T& a, const T& b) { \
    return float(a) == float(b);                   \
  }                                                \
  inline bool operator!=(const T& a, const T& b) { \
    return float(a) != float(b);                   \
  }                                                \
  inline bool operator<(const T& a, const T& b) {  \
    return float(a) < float(b);                    \
  }                                                \
  inline bool operator>(const T& a, const T& b) {  \
    return float(a) > float(b);                    \
  }                                                \
  inline bool operator<=(const T& a, const T& b) { \
    return float(a) <= float(b);                   \
  }                                                \
  inline bool operator>=(const T& a, const T& b) { \
    return float(a) >= float(b);                   \
  }

SP_EMU_HALF_OPERATORS(__nv_bfloat16)
SP_EMU_HALF_OPERATORS(__half)
#undef SP_EMU_HALF_OPERATORS

inline __nv_bfloat16 __float2bfloat16(float f) {
  return __nv_bfloat16(f);
}
inline __nv_bfloat16 __float2bfloat16_rn(float f) {
  return __nv_bfloat16(f);
}
inline __nv_bfloat16 __float2bfloat16_rz(float f) {
  __nv_bfloat16 r;
  const std::uint32_t u = std::bit_cast<std::uint32_t>(f);
  r.bits = std::isnan(f) ? std::uint16_t{0x7fff} : static_cast<std::uint16_t>(u >> 16);
  return r;
}
inline __nv_bfloat16 __double2bfloat16(double d) {
  return __nv_bfloat16(d);
}
inline float __bfloat162float(__nv_bfloat16 b) {
  return float(b);
}
inline unsigned short __bfloat16_as_ushort(__nv_bfloat16 b) {
  return b.bits;
}
inline __nv_bfloat16 __ushort_as_bfloat16(unsigned short u) {
  __nv_bfloat16 r;
  r.bits = u;
  return r;
}
inline __nv_bfloat162 __floats2bfloat162_rn(float a, float b) {
  return {a, b};
}
inline __nv_bfloat162 __float2bfloat162_rn(float a) {
  return {a, a};
}
inline __nv_bfloat162 __float22bfloat162_rn(float2 v) {
  return {v.x, v.y};
}
inline __nv_bfloat162 __halves2bfloat162(__nv_bfloat16 a, __nv_bfloat16 b) {
  return {a, b};
}
inline __nv_bfloat16 __low2bfloat16(__nv_bfloat162 v) {
  return v.x;
}
inline __nv_bfloat16 __high2bfloat16(__nv_bfloat162 v) {
  return v.y;
}
inline float __low2float(__nv_bfloat162 v) {
  return float(v.x);
}
inline float __high2float(__nv_bfloat162 v) {
  return float(v.y);
}
inline float2 __bfloat1622float2(__nv_bfloat162 v) {
  return {float(v.x), float(v.y)};
}
inline __nv_bfloat16 __hadd(__nv_bfloat16 a, __nv_bfloat16 b) {
  return a + b;
}
inline __nv_bfloat16 __hsub(__nv_bfloat16 a, __nv_bfloat16 b) {
  return a - b;
}
inline __nv_bfloat16 __hmul(__nv_bfloat16 a, __nv_bfloat16 b) {
  return a * b;
}
inline __nv_bfloat16 __hdiv(__nv_bfloat16 a, __nv_bfloat16 b) {
  return a / b;
}
inline __nv_bfloat16 __hneg(__nv_bfloat16 a) {
  return -a;
}
inline __nv_bfloat16 __hfma(__nv_bfloat16 a, __nv_bfloat16 b, __nv_bfloat16 c) {
  return __nv_bfloat16(std::fma(float(a), float(b), float(c)));
}
inline __nv_bfloat16 __hmax(__nv_bfloat16 a, __nv_bfloat16 b) {
  return __nv_bfloat16(std::fmax(float(a), float(b)));
}
inline __nv_bfloat16 __hmin(__nv_bfloat16 a, __nv_bfloat16 b) {
  return __nv_bfloat16(std::fmin(float(a), float(b)));
}
inline __nv_bfloat162 __hadd2(__nv_bfloat162 a, __nv_bfloat162 b) {
  return {a.x + b.x, a.y + b.y};
}
inline __nv_bfloat162 __hmul2(__nv_bfloat162 a, __nv_bfloat162 b) {
  return {a.x * b.x, a.y * b.y};
}
inline __nv_bfloat162 __hfma2(__nv_bfloat162 a, __nv_bfloat162 b, __nv_bfloat162 c) {
  return {__hfma(a.x, b.x, c.x), __hfma(a.y, b.y, c.y)};
}

inline __half __float2half(float f) {
  return __half(f);
}
inline __half __float2half_rn(float f) {
  return __half(f);
}
inline float __half2float(__half h) {
  return float(h);
}
inline unsigned short __half_as_ushort(__half h) {
  return h.bits;
}
inline __half __ushort_as_half(unsigned short u) {
  __half r;
  r.bits = u;
  return r;
}
inline __half2 __floats2half2_rn(float a, float b) {
  return {a, b};
}
inline float2 __half22float2(__half2 v) {
  return {float(v.x), float(v.y)};
}

// ---- math intrinsics (the fast approximations are computed exactly here) ----
inline float rsqrtf(float x) {
  return 1.0f / std::sqrt(x);
}
inline double rsqrt(double x) {
  return 1.0 / std::sqrt(x);
}
inline float rcbrtf(float x) {
  return 1.0f / std::cbrt(x);
}
inline float fdividef(float a, float b) {
  return a / b;
}
inline float __fdividef(float a, float b) {
  return a / b;
}
inline float __expf(float x) {
  return std::exp(x);
}
inline float __exp10f(float x) {
  return std::pow(10.0f, x);
}
inline float __logf(float x) {
  return std::log(x);
}
inline float __log2f(float x) {
  return std::log2(x);
}
inline float __log10f(float x) {
  return std::log10(x);
}
inline float __powf(float a, float b) {
  return std::pow(a, b);
}
inline float __sinf(float x) {
  return std::sin(x);
}
inline float __cosf(float x) {
  return std::cos(x);
}
inline float __tanf(float x) {
  return std::tan(x);
}
inline float __tanhf(float x) {
  return std::tanh(x);
}
inline void __sincosf(float x, float* s, float* c) {
  *s = std::sin(x);
  *c = std::cos(x);
}
inline float __saturatef(float x) {
  return std::isnan(x) ? 0.0f : std::fmin(std::fmax(x, 0.0f), 1.0f);
}
inline float __fadd_rn(float a, float b) {
  return a + b;
}
inline float __fsub_rn(float a, float b) {
  return a - b;
}
inline float __fmul_rn(float a, float b) {
  return a * b;
}
inline float __fdiv_rn(float a, float b) {
  return a / b;
}
inline float __fmaf_rn(float a, float b, float c) {
  return std::fma(a, b, c);
}
inline float __frcp_rn(float x) {
  return 1.0f / x;
}
inline float __fsqrt_rn(float x) {
  return std::sqrt(x);
}
inline float __frsqrt_rn(float x) {
  return 1.0f / std::sqrt(x);
}
inline double __dadd_rn(double a, double b) {
  return a + b;
}
inline double __dmul_rn(double a, double b) {
  return a * b;
}
inline double __fma_rn(double a, double b, double c) {
  return std::fma(a, b, c);
}

inline int __float_as_int(float x) {
  return std::bit_cast<int>(x);
}
inline unsigned int __float_as_uint(float x) {
  return std::bit_cast<unsigned int>(x);
}
inline float __int_as_float(int x) {
  return std::bit_cast<float>(x);
}
inline float __uint_as_float(unsigned int x) {
  return std::bit_cast<float>(x);
}
inline long long __double_as_longlong(double x) {
  return std::bit_cast<long long>(x);
}
inline double __longlong_as_double(long long x) {
  return std::bit_cast<double>(x);
}
inline int __float2int_rn(float x) {
  return static_cast<int>(std::nearbyint(x));
}
inline int __float2int_rz(float x) {
  return static_cast<int>(std::trunc(x));
}
inline int __float2int_rd(float x) {
  return static_cast<int>(std::floor(x));
}
inline int __float2int_ru(float x) {
  return static_cast<int>(std::ceil(x));
}
inline unsigned int __float2uint_rn(float x) {
  return static_cast<unsigned int>(std::nearbyint(x));
}
inline unsigned int __float2uint_rz(float x) {
  return static_cast<unsigned int>(std::trunc(x));
}
inline float __int2float_rn(int x) {
  return static_cast<float>(x);
}
inline float __uint2float_rn(unsigned int x) {
  return static_cast<float>(x);
}
inline float __ll2float_rn(long long x) {
  return static_cast<float>(x);
}

// CUDA's min/max accept mixed arithmetic arguments and return the common type.
template <class A, class B>
requires std::is_arithmetic_v<A> && std::is_arithmetic_v<B>
constexpr std::common_type_t<A, B> min(A a, B b) {
  using C = std::common_type_t<A, B>;
  if constexpr (std::is_floating_point_v<C>) {
    return std::fmin(static_cast<C>(a), static_cast<C>(b));
  } else {
    return static_cast<C>(b) < static_cast<C>(a) ? static_cast<C>(b) : static_cast<C>(a);
  }
}
template <class A, class B>
requires std::is_arithmetic_v<A> && std::is_arithmetic_v<B>
constexpr std::common_type_t<A, B> max(A a, B b) {
  using C = std::common_type_t<A, B>;
  if constexpr (std::is_floating_point_v<C>) {
    return std::fmax(static_cast<C>(a), static_cast<C>(b));
  } else {
    return static_cast<C>(a) < static_cast<C>(b) ? static_cast<C>(b) : static_cast<C>(a);
  }
}

// ---- integer intrinsics ----
inline int __popc(unsigned int x) {
  return std::popcount(x);
}
inline int __popcll(unsigned long long x) {
  return std::popcount(x);
}
inline int __clz(int x) {
  return std::countl_zero(static_cast<unsigned int>(x));
}
inline int __clzll(long long x) {
  return std::countl_zero(static_cast<unsigned long long>(x));
}
inline int __ffs(int x) {
  return x == 0 ? 0 : std::countr_zero(static_cast<unsigned int>(x)) + 1;
}
inline int __ffsll(long long x) {
  return x == 0 ? 0 : std::countr_zero(static_cast<unsigned long long>(x)) + 1;
}
inline unsigned int __brev(unsigned int x) {
  x = ((x >> 1) & 0x55555555u) | ((x & 0x55555555u) << 1);
  x = ((x >> 2) & 0x33333333u) | ((x & 0x33333333u) << 2);
  x = ((x >> 4) & 0x0f0f0f0fu) | ((x & 0x0f0f0f0fu) << 4);
  x = ((x >> 8) & 0x00ff00ffu) | ((x & 0x00ff00ffu) << 8);
  return (x >> 16) | (x << 16);
}
inline int __mul24(int a, int b) {
  return static_cast<int>(static_cast<long long>((a << 8) >> 8) * ((b << 8) >> 8));
}
inline unsigned int __umul24(unsigned int a, unsigned int b) {
  return (a & 0xffffffu) * (b & 0xffffffu);
}
inline int __mulhi(int a, int b) {
  return static_cast<int>((static_cast<long long>(a) * b) >> 32);
}
inline unsigned int __umulhi(unsigned int a, unsigned int b) {
  return static_cast<unsigned int>((static_cast<unsigned long long>(a) * b) >> 32);
}

// ---- memory access hints: plain loads and stores on the CPU ----
template <class T>
inline T __ldg(const T* p) {
  return *p;
}
template <class T>
inline T __ldcg(const T* p) {
  return *p;
}
template <class T>
inline T __ldcs(const T* p) {
  return *p;
}
template <class T>
inline T __ldlu(const T* p) {
  return *p;
}
template <class T>
inline void __stcg(T* p, T v) {
  *p = v;
}
template <class T>
inline void __stcs(T* p, T v) {
  *p = v;
}
template <class T>
inline void __stwt(T* p, T v) {
  *p = v;
}

inline long long clock64() {
  return std::chrono::duration_cast<std::chrono::nanoseconds>(
             std::chrono::steady_clock::now().time_since_epoch())
      .count();
}
inline void __nanosleep(unsigned int) {}

// CUDA atomics are relaxed; std::atomic_ref makes them real atomics, which ThreadSanitizer
// understands, so only the non-atomic accesses of a kernel can race.
namespace atomic_detail {
template <class T>
inline std::atomic_ref<T> ref(T* p) {
  return std::atomic_ref<T>(*p);
}
template <class T, class F>
inline T cas_loop(T* address, F update) {
  std::atomic_ref<T> a(*address);
  T old = a.load(std::memory_order_relaxed);
  while (!a.compare_exchange_weak(old, update(old), std::memory_order_relaxed)) {
  }
  return old;
}
template <class T>
inline T cas(T* a, T compare, T val) {
  std::atomic_ref<T>(*a).compare_exchange_strong(compare, val, std::memory_order_relaxed);
  return compare;  // holds the old value whether or not the exchange happened
}
template <class H>
inline H add_16bit(H* address, H val) {
  // A 16-bit CAS on the storage: H's first member, so the cast is to an interconvertible object.
  auto* raw = reinterpret_cast<std::uint16_t*>(address);
  const std::uint16_t old = cas_loop(raw, [&](std::uint16_t cur) {
    H h;
    h.bits = cur;
    return (h + val).bits;
  });
  H r;
  r.bits = old;
  return r;
}
}  // namespace atomic_detail

inline int atomicAdd(int* a, int v) {
  return atomic_detail::ref(a).fetch_add(v, std::memory_order_relaxed);
}
inline unsigned int atomicAdd(unsigned int* a, unsigned int v) {
  return atomic_detail::ref(a).fetch_add(v, std::memory_order_relaxed);
}
inline unsigned long long atomicAdd(unsigned long long* a, unsigned long long v) {
  return atomic_detail::ref(a).fetch_add(v, std::memory_order_relaxed);
}
inline float atomicAdd(float* a, float v) {
  return atomic_detail::ref(a).fetch_add(v, std::memory_order_relaxed);
}
inline double atomicAdd(double* a, double v) {
  return atomic_detail::ref(a).fetch_add(v, std::memory_order_relaxed);
}
inline __nv_bfloat16 atomicAdd(__nv_bfloat16* a, __nv_bfloat16 v) {
  return atomic_detail::add_16bit(a, v);
}
inline __half atomicAdd(__half* a, __half v) {
  return atomic_detail::add_16bit(a, v);
}
inline int atomicSub(int* a, int v) {
  return atomic_detail::ref(a).fetch_sub(v, std::memory_order_relaxed);
}
inline unsigned int atomicSub(unsigned int* a, unsigned int v) {
  return atomic_detail::ref(a).fetch_sub(v, std::memory_order_relaxed);
}
inline int atomicExch(int* a, int v) {
  return atomic_detail::ref(a).exchange(v, std::memory_order_relaxed);
}
inline unsigned int atomicExch(unsigned int* a, unsigned int v) {
  return atomic_detail::ref(a).exchange(v, std::memory_order_relaxed);
}
inline unsigned long long atomicExch(unsigned long long* a, unsigned long long v) {
  return atomic_detail::ref(a).exchange(v, std::memory_order_relaxed);
}
inline float atomicExch(float* a, float v) {
  return atomic_detail::ref(a).exchange(v, std::memory_order_relaxed);
}
inline int atomicCAS(int* a, int compare, int val) {
  return atomic_detail::cas(a, compare, val);
}
inline unsigned int atomicCAS(unsigned int* a, unsigned int compare, unsigned int val) {
  return atomic_detail::cas(a, compare, val);
}
inline unsigned long long atomicCAS(unsigned long long* a, unsigned long long compare,
                                    unsigned long long val) {
  return atomic_detail::cas(a, compare, val);
}
inline unsigned short atomicCAS(unsigned short* a, unsigned short compare, unsigned short val) {
  return atomic_detail::cas(a, compare, val);
}
#define SP_EMU_ATOMIC_MINMAX(T)                                                  \
  inline T atomicMax(T* a, T v) {                                                \
    return atomic_detail::cas_loop(a, [v](T cur) { return cur < v ? v : cur; }); \
  }                                                                              \
  inline T atomicMin(T* a, T v) {                                                \
    return atomic_detail::cas_loop(a, [v](T cur) { return v < cur ? v : cur; }); \
  }
SP_EMU_ATOMIC_MINMAX(int)
SP_EMU_ATOMIC_MINMAX(unsigned int)
SP_EMU_ATOMIC_MINMAX(long long)
SP_EMU_ATOMIC_MINMAX(unsigned long long)
#undef SP_EMU_ATOMIC_MINMAX
#define SP_EMU_ATOMIC_BITS(T)                                             \
  inline T atomicAnd(T* a, T v) {                                         \
    return atomic_detail::ref(a).fetch_and(v, std::memory_order_relaxed); \
  }                                                                       \
  inline T atomicOr(T* a, T v) {                                          \
    return atomic_detail::ref(a).fetch_or(v, std::memory_order_relaxed);  \
  }                                                                       \
  inline T atomicXor(T* a, T v) {                                         \
    return atomic_detail::ref(a).fetch_xor(v, std::memory_order_relaxed); \
  }
SP_EMU_ATOMIC_BITS(int)
SP_EMU_ATOMIC_BITS(unsigned int)
SP_EMU_ATOMIC_BITS(unsigned long long)
#undef SP_EMU_ATOMIC_BITS
inline unsigned int atomicInc(unsigned int* a, unsigned int limit) {
  return atomic_detail::cas_loop(a, [limit](unsigned int c) { return c >= limit ? 0u : c + 1; });
}
inline unsigned int atomicDec(unsigned int* a, unsigned int limit) {
  return atomic_detail::cas_loop(
      a, [limit](unsigned int c) { return (c == 0 || c > limit) ? limit : c - 1; });
}

inline void __threadfence() {
  std::atomic_thread_fence(std::memory_order_seq_cst);
}
inline void __threadfence_block() {
  std::atomic_thread_fence(std::memory_order_seq_cst);
}
inline void __threadfence_system() {
  std::atomic_thread_fence(std::memory_order_seq_cst);
}

inline constexpr int warpSize = 32;

}  // namespace builtin

// ---------------------------------------------------------------------------------------------
// The hooks between kernel code and the scheduler (kernels/emu/emu.cpp).
namespace detail {

using builtin::dim3;
using builtin::uint3;

// The current fiber's coordinates; the scheduler rewrites them at every switch. Plain globals
// suffice because launches are serialised process-wide (static __shared__ needs that anyway).
inline uint3 g_thread_idx{0, 0, 0};
inline uint3 g_block_idx{0, 0, 0};
inline dim3 g_block_dim{1, 1, 1};
inline dim3 g_grid_dim{1, 1, 1};

enum class BarrierOp : std::uint8_t { kSync, kCount, kAnd, kOr };
int barrier(BarrierOp op, int predicate, const std::source_location& where);

enum class WarpOp : std::uint8_t {
  kSyncWarp,
  kShfl,
  kShflUp,
  kShflDown,
  kShflXor,
  kBallot,
  kAny,
  kAll,
  kReduceAddU,
  kReduceMinU,
  kReduceMaxU,
  kReduceAddI,
  kReduceMinI,
  kReduceMaxI,
  kReduceAnd,
  kReduceOr,
  kReduceXor,
};

struct WarpRequest {
  WarpOp op;
  unsigned int mask;
  std::uint64_t bits;    // this lane's value (or predicate)
  std::uint64_t poison;  // what a read of an absent lane returns, in the value's type
  int size;              // sizeof the value, so differently typed shuffles cannot pair up
  int arg;               // source lane, delta or lane mask
  int width;
};
std::uint64_t warp_exchange(const WarpRequest& request, const std::source_location& where);
unsigned int active_mask();
void* dynamic_shared_memory();
[[noreturn]] void trap(const std::source_location& where);

// Bit patterns an emulated read of something never written returns: NaN for every float type
// (bf16, half, float, double) at any 2-byte offset; 0xDEADBEEF for integers read from absent lanes.
inline constexpr std::uint16_t kPoison16 = 0xfffa;
inline constexpr std::uint64_t kPoisonFloatBits = 0xfffafffafffafffaull;
inline constexpr std::uint64_t kPoisonIntBits = 0xdeadbeefdeadbeefull;

template <class T>
concept ShuffleValue = std::is_arithmetic_v<T> || std::is_same_v<T, builtin::__nv_bfloat16> ||
    std::is_same_v<T, builtin::__nv_bfloat162> || std::is_same_v<T, builtin::__half> ||
    std::is_same_v<T, builtin::__half2>;

template <class T>
inline std::uint64_t to_bits(const T& v) {
  static_assert(sizeof(T) <= 8 && std::is_trivially_copyable_v<T>);
  std::uint64_t b = 0;
  std::memcpy(&b, &v, sizeof(T));
  return b;
}
template <class T>
inline T from_bits(std::uint64_t b) {
  T v;
  std::memcpy(&v, &b, sizeof(T));
  return v;
}
template <class T>
inline std::uint64_t poison_bits() {
  return std::is_integral_v<T> ? kPoisonIntBits : kPoisonFloatBits;
}
template <class T>
inline T shuffle(WarpOp op, unsigned int mask, T v, int arg, int width,
                 const std::source_location& where) {
  const WarpRequest r{op,  mask, to_bits(v), poison_bits<T>(), static_cast<int>(sizeof(T)),
                      arg, width};
  return from_bits<T>(warp_exchange(r, where));
}
inline std::uint64_t vote(WarpOp op, unsigned int mask, std::uint64_t v,
                          const std::source_location& where) {
  return warp_exchange(WarpRequest{op, mask, v, kPoisonIntBits, 4, 0, 32}, where);
}

// ---- launching ----
struct LaunchConfig {
  const char* kernel_name;
  dim3 grid;
  dim3 block;
  std::size_t dynamic_smem_bytes;
};
using ThreadMain = void (*)(void* context);
// Runs every block of the grid on the calling thread, one block at a time; returns when the
// grid is done. Throws sp::Error for a bad configuration; see OnError for kernel bugs.
void run_grid(const LaunchConfig& config, ThreadMain thread_main, void* context);
// More than 48 KiB of dynamic shared memory needs an opt-in, as on the device. The emulated
// cudaFuncSetAttribute records the largest one; which kernel it named is not tracked.
void note_smem_opt_in(std::size_t bytes);
std::size_t smem_opt_in_bytes();

}  // namespace detail

namespace capture {
// Whether `stream` (a cudaStream_t) is capturing into a graph, and recording work into its
// capture (kernels/emu/cuda_graph_emu.cpp; kernels/emu/capture_internal.h has the rest).
bool capturing(const void* stream);
void record(const void* stream, std::function<void()> work);
}  // namespace capture

namespace detail {

// What SP_LAUNCH(...) evaluates to; calling it with the kernel arguments runs the grid, or, on a
// capturing stream, records the grid with its arguments for the graph. The arguments are copied
// once per launch and each emulated thread receives its own copy of the parameters, as on the
// device.
template <class Body>
class Launch {
 public:
  template <class Stream>
  Launch(const char* kernel_name, dim3 grid, dim3 block, std::size_t smem_bytes, Stream&& stream,
         Body body)
      : config_{kernel_name, grid, block, smem_bytes},
        stream_(stream_address(stream)),
        body_(body) {}

  template <class... Args>
  void operator()(Args&&... args) const {
    using Params = std::tuple<std::decay_t<Args>...>;
    if (capture::capturing(stream_)) {
      capture::record(stream_, [config = config_, body = body_,
                                params = Params(std::forward<Args>(args)...)]() mutable {
        run(config, body, params);
      });
      return;
    }
    Params params(std::forward<Args>(args)...);
    run(config_, body_, params);
  }

 private:
  template <class Stream>
  static const void* stream_address(const Stream& stream) {
    if constexpr (std::is_pointer_v<Stream>) {
      return stream;
    } else {
      return nullptr;  // 0: the legacy stream
    }
  }
  template <class Params>
  static void run(const LaunchConfig& config, const Body& body, Params& params) {
    struct Frame {
      const Body* body;
      Params* params;
    } frame{&body, &params};
    run_grid(
        config,
        [](void* p) {
          auto* f = static_cast<Frame*>(p);
          std::apply(*f->body, *f->params);
        },
        &frame);
  }

  LaunchConfig config_;
  const void* stream_;
  Body body_;
};
template <class Stream, class Body>
Launch(const char*, dim3, dim3, std::size_t, Stream&&, Body) -> Launch<Body>;

}  // namespace detail

namespace builtin {

// The current thread's coordinates, read-only as in CUDA.
inline const uint3& threadIdx = detail::g_thread_idx;
inline const uint3& blockIdx = detail::g_block_idx;
inline const dim3& blockDim = detail::g_block_dim;
inline const dim3& gridDim = detail::g_grid_dim;

inline void __syncthreads(const std::source_location& where = std::source_location::current()) {
  detail::barrier(detail::BarrierOp::kSync, 0, where);
}
inline int __syncthreads_count(
    int predicate, const std::source_location& where = std::source_location::current()) {
  return detail::barrier(detail::BarrierOp::kCount, predicate, where);
}
inline int __syncthreads_and(int predicate,
                             const std::source_location& where = std::source_location::current()) {
  return detail::barrier(detail::BarrierOp::kAnd, predicate, where);
}
inline int __syncthreads_or(int predicate,
                            const std::source_location& where = std::source_location::current()) {
  return detail::barrier(detail::BarrierOp::kOr, predicate, where);
}

inline void __syncwarp(unsigned int mask = 0xffffffffu,
                       const std::source_location& where = std::source_location::current()) {
  detail::vote(detail::WarpOp::kSyncWarp, mask, 0, where);
}
template <detail::ShuffleValue T>
inline T __shfl_sync(unsigned int mask, T var, int src_lane, int width = warpSize,
                     const std::source_location& where = std::source_location::current()) {
  return detail::shuffle(detail::WarpOp::kShfl, mask, var, src_lane, width, where);
}
template <detail::ShuffleValue T>
inline T __shfl_up_sync(unsigned int mask, T var, unsigned int delta, int width = warpSize,
                        const std::source_location& where = std::source_location::current()) {
  return detail::shuffle(detail::WarpOp::kShflUp, mask, var, static_cast<int>(delta), width, where);
}
template <detail::ShuffleValue T>
inline T __shfl_down_sync(unsigned int mask, T var, unsigned int delta, int width = warpSize,
                          const std::source_location& where = std::source_location::current()) {
  return detail::shuffle(detail::WarpOp::kShflDown, mask, var, static_cast<int>(delta), width,
                         where);
}
template <detail::ShuffleValue T>
inline T __shfl_xor_sync(unsigned int mask, T var, int lane_mask, int width = warpSize,
                         const std::source_location& where = std::source_location::current()) {
  return detail::shuffle(detail::WarpOp::kShflXor, mask, var, lane_mask, width, where);
}
inline unsigned int __ballot_sync(
    unsigned int mask, int predicate,
    const std::source_location& where = std::source_location::current()) {
  return static_cast<unsigned int>(
      detail::vote(detail::WarpOp::kBallot, mask, predicate != 0, where));
}
inline int __any_sync(unsigned int mask, int predicate,
                      const std::source_location& where = std::source_location::current()) {
  return static_cast<int>(detail::vote(detail::WarpOp::kAny, mask, predicate != 0, where));
}
inline int __all_sync(unsigned int mask, int predicate,
                      const std::source_location& where = std::source_location::current()) {
  return static_cast<int>(detail::vote(detail::WarpOp::kAll, mask, predicate != 0, where));
}
// Which lanes are converged is unknowable here, so this is the warp's non-exited lanes: code
// that feeds it to a *_sync mask from divergent branches deadlocks visibly instead of silently.
inline unsigned int __activemask() {
  return detail::active_mask();
}

#define SP_EMU_REDUCE(name, op, T)                                                           \
  inline T name(unsigned int mask, T value,                                                  \
                const std::source_location& where = std::source_location::current()) {       \
    return static_cast<T>(detail::vote(op, mask, static_cast<std::uint32_t>(value), where)); \
  }
SP_EMU_REDUCE(__reduce_add_sync, detail::WarpOp::kReduceAddU, unsigned int)
SP_EMU_REDUCE(__reduce_min_sync, detail::WarpOp::kReduceMinU, unsigned int)
SP_EMU_REDUCE(__reduce_max_sync, detail::WarpOp::kReduceMaxU, unsigned int)
SP_EMU_REDUCE(__reduce_add_sync, detail::WarpOp::kReduceAddI, int)
SP_EMU_REDUCE(__reduce_min_sync, detail::WarpOp::kReduceMinI, int)
SP_EMU_REDUCE(__reduce_max_sync, detail::WarpOp::kReduceMaxI, int)
SP_EMU_REDUCE(__reduce_and_sync, detail::WarpOp::kReduceAnd, unsigned int)
SP_EMU_REDUCE(__reduce_or_sync, detail::WarpOp::kReduceOr, unsigned int)
SP_EMU_REDUCE(__reduce_xor_sync, detail::WarpOp::kReduceXor, unsigned int)
#undef SP_EMU_REDUCE

[[noreturn]] inline void __trap(
    const std::source_location& where = std::source_location::current()) {
  detail::trap(where);
}

}  // namespace builtin

}  // namespace sp::emu

// Kernels and host code of the emulated flavour live in sp::cuda_emu and see the built-ins
// unqualified, as nvcc code sees CUDA's global ones.
namespace sp::cuda_emu {
using namespace ::sp::emu::builtin;
}  // namespace sp::cuda_emu

// ---- CUDA keywords g++ does not know ----
#define __global__
#define __device__
#define __host__
#define __constant__
#define __managed__
#define __grid_constant__
#define __forceinline__ __inline__ __attribute__((always_inline))
#define __launch_bounds__(...)
#define __align__(n) __attribute__((aligned(n)))
// Blocks run one at a time, so one static object per __shared__ variable is block-shared. CUDA
// forbids initialisers on __shared__, and kernels must not rely on one (it would run once).
#define __shared__ static

// SP_LAUNCH(grid, block, smem_bytes, stream, kernel...)(args...) runs the whole grid on the
// calling thread. The kernel goes through a generic lambda so overloads, template ids with commas
// and template argument deduction from the call arguments all behave as with <<<...>>>. (It has
// a capture-default only so that g++ accepts local constexpr values as template arguments.)
#define SP_LAUNCH(grid, block, smem_bytes, stream, ...)                                            \
  ::sp::emu::detail::Launch(#__VA_ARGS__, (grid), (block), (smem_bytes), (stream),                 \
                            [&](auto&&... sp_emu_args_) {                                          \
                              __VA_ARGS__(static_cast<decltype(sp_emu_args_)&&>(sp_emu_args_)...); \
                            })

// SP_DYNAMIC_SHARED(T, name) declares T* name at the block's dynamic shared memory (the launch's
// smem_bytes, 16-byte aligned, poisoned at the start of every block).
#define SP_DYNAMIC_SHARED(T, name) \
  T* name = reinterpret_cast<T*>(::sp::emu::detail::dynamic_shared_memory())
