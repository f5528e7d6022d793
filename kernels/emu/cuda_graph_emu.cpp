// kernels/emu/cuda_graph_emu.cpp: stream capture and graphs for the emulated runtime. A capture is
// the list of work its stream was given; a graph and its executable copy hold that list, and a
// launch runs it in order.
#include "kernels/emu/cuda_graph_emu.h"

#include <atomic>
#include <memory>
#include <mutex>
#include <thread>
#include <unordered_map>
#include <unordered_set>
#include <vector>

#include "kernels/emu/capture_internal.h"
#include "kernels/error.h"

namespace sp::cuda_emu {

using Work = std::vector<std::function<void()>>;

struct CUgraph_st {
  std::shared_ptr<const Work> work;
};
struct CUgraphExec_st {
  std::shared_ptr<const Work> work;
};

}  // namespace sp::cuda_emu

namespace sp::emu {
namespace {

using namespace ::sp::cuda_emu;

struct Capture {
  cudaStreamCaptureMode mode = cudaStreamCaptureModeGlobal;
  std::thread::id thread;
  Work work;
  std::string invalidated_by;  // empty while the capture is valid
};

struct CaptureRegistry {
  std::mutex mu;
  std::unordered_map<const void*, Capture> captures;             // by stream
  std::unordered_map<const void*, const void*> captured_events;  // event -> its capture's stream
  std::unordered_set<const void*> graphs;
  std::unordered_set<const void*> execs;
};

CaptureRegistry& registry() {
  static CaptureRegistry r;
  return r;
}

std::atomic<int> g_active_captures{0};

const char* mode_name(cudaStreamCaptureMode mode) {
  switch (mode) {
    case cudaStreamCaptureModeGlobal:
      return "cudaStreamCaptureModeGlobal";
    case cudaStreamCaptureModeThreadLocal:
      return "cudaStreamCaptureModeThreadLocal";
    case cudaStreamCaptureModeRelaxed:
      return "cudaStreamCaptureModeRelaxed";
  }
  return "an unknown capture mode";
}

void invalidate(Capture& capture, const std::string& why) {
  if (capture.invalidated_by.empty()) capture.invalidated_by = why;
  capture.work.clear();
}

}  // namespace

namespace capture {

bool capturing(const void* stream) {
  if (g_active_captures.load(std::memory_order_acquire) == 0) return false;
  CaptureRegistry& r = registry();
  std::lock_guard lock(r.mu);
  return r.captures.count(stream) != 0;
}

void record(const void* stream, std::function<void()> work) {
  CaptureRegistry& r = registry();
  std::lock_guard lock(r.mu);
  const auto it = r.captures.find(stream);
  SP_ASSERT(it != r.captures.end());
  if (it->second.invalidated_by.empty()) it->second.work.push_back(std::move(work));
}

std::string unsafe_call(const char* call) {
  if (g_active_captures.load(std::memory_order_acquire) == 0) return {};
  CaptureRegistry& r = registry();
  std::lock_guard lock(r.mu);
  std::string why;
  for (auto& [stream, capture] : r.captures) {
    const bool forbids = capture.mode == cudaStreamCaptureModeGlobal ||
                         (capture.mode == cudaStreamCaptureModeThreadLocal &&
                          capture.thread == std::this_thread::get_id());
    if (!forbids) continue;
    const std::string reason = str_cat(call, " is not permitted while stream ", stream,
                                       " is capturing (", mode_name(capture.mode), ")");
    invalidate(capture, reason);
    if (why.empty()) why = reason;
  }
  return why;
}

std::string on_capturing_stream(const char* call, const void* stream) {
  if (g_active_captures.load(std::memory_order_acquire) == 0) return {};
  CaptureRegistry& r = registry();
  std::lock_guard lock(r.mu);
  const auto it = r.captures.find(stream);
  if (it == r.captures.end()) return {};
  const std::string why =
      str_cat(call, " on stream ", stream, " is not permitted while it captures");
  invalidate(it->second, why);
  return why;
}

void note_event_record(const void* event, const void* stream) {
  CaptureRegistry& r = registry();
  std::lock_guard lock(r.mu);
  if (r.captures.count(stream))
    r.captured_events[event] = stream;
  else
    r.captured_events.erase(event);
}

bool event_captured(const void* event) {
  CaptureRegistry& r = registry();
  std::lock_guard lock(r.mu);
  return r.captured_events.count(event) != 0;
}

const void* capture_of_event(const void* event) {
  CaptureRegistry& r = registry();
  std::lock_guard lock(r.mu);
  const auto it = r.captured_events.find(event);
  if (it == r.captured_events.end() || !r.captures.count(it->second)) return nullptr;
  return it->second;
}

void forget_event(const void* event) {
  CaptureRegistry& r = registry();
  std::lock_guard lock(r.mu);
  r.captured_events.erase(event);
}

}  // namespace capture

}  // namespace sp::emu

namespace sp::cuda_emu {

using emu::runtime_failure;

cudaError_t cudaStreamBeginCapture(cudaStream_t stream, cudaStreamCaptureMode mode) {
  const char* fn = "cudaStreamBeginCapture";
  if (stream == nullptr) {
    return runtime_failure(cudaErrorStreamCaptureUnsupported,
                           str_cat(fn, ": the legacy stream cannot capture"));
  }
  if (!emu::live_stream(stream)) {
    return runtime_failure(
        cudaErrorInvalidResourceHandle,
        str_cat(fn, ": stream ", static_cast<const void*>(stream), " is not a live stream"));
  }
  if (mode != cudaStreamCaptureModeGlobal && mode != cudaStreamCaptureModeThreadLocal &&
      mode != cudaStreamCaptureModeRelaxed) {
    return runtime_failure(cudaErrorInvalidValue,
                           str_cat(fn, ": unknown capture mode ", static_cast<int>(mode)));
  }
  emu::CaptureRegistry& r = emu::registry();
  std::lock_guard lock(r.mu);
  if (r.captures.count(stream)) {
    return runtime_failure(
        cudaErrorIllegalState,
        str_cat(fn, ": stream ", static_cast<const void*>(stream), " is already capturing"));
  }
  emu::Capture& capture = r.captures[stream];
  capture.mode = mode;
  capture.thread = std::this_thread::get_id();
  emu::g_active_captures.fetch_add(1, std::memory_order_release);
  return cudaSuccess;
}

cudaError_t cudaStreamEndCapture(cudaStream_t stream, cudaGraph_t* graph) {
  const char* fn = "cudaStreamEndCapture";
  if (!graph) return runtime_failure(cudaErrorInvalidValue, str_cat(fn, ": null output pointer"));
  *graph = nullptr;
  emu::CaptureRegistry& r = emu::registry();
  std::unique_lock lock(r.mu);
  const auto it = r.captures.find(stream);
  if (it == r.captures.end()) {
    return runtime_failure(
        cudaErrorIllegalState,
        str_cat(fn, ": stream ", static_cast<const void*>(stream), " is not capturing"));
  }
  if (it->second.mode != cudaStreamCaptureModeRelaxed &&
      it->second.thread != std::this_thread::get_id()) {
    return runtime_failure(cudaErrorStreamCaptureWrongThread,
                           str_cat(fn, ": the capture began on another thread"));
  }
  emu::Capture capture = std::move(it->second);
  r.captures.erase(it);
  emu::g_active_captures.fetch_sub(1, std::memory_order_release);
  if (!capture.invalidated_by.empty()) {
    return runtime_failure(cudaErrorStreamCaptureInvalidated,
                           str_cat(fn, ": the capture was invalidated: ", capture.invalidated_by));
  }
  auto* g = new CUgraph_st{std::make_shared<const Work>(std::move(capture.work))};
  r.graphs.insert(g);
  *graph = g;
  return cudaSuccess;
}

cudaError_t cudaStreamIsCapturing(cudaStream_t stream, cudaStreamCaptureStatus* status) {
  const char* fn = "cudaStreamIsCapturing";
  if (!status) return runtime_failure(cudaErrorInvalidValue, str_cat(fn, ": null output pointer"));
  if (!emu::live_stream(stream)) {
    return runtime_failure(
        cudaErrorInvalidResourceHandle,
        str_cat(fn, ": stream ", static_cast<const void*>(stream), " is not a live stream"));
  }
  emu::CaptureRegistry& r = emu::registry();
  std::lock_guard lock(r.mu);
  const auto it = r.captures.find(stream);
  *status = it == r.captures.end()              ? cudaStreamCaptureStatusNone
            : it->second.invalidated_by.empty() ? cudaStreamCaptureStatusActive
                                                : cudaStreamCaptureStatusInvalidated;
  return cudaSuccess;
}

cudaError_t cudaGraphGetNodes(cudaGraph_t graph, cudaGraphNode_t* nodes, std::size_t* count) {
  const char* fn = "cudaGraphGetNodes";
  if (!count) return runtime_failure(cudaErrorInvalidValue, str_cat(fn, ": null count pointer"));
  if (nodes) {
    return runtime_failure(
        cudaErrorNotSupported,
        str_cat(fn, ": the emulator reports the node count only (nodes = null)"));
  }
  emu::CaptureRegistry& r = emu::registry();
  std::lock_guard lock(r.mu);
  if (!r.graphs.count(graph)) {
    return runtime_failure(cudaErrorInvalidValue, str_cat(fn, ": ", static_cast<const void*>(graph),
                                                          " is not a live graph"));
  }
  *count = graph->work->size();
  return cudaSuccess;
}

cudaError_t cudaGraphInstantiate(cudaGraphExec_t* exec, cudaGraph_t graph, unsigned long long) {
  const char* fn = "cudaGraphInstantiate";
  if (!exec) return runtime_failure(cudaErrorInvalidValue, str_cat(fn, ": null output pointer"));
  *exec = nullptr;
  emu::CaptureRegistry& r = emu::registry();
  std::lock_guard lock(r.mu);
  if (!r.graphs.count(graph)) {
    return runtime_failure(cudaErrorInvalidValue, str_cat(fn, ": ", static_cast<const void*>(graph),
                                                          " is not a live graph"));
  }
  // The executable graph is independent of the graph: destroying one leaves the other.
  auto* e = new CUgraphExec_st{graph->work};
  r.execs.insert(e);
  *exec = e;
  return cudaSuccess;
}

cudaError_t cudaGraphLaunch(cudaGraphExec_t exec, cudaStream_t stream) {
  const char* fn = "cudaGraphLaunch";
  std::shared_ptr<const Work> work;
  {
    emu::CaptureRegistry& r = emu::registry();
    std::lock_guard lock(r.mu);
    if (!r.execs.count(exec)) {
      return runtime_failure(
          cudaErrorInvalidValue,
          str_cat(fn, ": ", static_cast<const void*>(exec), " is not a live executable graph"));
    }
    work = exec->work;
  }
  if (!emu::live_stream(stream)) {
    return runtime_failure(
        cudaErrorInvalidResourceHandle,
        str_cat(fn, ": stream ", static_cast<const void*>(stream), " is not a live stream"));
  }
  const auto run = [work] {
    emu::note_graph_launch();
    emu::land_pending_copies();  // the graph runs after the stream's earlier work
    for (const auto& step : *work) step();
  };
  if (emu::capture::capturing(stream)) {
    emu::capture::record(stream, run);
    return cudaSuccess;
  }
  run();
  return cudaSuccess;
}

cudaError_t cudaGraphExecDestroy(cudaGraphExec_t exec) {
  emu::CaptureRegistry& r = emu::registry();
  {
    std::lock_guard lock(r.mu);
    if (!exec || r.execs.erase(exec) == 0) {
      return runtime_failure(cudaErrorInvalidValue,
                             str_cat("cudaGraphExecDestroy(", static_cast<const void*>(exec),
                                     "): not a live executable graph"));
    }
  }
  delete exec;
  return cudaSuccess;
}

cudaError_t cudaGraphDestroy(cudaGraph_t graph) {
  emu::CaptureRegistry& r = emu::registry();
  {
    std::lock_guard lock(r.mu);
    if (!graph || r.graphs.erase(graph) == 0) {
      return runtime_failure(
          cudaErrorInvalidValue,
          str_cat("cudaGraphDestroy(", static_cast<const void*>(graph), "): not a live graph"));
    }
  }
  delete graph;
  return cudaSuccess;
}

}  // namespace sp::cuda_emu
