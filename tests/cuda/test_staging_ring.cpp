// StagingRing, the bookkeeping behind CudaBackend's page-locked upload ring: offsets, wrapping,
// and that no staged byte is handed out again while an upload may still be reading it.
#include "engine/cuda/staging_ring.h"

#include <gtest/gtest.h>

#include <deque>
#include <random>
#include <vector>

namespace sp {
namespace {

// Uploads land in order; `landed` says how many have.
struct FakeStream {
  int queued = 0;
  int landed = 0;
  std::vector<int> waited_for;  // fences retired before they had landed
};

TEST(StagingRing, AlignsWrapsAndWaitsOnlyForTheUploadInTheWay) {
  StagingRing<int> ring(1024, 256);
  FakeStream stream;
  const auto is_done = [&](int fence) { return fence < stream.landed; };
  std::vector<int> retired;
  const auto retire = [&](int fence) {
    if (fence >= stream.landed) {
      stream.waited_for.push_back(fence);
      stream.landed = fence + 1;  // waiting lands it and everything before it
    }
    retired.push_back(fence);
  };
  const auto upload = [&](size_t bytes) {
    const size_t offset = ring.acquire(bytes, is_done, retire);
    ring.commit(offset, bytes, stream.queued++);
    return offset;
  };
  EXPECT_EQ(upload(300), 0u);
  EXPECT_EQ(upload(300), 512u);  // 300 rounded up to the next 256-byte boundary
  // 812 + 300 passes the end: back to 0, where upload 0 has not landed.
  EXPECT_EQ(upload(300), 0u);
  EXPECT_EQ(stream.waited_for, std::vector<int>{0});
  EXPECT_EQ(retired, std::vector<int>{0});
  // Upload 1 lands on its own: the next acquire drops it without waiting.
  stream.landed = 2;
  EXPECT_EQ(upload(200), 512u);
  EXPECT_EQ(stream.waited_for, std::vector<int>{0});
  EXPECT_EQ(retired, (std::vector<int>{0, 1}));
  EXPECT_EQ(ring.uploads_in_flight(), 2u);
  // The whole ring: everything in it is in the way.
  EXPECT_EQ(upload(1024), 0u);
  EXPECT_EQ(stream.waited_for, (std::vector<int>{0, 2, 3}));
  EXPECT_FALSE(ring.fits(1025));
  EXPECT_FALSE(ring.fits(0));
  std::vector<int> released;
  ring.clear([&](int fence) { released.push_back(fence); });
  EXPECT_EQ(released, std::vector<int>{4});
}

// Random sizes against a model of which uploads are queued and which have landed: acquire retires
// in queue order, each upload once; no upload left unretired shares a byte with the one returned;
// and a wait (retiring an upload that has not landed) happens only to clear bytes in the way:
// the last upload retired overlaps the new bytes.
TEST(StagingRing, NeverHandsOutBytesAPendingUploadReads) {
  constexpr size_t kCapacity = 4096, kAlignment = 64;
  StagingRing<int> ring(kCapacity, kAlignment);
  std::mt19937 rng(7);
  struct Upload {
    int fence;
    size_t begin, end;
  };
  std::deque<Upload> unretired;
  int queued = 0, landed = 0, waits = 0;
  for (int step = 0; step < 20000; ++step) {
    landed = std::min(queued, landed + int(rng() % 3));  // the device works between host calls
    const size_t bytes = 1 + rng() % (rng() % 8 == 0 ? kCapacity : kCapacity / 5);
    bool waited = false;
    Upload last_retired{-1, 0, 0};
    const size_t offset = ring.acquire(
        bytes, [&](int fence) { return fence < landed; },
        [&](int fence) {
          ASSERT_FALSE(unretired.empty());
          ASSERT_EQ(unretired.front().fence, fence);  // oldest first, each once
          last_retired = unretired.front();
          unretired.pop_front();
          if (fence >= landed) {
            waited = true;
            landed = fence + 1;
          }
        });
    ASSERT_EQ(offset % kAlignment, 0u);
    ASSERT_LE(offset + bytes, kCapacity);
    const auto overlaps = [&](const Upload& u) {
      return u.begin < offset + bytes && offset < u.end;
    };
    for (const Upload& u : unretired)
      ASSERT_FALSE(overlaps(u)) << "step " << step << ": upload " << u.fence << " still reads them";
    if (waited) {
      ++waits;
      ASSERT_TRUE(overlaps(last_retired)) << "step " << step << ": waited with nothing in the way";
    }
    ring.commit(offset, bytes, queued);
    unretired.push_back({queued++, offset, offset + bytes});
  }
  EXPECT_GT(waits, 100);  // the sizes make the ring wrap onto pending uploads often
}

}  // namespace
}  // namespace sp
