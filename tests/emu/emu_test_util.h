// tests/emu/emu_test_util.h: helpers shared by the emulator tests: running a check under every
// schedule order, a device copy of a host vector, and expecting a ThreadSanitizer race report.
#pragma once

#include <gtest/gtest.h>

#include <cstddef>
#include <cstdlib>
#include <string>
#include <vector>

#include "kernels/cuda_compat.h"
#include "kernels/emu/emu.h"

#if defined(__SANITIZE_THREAD__)
#define SP_TEST_TSAN 1
#elif defined(__has_feature)
#if __has_feature(thread_sanitizer)
#define SP_TEST_TSAN 1
#endif
#endif
#ifndef SP_TEST_TSAN
#define SP_TEST_TSAN 0
#endif

namespace sp::emu_test_util {

// Runs check() once under each of sp::emu::test_schedules() and returns the names of the
// schedules under which it returned false.
template <class Check>
std::vector<std::string> failing_schedules(Check&& check) {
  std::vector<std::string> failing;
  for (const auto& spec : ::sp::emu::test_schedules()) {
    ::sp::emu::ScopedSchedule scoped(spec);
    if (!check()) failing.push_back(::sp::emu::schedule_name(spec));
  }
  return failing;
}

inline std::string join(const std::vector<std::string>& parts) {
  std::string out;
  for (const auto& p : parts) out += (out.empty() ? "" : ", ") + p;
  return out.empty() ? "(none)" : out;
}

// A device copy (in the emulated runtime) of a host vector, freed at scope exit.
template <class T>
struct DeviceBuffer {
  T* ptr = nullptr;
  std::size_t n = 0;
  explicit DeviceBuffer(const std::vector<T>& host) : n(host.size()) {
    namespace rt = ::sp::cuda_emu;
    EXPECT_EQ(rt::cudaMalloc(&ptr, n * sizeof(T)), rt::cudaSuccess);
    EXPECT_EQ(rt::cudaMemcpy(ptr, host.data(), n * sizeof(T), rt::cudaMemcpyHostToDevice),
              rt::cudaSuccess);
  }
  DeviceBuffer(const DeviceBuffer&) = delete;
  DeviceBuffer& operator=(const DeviceBuffer&) = delete;
  ~DeviceBuffer() { ::sp::cuda_emu::cudaFree(ptr); }
  std::vector<T> download() const {
    namespace rt = ::sp::cuda_emu;
    std::vector<T> h(n);
    EXPECT_EQ(rt::cudaMemcpy(h.data(), ptr, n * sizeof(T), rt::cudaMemcpyDeviceToHost),
              rt::cudaSuccess);
    return h;
  }
};

}  // namespace sp::emu_test_util

// In the ThreadSanitizer build: runs `statement` in a re-executed child process and expects
// ThreadSanitizer to report a data race there (TSan makes such a process exit with 66). The
// parent stays race-free, so the rest of the suite keeps passing.
#define SP_EXPECT_TSAN_RACE(statement)                                \
  do {                                                                \
    GTEST_FLAG_SET(death_test_style, "threadsafe");                   \
    EXPECT_EXIT(                                                      \
        {                                                             \
          statement;                                                  \
          std::exit(0);                                               \
        },                                                            \
        ::testing::ExitedWithCode(66), "ThreadSanitizer: data race"); \
  } while (0)
