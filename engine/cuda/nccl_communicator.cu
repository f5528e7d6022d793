// NcclCommunicator: ncclAllReduce of F32 device tensors on the CudaBackend's stream, grouped into
// one NCCL launch per call; the NCCL id travels over the host communicator. nvcc builds only.
#include <nccl.h>

#include <cstdlib>

#include "engine/cuda/cuda_backend.h"
#include "engine/dist/nccl_communicator.h"
#include "engine/error.h"

namespace sp {

namespace {

void check_nccl(ncclResult_t result, const char* call) {
  if (result != ncclSuccess)
    fail(ErrorKind::kIo, "NCCL: ", call, " failed: ", ncclGetErrorString(result));
}

class NcclCommunicator final : public Communicator {
 public:
  NcclCommunicator(Communicator& host, Device device) : host_(host) {
    SP_CHECK(device.kind == DeviceKind::CUDA, "NCCL needs a CUDA GPU, got ", device.str());
    backend_ = dynamic_cast<SP_CUDA_NS::CudaBackend*>(&backend_for(device));
    SP_CHECK(backend_ != nullptr, "NCCL needs the real CUDA backend, got device ", device.str());
    ncclUniqueId id{};
    if (host.is_root()) check_nccl(ncclGetUniqueId(&id), "ncclGetUniqueId");
    host.broadcast(std::as_writable_bytes(std::span<ncclUniqueId>(&id, 1)), 0);
    if (cudaSetDevice(device.index) != cudaSuccess)
      fail(ErrorKind::kUnsupported, "NCCL: cannot select ", device.str());
    check_nccl(ncclCommInitRank(&comm_, host.size(), id, host.rank()), "ncclCommInitRank");
  }
  ~NcclCommunicator() override {
    if (comm_) ncclCommDestroy(comm_);
  }

  int rank() const override { return host_.rank(); }
  int size() const override { return host_.size(); }
  int local_rank() const override { return host_.local_rank(); }
  int local_size() const override { return host_.local_size(); }
  std::string description() const override {
    return nccl_version() + " over " + host_.description();
  }
  void all_reduce_sum(std::span<float> values) override { host_.all_reduce_sum(values); }
  void all_reduce_sum(std::span<double> values) override { host_.all_reduce_sum(values); }
  void broadcast(std::span<std::byte> bytes, int root) override { host_.broadcast(bytes, root); }
  void barrier() override { host_.barrier(); }
  [[noreturn]] void abort(int exit_code) override {
    if (comm_) ncclCommAbort(comm_);
    comm_ = nullptr;
    host_.abort(exit_code);
    std::_Exit(exit_code);  // unreachable; nvcc's front end drops the base's [[noreturn]]
  }

  // In place on the backend's stream: later kernels on that stream see the sums, and the host
  // does not wait.
  void all_reduce_sum(std::vector<Tensor>& tensors) override {
    check_nccl(ncclGroupStart(), "ncclGroupStart");
    for (Tensor& t : tensors) {
      SP_CHECK(t.defined() && t.dtype() == DType::F32 && t.device() == backend_->device() &&
                   t.is_contiguous(),
               "NCCL all-reduce: expected contiguous F32 tensors on ", backend_->device().str(),
               ", got ", t.defined() ? t.describe() : std::string("an undefined tensor"));
      check_nccl(ncclAllReduce(t.raw_data(), t.raw_data(), size_t(t.numel()), ncclFloat, ncclSum,
                               comm_, backend_->stream()),
                 "ncclAllReduce");
    }
    check_nccl(ncclGroupEnd(), "ncclGroupEnd");
    backend_->note_launch("ncclAllReduce");
  }

 private:
  Communicator& host_;
  SP_CUDA_NS::CudaBackend* backend_ = nullptr;
  ncclComm_t comm_ = nullptr;
};

}  // namespace

std::unique_ptr<Communicator> make_nccl_communicator(Communicator& host, Device device) {
  return std::make_unique<NcclCommunicator>(host, device);
}

std::string nccl_version() {
  int version = 0;
  if (ncclGetVersion(&version) != ncclSuccess) return "NCCL (version unknown)";
  // NCCL 2.9+ encodes major * 10000 + minor * 100 + patch.
  return "NCCL " + std::to_string(version / 10000) + "." + std::to_string(version / 100 % 100) +
         "." + std::to_string(version % 100);
}

}  // namespace sp
