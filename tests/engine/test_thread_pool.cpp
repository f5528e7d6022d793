// The CPU thread pool behind parallel_for: every index runs exactly once however jobs follow each
// other (workers poll for the next job before they sleep), errors reach the caller, and the
// partition does not depend on timing.
#include <gtest/gtest.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <stdexcept>
#include <thread>
#include <vector>

#include "engine/thread_pool.h"

namespace sp {
namespace {

// Restores the pool's size after a test that changes it.
class ThreadPoolTest : public ::testing::Test {
 protected:
  void SetUp() override { saved_ = num_threads(); }
  void TearDown() override { set_num_threads(saved_); }
  int saved_ = 1;
};

// Jobs back to back (a decode step's dozens of small ops), jobs after a pause long enough for
// the workers to have gone to sleep, and every thread count up to one more than the cores.
TEST_F(ThreadPoolTest, EveryIndexRunsOnceInJobsBackToBackAndAfterThePoolSlept) {
  const int cores = int(std::max(1u, std::thread::hardware_concurrency()));
  for (int threads = 1; threads <= cores + 1; ++threads) {
    set_num_threads(threads);
    for (int job = 0; job < 3000; ++job) {
      const int64_t n = 1 + job % 37;
      std::vector<std::atomic<int>> runs(static_cast<size_t>(n));
      parallel_for(0, n, 1, [&](int64_t lo, int64_t hi) {
        for (int64_t i = lo; i < hi; ++i) runs[size_t(i)].fetch_add(1);
      });
      for (int64_t i = 0; i < n; ++i)
        ASSERT_EQ(runs[size_t(i)].load(), 1)
            << "threads " << threads << ", job " << job << ", index " << i;
      if (job % 1000 == 999) std::this_thread::sleep_for(std::chrono::milliseconds(5));
    }
  }
}

// The caller polls for its partners' chunks only briefly; it must then wait however long they
// take, never return while one still runs.
TEST_F(ThreadPoolTest, TheCallerReturnsOnlyAfterEveryChunkFinished) {
  set_num_threads(2);
  const auto caller = std::this_thread::get_id();
  for (int job = 0; job < 20; ++job) {
    std::atomic<int> finished{0};
    parallel_for(0, 2, 1, [&](int64_t, int64_t) {
      if (std::this_thread::get_id() != caller)
        std::this_thread::sleep_for(std::chrono::milliseconds(2));
      finished.fetch_add(1);
    });
    ASSERT_EQ(finished.load(), 2) << "job " << job;
  }
}

TEST_F(ThreadPoolTest, ChunksDependOnlyOnTheRangeGrainAndThreadCount) {
  set_num_threads(2);
  std::vector<std::pair<int64_t, int64_t>> chunks(size_t(parallel_chunks(0, 1001, 10)));
  ASSERT_EQ(chunks.size(), 2u);
  for (int repeat = 0; repeat < 100; ++repeat)
    parallel_for_chunks(0, 1001, 10, [&](int64_t chunk, int64_t lo, int64_t hi) {
      chunks[size_t(chunk)] = {lo, hi};
    });
  EXPECT_EQ(chunks[0], std::make_pair(int64_t(0), int64_t(500)));
  EXPECT_EQ(chunks[1], std::make_pair(int64_t(500), int64_t(1001)));
}

TEST_F(ThreadPoolTest, AnErrorInAnyChunkReachesTheCallerAndThePoolGoesOn) {
  set_num_threads(2);
  for (int64_t failing = 0; failing < 2; ++failing) {
    EXPECT_THROW(parallel_for_chunks(0, 100, 1,
                                     [&](int64_t chunk, int64_t, int64_t) {
                                       if (chunk == failing)
                                         throw std::runtime_error("chunk failed");
                                     }),
                 std::runtime_error);
    std::atomic<int64_t> sum{0};
    parallel_for(0, 100, 1, [&](int64_t lo, int64_t hi) {
      for (int64_t i = lo; i < hi; ++i) sum.fetch_add(i);
    });
    EXPECT_EQ(sum.load(), 4950);
  }
}

TEST_F(ThreadPoolTest, NestedCallsRunInlineOnTheirChunksThread) {
  set_num_threads(2);
  std::atomic<int> inner_runs{0};
  parallel_for(0, 2, 1, [&](int64_t, int64_t) {
    const auto outer = std::this_thread::get_id();
    parallel_for(0, 8, 1, [&](int64_t lo, int64_t hi) {
      EXPECT_EQ(std::this_thread::get_id(), outer);
      inner_runs.fetch_add(int(hi - lo));
    });
  });
  EXPECT_EQ(inner_runs.load(), 16);
}

}  // namespace
}  // namespace sp
