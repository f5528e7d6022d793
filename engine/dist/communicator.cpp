// Host-staged tensor collectives and the single-process group.
#include "engine/dist/communicator.h"

#include <cstdint>
#include <cstdlib>
#include <cstring>

#include "engine/backend.h"
#include "engine/error.h"

namespace sp {

namespace {

void check_f32(const std::vector<Tensor>& tensors, const char* what) {
  for (const Tensor& t : tensors)
    SP_CHECK(t.defined() && t.dtype() == DType::F32, what,
             ": every tensor must be a defined F32 tensor, got ",
             t.defined() ? t.describe() : std::string("an undefined tensor"));
}

// The tensors' values end to end, in order.
std::vector<float> gather_values(const std::vector<Tensor>& tensors) {
  std::vector<float> flat;
  for (const Tensor& t : tensors) {
    std::vector<float> values = t.to_floats();
    flat.insert(flat.end(), values.begin(), values.end());
  }
  return flat;
}

void scatter_values(const std::vector<float>& flat, const std::vector<Tensor>& tensors) {
  size_t offset = 0;
  for (const Tensor& t : tensors) {
    const size_t n = size_t(t.numel());
    Tensor host = Tensor::from_floats(std::span<const float>(flat.data() + offset, n), t.shape());
    backend_for(t.device()).copy(host.to(t.device()), t);
    offset += n;
  }
}

}  // namespace

void Communicator::all_reduce_sum(std::vector<Tensor>& tensors) {
  check_f32(tensors, "all_reduce_sum");
  std::vector<float> flat = gather_values(tensors);
  all_reduce_sum(std::span<float>(flat));
  scatter_values(flat, tensors);
}

void SingleProcessCommunicator::abort(int exit_code) {
  std::fflush(nullptr);
  std::_Exit(exit_code);
}

std::string broadcast_string(Communicator& comm, const std::string& value, int root) {
  if (comm.size() == 1) return value;
  uint64_t length = comm.rank() == root ? value.size() : 0;
  comm.broadcast(std::as_writable_bytes(std::span<uint64_t>(&length, 1)), root);
  std::string out = comm.rank() == root ? value : std::string(length, '\0');
  comm.broadcast(std::as_writable_bytes(std::span<char>(out.data(), out.size())), root);
  return out;
}

void broadcast_tensors(Communicator& comm, const std::vector<Tensor>& tensors, int root) {
  if (comm.size() == 1) return;
  check_f32(tensors, "broadcast_tensors");
  std::vector<float> flat = comm.rank() == root ? gather_values(tensors) : std::vector<float>();
  size_t total = 0;
  for (const Tensor& t : tensors) total += size_t(t.numel());
  flat.resize(total);
  comm.broadcast(std::as_writable_bytes(std::span<float>(flat)), root);
  if (comm.rank() != root) scatter_values(flat, tensors);
}

}  // namespace sp
