// CudaBackend::capture: the work a function queues on the backend's stream, captured into a CUDA
// graph and replayed by cudaGraphLaunch, its blocks kept by a private pool of the allocator.
#include <memory>

#include "engine/cuda/cuda_backend.h"
#include "engine/cuda/cuda_check.h"
#include "engine/error.h"

namespace sp::SP_CUDA_NS {

namespace {

class CudaGraphWork final : public CapturedWork {
 public:
  CudaGraphWork(CudaBackend& backend, cudaGraphExec_t exec, uint64_t pool, size_t operations,
                uint64_t* seed_shift_slot)
      : backend_(backend),
        exec_(exec),
        pool_(pool),
        operations_(operations),
        seed_shift_slot_(seed_shift_slot) {}
  CudaGraphWork(const CudaGraphWork&) = delete;
  CudaGraphWork& operator=(const CudaGraphWork&) = delete;
  ~CudaGraphWork() override {
    // A replay still running keeps its resources until it is done (CUDA defers the release), and
    // work queued on the stream after it runs after it, so the blocks may go back to the cache.
    (void)cudaGraphExecDestroy(exec_);
    backend_.caching_allocator().release_pool(pool_);
  }

  void replay(uint64_t seed_shift) override {
    const char* op = "replay";
    backend_.activate(op);
    SP_CHECK(!backend_.capturing(), op, ": a captured graph cannot be replayed inside a capture");
    // Queued before the graph on the same stream: its kernels read the shift once it has landed.
    backend_.copy_from_host(seed_shift_slot_, &seed_shift, sizeof(seed_shift));
    backend_.note_launch("cudaGraphLaunch");
    SP_CUDA_CHECK(op, cudaGraphLaunch(exec_, backend_.stream()));
  }
  size_t operations() const override { return operations_; }

 private:
  CudaBackend& backend_;
  cudaGraphExec_t exec_;
  uint64_t pool_;
  size_t operations_;
  uint64_t* seed_shift_slot_;
};

}  // namespace

std::unique_ptr<CapturedWork> CudaBackend::capture(const std::function<void()>& work) {
  const char* op = "capture";
  activate(op);
  SP_CHECK(!sync_after_every_launch().load(), op,
           ": SOFTPROMPT_CUDA_SYNC=1 synchronises after every launch, which a capture cannot hold");
  SP_CHECK(!capturing_.load(), op, ": ", device().str(), " is already capturing");
  SP_CHECK(!capturing_.exchange(true), op, ": ", device().str(), " is already capturing");
  const uint64_t pool = allocator_->begin_pool();
  // On any failure: end the capture (dropping what it recorded), return the pool's blocks to the
  // cache, and leave the backend as it was.
  const auto abandon = [&] {
    cudaGraph_t partial = nullptr;
    (void)cudaStreamEndCapture(stream_, &partial);
    if (partial) (void)cudaGraphDestroy(partial);
    (void)cudaGetLastError();
    allocator_->end_pool();
    allocator_->release_pool(pool);
    capturing_.store(false);
  };
  const cudaError_t began = cudaStreamBeginCapture(stream_, cudaStreamCaptureModeGlobal);
  if (began != cudaSuccess) {
    allocator_->end_pool();
    allocator_->release_pool(pool);
    capturing_.store(false);
    check_cuda(began, op, "cudaStreamBeginCapture");
  }
  try {
    work();
  } catch (...) {
    abandon();
    throw;
  }
  cudaGraph_t graph = nullptr;
  const cudaError_t ended = cudaStreamEndCapture(stream_, &graph);
  allocator_->end_pool();
  capturing_.store(false);
  if (ended != cudaSuccess || graph == nullptr) {
    allocator_->release_pool(pool);
    check_cuda(ended == cudaSuccess ? cudaErrorUnknown : ended, op, "cudaStreamEndCapture");
  }
  size_t operations = 0;
  cudaGraphExec_t exec = nullptr;
  cudaError_t status = cudaGraphGetNodes(graph, nullptr, &operations);
  if (status == cudaSuccess) status = cudaGraphInstantiate(&exec, graph, 0);
  (void)cudaGraphDestroy(graph);
  if (status != cudaSuccess) {
    allocator_->release_pool(pool);
    check_cuda(status, op, "cudaGraphInstantiate");
  }
  return std::make_unique<CudaGraphWork>(*this, exec, pool, operations, seed_shift_slot_);
}

}  // namespace sp::SP_CUDA_NS
