// Fallback entry points for CUDA flavours that this build does not include: each reports
// clearly why the device is unavailable. Compiled only when the flavour is absent.
#include "engine/backend.h"
#include "engine/cuda/cuda_backend_factory.h"
#include "engine/error.h"

namespace sp {

#ifndef SOFTPROMPT_HAVE_CUDA_EMU
std::unique_ptr<Backend> make_cuda_emu_backend() {
  fail(ErrorKind::kUnsupported,
       "device cuda-emu: this build does not include the emulated CUDA backend");
}
bool cuda_emu_backend_built() {
  return false;
}
#endif

#ifndef SOFTPROMPT_HAVE_CUDA
std::unique_ptr<Backend> make_cuda_backend(int device_index) {
  fail(ErrorKind::kUnsupported, "device cuda:", device_index,
       ": this build has no CUDA backend (configure with -DSOFTPROMPT_CUDA=ON on a machine with "
       "nvcc)");
}
int cuda_device_count() {
  return 0;
}
#endif

}  // namespace sp
