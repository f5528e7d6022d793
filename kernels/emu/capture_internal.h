// kernels/emu/capture_internal.h: what the emulated runtime, cuBLAS and cuBLASLt ask of stream
// capture (kernels/emu/cuda_graph_emu.cpp), and the runtime's error recording the graph API uses.
#pragma once

#include <functional>
#include <string>

#include "kernels/emu/cuda_runtime_emu.h"

namespace sp::emu::capture {

// capturing(stream) and record(stream, work) are declared in kernels/emu/emu.h (SP_LAUNCH records
// kernels). An invalidated capture still captures until it ends; what it records is dropped.
// The empty string if `call` may run now; otherwise why not, having invalidated the captures it
// conflicts with (cudaStreamCaptureModeGlobal ones of any thread, ThreadLocal ones of this one).
std::string unsafe_call(const char* call);
// The empty string unless `stream` is capturing; then why `call` may not run on it, having
// invalidated its capture.
std::string on_capturing_stream(const char* call, const void* stream);
// An event recorded on a capturing stream is a captured event until recorded on another.
void note_event_record(const void* event, const void* stream);
bool event_captured(const void* event);
// The capturing stream whose capture recorded `event`, or nullptr (the capture ended).
const void* capture_of_event(const void* event);
void forget_event(const void* event);

}  // namespace sp::emu::capture

namespace sp::emu {

// Records a failed runtime call for cudaGetLastError and last_error_detail(); returns error.
cuda_emu::cudaError_t runtime_failure(cuda_emu::cudaError_t error, std::string detail);
// Whether `stream` is null (the legacy stream) or a live cudaStreamCreate'd stream.
bool live_stream(cuda_emu::cudaStream_t stream);
// Counts a graph launch for RuntimeStats::graph_launches.
void note_graph_launch();

}  // namespace sp::emu
