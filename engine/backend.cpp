// The backend registry: one lazily created backend per device.
#include "engine/backend.h"

#include <mutex>

#include "engine/cpu/cpu_backend.h"
#include "engine/cuda/cuda_backend_factory.h"
#include "engine/error.h"

namespace sp {

namespace {

std::mutex g_mutex;

}  // namespace

DType activation_dtype(Device device, DType weight_dtype) {
  return device.kind == DeviceKind::CPU ? DType::F32 : weight_dtype;
}

Backend& backend_for(Device device) {
  static std::unique_ptr<Backend> cpu = make_cpu_backend();
  if (device.kind == DeviceKind::CPU) return *cpu;
  std::lock_guard<std::mutex> lock(g_mutex);
  // Device backends are never destroyed: tensors in static storage may be freed after main
  // returns, into the backend's caching allocator. A static raw pointer also keeps that
  // allocator's cached blocks reachable, so LeakSanitizer does not report them at exit.
  if (device.kind == DeviceKind::CUDA_EMU) {
    static Backend* const emu = make_cuda_emu_backend().release();
    return *emu;
  }
  static Backend* cuda[16] = {};
  SP_CHECK(device.index >= 0 && device.index < 16, "device ", device.str(), " is out of range");
  if (!cuda[device.index]) cuda[device.index] = make_cuda_backend(device.index).release();
  return *cuda[device.index];
}

bool backend_available(Device device) {
  switch (device.kind) {
    case DeviceKind::CPU:
      return true;
    case DeviceKind::CUDA_EMU:
      return cuda_emu_backend_built();
    case DeviceKind::CUDA:
      return cuda_device_count() > device.index;
  }
  return false;
}

std::vector<Device> available_devices() {
  std::vector<Device> devices{Device::cpu()};
  if (backend_available(Device::cuda_emu())) devices.push_back(Device::cuda_emu());
  for (int i = 0; i < cuda_device_count(); ++i) devices.push_back(Device::cuda(i));
  return devices;
}

}  // namespace sp
