// The warning channel.
#include "engine/log.h"

#include <atomic>
#include <cstdio>
#include <mutex>

namespace sp {

namespace {

std::atomic<bool> g_quiet{false};
std::mutex g_mutex;
std::function<void(const std::string&)> g_sink;
std::atomic<int> g_rank{-1};

}  // namespace

void set_log_rank(int rank) {
  g_rank.store(rank);
}

std::string log_prefix() {
  const int rank = g_rank.load();
  return rank < 0 ? std::string("softprompt") : "softprompt[rank " + std::to_string(rank) + "]";
}

void set_quiet(bool quiet) {
  g_quiet.store(quiet);
}
bool is_quiet() {
  return g_quiet.load();
}

void set_warning_sink(std::function<void(const std::string&)> sink) {
  std::lock_guard<std::mutex> lock(g_mutex);
  g_sink = std::move(sink);
}

void emit_warning(const std::string& message) {
  std::lock_guard<std::mutex> lock(g_mutex);
  if (g_sink) {
    g_sink(message);
    return;
  }
  if (!g_quiet.load())
    std::fprintf(stderr, "%s: warning: %s\n", log_prefix().c_str(), message.c_str());
}

}  // namespace sp
