// CpuBackend construction and host memory movement.
#include "engine/cpu/cpu_backend.h"

#include <cstring>

#include "engine/allocator.h"

namespace sp {

Allocator& CpuBackend::allocator() {
  return cpu_allocator();
}

void CpuBackend::copy_from_host(void* dst, const void* src, size_t nbytes) {
  std::memcpy(dst, src, nbytes);
}

void CpuBackend::copy_to_host(void* dst, const void* src, size_t nbytes) {
  std::memcpy(dst, src, nbytes);
}

void CpuBackend::copy_on_device(void* dst, const void* src, size_t nbytes) {
  std::memcpy(dst, src, nbytes);
}

std::unique_ptr<Backend> make_cpu_backend() {
  return std::make_unique<CpuBackend>();
}

}  // namespace sp
