// engine/cuda/caching_allocator.h: CachingAllocator, the sp::Allocator of a CUDA device: freed
// blocks go to per-size-class free lists and are reused, so a steady-state training step makes
// no cudaMalloc/cudaFree (which synchronise the device and cost tens of microseconds each).
#pragma once

#include <cstddef>
#include <cstdint>
#include <map>
#include <mutex>
#include <unordered_map>
#include <vector>

#include "engine/allocator.h"
#include "kernels/cuda_compat.h"

namespace sp::SP_CUDA_NS {

struct DeviceCacheStats {
  uint64_t device_mallocs = 0;  // cudaMalloc calls made by this allocator
  uint64_t device_frees = 0;    // cudaFree calls (only when the cache is released)
  uint64_t cache_hits = 0;      // allocations served from a free list
  size_t reserved_bytes = 0;    // held from the device: live blocks plus cached ones
  size_t cached_bytes = 0;      // free blocks waiting for reuse (private pools' included)
  size_t pooled_bytes = 0;      // free blocks a private pool keeps for its captured work
};

class CachingAllocator final : public Allocator {
 public:
  explicit CachingAllocator(int device_index) : device_index_(device_index) {}
  CachingAllocator(const CachingAllocator&) = delete;
  CachingAllocator& operator=(const CachingAllocator&) = delete;

  // Blocks are at least 256-byte aligned (cudaMalloc's alignment), so 16-byte vector loads work
  // on any tensor that starts at its storage.
  void* allocate(size_t nbytes) override;
  void deallocate(void* ptr, size_t nbytes) override;

  // Returns every cached block outside private pools to the device (cudaFree); live blocks are
  // untouched.
  void release_cached();

  // Private pools, for captured work (CUDA graphs). From begin_pool() to end_pool() (a capture),
  // every block handed out or freed joins the new pool: the captured work writes and reads those
  // blocks at each replay, so they are never handed to other work, even once freed, until
  // release_pool(). While a pool fills, a request the cache cannot serve is an error (a capture
  // cannot cudaMalloc): the work must have run once uncaptured.
  uint64_t begin_pool();
  void end_pool();
  void release_pool(uint64_t pool);
  DeviceCacheStats cache_stats() const;

  // The block size serving a request: 512-byte granules up to 4 KiB, then four classes per power
  // of two, so a block wastes at most a quarter of its size while similar sizes share lists.
  static size_t size_class(size_t nbytes);

 private:
  void* device_malloc(size_t bytes);  // with one retry after releasing the cache

  const int device_index_;
  mutable std::mutex mutex_;
  using FreeLists = std::map<size_t, std::vector<void*>>;  // size class -> cached blocks
  struct LiveBlock {
    size_t size_class;
    uint64_t pool;  // 0: none
  };
  FreeLists free_blocks_;
  std::unordered_map<void*, LiveBlock> live_blocks_;
  std::map<uint64_t, FreeLists> pools_;  // private pool -> its free blocks
  uint64_t filling_pool_ = 0;            // the pool begin_pool() opened, until end_pool()
  uint64_t next_pool_ = 1;
  DeviceCacheStats stats_;
};

}  // namespace sp::SP_CUDA_NS
