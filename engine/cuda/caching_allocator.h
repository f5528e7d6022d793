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
  size_t cached_bytes = 0;      // free blocks waiting for reuse
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

  // Returns every cached block to the device (cudaFree); live blocks are untouched.
  void release_cached();
  DeviceCacheStats cache_stats() const;

  // The block size serving a request: 512-byte granules up to 4 KiB, then four classes per power
  // of two, so a block wastes at most a quarter of its size while similar sizes share lists.
  static size_t size_class(size_t nbytes);

 private:
  void* device_malloc(size_t bytes);  // with one retry after releasing the cache

  const int device_index_;
  mutable std::mutex mutex_;
  std::map<size_t, std::vector<void*>> free_blocks_;  // size class -> cached blocks
  std::unordered_map<void*, size_t> live_blocks_;     // pointer -> size class
  DeviceCacheStats stats_;
};

}  // namespace sp::SP_CUDA_NS
