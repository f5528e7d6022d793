// softprompt_cuda_probe: links the real CUDA backend (CI proves the nvcc objects link with it)
// and, on a machine with a GPU, lists the devices and checks one op against the CPU.
#include <cmath>
#include <cstdio>
#include <exception>

#include "engine/backend.h"
#include "engine/dist/nccl_communicator.h"
#include "engine/ops/ops.h"

int main() {
  using namespace sp;
  try {
    const std::vector<Device> devices = available_devices();
    std::printf("softprompt devices:");
    for (const Device& d : devices) std::printf(" %s", d.str().c_str());
    std::printf("\n");
    // NCCL links into the real backend; its version call needs no GPU.
    std::printf("data-parallel GPU collectives: %s\n", nccl_version().c_str());
    int failures = 0;
    for (const Device& device : devices) {
      if (device.is_cpu()) continue;
      Tensor x = randn({64, 769}, 1);
      Tensor w = randn({769}, 2), b = randn({769}, 3);
      std::vector<float> want = layernorm(x, w, b, 1e-5f).to_floats();
      std::vector<float> got =
          layernorm(x.to(device), w.to(device), b.to(device), 1e-5f).to_floats();
      float worst = 0;
      for (size_t i = 0; i < want.size(); ++i)
        worst = std::fmax(worst, std::fabs(want[i] - got[i]));
      const bool ok = worst < 1e-4f;
      failures += ok ? 0 : 1;
      std::printf("  %-9s layernorm [64, 769] max |cpu - device| = %.3g %s\n", device.str().c_str(),
                  double(worst), ok ? "ok" : "MISMATCH");
    }
    return failures == 0 ? 0 : 1;
  } catch (const std::exception& e) {
    std::fprintf(stderr, "softprompt_cuda_probe: %s\n", e.what());
    return 1;
  }
}
