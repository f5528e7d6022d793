// Tensor basics: creation, views share storage, strides, reshape vs copy, dtype conversions.
#include <gtest/gtest.h>

#include <cmath>
#include <limits>

#include "engine/allocator.h"
#include "engine/error.h"
#include "engine/ops/ops.h"
#include "engine/tensor.h"
#include "kernels/philox.h"

namespace sp {
namespace {

TEST(Tensor, CreationAndMetadata) {
  Tensor t = Tensor::from_floats(std::vector<float>{1, 2, 3, 4, 5, 6}, {2, 3});
  EXPECT_EQ(t.shape(), Shape({2, 3}));
  EXPECT_EQ(t.strides(), Shape({3, 1}));
  EXPECT_EQ(t.numel(), 6);
  EXPECT_EQ(t.size(-1), 3);
  EXPECT_TRUE(t.is_contiguous());
  EXPECT_EQ(t.describe(), "F32[2, 3] on cpu");
  EXPECT_THROW(Tensor::from_floats(std::vector<float>{1, 2}, {3}), Error);
  EXPECT_THROW(t.size(2), Error);
}

TEST(Tensor, TransposeIsAViewSharingStorage) {
  Tensor t = Tensor::from_floats(std::vector<float>{1, 2, 3, 4, 5, 6}, {2, 3});
  Tensor tt = t.transpose(0, 1);
  EXPECT_EQ(tt.shape(), Shape({3, 2}));
  EXPECT_EQ(tt.strides(), Shape({1, 3}));
  EXPECT_FALSE(tt.is_contiguous());
  EXPECT_EQ(tt.raw_data(), t.raw_data());
  EXPECT_EQ(tt.contiguous().to_floats(), std::vector<float>({1, 4, 2, 5, 3, 6}));
  t.data<float>()[1] = 20;  // writes are visible through the view
  EXPECT_EQ(tt.contiguous().to_floats()[2], 20);
}

TEST(Tensor, SliceAndSelectAreViews) {
  Tensor t = Tensor::arange(0, 24).to(DType::F32).reshape({2, 3, 4});
  Tensor s = t.slice(2, 1, 3);
  EXPECT_EQ(s.shape(), Shape({2, 3, 2}));
  EXPECT_EQ(s.offset(), 1);
  EXPECT_EQ(s.contiguous().to_floats(),
            std::vector<float>({1, 2, 5, 6, 9, 10, 13, 14, 17, 18, 21, 22}));
  Tensor row = t.select(1, 2);
  EXPECT_EQ(row.shape(), Shape({2, 4}));
  EXPECT_EQ(row.contiguous().to_floats(), std::vector<float>({8, 9, 10, 11, 20, 21, 22, 23}));
  EXPECT_THROW(t.slice(0, 1, 3), Error);
}

TEST(Tensor, ReshapeViewsWhenPossibleAndCopiesOtherwise) {
  Tensor t = Tensor::arange(0, 12).to(DType::F32).reshape({3, 4});
  Tensor v = t.reshape({2, 6});
  EXPECT_EQ(v.raw_data(), t.raw_data());
  EXPECT_EQ(t.reshape({-1}).shape(), Shape({12}));
  Tensor tt = t.transpose(0, 1);  // [4, 3], not viewable as [12]
  EXPECT_THROW(tt.view({12}), Error);
  Tensor flat = tt.reshape({12});
  EXPECT_NE(flat.raw_data(), t.raw_data());
  EXPECT_EQ(flat.to_floats()[1], 4.0f);
  // A slice along the last axis can still be split on its leading axis without a copy.
  Tensor s = t.slice(1, 0, 2);  // [3, 2] with row stride 4
  EXPECT_EQ(s.unsqueeze(0).raw_data(), t.raw_data());
  EXPECT_THROW(t.reshape({5, -1}), Error);
}

TEST(Tensor, ExpandBroadcastsWithZeroStrides) {
  Tensor t = Tensor::from_floats(std::vector<float>{1, 2, 3}, {3});
  Tensor e = t.expand({2, 3});
  EXPECT_EQ(e.strides(), Shape({0, 1}));
  EXPECT_EQ(e.contiguous().to_floats(), std::vector<float>({1, 2, 3, 1, 2, 3}));
  EXPECT_THROW(t.expand({2, 4}), Error);
}

TEST(DType, Bf16RoundsToNearestEven) {
  // 1 + 2^-8 is exactly halfway between two bf16 values: ties go to the even mantissa (1.0).
  EXPECT_EQ(float_to_bf16(1.0f + 1.0f / 256), 0x3f80);
  EXPECT_EQ(float_to_bf16(1.0f + 3.0f / 256), 0x3f82);  // halfway above odd -> up to even
  EXPECT_EQ(bf16_to_float(0x3f80), 1.0f);
  EXPECT_EQ(bf16_to_float(float_to_bf16(-2.5f)), -2.5f);
  EXPECT_TRUE(std::isnan(bf16_to_float(float_to_bf16(std::numeric_limits<float>::quiet_NaN()))));
  EXPECT_EQ(bf16_to_float(float_to_bf16(std::numeric_limits<float>::infinity())),
            std::numeric_limits<float>::infinity());
}

TEST(DType, F16ConversionsMatchIeeeBinary16) {
  EXPECT_EQ(float_to_f16(1.0f), 0x3c00);
  EXPECT_EQ(float_to_f16(-2.0f), 0xc000);
  EXPECT_EQ(float_to_f16(65504.0f), 0x7bff);                // largest finite
  EXPECT_EQ(float_to_f16(65520.0f), 0x7c00);                // rounds to inf
  EXPECT_EQ(float_to_f16(5.9604644775390625e-8f), 0x0001);  // smallest subnormal
  EXPECT_EQ(float_to_f16(1.0f + 1.0f / 2048), 0x3c00);      // tie -> even
  EXPECT_EQ(f16_to_float(0x0001), 5.9604644775390625e-8f);
  EXPECT_EQ(f16_to_float(0x3555), 0.333251953125f);
  EXPECT_EQ(f16_to_float(0xfc00), -std::numeric_limits<float>::infinity());
  for (uint32_t bits = 0; bits < 0x7c00; bits += 7) {  // every finite half round-trips
    EXPECT_EQ(float_to_f16(f16_to_float(uint16_t(bits))), bits);
  }
}

TEST(Tensor, DtypeCastRoundTrip) {
  Tensor t = Tensor::from_floats(std::vector<float>{0.5f, -1.25f, 3.0f}, {3});
  EXPECT_EQ(t.to(DType::BF16).to(DType::F32).to_floats(), t.to_floats());
  EXPECT_EQ(t.to(DType::F16).to(DType::F32).to_floats(), t.to_floats());
  Tensor ids = Tensor::from_ints({1, -2, 3}, {3}, DType::I32);
  EXPECT_EQ(ids.to(DType::I64).to_ints(), std::vector<int64_t>({1, -2, 3}));
}

TEST(Tensor, PhiloxNormalsAreSeededAndPlausible) {
  Tensor a = randn({10000}, 42), b = randn({10000}, 42), c = randn({10000}, 43);
  EXPECT_EQ(a.to_floats(), b.to_floats());
  EXPECT_NE(a.to_floats(), c.to_floats());
  double mean = 0, var = 0;
  for (float v : a.to_floats()) mean += v;
  mean /= 10000;
  for (float v : a.to_floats()) var += (v - mean) * (v - mean);
  var /= 10000;
  // 10k samples: the standard error of the mean is 0.01, of the variance about 0.014.
  EXPECT_NEAR(mean, 0.0, 0.04);
  EXPECT_NEAR(var, 1.0, 0.06);
}

TEST(Device, ParsesNames) {
  EXPECT_EQ(Device::parse("cpu"), Device::cpu());
  EXPECT_EQ(Device::parse("cuda-emu"), Device::cuda_emu());
  EXPECT_EQ(Device::parse("cuda:1"), Device::cuda(1));
  EXPECT_THROW(Device::parse("tpu"), Error);
  EXPECT_THROW(Device::parse("cuda:x"), Error);
}

}  // namespace
}  // namespace sp

namespace sp {
namespace {

TEST(Dropout, MaskIsPhiloxUniformPerElement) {
  const float p = 0.25f;
  const uint64_t seed = 99, offset = 6;  // an offset that is not a multiple of 4 words
  Tensor x = Tensor::full({1001}, 1.0f);
  std::vector<float> y = dropout(x, p, seed, offset).to_floats();
  int64_t dropped = 0;
  for (size_t i = 0; i < y.size(); ++i) {
    const bool drop = philox::uniform(seed, offset, i) < p;
    EXPECT_EQ(y[i], drop ? 0.0f : 1.0f / (1.0f - p)) << i;
    dropped += drop;
  }
  // 1001 Bernoulli(0.25) draws: standard deviation 13.7; 5 sigma either side.
  EXPECT_NEAR(double(dropped), 250.0, 70.0);
}

// The CPU computes sixteen Philox blocks at a time (SIMD lanes) and splits the tensor across
// threads: every offset within a block, lane group boundaries and a thread split must still give
// element i the word philox::uniform(seed, offset, i), bit for bit.
TEST(Dropout, LaneParallelMaskEqualsTheScalarStreamAtEveryOffset) {
  const float p = 0.5f;
  const uint64_t seed = 0x1234567890ABCDEFull;  // both key words non-zero
  for (uint64_t offset : {uint64_t(0), uint64_t(1), uint64_t(3), uint64_t(63), uint64_t(65),
                          (uint64_t(1) << 34) - 5}) {  // the counter's high word changes
    const int64_t n = 3 * (1 << 14) + 77;              // several parallel chunks, ragged end
    std::vector<float> y = dropout(Tensor::full({n}, 1.0f), p, seed, offset).to_floats();
    int64_t mismatches = 0;
    for (int64_t i = 0; i < n; ++i) {
      const bool drop = philox::uniform(seed, offset, uint64_t(i)) < p;
      mismatches += y[size_t(i)] != (drop ? 0.0f : 2.0f);
    }
    EXPECT_EQ(mismatches, 0) << "offset " << offset;
  }
}

TEST(Philox, LanesEqualOneBlockAtATime) {
  uint32_t words[4 * philox::kLanes];
  const uint64_t first = (uint64_t(1) << 32) - 7, seed = 0xFEDCBA9876543210ull;  // crosses 2^32
  philox::generate_lanes(first, seed, words);
  for (int j = 0; j < philox::kLanes; ++j) {
    const philox::Block block = philox::generate(first + uint64_t(j), seed);
    for (int w = 0; w < 4; ++w) EXPECT_EQ(words[4 * j + w], block.v[w]) << j << "," << w;
  }
}

TEST(HostAllocator, LargeBlocksAreReusedAcrossSteps) {
  Allocator& host = cpu_allocator();
  void* first = nullptr;
  {
    Tensor big = Tensor::empty({3 << 20});
    first = big.raw_data();
  }
  Tensor again = Tensor::empty({3 << 20});
  EXPECT_EQ(again.raw_data(), first);  // the cached block came back: no new pages to fault in
  EXPECT_GE(host.stats().bytes_in_use, size_t(12) << 20);
}

}  // namespace
}  // namespace sp
