// "Keep the emulator honest": deliberately broken kernels must be caught, by a wrong result under
// at least one schedule order, or (TSan build) by a ThreadSanitizer race report; their correct
// versions must be right under every order and race-free.
#include <gtest/gtest.h>

#include <cmath>
#include <vector>

#include "kernels/cuda_compat.h"
#include "tests/emu/emu_test_kernels.cuh"
#include "tests/emu/emu_test_util.h"

namespace sp::cuda_emu {
namespace {

using namespace emu_test;
using ::sp::emu_test_util::failing_schedules;
using ::sp::emu_test_util::join;

constexpr int kBlock = 256;
constexpr int kBlocks = 6;

std::vector<float> inputs() {
  std::vector<float> in(kBlock * kBlocks);
  // Small integers: every partial sum is exact, so any difference is a real ordering bug.
  for (std::size_t i = 0; i < in.size(); ++i) in[i] = static_cast<float>((i * 29 + 3) % 17) - 6;
  return in;
}

std::vector<double> block_sums(const std::vector<float>& in) {
  std::vector<double> s(kBlocks, 0.0);
  for (int b = 0; b < kBlocks; ++b) {
    for (int t = 0; t < kBlock; ++t) s[b] += in[b * kBlock + t];
  }
  return s;
}

// Runs a block-sum-shaped kernel and says whether every block's sum is right.
template <class Launch>
bool sums_right(Launch launch) {
  const std::vector<float> in = inputs();
  const std::vector<double> expect = block_sums(in);
  std::vector<float> out(kBlocks, -12345.0f);
  launch(in.data(), out.data());
  for (int b = 0; b < kBlocks; ++b) {
    if (out[b] != static_cast<float>(expect[b])) return false;
  }
  return true;
}

bool mean_var_right(bool broken) {
  const std::vector<float> in = inputs();
  std::vector<float> out(2 * kBlocks, -1.0f);
  if (broken) {
    SP_LAUNCH(kBlocks, kBlock, 0, 0, mean_var_no_trailing_sync_broken<kBlock>)
    (in.data(), out.data());
  } else {
    SP_LAUNCH(kBlocks, kBlock, 0, 0, mean_var<kBlock>)(in.data(), out.data());
  }
  for (int b = 0; b < kBlocks; ++b) {
    double mean = 0, var = 0;
    for (int t = 0; t < kBlock; ++t) mean += in[b * kBlock + t];
    mean /= kBlock;
    for (int t = 0; t < kBlock; ++t)
      var += (in[b * kBlock + t] - mean) * (in[b * kBlock + t] - mean);
    var /= kBlock;
    if (std::fabs(out[2 * b] - mean) > 1e-5 || std::fabs(out[2 * b + 1] - var) > 1e-4) return false;
  }
  return true;
}

void run_no_leading_sync() {
  sums_right([](const float* in, float* out) {
    SP_LAUNCH(kBlocks, kBlock, 0, 0, block_sum_no_leading_sync_broken<kBlock>)
    (in, out, kBlock * kBlocks);
  });
}

void run_plain_accumulate() {
  sums_right([](const float* in, float* out) {
    SP_LAUNCH(kBlocks, kBlock, 0, 0, shared_accumulate_plain_broken<kBlock>)(in, out);
  });
}

void run_warp_synchronous() {
  sums_right([](const float* in, float* out) {
    SP_LAUNCH(kBlocks, kBlock, 0, 0, block_sum_warp_synchronous_broken<kBlock>)(in, out);
  });
}

TEST(EmuHonesty, CorrectKernelsAreRightUnderEverySchedule) {
  const auto block_sum_ok = failing_schedules([] {
    return sums_right([](const float* in, float* out) {
      SP_LAUNCH(kBlocks, kBlock, 0, 0, block_sum<kBlock>)(in, out, kBlock * kBlocks);
    });
  });
  EXPECT_TRUE(block_sum_ok.empty()) << "block_sum wrong under " << join(block_sum_ok);
  const auto mean_var_ok = failing_schedules([] { return mean_var_right(false); });
  EXPECT_TRUE(mean_var_ok.empty()) << "mean_var wrong under " << join(mean_var_ok);
  const auto atomic_ok = failing_schedules([] {
    return sums_right([](const float* in, float* out) {
      SP_LAUNCH(kBlocks, kBlock, 0, 0, shared_accumulate<kBlock>)(in, out);
    });
  });
  EXPECT_TRUE(atomic_ok.empty()) << "shared_accumulate wrong under " << join(atomic_ok);
  const auto warp_ok = failing_schedules([] {
    return sums_right([](const float* in, float* out) {
      SP_LAUNCH(kBlocks, kBlock, 0, 0, block_sum_warp_tail<kBlock>)(in, out);
    });
  });
  EXPECT_TRUE(warp_ok.empty()) << "block_sum_warp_tail wrong under " << join(warp_ok);
}

// (a) The leading __syncthreads, between writing shared memory and reading others' entries.
TEST(EmuHonesty, MissingLeadingSyncthreadsIsCaught) {
#if SP_TEST_TSAN
  SP_EXPECT_TSAN_RACE(run_no_leading_sync());
#else
  const auto wrong = failing_schedules([] {
    return sums_right([](const float* in, float* out) {
      SP_LAUNCH(kBlocks, kBlock, 0, 0, block_sum_no_leading_sync_broken<kBlock>)
      (in, out, kBlock * kBlocks);
    });
  });
  EXPECT_FALSE(wrong.empty()) << "the missing leading barrier went unnoticed under every order";
  std::printf("[ honesty  ] missing leading __syncthreads: wrong under %s\n", join(wrong).c_str());
#endif
}

// (b) The trailing __syncthreads, before a shared buffer is reused for a second phase.
TEST(EmuHonesty, MissingTrailingSyncthreadsIsCaught) {
#if SP_TEST_TSAN
  SP_EXPECT_TSAN_RACE(mean_var_right(true));
#else
  const auto wrong = failing_schedules([] { return mean_var_right(true); });
  EXPECT_FALSE(wrong.empty()) << "the missing trailing barrier went unnoticed under every order";
  std::printf("[ honesty  ] missing trailing __syncthreads: wrong under %s\n", join(wrong).c_str());
#endif
}

// (c) A plain += on a shared accumulator instead of atomicAdd. Fibers never switch inside a
// read-modify-write, so no order can make it come out wrong: only ThreadSanitizer sees it.
TEST(EmuHonesty, PlainSharedAccumulationIsCaught) {
#if SP_TEST_TSAN
  SP_EXPECT_TSAN_RACE(run_plain_accumulate());
#else
  GTEST_SKIP() << "a non-atomic += never interleaves between fiber switches; this bug is caught "
                  "by the ThreadSanitizer build (-DSOFTPROMPT_SANITIZE=thread)";
#endif
}

// (d) The pre-Volta warp-synchronous tail: volatile shared memory and no __syncwarp.
TEST(EmuHonesty, WarpSynchronousReductionIsCaught) {
#if SP_TEST_TSAN
  SP_EXPECT_TSAN_RACE(run_warp_synchronous());
#else
  const auto wrong = failing_schedules([] {
    return sums_right([](const float* in, float* out) {
      SP_LAUNCH(kBlocks, kBlock, 0, 0, block_sum_warp_synchronous_broken<kBlock>)(in, out);
    });
  });
  EXPECT_FALSE(wrong.empty()) << "the warp-synchronous idiom went unnoticed under every order";
  std::printf("[ honesty  ] warp-synchronous reduction: wrong under %s\n", join(wrong).c_str());
#endif
}

#if !SP_TEST_TSAN
// Outside the TSan build the racy kernels still run (to the wrong answer) without crashing.
TEST(EmuHonesty, BrokenKernelsRunToCompletionOutsideTsan) {
  run_no_leading_sync();
  run_plain_accumulate();
  run_warp_synchronous();
}
#endif

}  // namespace
}  // namespace sp::cuda_emu
