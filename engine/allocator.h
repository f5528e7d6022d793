// Allocator: the interface every device's memory goes through, with allocation statistics.
// The CPU allocator is 64-byte aligned; the CUDA backend plugs in its caching allocator.
#pragma once

#include <atomic>
#include <cstddef>
#include <cstdint>

namespace sp {

struct AllocatorStats {
  uint64_t allocations = 0;    // calls to allocate() since process start
  uint64_t deallocations = 0;  // calls to deallocate()
  size_t bytes_in_use = 0;
  size_t peak_bytes = 0;
};

class Allocator {
 public:
  virtual ~Allocator() = default;
  virtual void* allocate(size_t nbytes) = 0;
  virtual void deallocate(void* ptr, size_t nbytes) = 0;
  AllocatorStats stats() const;
  void reset_peak();

 protected:
  void record_allocate(size_t nbytes);
  void record_deallocate(size_t nbytes);

 private:
  std::atomic<uint64_t> allocations_{0};
  std::atomic<uint64_t> deallocations_{0};
  std::atomic<size_t> bytes_in_use_{0};
  std::atomic<size_t> peak_bytes_{0};
};

// The process-wide host allocator used by the CPU backend.
Allocator& cpu_allocator();

}  // namespace sp
