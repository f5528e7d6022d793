// Tests of the emulated device types and intrinsics: bf16/fp16 rounding, vector-type layout,
// integer and math intrinsics, and atomics.
#include <gtest/gtest.h>

#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <vector>

#include "kernels/cuda_compat.h"

namespace sp::cuda_emu {
namespace {

TEST(EmuTypes, Bf16RoundsToNearestEven) {
  EXPECT_EQ(__bfloat16_as_ushort(__float2bfloat16(1.0f)), 0x3f80);
  // 1 + 2^-8 is halfway between 1 and 1 + 2^-7: ties go to the even mantissa (down).
  EXPECT_EQ(__bfloat162float(__float2bfloat16(1.0f + 0x1p-8f)), 1.0f);
  // 1 + 3 * 2^-8 is halfway between 1 + 2^-7 (odd) and 1 + 2^-6 (even): up.
  EXPECT_EQ(__bfloat162float(__float2bfloat16(1.0f + 3 * 0x1p-8f)), 1.0f + 0x1p-6f);
  // Just above halfway rounds up.
  EXPECT_EQ(__bfloat162float(__float2bfloat16(1.0f + 0x1p-8f + 0x1p-20f)), 1.0f + 0x1p-7f);
  EXPECT_EQ(__bfloat16_as_ushort(__float2bfloat16(-0.0f)), 0x8000);
  EXPECT_EQ(__bfloat16_as_ushort(__float2bfloat16(std::numeric_limits<float>::quiet_NaN())),
            0x7fff);
  EXPECT_EQ(__bfloat16_as_ushort(__float2bfloat16(std::numeric_limits<float>::infinity())), 0x7f80);
  EXPECT_EQ(__bfloat16_as_ushort(__float2bfloat16(3.4e38f)), 0x7f80);  // overflows to inf
  EXPECT_EQ(__bfloat16_as_ushort(__float2bfloat16_rz(1.0f + 0x1p-7f - 0x1p-20f)), 0x3f80);
  // Conversions are exact the other way.
  for (std::uint32_t b = 0; b < 0x10000; b += 7) {
    const __nv_bfloat16 h = __ushort_as_bfloat16(static_cast<unsigned short>(b));
    const float f = __bfloat162float(h);
    if (!std::isnan(f)) {
      EXPECT_EQ(__bfloat16_as_ushort(__float2bfloat16(f)), b);
    }
  }
  // From double: no double rounding through float.
  EXPECT_EQ(__bfloat162float(__double2bfloat16(1.0 + 0x1p-8 + 0x1p-40)), 1.0f + 0x1p-7f);
  EXPECT_EQ(__bfloat162float(__nv_bfloat16(3)), 3.0f);
}

TEST(EmuTypes, Bf16ArithmeticRoundsEveryOperation) {
  const __nv_bfloat16 a(256.0f), one(1.0f);
  EXPECT_EQ(__bfloat162float(a + one), 256.0f);  // 257 is not a bf16: ties to even
  EXPECT_EQ(__bfloat162float(__hfma(a, one, one)), 256.0f);
  const __nv_bfloat162 p = __floats2bfloat162_rn(1.5f, -2.0f);
  EXPECT_EQ(__low2float(p), 1.5f);
  EXPECT_EQ(__high2float(p), -2.0f);
  const float2 f = __bfloat1622float2(__hmul2(p, p));
  EXPECT_EQ(f.x, 2.25f);
  EXPECT_EQ(f.y, 4.0f);
  EXPECT_TRUE(__nv_bfloat16(1.0f) < __nv_bfloat16(2.0f));
}

TEST(EmuTypes, HalfRoundsToNearestEven) {
  EXPECT_EQ(__half_as_ushort(__float2half(1.0f)), 0x3c00);
  EXPECT_EQ(__half_as_ushort(__float2half(65504.0f)), 0x7bff);
  EXPECT_EQ(__half_as_ushort(__float2half(65519.0f)), 0x7bff);
  EXPECT_EQ(__half_as_ushort(__float2half(65520.0f)), 0x7c00);  // halfway to inf: rounds up
  EXPECT_EQ(__half_as_ushort(__float2half(0x1p-24f)), 0x0001);  // smallest subnormal
  EXPECT_EQ(__half_as_ushort(__float2half(0x1p-25f)), 0x0000);  // half of it: ties to even 0
  EXPECT_EQ(__half_as_ushort(__float2half(3 * 0x1p-25f)), 0x0002);
  EXPECT_EQ(__half_as_ushort(__float2half(-0x1p-14f)), 0x8400);  // smallest normal
  EXPECT_EQ(__half_as_ushort(__float2half(1.0f + 0x1p-11f)), 0x3c00);
  EXPECT_EQ(__half_as_ushort(__float2half(1.0f + 3 * 0x1p-11f)), 0x3c02);
  EXPECT_EQ(__half_as_ushort(__float2half(std::numeric_limits<float>::quiet_NaN())), 0x7fff);
  for (std::uint32_t b = 0; b < 0x10000; b += 3) {
    const __half h = __ushort_as_half(static_cast<unsigned short>(b));
    const float f = __half2float(h);
    if (!std::isnan(f)) {
      EXPECT_EQ(__half_as_ushort(__float2half(f)), b) << b;
    }
  }
}

TEST(EmuTypes, VectorTypesHaveCudaLayout) {
  static_assert(sizeof(float4) == 16 && alignof(float4) == 16);
  static_assert(sizeof(float2) == 8 && alignof(float2) == 8);
  static_assert(sizeof(float3) == 12 && alignof(float3) == 4);
  static_assert(sizeof(uint4) == 16 && alignof(uint4) == 16);
  static_assert(sizeof(int4) == 16 && alignof(int4) == 16);
  static_assert(sizeof(double2) == 16 && alignof(double2) == 16);
  static_assert(sizeof(__nv_bfloat16) == 2 && sizeof(__nv_bfloat162) == 4);
  static_assert(alignof(__nv_bfloat162) == 4);
  static_assert(std::is_trivially_copyable_v<__nv_bfloat16>);
  static_assert(std::is_trivially_default_constructible_v<__nv_bfloat16>);
  const dim3 d(4);
  EXPECT_EQ(d.x, 4u);
  EXPECT_EQ(d.y, 1u);
  EXPECT_EQ(d.z, 1u);
  const float4 v = make_float4(1, 2, 3, 4);
  EXPECT_EQ(v.w, 4.0f);
  EXPECT_EQ(warpSize, 32);
}

TEST(EmuTypes, IntrinsicsMatchCuda) {
  EXPECT_EQ(__popc(0xf0f0u), 8);
  EXPECT_EQ(__popcll(~0ull), 64);
  EXPECT_EQ(__clz(1), 31);
  EXPECT_EQ(__clz(0), 32);
  EXPECT_EQ(__ffs(0), 0);
  EXPECT_EQ(__ffs(0x10), 5);
  EXPECT_EQ(__brev(1u), 0x80000000u);
  EXPECT_EQ(__brev(0x12345678u), 0x1e6a2c48u);
  EXPECT_EQ(__umulhi(0x80000000u, 4u), 2u);
  EXPECT_EQ(__float_as_uint(1.0f), 0x3f800000u);
  EXPECT_EQ(__int_as_float(0x40000000), 2.0f);
  EXPECT_EQ(__float2int_rn(2.5f), 2);
  EXPECT_EQ(__float2int_rn(3.5f), 4);
  EXPECT_EQ(__float2int_rd(-1.5f), -2);
  EXPECT_FLOAT_EQ(rsqrtf(4.0f), 0.5f);
  EXPECT_FLOAT_EQ(__expf(1.0f), std::exp(1.0f));
  EXPECT_EQ(__saturatef(1.5f), 1.0f);
  EXPECT_EQ(__saturatef(-0.5f), 0.0f);
  EXPECT_EQ(min(3, 5u), 3u);
  EXPECT_EQ(max(2.0f, 7), 7.0f);
  EXPECT_EQ(fmaxf(1.0f, NAN), 1.0f);
  EXPECT_TRUE(std::isinf(INFINITY));
  EXPECT_EQ(FLT_MAX, std::numeric_limits<float>::max());
  EXPECT_FLOAT_EQ(erff(0.5f), std::erf(0.5f));
  EXPECT_FLOAT_EQ(log1pf(1e-3f), std::log1p(1e-3f));
}

TEST(EmuTypes, AtomicsReturnTheOldValue) {
  int i = 5;
  EXPECT_EQ(atomicAdd(&i, 3), 5);
  EXPECT_EQ(atomicCAS(&i, 8, 1), 8);
  EXPECT_EQ(i, 1);
  EXPECT_EQ(atomicCAS(&i, 8, 2), 1);
  EXPECT_EQ(i, 1);
  EXPECT_EQ(atomicExch(&i, 9), 1);
  EXPECT_EQ(atomicMax(&i, 4), 9);
  EXPECT_EQ(atomicMin(&i, 4), 9);
  EXPECT_EQ(i, 4);
  unsigned long long u = 1;
  EXPECT_EQ(atomicAdd(&u, 2ull), 1ull);
  EXPECT_EQ(atomicOr(&u, 8ull), 3ull);
  EXPECT_EQ(u, 11ull);
  unsigned w = 3;
  EXPECT_EQ(atomicInc(&w, 3u), 3u);
  EXPECT_EQ(w, 0u);
  double d = 0.5;
  EXPECT_EQ(atomicAdd(&d, 0.25), 0.5);
  EXPECT_EQ(d, 0.75);
  __nv_bfloat16 b(1.0f);
  EXPECT_EQ(__bfloat162float(atomicAdd(&b, __nv_bfloat16(0.5f))), 1.0f);
  EXPECT_EQ(__bfloat162float(b), 1.5f);
  float f = 2.0f;
  EXPECT_EQ(atomicExch(&f, 3.0f), 2.0f);
  EXPECT_EQ(f, 3.0f);
}

}  // namespace
}  // namespace sp::cuda_emu
