// Tests of the emulated execution model: launches and indexing, shared memory, warp primitives,
// atomics, schedules, diagnosis of kernel bugs, and a printed speed figure.
#include <gtest/gtest.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <functional>
#include <numeric>
#include <random>
#include <string>
#include <vector>

#include "engine/error.h"
#include "kernels/cuda_compat.h"
#include "tests/emu/emu_test_kernels.cuh"
#include "tests/emu/emu_test_util.h"

namespace sp::cuda_emu {
namespace {

using namespace emu_test;
using ::sp::emu::OnError;
using ::sp::emu::Schedule;
using ::sp::emu::ScheduleSpec;
using ::sp::emu::ScopedOnError;
using ::sp::emu::ScopedSchedule;
using ::sp::emu_test_util::failing_schedules;
using ::sp::emu_test_util::join;

std::uint32_t bits_of(float f) {
  std::uint32_t u;
  std::memcpy(&u, &f, 4);
  return u;
}

// ---- launches --------------------------------------------------------------------------------

TEST(EmuLaunch, GridAndBlockIndexingIn3dWithTails) {
  const int nx = 37, ny = 11, nz = 5;
  const dim3 block(8, 4, 2);
  const dim3 grid((nx + 7) / 8, (ny + 3) / 4, (nz + 1) / 2);
  for (const ScheduleSpec& spec : ::sp::emu::test_schedules()) {
    ScopedSchedule scoped(spec);
    std::vector<unsigned> out(nx * ny * nz, 0xffffffffu);
    std::vector<unsigned> visits(out.size(), 0);
    SP_LAUNCH(grid, block, 0, 0, index3d<unsigned>)(out.data(), visits.data(), nx, ny, nz);
    for (int z = 0; z < nz; ++z) {
      for (int y = 0; y < ny; ++y) {
        for (int x = 0; x < nx; ++x) {
          const int i = (z * ny + y) * nx + x;
          const unsigned b = ((z / 2) * grid.y + (y / 4)) * grid.x + (x / 8);
          const unsigned t = ((z % 2) * 4 + (y % 4)) * 8 + (x % 8);
          ASSERT_EQ(visits[i], 1u) << "element " << x << "," << y << "," << z;
          ASSERT_EQ(out[i], b * 1024 + t) << "element " << x << "," << y << "," << z;
        }
      }
    }
  }
}

TEST(EmuLaunch, EachThreadGetsItsOwnCopyOfTheParameters) {
  std::vector<int> out(96, 0);
  SP_LAUNCH(1, 96, 0, 0, param_copies<int>)(out.data());
  for (int i = 0; i < 96; ++i) EXPECT_EQ(out[i], i + 1);
}

TEST(EmuLaunch, TemplateIdsWithCommasAndDeducedTemplates) {
  const int n = 1000;
  std::vector<float> x(n), y(n, 1.0f);
  std::iota(x.begin(), x.end(), 0.0f);
  SP_LAUNCH((n + 127) / 128, 128, 0, 0, scale_add<float, 3>)(x.data(), y.data(), n);
  for (int i = 0; i < n; ++i) ASSERT_EQ(y[i], 1.0f + 3.0f * i);
  // Template arguments deduced from the call arguments, as with <<<...>>>.
  std::vector<double> d(n, 0.0);
  SP_LAUNCH(4, 64, 0, 0, fill)(d.data(), 2.5, n);
  for (int i = 0; i < n; ++i) ASSERT_EQ(d[i], 2.5);
}

TEST(EmuLaunch, RunsOnACreatedStream) {
  cudaStream_t stream = nullptr;
  ASSERT_EQ(cudaStreamCreate(&stream), cudaSuccess);
  float* dev = nullptr;
  ASSERT_EQ(cudaMalloc(&dev, 256 * sizeof(float)), cudaSuccess);
  SP_LAUNCH(2, 128, 0, stream, fill<float>)(dev, 7.0f, 256);
  std::vector<float> host(256);
  ASSERT_EQ(cudaMemcpyAsync(host.data(), dev, 256 * sizeof(float), cudaMemcpyDeviceToHost, stream),
            cudaSuccess);
  ASSERT_EQ(cudaStreamSynchronize(stream), cudaSuccess);
  for (float v : host) EXPECT_EQ(v, 7.0f);
  EXPECT_EQ(cudaFree(dev), cudaSuccess);
  EXPECT_EQ(cudaStreamDestroy(stream), cudaSuccess);
}

TEST(EmuLaunch, RejectsConfigurationsCudaWouldReject) {
  std::vector<float> buf(1 << 16);
  const auto expect_rejected = [&](dim3 grid, dim3 block, std::size_t smem, const char* why) {
    try {
      SP_LAUNCH(grid, block, smem, 0, fill<float>)(buf.data(), 1.0f, 1);
      ADD_FAILURE() << "launch was accepted; expected: " << why;
    } catch (const Error& e) {
      EXPECT_EQ(e.kind(), ErrorKind::kInvalidArgument);
      EXPECT_NE(std::string(e.what()).find("fill<float>"), std::string::npos) << e.what();
      EXPECT_NE(std::string(e.what()).find(why), std::string::npos) << e.what();
    }
  };
  expect_rejected(1, 1025, 0, "block dimensions are limited");
  expect_rejected(1, dim3(32, 32, 2), 0, "at most 1024 threads");
  expect_rejected(1, dim3(1, 1, 65), 0, "block dimensions are limited");
  expect_rejected(0, 32, 0, "grid dimensions must be >= 1");
  expect_rejected(dim3(1, 70000), 32, 0, "grid dimensions are limited");
  expect_rejected(1, 32, 228 * 1024, "limited to 232448 bytes");
  // Over 48 KiB needs the opt-in, as on the device.
  std::vector<float> out(32);
  try {
    SP_LAUNCH(1, 32, 64 * 1024, 0, read_dynamic_shared<float>)(out.data());
    ADD_FAILURE() << "64 KiB of dynamic shared memory was accepted without an opt-in";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("cudaFuncSetAttribute"), std::string::npos) << e.what();
  }
  ASSERT_EQ(cudaFuncSetAttribute(read_dynamic_shared<float>,
                                 cudaFuncAttributeMaxDynamicSharedMemorySize, 64 * 1024),
            cudaSuccess);
  SP_LAUNCH(1, 32, 64 * 1024, 0, read_dynamic_shared<float>)(out.data());
}

// ---- shared memory ---------------------------------------------------------------------------

TEST(EmuSharedMemory, BlockReductionIsRightUnderEverySchedule) {
  constexpr int kBlock = 256;
  const int n = kBlock * 9 + 77;  // the last block has a tail
  const int blocks = (n + kBlock - 1) / kBlock;
  std::vector<float> in(n);
  for (int i = 0; i < n; ++i) in[i] = static_cast<float>((i * 37) % 101) - 50.0f;
  const auto failing = failing_schedules([&] {
    std::vector<float> out(blocks, -1.0f);
    SP_LAUNCH(blocks, kBlock, 0, 0, block_sum<kBlock>)(in.data(), out.data(), n);
    for (int b = 0; b < blocks; ++b) {
      double expect = 0;
      for (int i = b * kBlock; i < std::min(n, (b + 1) * kBlock); ++i) expect += in[i];
      if (out[b] != static_cast<float>(expect)) return false;
    }
    return true;
  });
  EXPECT_TRUE(failing.empty()) << "wrong under " << join(failing);
}

TEST(EmuSharedMemory, DynamicSharedMemoryIsPoisonedAtEveryBlock) {
  std::vector<float> f(64, 0.0f);
  SP_LAUNCH(2, 32, 32 * sizeof(float), 0, read_dynamic_shared<float>)(f.data());
  for (float v : f) {
    EXPECT_TRUE(std::isnan(v));
    EXPECT_EQ(bits_of(v), 0xfffafffau);
  }
  std::vector<__nv_bfloat16> h(64, __nv_bfloat16(0.0f));
  SP_LAUNCH(2, 32, 32 * 2, 0, read_dynamic_shared<__nv_bfloat16>)(h.data());
  for (auto v : h) EXPECT_TRUE(std::isnan(__bfloat162float(v)));
  std::vector<double> d(32, 0.0);
  SP_LAUNCH(1, 32, 32 * 8, 0, read_dynamic_shared<double>)(d.data());
  for (double v : d) EXPECT_TRUE(std::isnan(v));
  // What block 0 wrote is gone when block 1 starts.
  std::vector<float> later(4 * 32, 0.0f);
  SP_LAUNCH(4, 32, 32 * sizeof(float), 0, dynamic_shared_between_blocks<float>)(later.data());
  for (int i = 32; i < 4 * 32; ++i) EXPECT_TRUE(std::isnan(later[i])) << i;
}

TEST(EmuSharedMemory, DynamicSharedMemoryWorksAcrossThreads) {
  const int blocks = 3, threads = 100;
  std::vector<int> in(blocks * threads), out(in.size(), 0);
  std::iota(in.begin(), in.end(), 0);
  SP_LAUNCH(blocks, threads, threads * sizeof(int), 0, reverse_in_block<int>)
  (in.data(), out.data());
  for (int b = 0; b < blocks; ++b) {
    for (int t = 0; t < threads; ++t)
      EXPECT_EQ(out[b * threads + t], b * threads + threads - 1 - t);
  }
}

// ---- warp primitives -------------------------------------------------------------------------

// CUDA's documented semantics, simulated lane by lane on the host.
std::vector<float> simulate_down_reduce(const std::vector<float>& in) {
  std::vector<float> v = in;
  for (int offset = 16; offset > 0; offset >>= 1) {
    std::vector<float> next = v;
    for (int l = 0; l < 32; ++l) next[l] = v[l] + (l + offset < 32 ? v[l + offset] : v[l]);
    v = next;
  }
  return v;
}

TEST(EmuWarp, XorAndDownReductions) {
  const int warps = 4;
  std::vector<float> in(32 * warps);
  for (std::size_t i = 0; i < in.size(); ++i) in[i] = static_cast<float>((i * 7) % 13);
  const auto failing = failing_schedules([&] {
    std::vector<float> x(in.size()), d(in.size());
    SP_LAUNCH(2, 64, 0, 0, warp_reduce_xor<float>)(in.data(), x.data());
    SP_LAUNCH(2, 64, 0, 0, warp_reduce_down<float>)(in.data(), d.data());
    for (int w = 0; w < warps; ++w) {
      const std::vector<float> lanes(in.begin() + 32 * w, in.begin() + 32 * (w + 1));
      const float sum = std::accumulate(lanes.begin(), lanes.end(), 0.0f);
      const std::vector<float> down = simulate_down_reduce(lanes);
      for (int l = 0; l < 32; ++l) {
        if (x[32 * w + l] != sum || d[32 * w + l] != down[l]) return false;
      }
    }
    return true;
  });
  EXPECT_TRUE(failing.empty()) << "wrong under " << join(failing);
}

template <class T>
void check_scan_and_broadcast(int width, int src) {
  std::vector<T> in(64);
  for (int i = 0; i < 64; ++i) in[i] = static_cast<T>(i % 5 + 1);
  std::vector<T> scan(64), bcast(64);
  SP_LAUNCH(1, 64, 0, 0, scan_and_broadcast<T>)(in.data(), scan.data(), bcast.data(), width, src);
  for (int i = 0; i < 64; ++i) {
    const int seg = i & ~(width - 1);
    T expect = 0;
    for (int j = seg; j <= i; ++j) expect += in[j];
    EXPECT_EQ(scan[i], expect) << "lane " << i << " width " << width;
    EXPECT_EQ(bcast[i], in[seg + (src & (width - 1))]) << "lane " << i << " width " << width;
  }
}

TEST(EmuWarp, ScanAndBroadcastWithSegmentWidths) {
  for (int width : {1, 2, 8, 16, 32}) {
    check_scan_and_broadcast<int>(width, 3);
    check_scan_and_broadcast<float>(width, 5);
    check_scan_and_broadcast<double>(width, 33);  // source lane taken modulo the width
  }
}

TEST(EmuWarp, BallotAnyAll) {
  std::mt19937 rng(7);
  std::vector<int> pred(128);
  for (auto& p : pred) p = static_cast<int>(rng() % 3 == 0);
  for (int l = 64; l < 96; ++l) pred[l] = 1;   // warp 2: all true
  for (int l = 96; l < 128; ++l) pred[l] = 0;  // warp 3: all false
  std::vector<unsigned> ballot(128), even(128);
  std::vector<int> any(128), all(128);
  SP_LAUNCH(2, 64, 0, 0, votes)(pred.data(), ballot.data(), any.data(), all.data(), even.data());
  for (int w = 0; w < 4; ++w) {
    unsigned expect = 0, expect_even = 0;
    for (int l = 0; l < 32; ++l) {
      if (pred[32 * w + l]) {
        expect |= 1u << l;
        if (l % 2 == 0) expect_even |= 1u << l;
      }
    }
    for (int l = 0; l < 32; ++l) {
      EXPECT_EQ(ballot[32 * w + l], expect);
      EXPECT_EQ(any[32 * w + l], expect != 0);
      EXPECT_EQ(all[32 * w + l], expect == 0xffffffffu);
      EXPECT_EQ(even[32 * w + l], l % 2 == 0 ? expect_even : 0u);
    }
  }
}

// Lanes 0-15 read lanes 16-31 and vice versa, but each half names only itself in the mask.
template <class T>
__global__ void read_outside_mask(T* out) {
  const unsigned lane = threadIdx.x & 31;
  const unsigned mask = lane < 16 ? 0x0000ffffu : 0xffff0000u;
  out[threadIdx.x] = __shfl_xor_sync(mask, static_cast<T>(threadIdx.x), 16);
}

// Block of 48 threads: warp 1 has 16 lanes; shuffling down by 16 reads lanes that do not exist.
template <class T>
__global__ void read_missing_lanes(T* out) {
  out[threadIdx.x] = __shfl_down_sync(0xffffffffu, static_cast<T>(threadIdx.x), 16);
}

TEST(EmuWarp, ReadingAbsentLanesGivesPoison) {
  std::vector<float> f(32);
  SP_LAUNCH(1, 32, 0, 0, read_outside_mask<float>)(f.data());
  for (float v : f) EXPECT_TRUE(std::isnan(v));
  std::vector<int> i(32);
  SP_LAUNCH(1, 32, 0, 0, read_outside_mask<int>)(i.data());
  for (int v : i) EXPECT_EQ(static_cast<unsigned>(v), 0xdeadbeefu);

  std::vector<float> m(48);
  SP_LAUNCH(1, 48, 0, 0, read_missing_lanes<float>)(m.data());
  for (int t = 0; t < 16; ++t) EXPECT_EQ(m[t], static_cast<float>(t + 16));  // full warp 0
  for (int t = 16; t < 32; ++t) EXPECT_EQ(m[t], static_cast<float>(t));      // own value
  for (int t = 32; t < 48; ++t) EXPECT_TRUE(std::isnan(m[t])) << t;          // lanes 16-31 absent
}

TEST(EmuWarp, ExitedLanesDoNotBlockAWarpOperation) {
  // Lanes that returned early are not waited for; reading them gives poison.
  std::vector<float> out(32, 0.0f);
  SP_LAUNCH(1, 32, 0, 0, [](float* o) {
    if (threadIdx.x >= 8) return;
    o[threadIdx.x] = __shfl_down_sync(0xffffffffu, static_cast<float>(threadIdx.x), 4);
  })
  (out.data());
  for (int t = 0; t < 4; ++t) EXPECT_EQ(out[t], static_cast<float>(t + 4));
  for (int t = 4; t < 8; ++t) EXPECT_TRUE(std::isnan(out[t])) << t;
}

TEST(EmuWarp, ReduceAndActiveMask) {
  std::vector<unsigned> out(64);
  std::vector<int> mins(64);
  SP_LAUNCH(1, 40, 0, 0, [](unsigned* o, int* mn) {
    const unsigned mask = __activemask();
    o[threadIdx.x] = __reduce_add_sync(mask, threadIdx.x + 1) + (mask == 0xffffffffu ? 0 : 1000000);
    mn[threadIdx.x] = __reduce_min_sync(mask, 100 - static_cast<int>(threadIdx.x));
  })
  (out.data(), mins.data());
  for (int t = 0; t < 32; ++t) EXPECT_EQ(out[t], 528u);             // 1 + ... + 32, full warp
  for (int t = 32; t < 40; ++t) EXPECT_EQ(out[t], 1000000u + 292);  // 33 + ... + 40, 8 lanes
  for (int t = 0; t < 32; ++t) EXPECT_EQ(mins[t], 69);
  for (int t = 32; t < 40; ++t) EXPECT_EQ(mins[t], 61);
}

// ---- barriers, atomics -----------------------------------------------------------------------

TEST(EmuBarrier, SyncthreadsCountAndOr) {
  std::vector<int> pred(3 * 64, 0);
  for (int t = 0; t < 64; ++t) pred[64 + t] = t % 3 == 0;  // block 1: 22 true
  for (int t = 0; t < 64; ++t) pred[128 + t] = 1;          // block 2: all true
  std::vector<int> count(3), all(3), any(3);
  SP_LAUNCH(3, 64, 0, 0, barrier_votes)(pred.data(), count.data(), all.data(), any.data());
  EXPECT_EQ(count, (std::vector<int>{0, 22, 64}));
  EXPECT_EQ(all, (std::vector<int>{0, 0, 1}));
  EXPECT_EQ(any, (std::vector<int>{0, 1, 1}));
}

TEST(EmuAtomics, FloatIntAndBf16FromManyBlocks) {
  const int n = 64 * 128;
  std::vector<float> f(n);
  for (int i = 0; i < n; ++i) f[i] = static_cast<float>(i % 7);
  float total = 0.0f;
  SP_LAUNCH(64, 128, 0, 0, atomic_total<float>)(f.data(), &total, n);
  EXPECT_EQ(total, static_cast<float>(std::accumulate(f.begin(), f.end(), 0.0)));

  std::vector<int> iv(n);
  for (int i = 0; i < n; ++i) iv[i] = (i * 7919) % 10007 - 5000;
  int itotal = 0, lo = 1 << 30, hi = -(1 << 30);
  SP_LAUNCH(64, 128, 0, 0, atomic_total<int>)(iv.data(), &itotal, n);
  SP_LAUNCH(64, 128, 0, 0, atomic_minmax<int>)(iv.data(), &lo, &hi, n);
  EXPECT_EQ(itotal, std::accumulate(iv.begin(), iv.end(), 0));
  EXPECT_EQ(lo, *std::min_element(iv.begin(), iv.end()));
  EXPECT_EQ(hi, *std::max_element(iv.begin(), iv.end()));

  // bf16 accumulation is exact while the sum fits in 8 significant bits...
  std::vector<__nv_bfloat16> halves(256, __nv_bfloat16(0.5f));
  __nv_bfloat16 btotal(0.0f);
  SP_LAUNCH(32, 8, 0, 0, atomic_total<__nv_bfloat16>)(halves.data(), &btotal, 256);
  EXPECT_EQ(__bfloat162float(btotal), 128.0f);
  // ...and stalls where bf16 does: 256 + 1 rounds back to 256.
  std::vector<__nv_bfloat16> ones(1024, __nv_bfloat16(1.0f));
  __nv_bfloat16 stalled(0.0f);
  SP_LAUNCH(8, 128, 0, 0, atomic_total<__nv_bfloat16>)(ones.data(), &stalled, 1024);
  EXPECT_EQ(__bfloat162float(stalled), 256.0f);
}

// ---- schedules -------------------------------------------------------------------------------

// Each thread takes a ticket, waits for its warp, and takes a second ticket.
__global__ void tickets(int* counter, int* first, int* second) {
  first[threadIdx.x] = atomicAdd(counter, 1);
  __syncwarp();
  second[threadIdx.x] = atomicAdd(counter, 1);
}

struct Tickets {
  std::vector<int> first, second;
};

Tickets run_tickets(const ScheduleSpec& spec) {
  ScopedSchedule scoped(spec);
  int counter = 0;
  Tickets t{std::vector<int>(64), std::vector<int>(64)};
  SP_LAUNCH(1, 64, 0, 0, tickets)(&counter, t.first.data(), t.second.data());
  return t;
}

TEST(EmuSchedule, OrdersInterleaveThreadsDifferently) {
  const Tickets lowest = run_tickets({Schedule::kLowestFirst, 0});
  const Tickets highest = run_tickets({Schedule::kHighestFirst, 0});
  const Tickets rr = run_tickets({Schedule::kRoundRobin, 0});
  // lowest_first finishes warp 0 (both tickets) before warp 1 starts.
  EXPECT_EQ(lowest.first[0], 0);
  EXPECT_EQ(lowest.second[0], 32);
  EXPECT_EQ(lowest.first[32], 64);
  // round_robin moves on to warp 1 when warp 0 blocks, and comes back afterwards.
  EXPECT_EQ(rr.first[32], 32);
  EXPECT_EQ(rr.second[0], 64);
  // highest_first starts at the last thread.
  EXPECT_EQ(highest.first[63], 0);
  EXPECT_EQ(highest.first[0], 95);
  // random is a seeded, reproducible permutation.
  const Tickets r1 = run_tickets({Schedule::kRandom, 11});
  const Tickets r1_again = run_tickets({Schedule::kRandom, 11});
  const Tickets r2 = run_tickets({Schedule::kRandom, 12});
  EXPECT_EQ(r1.first, r1_again.first);
  EXPECT_NE(r1.first, r2.first);
  EXPECT_NE(r1.first, lowest.first);
  std::vector<int> all(r1.first);
  all.insert(all.end(), r1.second.begin(), r1.second.end());
  std::sort(all.begin(), all.end());
  for (int i = 0; i < 128; ++i) EXPECT_EQ(all[i], i);
}

TEST(EmuSchedule, ParseAndName) {
  using ::sp::emu::parse_schedule;
  using ::sp::emu::schedule_name;
  EXPECT_EQ(parse_schedule("round_robin").order, Schedule::kRoundRobin);
  EXPECT_EQ(parse_schedule("lowest_first").order, Schedule::kLowestFirst);
  EXPECT_EQ(parse_schedule("highest_first").order, Schedule::kHighestFirst);
  EXPECT_EQ(parse_schedule("random").order, Schedule::kRandom);
  const ScheduleSpec s = parse_schedule("random:1234");
  EXPECT_EQ(s.order, Schedule::kRandom);
  EXPECT_EQ(s.seed, 1234u);
  EXPECT_EQ(schedule_name(s), "random:1234");
  for (const char* bad : {"", "random:", "random:x1", "roundrobin", "lowest"}) {
    try {
      parse_schedule(bad);
      ADD_FAILURE() << "accepted '" << bad << "'";
    } catch (const Error& e) {
      EXPECT_NE(std::string(e.what()).find("round_robin, lowest_first"), std::string::npos);
    }
  }
}

TEST(EmuSchedule, EnvironmentVariablesAreReadAtFirstUse) {
  // The child re-executes this test from the start, so its first use of the emulator sees
  // the variables set here.
  GTEST_FLAG_SET(death_test_style, "threadsafe");
  setenv("SP_EMU_SCHEDULE", "random:77", 1);
  setenv("SP_EMU_STACK_KB", "128", 1);
  EXPECT_EXIT(
      {
        const ScheduleSpec s = ::sp::emu::schedule();
        const bool ok = s.order == Schedule::kRandom && s.seed == 77 &&
                        ::sp::emu::fiber_stack_bytes() == 128 * 1024;
        std::exit(ok ? 0 : 1);
      },
      ::testing::ExitedWithCode(0), "");
  setenv("SP_EMU_SCHEDULE", "sideways", 1);
  EXPECT_EXIT(
      {
        try {
          ::sp::emu::schedule();
        } catch (const Error& e) {
          std::fprintf(stderr, "%s\n", e.what());
          std::exit(3);
        }
        std::exit(0);
      },
      ::testing::ExitedWithCode(3), "SP_EMU_SCHEDULE='sideways': expected round_robin");
  unsetenv("SP_EMU_SCHEDULE");
  unsetenv("SP_EMU_STACK_KB");
}

// ---- diagnosis of kernel bugs ----------------------------------------------------------------

std::string launch_error(const std::function<void()>& launch) {
  ScopedOnError mode(OnError::kThrow);
  try {
    launch();
  } catch (const Error& e) {
    return e.what();
  }
  return "(no error)";
}

void expect_contains(const std::string& text, const std::string& part) {
  EXPECT_NE(text.find(part), std::string::npos) << "missing \"" << part << "\" in:\n" << text;
}

void expect_emulator_still_works() {
  std::vector<float> in(256, 1.0f), out(1);
  SP_LAUNCH(1, 256, 0, 0, block_sum<256>)(in.data(), out.data(), 256);
  EXPECT_EQ(out[0], 256.0f);
}

// ---- warp matrix products ---------------------------------------------------------------------

// One tile product against the same sums written out on the host: bf16 products are exact in
// fp32 and the emulator adds them in k order after c, so the results are equal.
TEST(EmuWmma, TileProductMatchesTheHostSum) {
  std::mt19937 rng(5);
  std::normal_distribution<float> normal;
  std::vector<__nv_bfloat16> a(256), b_t(256);
  // wmma tiles must be 32-byte aligned (the emulator checks, as the hardware requires).
  alignas(32) static float c[256], d[256];
  for (auto& x : a) x = __float2bfloat16(normal(rng));
  for (auto& x : b_t) x = __float2bfloat16(normal(rng));
  for (auto& x : c) x = normal(rng);
  alignas(32) static __nv_bfloat16 a_aligned[256], b_aligned[256];
  std::copy(a.begin(), a.end(), a_aligned);
  std::copy(b_t.begin(), b_t.end(), b_aligned);
  SP_LAUNCH(1, 32, 0, 0, wmma_tile_product<>)(a_aligned, b_aligned, c, d);
  for (int i = 0; i < 16; ++i)
    for (int j = 0; j < 16; ++j) {
      float want = 2.0f * c[i * 16 + j];
      for (int k = 0; k < 16; ++k) want += float(a[i * 16 + k]) * float(b_t[j * 16 + k]);
      ASSERT_EQ(d[i * 16 + j], want) << i << "," << j;
    }
}

TEST(EmuWmma, LanesInDifferentCallsAreDiagnosed) {
  alignas(32) static __nv_bfloat16 a[256];
  std::vector<float> d(256);
  const std::string msg = launch_error([&] {
    SP_LAUNCH(1, 32, 0, 0, wmma_half_warp_load_broken<>)
    (a, d.data());
  });
  expect_contains(msg, "wmma::store_matrix_sync");
  expect_contains(msg, "every lane must make the same wmma calls");
  expect_emulator_still_works();
}

TEST(EmuWmma, MisalignedTilesAreDiagnosed) {
  alignas(32) static __nv_bfloat16 a[272];
  const std::string msg = launch_error([&] {
    SP_LAUNCH(1, 32, 0, 0, wmma_misaligned_broken<>)
    (a);
  });
  expect_contains(msg, "wmma::load_matrix_sync");
  expect_contains(msg, "32-byte aligned");
  expect_emulator_still_works();
}

TEST(EmuDiagnosis, SyncthreadsInDivergentCodeIsADeadlock) {
  std::vector<float> out(64);
  const std::string msg = launch_error([&] {
    SP_LAUNCH(2, 64, 0, 0, divergent_barrier_broken<float>)
    (out.data());
  });
  expect_contains(msg, "deadlock");
  expect_contains(msg, "divergent_barrier_broken<float>");
  expect_contains(msg, "block (0,0,0)");
  expect_contains(
      msg, "threads 0-15 (0,0,0)-(15,0,0): wait in __syncthreads() at emu_test_kernels.cuh:");
  expect_contains(msg, "threads 16-31 (16,0,0)-(31,0,0): wait in __shfl_sync(mask 0xffffffff");
  expect_emulator_still_works();
}

TEST(EmuDiagnosis, DeadlockAbortsByDefault) {
  GTEST_FLAG_SET(death_test_style, "threadsafe");
  std::vector<float> out(64);
  EXPECT_DEATH(
      {
        ::sp::emu::set_on_error(OnError::kAbort);
        SP_LAUNCH(1, 64, 0, 0, divergent_barrier_broken<float>)(out.data());
      },
      "cuda-emu: deadlock in kernel 'divergent_barrier_broken<float>'");
}

TEST(EmuDiagnosis, MismatchedWarpOperations) {
  std::vector<unsigned> out(32);
  const std::string msg = launch_error([&] {
    SP_LAUNCH(1, 32, 0, 0, mismatched_warp_ops_broken<unsigned>)(out.data());
  });
  expect_contains(msg, "mismatched warp operations in warp 0");
  expect_contains(msg, "__shfl_sync(mask 0xffffffff, 4-byte value)");
  expect_contains(msg, "__ballot_sync(mask 0xffffffff");
  expect_emulator_still_works();
}

TEST(EmuDiagnosis, MaskWithoutTheCallingLane) {
  ScopedSchedule in_order(Schedule::kLowestFirst);  // lane 0 passes, lane 1 is the first to fail
  std::vector<float> out(32);
  const std::string msg = launch_error([&] {
    SP_LAUNCH(1, 32, 0, 0, [](float* o) { o[threadIdx.x] = __shfl_sync(0x1u, 1.0f, 0); })
    (out.data());
  });
  expect_contains(msg, "thread 1 (1,0,0) (warp 0, lane 1) called __shfl_sync with mask 0x00000001");
  expect_contains(msg, "does not include the calling lane");
}

TEST(EmuDiagnosis, BadShuffleWidth) {
  std::vector<float> out(32);
  const std::string msg = launch_error([&] {
    SP_LAUNCH(1, 32, 0, 0,
              [](float* o) { o[threadIdx.x] = __shfl_xor_sync(0xffffffffu, 1.0f, 1, 12); })
    (out.data());
  });
  expect_contains(msg, "width 12");
}

TEST(EmuDiagnosis, Trap) {
  std::vector<int> out(64);
  const std::string msg = launch_error([&] {
    SP_LAUNCH(1, 64, 0, 0, trap_in_thread<int>)
    (out.data(), 5);
  });
  expect_contains(msg, "__trap() by thread 5 (5,0,0)");
  expect_contains(msg, "trap_in_thread<int>");
  expect_emulator_still_works();
}

TEST(EmuDiagnosis, ExceptionsFromKernelCodeReachTheLauncher) {
  std::vector<float> out(64);
  try {
    SP_LAUNCH(2, 32, 0, 0, [](float* o) {
      __syncthreads();
      if (blockIdx.x == 1 && threadIdx.x == 3) fail(ErrorKind::kNumerical, "NaN in row 3");
      o[threadIdx.x] = 1.0f;
    })
    (out.data());
    ADD_FAILURE() << "no exception";
  } catch (const Error& e) {
    EXPECT_EQ(e.kind(), ErrorKind::kNumerical);
    expect_contains(e.what(), "thread 3 (3,0,0)");
    expect_contains(e.what(), "block (1,0,0)");
    expect_contains(e.what(), "NaN in row 3");
  }
  expect_emulator_still_works();
}

TEST(EmuDiagnosis, DeviceFunctionsOutsideAKernelAndNestedLaunches) {
  EXPECT_THROW(__syncthreads(), Error);
  EXPECT_THROW(__shfl_sync(0xffffffffu, 1, 0), Error);
  EXPECT_FALSE(::sp::emu::in_kernel());
  std::vector<float> out(4);
  try {
    SP_LAUNCH(1, 1, 0, 0, [](float* o) {
      SP_LAUNCH(1, 1, 0, 0, fill<float>)
      (o, 1.0f, 1);
    })
    (out.data());
    ADD_FAILURE() << "nested launch accepted";
  } catch (const Error& e) {
    EXPECT_EQ(e.kind(), ErrorKind::kUnsupported);
    expect_contains(e.what(), "device-side launches are not emulated");
  }
}

// ---- AddressSanitizer sees kernel memory bugs ------------------------------------------------

#if defined(__SANITIZE_ADDRESS__)
TEST(EmuAsan, DynamicSharedMemoryOverrunIsReported) {
  GTEST_FLAG_SET(death_test_style, "threadsafe");
  std::vector<float> out(33);
  // 33 threads read 32 floats of dynamic shared memory: the last read is one past the end.
  EXPECT_DEATH(SP_LAUNCH(1, 33, 32 * sizeof(float), 0, read_dynamic_shared<float>)(out.data()),
               "heap-buffer-overflow");
}

TEST(EmuAsan, FreedDeviceMemoryIsReported) {
  GTEST_FLAG_SET(death_test_style, "threadsafe");
  float* dev = nullptr;
  ASSERT_EQ(cudaMalloc(&dev, 64 * sizeof(float)), cudaSuccess);
  ASSERT_EQ(cudaFree(dev), cudaSuccess);
  EXPECT_DEATH(SP_LAUNCH(1, 32, 0, 0, fill<float>)(dev, 1.0f, 32), "heap-use-after-free");
}
#endif

// ---- fibers and speed ------------------------------------------------------------------------

TEST(EmuFibers, LargeLocalArraysFitTheStack) {
  EXPECT_GE(::sp::emu::fiber_stack_bytes(), 16u * 1024);  // SP_EMU_STACK_KB may lower the default
  std::vector<float> out(256);
  SP_LAUNCH(1, 256, 0, 0, [](float* o) {
    float local[4096];  // 16 KiB on each fiber's stack
    for (int i = 0; i < 4096; ++i) local[i] = static_cast<float>(i + threadIdx.x);
    __syncthreads();
    float s = 0;
    for (int i = 0; i < 4096; i += 512) s += local[i];
    o[threadIdx.x] = s;
  })
  (out.data());
  for (int t = 0; t < 256; ++t) EXPECT_EQ(out[t], 8.0f * t + 14336.0f);
}

TEST(EmuFibers, ExecutionStatistics) {
  const auto before = ::sp::emu::exec_stats();
  std::vector<float> in(512, 1.0f), out(2);
  SP_LAUNCH(2, 256, 0, 0, block_sum<256>)(in.data(), out.data(), 512);
  const auto after = ::sp::emu::exec_stats();
  EXPECT_EQ(after.launches - before.launches, 1u);
  EXPECT_EQ(after.blocks - before.blocks, 2u);
  EXPECT_EQ(after.threads - before.threads, 512u);
  EXPECT_GE(after.switches - before.switches, 2u * 256 * 9);  // nine barriers per block
}

TEST(EmuPerf, LayerNormBlocksPerSecond) {
  constexpr int kBlock = 256;
  const int cols = 1024;
#if defined(__SANITIZE_ADDRESS__) || defined(__SANITIZE_THREAD__) || SP_TEST_TSAN
  const int rows = 64;
#else
  const int rows = 2048;
#endif
  std::vector<float> x(static_cast<std::size_t>(rows) * cols), y(x.size());
  std::vector<float> gamma(cols), beta(cols);
  std::mt19937 rng(3);
  std::normal_distribution<float> dist(0.5f, 2.0f);
  for (auto& v : x) v = dist(rng);
  for (int c = 0; c < cols; ++c) {
    gamma[c] = 1.0f + 0.001f * c;
    beta[c] = 0.01f * (c % 10);
  }
  const auto start = std::chrono::steady_clock::now();
  SP_LAUNCH(rows, kBlock, 0, 0, layernorm_rows<kBlock>)
  (x.data(), gamma.data(), beta.data(), y.data(), cols, 1e-5f);
  const double seconds =
      std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  std::printf(
      "[ perf     ] cuda-emu layernorm block (256 threads, 4 barriers): %.0f blocks/s "
      "(%d blocks in %.3f s, schedule %s)\n",
      rows / seconds, rows, seconds, ::sp::emu::schedule_name(::sp::emu::schedule()).c_str());
  for (int r = 0; r < rows; r += std::max(1, rows / 16)) {
    double mean = 0, var = 0;
    for (int c = 0; c < cols; ++c) mean += x[static_cast<std::size_t>(r) * cols + c];
    mean /= cols;
    for (int c = 0; c < cols; ++c) {
      const double d = x[static_cast<std::size_t>(r) * cols + c] - mean;
      var += d * d;
    }
    var /= cols;
    for (int c = 0; c < cols; ++c) {
      const double expect =
          (x[static_cast<std::size_t>(r) * cols + c] - mean) / std::sqrt(var + 1e-5) * gamma[c] +
          beta[c];
      ASSERT_NEAR(y[static_cast<std::size_t>(r) * cols + c], expect, 1e-4) << r << "," << c;
    }
  }
}

}  // namespace
}  // namespace sp::cuda_emu
