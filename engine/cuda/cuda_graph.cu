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
  SP_CHECK(!capturing_.exchange(true), op, ": ", device().str(), " is already capturing");
  // Whatever happens, the backend stops capturing and the pool stops filling; unless a graph
  // comes out, the pool's blocks go back to the cache.
  struct Restore {
    CudaBackend& backend;
    uint64_t pool = 0;
    bool graph_owns_pool = false;
    ~Restore() {
      if (pool != 0) {
        backend.allocator_->end_pool();
        if (!graph_owns_pool) backend.allocator_->release_pool(pool);
      }
      backend.capturing_.store(false);
    }
  } restore{*this};
  restore.pool = allocator_->begin_pool();
  SP_CUDA_CHECK(op, cudaStreamBeginCapture(stream_, cudaStreamCaptureModeGlobal));
  try {
    work();
  } catch (...) {
    cudaGraph_t partial = nullptr;  // end the capture, dropping what it recorded
    (void)cudaStreamEndCapture(stream_, &partial);
    if (partial) (void)cudaGraphDestroy(partial);
    (void)cudaGetLastError();
    throw;
  }
  cudaGraph_t graph = nullptr;
  const cudaError_t ended = cudaStreamEndCapture(stream_, &graph);
  check_cuda(ended == cudaSuccess && graph == nullptr ? cudaErrorUnknown : ended, op,
             "cudaStreamEndCapture");
  size_t operations = 0;
  cudaGraphExec_t exec = nullptr;
  cudaError_t status = cudaGraphGetNodes(graph, nullptr, &operations);
  if (status == cudaSuccess) status = cudaGraphInstantiate(&exec, graph, 0);
  (void)cudaGraphDestroy(graph);
  check_cuda(status, op, "cudaGraphInstantiate");
  restore.graph_owns_pool = true;
  return std::make_unique<CudaGraphWork>(*this, exec, restore.pool, operations, seed_shift_slot_);
}

}  // namespace sp::SP_CUDA_NS
