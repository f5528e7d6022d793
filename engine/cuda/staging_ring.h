// engine/cuda/staging_ring.h: StagingRing, the bookkeeping of a ring of page-locked upload bytes:
// where the next upload is staged, and which earlier uploads must have landed before it may be.
#pragma once

#include <cstddef>
#include <deque>
#include <utility>

#include "engine/error.h"

namespace sp {

// Offsets into a ring of `capacity` bytes. Each upload takes the next `bytes` (starting on an
// `alignment` boundary), wrapping to offset 0 when they do not fit before the end. Bytes an
// earlier upload may still be reading are handed out only after its fence has been retired,
// oldest first: uploads are stream-ordered, so retiring an older one never waits longer than the
// overlapping one would. Fence is whatever marks an upload's completion (a CUDA event).
template <class Fence>
class StagingRing {
 public:
  StagingRing(size_t capacity, size_t alignment) : capacity_(capacity), alignment_(alignment) {
    SP_ASSERT(capacity > 0 && alignment > 0 && capacity % alignment == 0);
  }

  bool fits(size_t bytes) const { return bytes > 0 && bytes <= capacity_; }
  size_t uploads_in_flight() const { return regions_.size(); }

  // The offset of `bytes` (fits(bytes)) that no earlier upload is still reading. Gives each
  // upload it drops to retire(fence), oldest first: the leading ones is_done(fence) says have
  // landed, then every one in the way. retire returns once that upload has landed and may
  // recycle the fence.
  template <class IsDone, class Retire>
  size_t acquire(size_t bytes, IsDone&& is_done, Retire&& retire) {
    SP_ASSERT(fits(bytes));
    while (!regions_.empty() && is_done(regions_.front().fence)) retire_front(retire);
    size_t begin = (head_ + alignment_ - 1) / alignment_ * alignment_;
    if (begin + bytes > capacity_) begin = 0;
    const size_t end = begin + bytes;
    while (overlaps_any(begin, end)) retire_front(retire);
    head_ = end;
    return begin;
  }

  // Records that [offset, offset + bytes), just returned by acquire, is read until `fence`.
  void commit(size_t offset, size_t bytes, Fence fence) {
    regions_.push_back({offset, offset + bytes, std::move(fence)});
  }

  // Hands every fence still held to `release` (e.g. to destroy its event) and forgets them.
  template <class Release>
  void clear(Release&& release) {
    for (Region& r : regions_) release(r.fence);
    regions_.clear();
    head_ = 0;
  }

 private:
  struct Region {
    size_t begin, end;
    Fence fence;
  };

  bool overlaps_any(size_t begin, size_t end) const {
    for (const Region& r : regions_)
      if (r.begin < end && begin < r.end) return true;
    return false;
  }
  template <class Retire>
  void retire_front(Retire& retire) {
    Fence fence = std::move(regions_.front().fence);
    regions_.pop_front();
    retire(fence);
  }

  size_t capacity_, alignment_;
  size_t head_ = 0;
  std::deque<Region> regions_;
};

}  // namespace sp
