// The NCCL entry points of builds without the real CUDA backend: a clear error, no NCCL.
#include "engine/dist/nccl_communicator.h"
#include "engine/error.h"

namespace sp {

#ifndef SOFTPROMPT_HAVE_CUDA
std::unique_ptr<Communicator> make_nccl_communicator(Communicator&, Device device) {
  fail(ErrorKind::kUnsupported, "NCCL on ", device.str(),
       ": this build has no CUDA backend (configure with -DSOFTPROMPT_CUDA=ON on a machine with "
       "nvcc and NCCL)");
}
std::string nccl_version() {
  return "";
}
#endif

}  // namespace sp
