// CpuBackend: the reference implementation of every Backend kernel (fp32, multithreaded).
// Each op family's CPU code lives in its own file here: engine/cpu/<op>.cpp.
#pragma once

#include <memory>
#include <string>

#include "engine/backend.h"

namespace sp {

class CpuBackend final : public Backend {
 public:
  Device device() const override { return Device::cpu(); }
  /// bf16 instructions and, measured once, bf16 GEMMs that outpace fp32 ones (--dtype auto).
  bool native_bf16_gemm() const override;
  Allocator& allocator() override;

  void copy_from_host(void* dst, const void* src, size_t nbytes) override;
  void copy_to_host(void* dst, const void* src, size_t nbytes) override;
  void copy_on_device(void* dst, const void* src, size_t nbytes) override;

  void copy(const Tensor& src, const Tensor& dst) override;
  void cast(const Tensor& src, const Tensor& dst) override;
  void fill(const Tensor& dst, float value) override;

  void gemm(const GemmArgs& args) override;
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

  // Which library runs fp32 GEMMs (one-row products always go to Eigen's GEMV); benchmarks
  // compare them. Default: OpenBLAS, unless OpenBLAS runs its generic pre-AVX2 kernels on a CPU
  // with AVX2 (it does not know the CPU model, e.g. OpenBLAS 0.3.21 on 5th-generation Xeons,
  // 5x slower there): then oneDNN's sgemm, which picks kernels by instruction set, not model.
  enum class GemmLibrary { kOpenBlas, kEigen, kOneDnn };
  static void set_gemm_library(GemmLibrary library);
  static GemmLibrary gemm_library();
  // The default above, and a line saying what runs fp32 GEMMs and why ("OpenBLAS SkylakeX").
  static GemmLibrary default_gemm_library();
  static std::string gemm_description();
  // The policy behind the default: OpenBLAS core `core` (openblas_get_corename) has no AVX2
  // kernels although the CPU has AVX2 and FMA.
  static bool openblas_runs_generic_kernels(const std::string& core, bool cpu_has_avx2_fma);

  // How GEMMs on bf16 operands (fp32 result) run: oneDNN's matmul, whose AVX512-BF16 / AMX
  // kernels can double fp32's throughput (not on every CPU: see measured_bf16_speedup), or sgemm
  // on operands widened to fp32 (same products, fp32 speed). The default is oneDNN where the CPU
  // has bf16 instructions; tests force either.
  enum class Bf16GemmPath { kOneDnn, kWidenedSgemm };
  static void set_bf16_gemm_path(Bf16GemmPath path);
  static Bf16GemmPath bf16_gemm_path();
  static bool cpu_has_native_bf16();           ///< AVX512-BF16 or AMX, as oneDNN detects it
  static std::string bf16_gemm_description();  ///< e.g. "oneDNN brg:avx512_core_bf16"
  // Having the instructions does not make them fast: without AMX (hidden by some hypervisors)
  // AVX512-BF16 may multiply no faster than fp32 FMAs. So --dtype auto measures, once, a GPT-2
  // sized projection (256 x 768 x 768) both ways: fp32 seconds / bf16 seconds (0 without bf16
  // instructions), and whether that ratio pays for bf16's rounding (at least 1.15).
  static double measured_bf16_speedup();
  static bool bf16_pays_off(double speedup) { return speedup >= 1.15; }

 private:
  void bf16_gemm(const GemmArgs& g);  // engine/cpu/gemm_bf16.cpp
};

std::unique_ptr<Backend> make_cpu_backend();

// fp32 row-major GEMM on the host without going through a Backend (used by kernels/emu's
// cuBLAS emulation and by attention). Runs on the calling thread when single_thread.
void cpu_sgemm(bool trans_a, bool trans_b, int64_t m, int64_t n, int64_t k, float alpha,
               const float* a, int64_t lda, const float* b, int64_t ldb, float beta, float* c,
               int64_t ldc, bool single_thread);

}  // namespace sp
