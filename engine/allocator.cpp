// Allocator statistics and the aligned host allocator.
#include "engine/allocator.h"

#include <cstdlib>
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

class HostAllocator final : public Allocator {
 public:
  void* allocate(size_t nbytes) override {
    constexpr size_t kAlign = 64;  // a cache line, and enough for AVX-512 loads
    size_t rounded = (nbytes + kAlign - 1) / kAlign * kAlign;
    void* ptr = std::aligned_alloc(kAlign, rounded == 0 ? kAlign : rounded);
    if (ptr == nullptr)
      fail(ErrorKind::kInternal, "out of host memory allocating ", nbytes, " bytes");
    record_allocate(nbytes);
    return ptr;
  }
  void deallocate(void* ptr, size_t nbytes) override {
    std::free(ptr);
    record_deallocate(nbytes);
  }
};

}  // namespace

Allocator& cpu_allocator() {
  static HostAllocator allocator;
  return allocator;
}

}  // namespace sp
