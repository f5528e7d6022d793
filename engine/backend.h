// Backend: the table of kernels a device implements (CPU reference, CUDA, CUDA emulation).
// Ops in engine/ops do shapes and autograd; backends only compute, on tensors of their device.
#pragma once

#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "engine/device.h"
#include "engine/tensor.h"

namespace sp {

class Allocator;

// A parameter group for Backend::adamw_step: contiguous tensors on one device, index-aligned;
// parameters and gradients share a float dtype, the moments are F32.
struct AdamWGroup {
  std::vector<Tensor> params, grads, exp_avg, exp_avg_sq;
};

// One AdamW update's hyperparameters; `step` counts from 1 (bias correction).
struct AdamWUpdate {
  float lr = 1e-3f, beta1 = 0.9f, beta2 = 0.999f, eps = 1e-8f, weight_decay = 0.01f;
  int64_t step = 1;
  double max_grad_norm = 0.0;  // > 0: clip the global gradient norm to it
};

// Elements between rows of cross-entropy logits (see Backend's loss section); when `d_logits` is
// defined it must have the logits' shape and row stride.
int64_t logits_row_stride(const char* op, const Tensor& logits, const Tensor& d_logits);

// Elements between rows of a gated activation's gate, up, d_gate and d_up (see Backend's
// gated_forward): their width when all are contiguous, else the row stride all of them share.
int64_t gated_row_stride(const char* op, const Tensor& gate, const Tensor& up,
                         const Tensor& d_gate = Tensor(), const Tensor& d_up = Tensor());

// Elements between the (b, t) rows of a rotary_embedding operand [B, T, H, D]: H * D when
// contiguous, else the row stride of a view whose heads are dense (unit stride on D, stride D
// between heads) and whose rows are evenly spaced; nullopt for any other layout.
std::optional<int64_t> rotary_row_stride(const Tensor& t);

// Checks a group and the optional guard / norm tensors for adamw_step (every backend's rules).
void check_adamw_step_args(const AdamWGroup& group, const Tensor& guard, const Tensor& grad_norm);

// Row-major strided-batched GEMM: C[i] = alpha * op(A[i]) op(B[i]) + beta * C[i], i < batch.
// op(A) is m x k, op(B) is k x n; lda/ldb/ldc are row strides of the stored matrices.
// A and B share `dtype`; C has `c_dtype`, which is either `dtype` or F32 (bf16 operands with an
// fp32 result, the mixed-precision GEMM of bf16 weights). Accumulation is always fp32.
struct GemmArgs {
  const void* a = nullptr;
  const void* b = nullptr;
  void* c = nullptr;
  DType dtype = DType::F32;    // of A and B
  DType c_dtype = DType::F32;  // of C: `dtype` or F32
  bool trans_a = false;
  bool trans_b = false;
  int64_t m = 0, n = 0, k = 0;
  int64_t lda = 0, ldb = 0, ldc = 0;
  int64_t batch = 1;
  int64_t stride_a = 0, stride_b = 0, stride_c = 0;  // elements between batch entries
  float alpha = 1.0f;
  float beta = 0.0f;
  /// B's storage when it is immutable (a frozen weight, no batch stride): the backend may then
  /// reuse a packed form of B across calls. Null means B may change between calls.
  const Storage* b_storage = nullptr;
};

enum class BinaryOp { kAdd, kSub, kMul };
enum class Activation { kGeluTanh, kGeluErf, kRelu, kSilu };

// Masking and scaling applied to attention scores before the softmax (HF semantics: masked
// positions receive float32 min, i.e. exactly zero probability unless a row has no valid key).
struct AttentionMask {
  float scale = 1.0f;          // multiplies q.k (1/sqrt(d) for GPT-2, 1 for T5)
  bool causal = false;         // query i (absolute position query_offset + i) sees keys <= it
  int64_t query_offset = 0;    // absolute position of query 0 (the KV-cache length)
  Tensor key_padding;          // optional [B, Tk] F32: 1 = attend, 0 = masked
  Tensor bias;                 // optional additive [H, Tq, Tk] or [B, H, Tq, Tk] F32 (T5)
  int64_t sliding_window = 0;  // > 0: query at position p sees only keys j > p - window (Mistral)
};

// Dropout on attention probabilities (GPT-2's attn_pdrop), drawn inside the fused kernels: the
// probability of (b, h, i, j) is kept iff philox::uniform(seed, offset, ((b H + h) Tq + i) Tk + j)
// >= p, the element the dropout op draws for it in the materialised [B, H, Tq, Tk] path.
struct AttentionDropout {
  float p = 0.0f;  // 0: off
  uint64_t seed = 0;
  uint64_t offset = 0;
};

// Biases the attention kernels add to q, k and v as they load them: the qkv projection's bias
// folded into attention, so no pass over [B, T, 3d] adds it. Each is [heads of that tensor * D]
// (head h's at h * D) in the inputs' dtype, or undefined; a biased value rounds to that dtype, as
// the add op would round it.
struct AttentionInputBias {
  Tensor q, k, v;
};

// A scatter-add's rows grouped by destination (group_rows_by_destination, on the host): group g
// adds d_out's rows order[starts[g]], ..., order[starts[g + 1] - 1] (increasing: the ids' order)
// into row targets[g]. The targets are distinct, so the groups run in parallel without atomics
// and every row's sum has one order on every backend. I64 on the backend's device: targets [G],
// starts [G + 1], order [rows].
struct RowGroups {
  Tensor targets, starts, order;
};

// Arithmetic and global-memory traffic of queued work, for a roofline estimate on paper. flops
// as the kernel's source performs them (an exp, a compare or a Philox round counts one); bytes as
// it reads and writes global memory, tiles it re-reads included, caches ignored.
struct KernelTraffic {
  double flops = 0;
  double bytes = 0;
};

// What the work since reset_stats() cost. Beyond the GEMMs, the counters say what bounds a step on
// a GPU besides arithmetic: launches, host waits, device allocations (zero on the CPU backend),
// and each kernel family's traffic (CUDA backends).
struct BackendStats {
  uint64_t gemm_calls = 0;
  double gemm_flops = 0;
  double gemm_bytes = 0;            // operands read and results written, once each
  uint64_t kernel_launches = 0;     // kernels, copies and memsets queued; GEMM calls: gemm_calls
  uint64_t host_syncs = 0;          // times the host waited for the device's queue to drain
  uint64_t device_allocations = 0;  // allocations the device's caching allocator did not serve
  std::map<std::string, uint64_t, std::less<>> launches_by_kernel;
  std::map<std::string, KernelTraffic, std::less<>> traffic_by_kernel;
  /// launches_by_kernel's count for one kernel (or copy kind), 0 when it never ran.
  uint64_t launches_of(std::string_view kernel) const {
    const auto it = launches_by_kernel.find(kernel);
    return it == launches_by_kernel.end() ? 0 : it->second;
  }
};

// Device work recorded once and run again (a CUDA graph). replay() queues what the captured
// function queued, on the same memory, reading what that memory holds then: inputs are updated in
// place between replays, outputs are read after. The memory the work used stays reserved for it
// until this is destroyed; the tensors it read but did not create must be kept alive by the caller.
class CapturedWork {
 public:
  virtual ~CapturedWork() = default;
  // Random draws (dropout) the work made with seed s draw with s + seed_shift: a replay with
  // shift k is the work run eagerly with every seed increased by k.
  virtual void replay(uint64_t seed_shift = 0) = 0;
  // The operations recorded (graph nodes: kernels, copies, memsets, GEMMs).
  virtual size_t operations() const = 0;
};

class Backend {
 public:
  virtual ~Backend() = default;
  virtual Device device() const = 0;
  /// Whether bf16 GEMMs run natively here, faster than fp32 (what --dtype auto asks).
  virtual bool native_bf16_gemm() const { return false; }
  virtual Allocator& allocator() = 0;
  virtual void synchronize() {}
  // Calls `work` with this backend capturing: what it queues here is recorded, not run, and
  // returned to replay. Null where this backend cannot capture (the CPU runs work as it is
  // queued). Throws sp::Error, with nothing recorded, when `work` does what a capture cannot hold:
  // an upload from or a read into host memory, a synchronisation, or an allocation the device's
  // cache cannot serve (so run `work` once uncaptured first).
  virtual std::unique_ptr<CapturedWork> capture(const std::function<void()>& work) {
    (void)work;
    return nullptr;
  }
  virtual BackendStats stats() const {
    std::lock_guard lock(stats_mutex_);
    return stats_;
  }
  virtual void reset_stats() {
    std::lock_guard lock(stats_mutex_);
    stats_ = {};
  }

  // ---- memory (byte copies; host pointers are ordinary CPU memory) ----
  virtual void copy_from_host(void* dst, const void* src, size_t nbytes) = 0;
  virtual void copy_to_host(void* dst, const void* src, size_t nbytes) = 0;
  virtual void copy_on_device(void* dst, const void* src, size_t nbytes) = 0;

  // ---- data movement ----
  // dst = src elementwise for any strides (src may broadcast with zero strides); same dtype.
  virtual void copy(const Tensor& src, const Tensor& dst) = 0;
  // Contiguous dtype conversion (any float/int pair).
  virtual void cast(const Tensor& src, const Tensor& dst) = 0;
  virtual void fill(const Tensor& dst, float value) = 0;

  // ---- dense math ----
  virtual void gemm(const GemmArgs& args) = 0;
  // A GEMM with its activation fused into the epilogue (cuBLASLt's GELU_AUX_BIAS and DGELU), C of
  // A's dtype. A backend that cannot fuse this one (a batched GEMM, say) returns false having
  // written nothing, and the caller runs gemm() and the activation kernels instead.
  // C = act(op(A) op(B) + bias), bias [n] or null. `pre`, when not null, receives op(A) op(B) +
  // bias rounded to C's dtype (C's shape and ldc): the value the backward differentiates at.
  virtual bool gemm_bias_activation(const GemmArgs& args, Activation act, const void* bias,
                                    void* pre) {
    (void)args, (void)act, (void)bias, (void)pre;
    return false;
  }
  // C = (op(A) op(B)) * act'(pre), pre as gemm_bias_activation wrote it (C's shape and ldc).
  virtual bool gemm_activation_backward(const GemmArgs& args, Activation act, const void* pre) {
    (void)args, (void)act, (void)pre;
    return false;
  }
  // out = a (op) b, with a and b broadcast views of out's shape (strides may be 0). `out` is
  // contiguous and may alias `a` when a is contiguous (in-place accumulation).
  virtual void binary(BinaryOp op, const Tensor& a, const Tensor& b, const Tensor& out) = 0;
  // out = x * scale + shift (contiguous; out may alias x).
  virtual void affine(const Tensor& x, float scale, float shift, const Tensor& out) = 0;
  // out[r] = sum_c x[r, c] for x viewed as [rows, cols] contiguous: reduces the last axis.
  virtual void sum_last(const Tensor& x, const Tensor& out) = 0;
  // out[c] = sum_r x[r, c]: reduces the leading rows (bias gradients, broadcast backward).
  virtual void sum_rows(const Tensor& x, const Tensor& out) = 0;
  // General reduction of contiguous x to `out`, whose shape is x's with reduced axes set to 1.
  virtual void sum_to(const Tensor& x, const Tensor& out) = 0;
  // Sum of squares of all elements, accumulated in double and returned to the host.
  virtual double sum_squares(const Tensor& x) = 0;

  // ---- activations ----
  // y = act(x + bias), bias over the last axis (a linear layer's, fused) or undefined.
  virtual void activation_forward(Activation act, const Tensor& x, const Tensor& bias,
                                  const Tensor& y) = 0;
  // dx = dy * act'(x + bias)
  virtual void activation_backward(Activation act, const Tensor& x, const Tensor& bias,
                                   const Tensor& dy, const Tensor& dx) = 0;
  // y = act(gate) * up (T5 v1.1 gated-gelu, Llama's SwiGLU); backward gives d_gate and d_up
  // (either may be undefined when not needed). y and dy are contiguous; gate, up, d_gate and d_up
  // are contiguous or [rows, width] views with one common row stride (gated_row_stride): the
  // halves of one packed [rows, 2 * width] projection and of its gradient.
  virtual void gated_forward(Activation act, const Tensor& gate, const Tensor& up,
                             const Tensor& y) = 0;
  virtual void gated_backward(Activation act, const Tensor& gate, const Tensor& up,
                              const Tensor& dy, const Tensor& d_gate, const Tensor& d_up) = 0;

  // ---- normalisation over the last axis (x contiguous [rows, cols]) ----
  virtual void layernorm_forward(const Tensor& x, const Tensor& weight, const Tensor& bias,
                                 float eps, const Tensor& y, const Tensor& mean,
                                 const Tensor& rstd) = 0;
  // d_weight and d_bias may be undefined (frozen); when defined they are accumulated into. dx is
  // written, or with add_into_dx added to (the residual stream's pending gradient, in one pass).
  virtual void layernorm_backward(const Tensor& x, const Tensor& weight, const Tensor& mean,
                                  const Tensor& rstd, const Tensor& dy, const Tensor& dx,
                                  bool add_into_dx, const Tensor& d_weight,
                                  const Tensor& d_bias) = 0;
  // sum = residual + dropout(x + bias) as residual_dropout_add computes it, then
  // y = LayerNorm(sum) (weight, norm_bias) as layernorm_forward computes it from sum: a
  // transformer branch's end and the next norm in one pass (all [rows, cols] but the [cols] ones).
  virtual void residual_layernorm_forward(const Tensor& residual, const Tensor& x,
                                          const Tensor& bias, float p, uint64_t seed,
                                          uint64_t offset, const Tensor& weight,
                                          const Tensor& norm_bias, float eps, const Tensor& sum,
                                          const Tensor& y, const Tensor& mean,
                                          const Tensor& rstd) = 0;
  // Rotary position embedding (Llama's rotate_half form) of x [B, T, H, D] with cos/sin
  // [B, T, D/2] F32 contiguous: out[..i] = x[i] c - x[i + D/2] s, out[..i + D/2] = x[i + D/2] c +
  // x[i] s. inverse negates s: the transpose of the rotation, i.e. the backward. x and out are
  // contiguous or rows of H * D with a row stride (rotary_row_stride: heads of a packed
  // projection); out may be x (each pair is read before it is written).
  virtual void rotary_embedding(const Tensor& x, const Tensor& cos, const Tensor& sin, bool inverse,
                                const Tensor& out) = 0;
  virtual void rmsnorm_forward(const Tensor& x, const Tensor& weight, float eps, const Tensor& y,
                               const Tensor& rstd) = 0;
  // residual_layernorm_forward's counterpart: sum = residual + dropout(x + bias), then
  // y = RMSNorm(sum) as rmsnorm_forward computes it from sum.
  virtual void residual_rmsnorm_forward(const Tensor& residual, const Tensor& x, const Tensor& bias,
                                        float p, uint64_t seed, uint64_t offset,
                                        const Tensor& weight, float eps, const Tensor& sum,
                                        const Tensor& y, const Tensor& rstd) = 0;
  // As layernorm_backward: dx written, or with add_into_dx added to; d_weight accumulated.
  virtual void rmsnorm_backward(const Tensor& x, const Tensor& weight, const Tensor& rstd,
                                const Tensor& dy, const Tensor& dx, bool add_into_dx,
                                const Tensor& d_weight) = 0;

  // ---- softmax over the last axis of scores [B, H, Tq, Tk] with masking ----
  virtual void masked_softmax_forward(const Tensor& scores, const AttentionMask& mask,
                                      const Tensor& probs) = 0;
  // d_scores = scale * probs * (d_probs - sum(d_probs * probs))
  virtual void masked_softmax_backward(const Tensor& probs, const Tensor& d_probs, float scale,
                                       const Tensor& d_scores) = 0;

  // ---- attention: q [B, Tq, H, D], k/v [B, Tk, Hkv, D] (any strides, unit stride on D) ----
  // Grouped-query attention when Hkv < H: query head h reads key/value head h / (H / Hkv).
  // out [B, Tq, H, D] contiguous; lse [B, H, Tq] receives each row's log-sum-exp (of the
  // probabilities before dropout) for backward.
  virtual void attention_forward(const Tensor& q, const Tensor& k, const Tensor& v,
                                 const AttentionInputBias& bias, const AttentionMask& mask,
                                 const AttentionDropout& dropout, const Tensor& out,
                                 const Tensor& lse) = 0;
  // dq/dk/dv have q/k/v's shapes, unit stride on D (any strides elsewhere: views of one packed
  // gradient) and are fully written; any may be undefined (not needed). They are the gradients of
  // the biased q/k/v, which are also those of q/k/v and (summed over rows) of the biases.
  virtual void attention_backward(const Tensor& q, const Tensor& k, const Tensor& v,
                                  const AttentionInputBias& bias, const AttentionMask& mask,
                                  const AttentionDropout& dropout, const Tensor& out,
                                  const Tensor& lse, const Tensor& d_out, const Tensor& dq,
                                  const Tensor& dk, const Tensor& dv) = 0;

  // ---- gather / scatter along rows ----
  // out[i, :] = table[ids[i], :] (ids I32 or I64, validated on the host by the op).
  virtual void gather_rows(const Tensor& table, const Tensor& ids, const Tensor& out) = 0;
  // d_table[ids[i], :] += d_out[i, :], with the ids grouped by destination row (RowGroups).
  virtual void scatter_add_rows(const Tensor& d_out, const RowGroups& groups,
                                const Tensor& d_table) = 0;

  // ---- loss ----
  // logits (and d_logits) are contiguous [..., V], or [rows, V] with unit column stride and any
  // row stride (logits_row_stride): the LM head pads its rows for aligned GEMMs and loads.
  // Per row: loss[r] = lse(logits[r]) - logits[r, target[r]], 0 for ignored rows; lse saved.
  virtual void cross_entropy_forward(const Tensor& logits, const Tensor& targets,
                                     int64_t ignore_index, const Tensor& loss,
                                     const Tensor& lse) = 0;
  // d_logits[r] = grad_scale * (softmax(logits[r]) - onehot(target[r])), zero for ignored rows.
  // d_logits may alias logits (the fused in-place path).
  virtual void cross_entropy_backward(const Tensor& logits, const Tensor& targets,
                                      int64_t ignore_index, const Tensor& lse, float grad_scale,
                                      const Tensor& d_logits) = 0;
  // Both of the above in one pass over each row (a GPU reads a row a second time from its cache,
  // not from memory): the default runs the two; d_logits may alias logits.
  virtual void cross_entropy_forward_backward(const Tensor& logits, const Tensor& targets,
                                              int64_t ignore_index, float grad_scale,
                                              const Tensor& loss, const Tensor& lse,
                                              const Tensor& d_logits) {
    cross_entropy_forward(logits, targets, ignore_index, loss, lse);
    cross_entropy_backward(logits, targets, ignore_index, lse, grad_scale, d_logits);
  }
  // Bytes of logits the chunked LM head (linear_cross_entropy) computes at a time. Every chunk
  // reads the [V, d] head weight twice, so a device with memory to spare takes bigger chunks.
  virtual size_t logits_chunk_bytes() const { return size_t(16) << 20; }
  // mean[] (one F32 value) = float(sum of row_loss in double / count), 0 when count is 0. On the
  // device, so that the loss needs no host round trip until someone reads it.
  virtual void cross_entropy_mean(const Tensor& row_loss, int64_t count, const Tensor& mean) = 0;

  // ---- randomness (counter-based Philox: identical numbers on every backend) ----
  // y = x * keep / (1 - p) with keep drawn from (seed, offset + element index).
  virtual void dropout(const Tensor& x, float p, uint64_t seed, uint64_t offset,
                       const Tensor& y) = 0;
  // out = residual + dropout(x + bias) in one pass, element i of x drawing as dropout's element i
  // (all contiguous of one shape; bias [x's last axis] or undefined; p may be 0).
  virtual void residual_dropout_add(const Tensor& residual, const Tensor& x, const Tensor& bias,
                                    float p, uint64_t seed, uint64_t offset, const Tensor& out) = 0;
  virtual void normal_fill(const Tensor& dst, float mean, float std, uint64_t seed,
                           uint64_t offset) = 0;

  // ---- T5 relative position bias: out[h, i, j] = table[bucket(j + key_offset - i - query_offset),
  // h]
  virtual void relative_position_bias(const Tensor& table, int64_t query_offset, bool bidirectional,
                                      int64_t num_buckets, int64_t max_distance,
                                      const Tensor& out) = 0;

  // ---- optimiser ----
  // One AdamW step of a parameter group (PyTorch semantics), with nothing read back to the host:
  // - `grad_norm`, when defined (F32 [1]), receives the gradients' global 2-norm before clipping,
  //   accumulated in double;
  // - with update.max_grad_norm > 0 the gradients are scaled by min(1, max / (norm + 1e-6)) as
  //   they are read (torch's clip_grad_norm_; the stored gradients do not change);
  // - when `guard` is defined (F32) and any element of it, or the norm, is not finite, no
  //   parameter or moment changes.
  virtual void adamw_step(const AdamWGroup& group, const AdamWUpdate& update, const Tensor& guard,
                          const Tensor& grad_norm) = 0;

 protected:
  // The counters are shared by every thread that runs ops on this backend (the server's workers);
  // an uncontended lock costs nanoseconds next to a launch or a GEMM.
  // `epilogue_bytes`: what a fused epilogue reads or writes besides A, B and C (bias, aux).
  void count_gemm(const GemmArgs& args, double epilogue_bytes = 0) {
    const double m = double(args.m), n = double(args.n), k = double(args.k);
    const double batch = double(args.batch);
    std::lock_guard lock(stats_mutex_);
    stats_.gemm_calls += 1;
    stats_.gemm_flops += 2.0 * m * n * k * batch;
    // A shared (stride 0) operand is read once; C is read too when beta accumulates into it.
    const double ab = double(dtype_size(args.dtype)), c = double(dtype_size(args.c_dtype));
    stats_.gemm_bytes += ab * (m * k * (args.stride_a == 0 ? 1.0 : batch) +
                               k * n * (args.stride_b == 0 ? 1.0 : batch)) +
                         c * m * n * batch * (args.beta != 0.0f ? 2.0 : 1.0) + epilogue_bytes;
  }
  void count_launch(std::string_view kernel, KernelTraffic traffic = {}) {
    std::lock_guard lock(stats_mutex_);
    stats_.kernel_launches += 1;
    auto it = stats_.launches_by_kernel.find(kernel);
    if (it == stats_.launches_by_kernel.end())
      it = stats_.launches_by_kernel.emplace(std::string(kernel), 0).first;
    it->second += 1;
    auto t = stats_.traffic_by_kernel.find(kernel);
    if (t == stats_.traffic_by_kernel.end())
      t = stats_.traffic_by_kernel.emplace(std::string(kernel), KernelTraffic{}).first;
    t->second.flops += traffic.flops;
    t->second.bytes += traffic.bytes;
  }
  void count_host_sync() {
    std::lock_guard lock(stats_mutex_);
    stats_.host_syncs += 1;
  }

 private:
  mutable std::mutex stats_mutex_;
  BackendStats stats_;
};

// The backend owning `device`; throws an Error when this build or machine lacks it.
Backend& backend_for(Device device);
/// The dtype of a model's activations on `device` when its GEMM weights are `weight_dtype`. The
/// CPU backend computes every non-GEMM op in F32 (bf16 weights feed its bf16 GEMM, which returns
/// F32); CUDA backends keep activations in the weight dtype.
DType activation_dtype(Device device, DType weight_dtype);
// Whether backend_for(device) would succeed.
bool backend_available(Device device);

// Names of the devices this build and machine can run ("cpu", "cuda-emu", maybe "cuda").
std::vector<Device> available_devices();

/// The RowGroups of scatter-adding rows 0..ids.size()-1 into rows ids[i], on `device` in one
/// upload. With ids_on_device, the ids themselves (I64) travel in the same upload and land there:
/// a gather and its backward cost one copy.
RowGroups group_rows_by_destination(const std::vector<int64_t>& ids, Device device,
                                    Tensor* ids_on_device = nullptr);
/// What group_rows_by_destination uploads, on the host: [ids if with_ids,] targets, starts,
/// order; *groups receives the group count.
std::vector<int64_t> packed_row_groups(const std::vector<int64_t>& ids, bool with_ids,
                                       int64_t* groups);

}  // namespace sp
