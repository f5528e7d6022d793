// engine/cuda/cuda_backend.h: CudaBackend, engine/backend.h on a CUDA device: kernels from
// kernels/*.cuh, cuBLAS GEMMs, a caching allocator and one stream. The same sources build the
// real backend (nvcc, sp::cuda_real, device "cuda:N") and the emulated one (g++ over kernels/emu,
// sp::cuda_emu, device "cuda-emu"); see engine/cuda/README.md.
#pragma once

#include <atomic>
#include <cstddef>
#include <mutex>
#include <vector>

#include "engine/backend.h"
#include "engine/cuda/caching_allocator.h"
#include "engine/cuda/staging_ring.h"
#include "kernels/cuda_compat.h"

namespace sp::SP_CUDA_NS {

class CudaBackend final : public Backend {
 public:
  // Selects the device, creates the stream and the cuBLAS handle; throws sp::Error on failure.
  explicit CudaBackend(int device_index);
  ~CudaBackend() override;
  CudaBackend(const CudaBackend&) = delete;
  CudaBackend& operator=(const CudaBackend&) = delete;

  Device device() const override;
  bool native_bf16_gemm() const override { return native_bf16_gemm_; }
  Allocator& allocator() override { return *allocator_; }
  void synchronize() override;
  // A CUDA graph captured from this backend's stream (cudaStreamCaptureModeGlobal); a private
  // pool of the caching allocator keeps its blocks while it lives (engine/cuda/cuda_graph.cu).
  std::unique_ptr<CapturedWork> capture(const std::function<void()>& work) override;
  bool capturing() const { return capturing_.load(); }
  // What kernels that draw random numbers add to their seed (kernels/kernel_common.cuh,
  // replay_seed): the device word a replay sets while capturing, none otherwise.
  const uint64_t* seed_shift() const { return capturing_.load() ? seed_shift_slot_ : nullptr; }
  // Adds the device allocations of the caching allocator to Backend's counters.
  BackendStats stats() const override;
  void reset_stats() override;
  // Counts a launch of `kernel` (SP_CUDA_CHECK_LAUNCH calls it for every launch).
  void note_launch(std::string_view kernel, KernelTraffic traffic = {}) {
    count_launch(kernel, traffic);
  }

  // Never waits for the device when nbytes fits the staging ring (kUploadStagingBytes): the bytes
  // are copied into page-locked memory the DMA reads later, so the caller may reuse its buffer at
  // once and the host keeps queueing work. Larger copies go straight from the caller's memory.
  void copy_from_host(void* dst, const void* src, size_t nbytes) override;
  static constexpr size_t kUploadStagingBytes = size_t(8) << 20;
  void copy_to_host(void* dst, const void* src, size_t nbytes) override;
  void copy_on_device(void* dst, const void* src, size_t nbytes) override;

  void copy(const Tensor& src, const Tensor& dst) override;
  void cast(const Tensor& src, const Tensor& dst) override;
  void fill(const Tensor& dst, float value) override;

  void gemm(const GemmArgs& args) override;
  // cuBLASLt with the GELU_AUX_BIAS / GELU_BIAS / DGELU epilogues for the tanh GELU, RELU(_BIAS)
  // for ReLU where nothing is saved, when enabled (set_gemm_epilogues), the operands suit them
  // (16-byte aligned, a saved input's row stride a multiple of 8, no accumulation) and cuBLASLt
  // offers and runs an algorithm; false otherwise.
  bool gemm_bias_activation(const GemmArgs& args, Activation act, const void* bias,
                            void* pre) override;
  bool gemm_activation_backward(const GemmArgs& args, Activation act, const void* pre) override;
  void binary(BinaryOp op, const Tensor& a, const Tensor& b, const Tensor& out) override;
  void affine(const Tensor& x, float scale, float shift, const Tensor& out) override;
  void sum_last(const Tensor& x, const Tensor& out) override;
  void sum_rows(const Tensor& x, const Tensor& out) override;
  void sum_to(const Tensor& x, const Tensor& out) override;
  double sum_squares(const Tensor& x) override;

  void activation_forward(Activation act, const Tensor& x, const Tensor& bias,
                          const Tensor& y) override;
  void activation_backward(Activation act, const Tensor& x, const Tensor& bias, const Tensor& dy,
                           const Tensor& dx) override;
  void gated_forward(Activation act, const Tensor& gate, const Tensor& up,
                     const Tensor& y) override;
  void gated_backward(Activation act, const Tensor& gate, const Tensor& up, const Tensor& dy,
                      const Tensor& d_gate, const Tensor& d_up) override;

  void layernorm_forward(const Tensor& x, const Tensor& weight, const Tensor& bias, float eps,
                         const Tensor& y, const Tensor& mean, const Tensor& rstd) override;
  void layernorm_backward(const Tensor& x, const Tensor& weight, const Tensor& mean,
                          const Tensor& rstd, const Tensor& dy, const Tensor& dx, bool add_into_dx,
                          const Tensor& d_weight, const Tensor& d_bias) override;
  void residual_layernorm_forward(const Tensor& residual, const Tensor& x, const Tensor& bias,
                                  float p, uint64_t seed, uint64_t offset, const Tensor& weight,
                                  const Tensor& norm_bias, float eps, const Tensor& sum,
                                  const Tensor& y, const Tensor& mean, const Tensor& rstd) override;
  void rotary_embedding(const Tensor& x, const Tensor& cos, const Tensor& sin, bool inverse,
                        const Tensor& out) override;
  void rmsnorm_forward(const Tensor& x, const Tensor& weight, float eps, const Tensor& y,
                       const Tensor& rstd) override;
  void residual_rmsnorm_forward(const Tensor& residual, const Tensor& x, const Tensor& bias,
                                float p, uint64_t seed, uint64_t offset, const Tensor& weight,
                                float eps, const Tensor& sum, const Tensor& y,
                                const Tensor& rstd) override;
  void rmsnorm_backward(const Tensor& x, const Tensor& weight, const Tensor& rstd, const Tensor& dy,
                        const Tensor& dx, bool add_into_dx, const Tensor& d_weight) override;

  void masked_softmax_forward(const Tensor& scores, const AttentionMask& mask,
                              const Tensor& probs) override;
  void masked_softmax_backward(const Tensor& probs, const Tensor& d_probs, float scale,
                               const Tensor& d_scores) override;

  void attention_forward(const Tensor& q, const Tensor& k, const Tensor& v,
                         const AttentionInputBias& bias, const AttentionMask& mask,
                         const AttentionDropout& dropout, const Tensor& out,
                         const Tensor& lse) override;
  void attention_backward(const Tensor& q, const Tensor& k, const Tensor& v,
                          const AttentionInputBias& bias, const AttentionMask& mask,
                          const AttentionDropout& dropout, const Tensor& out, const Tensor& lse,
                          const Tensor& d_out, const Tensor& dq, const Tensor& dk,
                          const Tensor& dv) override;

  void gather_rows(const Tensor& table, const Tensor& ids, const Tensor& out) override;
  void scatter_add_rows(const Tensor& d_out, const RowGroups& groups,
                        const Tensor& d_table) override;

  void cross_entropy_forward(const Tensor& logits, const Tensor& targets, int64_t ignore_index,
                             const Tensor& loss, const Tensor& lse) override;
  void cross_entropy_backward(const Tensor& logits, const Tensor& targets, int64_t ignore_index,
                              const Tensor& lse, float grad_scale, const Tensor& d_logits) override;
  void cross_entropy_forward_backward(const Tensor& logits, const Tensor& targets,
                                      int64_t ignore_index, float grad_scale, const Tensor& loss,
                                      const Tensor& lse, const Tensor& d_logits) override;
  // 256 MiB: GPT-2's head at B=8, T=1024 in 7 chunks of ~1300 rows instead of 99 of 83 (each
  // chunk re-reads the 154 MB weight twice), a small part of any training GPU's memory.
  size_t logits_chunk_bytes() const override { return size_t(256) << 20; }
  void cross_entropy_mean(const Tensor& row_loss, int64_t count, const Tensor& mean) override;

  void dropout(const Tensor& x, float p, uint64_t seed, uint64_t offset, const Tensor& y) override;
  void residual_dropout_add(const Tensor& residual, const Tensor& x, const Tensor& bias, float p,
                            uint64_t seed, uint64_t offset, const Tensor& out) override;
  void normal_fill(const Tensor& dst, float mean, float std, uint64_t seed,
                   uint64_t offset) override;

  void relative_position_bias(const Tensor& table, int64_t query_offset, bool bidirectional,
                              int64_t num_buckets, int64_t max_distance,
                              const Tensor& out) override;

  void adamw_step(const AdamWGroup& group, const AdamWUpdate& update, const Tensor& guard,
                  const Tensor& grad_norm) override;

  // TF32 tensor cores for fp32 GEMMs (10-bit mantissa inputs, fp32 accumulation): on by default
  // on sm_80+ GPUs, off under the emulator so fp32 results match the CPU reference
  // (engine/cuda/capability_policy.h); SOFTPROMPT_CUDA_TF32=0/1 decides at start.
  void set_allow_tf32(bool allow) { allow_tf32_.store(allow); }
  bool allow_tf32() const { return allow_tf32_.load(); }
  // bf16 attention forward on tensor cores (kernels/attention_wmma.cuh) where the head dimension
  // allows: on by default on sm_80+ GPUs and under the emulator (which runs the same kernel);
  // SOFTPROMPT_CUDA_TENSOR_CORE_ATTENTION=0/1 decides at start, tests compare both kernels.
  void set_tensor_core_attention(bool on) { tensor_core_attention_.store(on); }
  bool tensor_core_attention() const { return tensor_core_attention_.load(); }
  // cuBLASLt GELU epilogues (engine/cuda/capability_policy.h); SOFTPROMPT_CUDA_GEMM_EPILOGUES=0
  // turns them off at start, tests compare both paths.
  void set_gemm_epilogues(bool on) { gemm_epilogues_.store(on); }
  bool gemm_epilogues() const { return gemm_epilogues_.load(); }

  CachingAllocator& caching_allocator() { return *allocator_; }
  cudaStream_t stream() const { return stream_; }

  // ---- launch geometry (used by the per-op-family .cu files) ----
  // Blocks for a grid-stride loop over `work` items with `threads` per block.
  unsigned int grid_for(int64_t work, int threads) const;
  // Blocks for a kernel that loops a block over `rows` rows.
  unsigned int grid_for_rows(int64_t rows) const;
  // Threads per block for a row of `cols` elements read `per_thread` at a time (32..256).
  static int threads_for_row(int64_t cols, int per_thread);
  // Dynamic shared memory a block may use after opting in (cudaFuncSetAttribute).
  size_t max_shared_memory() const { return max_shared_memory_; }
  // Makes this backend's device current on the calling thread.
  void activate(const char* op) const;

 private:
  const int device_index_;
  cudaStream_t stream_ = nullptr;
  cublasHandle_t cublas_ = nullptr;
  cublasLtHandle_t cublaslt_ = nullptr;
  CachingAllocator* allocator_ = nullptr;  // never freed: tensors may outlive the backend
  std::atomic<bool> capturing_{false};
  uint64_t* seed_shift_slot_ = nullptr;  // device memory: what replays write their seed shift to
  int multiprocessors_ = 1;
  size_t max_shared_memory_ = 48 * 1024;
  std::atomic<bool> allow_tf32_{false};
  std::atomic<bool> tensor_core_attention_{false};
  std::atomic<bool> gemm_epilogues_{false};
  bool native_bf16_gemm_ = false;
  std::atomic<uint64_t> device_mallocs_at_reset_{0};

  // Copies nbytes (staging_ring_.fits) into the staging ring and queues their upload to dst.
  void stage_upload(void* dst, const void* src, size_t nbytes);
  // One cuBLASLt matmul of `args` with `epilogue` (a cublasLtEpilogue_t); false when cuBLASLt
  // offers no algorithm for it or refuses to run it.
  bool gemm_with_epilogue(const char* op, const GemmArgs& args, unsigned epilogue, const void* bias,
                          const void* aux);
  std::mutex staging_mutex_;  // guards the three below
  // kUploadStagingBytes of page-locked memory, allocated by the first upload.
  unsigned char* staging_ = nullptr;
  StagingRing<cudaEvent_t> staging_ring_{kUploadStagingBytes, 256};
  std::vector<cudaEvent_t> idle_events_;  // recorded events whose upload has landed, for reuse
};

}  // namespace sp::SP_CUDA_NS
