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

}  // namespace

void set_quiet(bool quiet) { g_quiet.store(quiet); }
bool is_quiet() { return g_quiet.load(); }

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
  if (!g_quiet.load()) std::fprintf(stderr, "softprompt: warning: %s\n", message.c_str());
}

}  // namespace sp
