// MpiCommunicator of a build without MPI (-DSOFTPROMPT_MPI=OFF): it recognises a launch by mpirun
// and refuses it with one clear error, so such a build runs as one process only.
#include <cstdlib>

#include "engine/dist/mpi_communicator.h"
#include "engine/error.h"

namespace sp {

struct MpiCommunicator::Pending {};

MpiCommunicator::MpiCommunicator(double timeout_seconds) : timeout_seconds_(timeout_seconds) {
  fail(ErrorKind::kUnsupported,
       "this softprompt was built without MPI (-DSOFTPROMPT_MPI=OFF), so it cannot join ranks "
       "started by mpirun; rebuild with MPI for data-parallel training, or run one process");
}

MpiCommunicator::~MpiCommunicator() = default;

std::string MpiCommunicator::description() const {
  return "none";
}
void MpiCommunicator::all_reduce_sum(std::span<float>) {}
void MpiCommunicator::all_reduce_sum(std::span<double>) {}
void MpiCommunicator::broadcast(std::span<std::byte>, int) {}
void MpiCommunicator::barrier() {}
void MpiCommunicator::abort(int exit_code) {
  std::_Exit(exit_code);
}

}  // namespace sp
