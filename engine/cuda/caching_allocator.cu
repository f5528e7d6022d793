// CachingAllocator: size-class free lists over cudaMalloc'd blocks.
#include "engine/cuda/caching_allocator.h"

#include <bit>

#include "engine/cuda/cuda_check.h"
#include "engine/error.h"

namespace sp::SP_CUDA_NS {

size_t CachingAllocator::size_class(size_t nbytes) {
  constexpr size_t kGranule = 512;
  if (nbytes <= 8 * kGranule)
    return nbytes == 0 ? kGranule : (nbytes + kGranule - 1) / kGranule * kGranule;
  // Between 2^k and 2^(k+1) the classes are 2^k * (1, 1.25, 1.5, 1.75, 2).
  const size_t power = std::bit_floor(nbytes - 1);
  const size_t step = power / 4;
  return (nbytes + step - 1) / step * step;
}

void* CachingAllocator::device_malloc(size_t bytes) {
  SP_CUDA_CHECK("allocate", cudaSetDevice(device_index_));
  void* ptr = nullptr;
  cudaError_t status = cudaMalloc(&ptr, bytes);
  if (status == cudaErrorMemoryAllocation) {
    // The cache may hold enough memory in blocks of other sizes: give it back and retry once.
    (void)cudaGetLastError();
    for (auto& [size, blocks] : free_blocks_) {
      for (void* block : blocks) {
        SP_CUDA_CHECK("allocate", cudaFree(block));
        stats_.device_frees += 1;
        stats_.reserved_bytes -= size;
        stats_.cached_bytes -= size;
      }
    }
    free_blocks_.clear();
    status = cudaMalloc(&ptr, bytes);
  }
  if (status == cudaErrorMemoryAllocation) {
    (void)cudaGetLastError();
    fail(ErrorKind::kUnsupported, "cuda:", device_index_, ": out of device memory allocating ",
         bytes, " bytes (", stats_.reserved_bytes, " bytes already reserved by softprompt)");
  }
  SP_CUDA_CHECK("allocate", status);
  stats_.device_mallocs += 1;
  stats_.reserved_bytes += bytes;
  return ptr;
}

void* CachingAllocator::allocate(size_t nbytes) {
  const size_t size = size_class(nbytes);
  void* ptr = nullptr;
  {
    std::lock_guard<std::mutex> lock(mutex_);
    const auto take = [&](FreeLists& lists) {
      auto it = lists.find(size);
      if (it == lists.end() || it->second.empty()) return false;
      ptr = it->second.back();
      it->second.pop_back();
      return true;
    };
    const bool from_pool = filling_pool_ != 0 && take(pools_[filling_pool_]);
    if (from_pool) stats_.pooled_bytes -= size;
    if (from_pool || take(free_blocks_)) {
      stats_.cache_hits += 1;
      stats_.cached_bytes -= size;
    } else if (filling_pool_ != 0) {
      fail(ErrorKind::kUnsupported, "allocate: ", nbytes,
           " bytes inside a capture: no cached block fits and a capture cannot allocate device "
           "memory; run the captured work once uncaptured first so the cache holds its blocks");
    } else {
      ptr = device_malloc(size);
    }
    live_blocks_.emplace(ptr, LiveBlock{size, filling_pool_});
  }
  record_allocate(nbytes);
  return ptr;
}

void CachingAllocator::deallocate(void* ptr, size_t nbytes) {
  {
    std::lock_guard<std::mutex> lock(mutex_);
    auto it = live_blocks_.find(ptr);
    SP_ASSERT(it != live_blocks_.end());  // freeing what this allocator never handed out
    // Every kernel that used the block was queued on the backend's single stream before this
    // free, so work queued after a reuse runs after them: no synchronisation is needed. A block
    // freed while a pool fills may be read by the captured work: it joins the pool.
    const LiveBlock block = it->second;
    const uint64_t pool = block.pool != 0 ? block.pool : filling_pool_;
    if (pool != 0 && pools_.count(pool)) {
      pools_[pool][block.size_class].push_back(ptr);
      stats_.pooled_bytes += block.size_class;
    } else {
      free_blocks_[block.size_class].push_back(ptr);
    }
    stats_.cached_bytes += block.size_class;
    live_blocks_.erase(it);
  }
  record_deallocate(nbytes);
}

uint64_t CachingAllocator::begin_pool() {
  std::lock_guard<std::mutex> lock(mutex_);
  SP_CHECK(filling_pool_ == 0, "cuda:", device_index_,
           ": a private pool is already filling (captures do not nest)");
  filling_pool_ = next_pool_++;
  pools_[filling_pool_];
  return filling_pool_;
}

void CachingAllocator::end_pool() {
  std::lock_guard<std::mutex> lock(mutex_);
  filling_pool_ = 0;
}

void CachingAllocator::release_pool(uint64_t pool) {
  std::lock_guard<std::mutex> lock(mutex_);
  auto it = pools_.find(pool);
  if (it == pools_.end()) return;
  for (auto& [size, blocks] : it->second) {
    stats_.pooled_bytes -= size * blocks.size();
    auto& general = free_blocks_[size];
    general.insert(general.end(), blocks.begin(), blocks.end());
  }
  pools_.erase(it);
  for (auto& [ptr, block] : live_blocks_)
    if (block.pool == pool) block.pool = 0;
  if (filling_pool_ == pool) filling_pool_ = 0;
}

void CachingAllocator::release_cached() {
  std::lock_guard<std::mutex> lock(mutex_);
  if (free_blocks_.empty()) return;
  // Cached blocks may still be read by queued kernels of their last owner.
  SP_CUDA_CHECK("release_cached", cudaSetDevice(device_index_));
  SP_CUDA_CHECK("release_cached", cudaDeviceSynchronize());
  for (auto& [size, blocks] : free_blocks_) {
    for (void* block : blocks) {
      SP_CUDA_CHECK("release_cached", cudaFree(block));
      stats_.device_frees += 1;
      stats_.reserved_bytes -= size;
      stats_.cached_bytes -= size;
    }
  }
  free_blocks_.clear();
}

DeviceCacheStats CachingAllocator::cache_stats() const {
  std::lock_guard<std::mutex> lock(mutex_);
  return stats_;
}

}  // namespace sp::SP_CUDA_NS
