// Fallback entry points for the real CUDA backend when this build does not include it (no
// SOFTPROMPT_HAVE_CUDA): they report clearly why device cuda:N is unavailable.
#include "engine/backend.h"
#include "engine/cuda/cuda_backend_factory.h"
#include "engine/error.h"

namespace sp {

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
