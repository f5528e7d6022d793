// MpiCommunicator::launched_by_mpi: whether an MPI launcher started this process, read from the
// environment (shared by the MPI build and the build without MPI, which refuses such a launch).
#include <cstdlib>

#include "engine/dist/mpi_communicator.h"

namespace sp {

bool MpiCommunicator::launched_by_mpi() {
  // MPICH's Hydra and Slurm's PMI set PMI_RANK; Open MPI sets OMPI_COMM_WORLD_RANK; PMIx
  // launchers set PMIX_RANK.
  for (const char* name : {"PMI_RANK", "OMPI_COMM_WORLD_RANK", "PMIX_RANK"})
    if (std::getenv(name) != nullptr) return true;
  return false;
}

}  // namespace sp
