// tests/engine/gemm_signals.h: expects a GEMM run over and over, while another thread sends the
// multiplying thread signals, to give the same product every time and leave the heap intact.
#pragma once

#include <gtest/gtest.h>
#include <pthread.h>

#include <atomic>
#include <chrono>
#include <csignal>
#include <cstdlib>
#include <cstring>
#include <functional>
#include <thread>
#include <vector>

namespace sp::testing {

// Why: oneDNN 2.6's JIT sgemm points RSP into a heap workspace, so the kernel wrote each signal
// frame over the heap, and a Ctrl-C during `softprompt train` aborted with "corrupted size vs.
// prev_size" (oneDNN issue 4845, fixed upstream in 3.11.1; Debian 12 ships 2.6.3). Installs a
// no-op SIGUSR1 handler, multiplies for up to half a second while a second thread signals this
// one every ~20 us, and returns whether every product equalled the first.
inline bool products_survive_a_stream_of_signals(
    size_t result_size, const std::function<void(std::vector<float>& result)>& multiply) {
  struct sigaction action {};
  action.sa_handler = [](int) {};
  sigemptyset(&action.sa_mask);
  action.sa_flags = SA_RESTART;
  sigaction(SIGUSR1, &action, nullptr);
  std::vector<float> first(result_size);
  multiply(first);
  const pthread_t multiplier = pthread_self();
  std::atomic<bool> done{false};
  std::thread sender([&] {
    while (!done.load()) {
      pthread_kill(multiplier, SIGUSR1);
      std::this_thread::sleep_for(std::chrono::microseconds(20));  // leaves the multiplier time
    }
  });
  bool same = true;
  const auto deadline = std::chrono::steady_clock::now() + std::chrono::milliseconds(500);
  for (int i = 0; i < 400 && same && std::chrono::steady_clock::now() < deadline; ++i) {
    std::vector<float> result(result_size);
    multiply(result);
    same = std::memcmp(result.data(), first.data(), result_size * sizeof(float)) == 0;
    free(malloc(size_t(1 + i % 4096)));  // lets glibc's malloc check its chunk headers
  }
  done.store(true);
  sender.join();
  return same;
}

// The same in a child process, so that a corrupted heap, which aborts, fails the calling test and
// not the whole suite.
inline void expect_products_survive_a_stream_of_signals(
    size_t result_size, const std::function<void(std::vector<float>& result)>& multiply) {
  GTEST_FLAG_SET(death_test_style, "threadsafe");
  EXPECT_EXIT(std::exit(products_survive_a_stream_of_signals(result_size, multiply) ? 0 : 1),
              ::testing::ExitedWithCode(0), "");
}

}  // namespace sp::testing
