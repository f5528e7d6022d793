// kernels/emu/cuda_graph_emu.h: the emulated CUDA graph subset: stream capture into a graph, its
// instantiation and replay, with the capture rules the real runtime enforces (see README.md).
#pragma once

#include <cstddef>

#include "kernels/emu/cuda_runtime_emu.h"

namespace sp::cuda_emu {

enum cudaStreamCaptureMode {
  cudaStreamCaptureModeGlobal = 0,
  cudaStreamCaptureModeThreadLocal = 1,
  cudaStreamCaptureModeRelaxed = 2,
};
enum cudaStreamCaptureStatus {
  cudaStreamCaptureStatusNone = 0,
  cudaStreamCaptureStatusActive = 1,
  cudaStreamCaptureStatusInvalidated = 2,
};

struct CUgraph_st;
using cudaGraph_t = CUgraph_st*;
struct CUgraphExec_st;
using cudaGraphExec_t = CUgraphExec_st*;
struct CUgraphNode_st;
using cudaGraphNode_t = CUgraphNode_st*;

// While a stream captures, the work queued on it (kernels, async copies and memsets, cuBLAS and
// cuBLASLt GEMMs, graph launches) is recorded, not run. A call the capture forbids fails with
// cudaErrorStreamCaptureUnsupported and invalidates the capture: cudaMalloc, cudaFree, the
// page-locked allocations, cudaMemcpy, cudaMemset and cudaDeviceSynchronize (from any thread
// under cudaStreamCaptureModeGlobal, the capturing thread under ThreadLocal, never under
// Relaxed); synchronising or querying the capturing stream; an async copy to or from pageable
// host memory on it. An event recorded on it is a captured event until recorded elsewhere:
// querying, synchronising or timing it fails with cudaErrorCapturedEvent.
cudaError_t cudaStreamBeginCapture(cudaStream_t stream, cudaStreamCaptureMode mode);
// An invalidated capture ends with cudaErrorStreamCaptureInvalidated and a null graph
// (sp::emu::last_error_detail() names the call that invalidated it).
cudaError_t cudaStreamEndCapture(cudaStream_t stream, cudaGraph_t* graph);
cudaError_t cudaStreamIsCapturing(cudaStream_t stream, cudaStreamCaptureStatus* status);
// Only the count: nodes must be null (the emulator's graph is a list, its nodes have no handles).
cudaError_t cudaGraphGetNodes(cudaGraph_t graph, cudaGraphNode_t* nodes, std::size_t* count);
cudaError_t cudaGraphInstantiate(cudaGraphExec_t* exec, cudaGraph_t graph,
                                 unsigned long long flags = 0);
// Runs the recorded work in capture order, reading whatever memory holds now (recorded into a
// capturing stream, it is recorded as one node).
cudaError_t cudaGraphLaunch(cudaGraphExec_t exec, cudaStream_t stream);
cudaError_t cudaGraphExecDestroy(cudaGraphExec_t exec);
cudaError_t cudaGraphDestroy(cudaGraph_t graph);

}  // namespace sp::cuda_emu
