// Allocator statistics and the aligned host allocator.
#include "engine/allocator.h"

#include <algorithm>
#include <cstdlib>
#include <map>
#include <mutex>
#include <new>

#include "engine/error.h"

namespace sp {

AllocatorStats Allocator::stats() const {
  AllocatorStats s;
  s.allocations = allocations_.load();
  s.deallocations = deallocations_.load();
  s.bytes_in_use = bytes_in_use_.load();
  s.peak_bytes = peak_bytes_.load();
  return s;
}

void Allocator::reset_peak() {
  peak_bytes_.store(bytes_in_use_.load());
}

void Allocator::record_allocate(size_t nbytes) {
  allocations_.fetch_add(1);
  size_t now = bytes_in_use_.fetch_add(nbytes) + nbytes;
  size_t peak = peak_bytes_.load();
  while (now > peak && !peak_bytes_.compare_exchange_weak(peak, now)) {
  }
}

void Allocator::record_deallocate(size_t nbytes) {
  deallocations_.fetch_add(1);
  bytes_in_use_.fetch_sub(nbytes);
}

namespace {

// Aligned host memory. Large blocks are cached by size after use: a training step allocates the
// same activation sizes every step, and handing them back to the OS (glibc unmaps big blocks)
// would make every step fault in and zero its pages again.
class HostAllocator final : public Allocator {
 public:
  ~HostAllocator() override { release_cache(); }

  void* allocate(size_t nbytes) override {
    // Running out of memory is a request this machine cannot serve, not a softprompt bug.
    if (nbytes > kMaxBytes)
      fail(ErrorKind::kUnsupported, "out of host memory: cannot allocate ", nbytes,
           " bytes (more than any machine has)");
    const size_t rounded = rounded_size(nbytes);
    void* ptr = nullptr;
    if (rounded >= kCacheFrom) {
      std::lock_guard<std::mutex> lock(mutex_);
      auto it = free_blocks_.find(rounded);
      if (it != free_blocks_.end()) {
        ptr = it->second;
        free_blocks_.erase(it);
        cached_bytes_ -= rounded;
      }
    }
    if (ptr == nullptr) ptr = std::aligned_alloc(kAlign, rounded);
    if (ptr == nullptr)
      fail(ErrorKind::kUnsupported, "out of host memory: cannot allocate ", nbytes, " bytes (",
           double(nbytes) / double(1 << 30), " GiB)");
    record_allocate(nbytes);
    return ptr;
  }

  void deallocate(void* ptr, size_t nbytes) override {
    record_deallocate(nbytes);
    const size_t rounded = rounded_size(nbytes);
    if (rounded < kCacheFrom) {
      std::free(ptr);
      return;
    }
    std::lock_guard<std::mutex> lock(mutex_);
    free_blocks_.emplace(rounded, ptr);
    cached_bytes_ += rounded;
    // Bound the cache by the high-water mark of live memory: a steady workload (a training
    // step) finds all its blocks again, and resident memory stays near that peak.
    const size_t bound = std::max<size_t>(kMinCacheBytes, stats().peak_bytes);
    while (cached_bytes_ > bound && !free_blocks_.empty()) {
      auto largest = std::prev(free_blocks_.end());
      cached_bytes_ -= largest->first;
      std::free(largest->second);
      free_blocks_.erase(largest);
    }
  }

  void release_cache() {
    std::lock_guard<std::mutex> lock(mutex_);
    for (auto& [size, ptr] : free_blocks_) std::free(ptr);
    free_blocks_.clear();
    cached_bytes_ = 0;
  }

 private:
  static constexpr size_t kAlign = 64;  // a cache line, and enough for AVX-512 loads
  static constexpr size_t kCacheFrom = size_t(1) << 20;
  static constexpr size_t kMinCacheBytes = size_t(256) << 20;
  static constexpr size_t kMaxBytes = size_t(1) << 48;  // 256 TiB; also keeps rounding exact

  // Cached sizes are rounded to 64 KiB so near-equal requests share blocks.
  static size_t rounded_size(size_t nbytes) {
    size_t granule = nbytes >= kCacheFrom ? size_t(65536) : kAlign;
    size_t rounded = (nbytes + granule - 1) / granule * granule;
    return rounded == 0 ? kAlign : rounded;
  }

  std::mutex mutex_;
  std::multimap<size_t, void*> free_blocks_;
  size_t cached_bytes_ = 0;
};

}  // namespace

Allocator& cpu_allocator() {
  static HostAllocator allocator;
  return allocator;
}

}  // namespace sp
