// Device: where a tensor's memory lives and which backend computes on it.
// "cpu" is the reference; "cuda-emu" runs the CUDA backend's kernels on the CPU; "cuda" is a GPU.
#pragma once

#include <cstdint>
#include <string>
#include <string_view>

namespace sp {

/// The backends a tensor can live on.
enum class DeviceKind : uint8_t { CPU, CUDA_EMU, CUDA };

/// A backend plus a device index: Device::cpu(), Device::cuda(0), Device::parse("cuda:1").
struct Device {
  DeviceKind kind = DeviceKind::CPU;
  int index = 0;

  static Device cpu() { return {DeviceKind::CPU, 0}; }
  static Device cuda_emu() { return {DeviceKind::CUDA_EMU, 0}; }
  static Device cuda(int index = 0) { return {DeviceKind::CUDA, index}; }
  /// "cpu", "cuda-emu", "cuda" or "cuda:N"; throws an Error listing the accepted names otherwise.
  static Device parse(std::string_view text);

  bool is_cpu() const { return kind == DeviceKind::CPU; }
  /// "cpu", "cuda-emu" or "cuda:N".
  std::string str() const;
  bool operator==(const Device&) const = default;
};

}  // namespace sp
