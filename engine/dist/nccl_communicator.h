// NCCL for data-parallel training on GPUs: gradients are all-reduced on the device; a host
// communicator (MPI) carries the NCCL id and every other collective. Real CUDA builds only.
#pragma once

#include <memory>
#include <string>

#include "engine/device.h"
#include "engine/dist/communicator.h"

namespace sp {

/// A communicator of host's ranks whose tensor all-reduce runs with NCCL on the stream of
/// `device` (one GPU per rank); rank, size and host collectives are host's. Throws
/// ErrorKind::kUnsupported in builds without the real CUDA backend.
std::unique_ptr<Communicator> make_nccl_communicator(Communicator& host, Device device);

/// "NCCL 2.x.y" in builds with the real CUDA backend; empty otherwise.
std::string nccl_version();

}  // namespace sp
