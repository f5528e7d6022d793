// CudaBackend fused attention (kernels/attention.cuh): tile sizes from the head dimension and
// the device's shared memory, then the forward kernel, or the backward's three kernels (row dots
// of dO and O, then dQ per query tile and dK/dV per key tile).
#include <algorithm>
#include <type_traits>

#include "engine/cuda/attention_mask_args.h"
#include "engine/cuda/cuda_backend.h"
#include "engine/cuda/cuda_check.h"
#include "engine/cuda/launch.h"
#include "engine/cuda/workspace.h"
#include "kernels/attention.cuh"
#include "kernels/attention_wmma.cuh"

namespace sp::SP_CUDA_NS {

namespace {

AttentionShape attention_shape(const char* op, const Tensor& q, const Tensor& k, const Tensor& v) {
  SP_CHECK(q.dim() == 4 && k.dim() == 4 && v.dim() == 4 && q.stride(3) == 1 && k.stride(3) == 1 &&
               v.stride(3) == 1,
           op, ": q, k, v must be [B, T, H, D] views with unit stride on D, got ", q.describe(),
           ", ", k.describe(), ", ", v.describe());
  AttentionShape s;
  s.batch = q.size(0);
  s.q_len = q.size(1);
  s.heads = q.size(2);
  s.head_dim = q.size(3);
  s.k_len = k.size(1);
  s.kv_heads = k.size(2);
  SP_CHECK(s.kv_heads > 0 && s.heads % s.kv_heads == 0 && v.size(2) == s.kv_heads, op,
           ": key/value heads ", s.kv_heads, " must divide the query heads ", s.heads);
  // Batch x heads is the grid's y dimension.
  SP_CHECK(s.batch * s.heads <= 65535, op, ": batch * heads = ", s.batch * s.heads,
           " exceeds the 65535 blocks of a grid's y dimension");
  const int axes[3] = {0, 1, 2};
  for (int a : axes) {
    s.q_stride[a] = q.stride(a);
    s.k_stride[a] = k.stride(a);
    s.v_stride[a] = v.stride(a);
  }
  return s;
}

// The widest key tile (32, 16 or 8 keys) whose shared memory fits the device.
template <class SmemFloats>
AttentionTiles choose_tiles(const char* op, int64_t head_dim, size_t max_bytes, SmemFloats smem) {
  for (int block_k : {32, 16, 8}) {
    const AttentionTiles tiles{16, block_k};
    if (size_t(smem(tiles, head_dim)) * sizeof(float) <= max_bytes) return tiles;
  }
  fail(ErrorKind::kUnsupported, op, ": head dimension ", head_dim,
       " needs more shared memory than this device offers (", max_bytes,
       " bytes per block); use the materialised attention path");
}

AttentionDropoutArgs attention_dropout_args(const char* op, const AttentionDropout& dropout,
                                            const uint64_t* seed_shift) {
  SP_CHECK(dropout.p >= 0.0f && dropout.p < 1.0f, op,
           ": dropout probability must be in [0, 1), got ", dropout.p);
  AttentionDropoutArgs args;
  args.p = dropout.p;
  args.keep_scale = 1.0f / (1.0f - dropout.p);
  args.seed = dropout.seed;
  args.offset = dropout.offset;
  args.seed_shift = seed_shift;
  return args;
}

// Checks the input biases against q/k/v: [heads of that tensor * D], contiguous, their dtype.
void check_input_bias(const char* op, const AttentionInputBias& bias, const Tensor& q,
                      const Tensor& k, const Tensor& v) {
  for (auto [b, x] : {std::pair{&bias.q, &q}, std::pair{&bias.k, &k}, std::pair{&bias.v, &v}}) {
    if (!b->defined()) continue;
    SP_CHECK(b->dtype() == x->dtype() && b->is_contiguous() &&
                 b->numel() == x->size(2) * x->size(3) && b->device() == x->device(),
             op, ": an input bias must be contiguous [heads * D] = [", x->size(2) * x->size(3),
             "] of its input's dtype and device, got ", b->describe(), " for ", x->describe());
  }
}

template <class T>
QkvBias<T> qkv_bias(const AttentionInputBias& bias) {
  return {const_ptr<T>(bias.q), const_ptr<T>(bias.k), const_ptr<T>(bias.v)};
}

// What the fused kernels do for a launch, for the traffic counters: score entries computed (the
// causal mask skips tiles past the diagonal; sliding windows are not subtracted), and key rows
// loaded summed over query tiles (each query tile re-reads its keys' K and V) and query rows
// loaded summed over key tiles (the dK/dV kernel re-reads Q and dO per key tile).
struct AttentionWork {
  double scores = 0, key_rows_per_query_tiles = 0, query_rows_per_key_tiles = 0;
};

AttentionWork attention_work(const AttentionShape& s, const AttentionMaskArgs& mask,
                             AttentionTiles tiles) {
  AttentionWork w;
  auto visible = [&](int64_t query) {  // keys query i sees, plus one past the last
    return mask.causal ? std::min<int64_t>(s.k_len, mask.query_offset + query + 1) : s.k_len;
  };
  for (int64_t i = 0; i < s.q_len; ++i) w.scores += double(visible(i));
  for (int64_t q0 = 0; q0 < s.q_len; q0 += tiles.block_q)
    w.key_rows_per_query_tiles += double(visible(std::min(q0 + tiles.block_q, s.q_len) - 1));
  for (int64_t k0 = 0; k0 < s.k_len; k0 += tiles.block_k) {
    const int64_t first = mask.causal ? std::max<int64_t>(0, k0 - mask.query_offset) : 0;
    w.query_rows_per_key_tiles += double(std::max<int64_t>(0, s.q_len - first));
  }
  const double bh = double(s.batch * s.heads);
  w.scores *= bh;
  w.key_rows_per_query_tiles *= bh;
  w.query_rows_per_key_tiles *= bh;
  return w;
}

// Kernels needing more than the default 48 KiB of dynamic shared memory must opt in.
template <class Kernel>
void allow_shared_memory(const char* op, Kernel* kernel, size_t bytes) {
  if (bytes > 48 * 1024)
    SP_CUDA_CHECK(
        op, cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, int(bytes)));
}

}  // namespace

void CudaBackend::attention_forward(const Tensor& q, const Tensor& k, const Tensor& v,
                                    const AttentionInputBias& bias, const AttentionMask& mask,
                                    const AttentionDropout& dropout, const Tensor& out,
                                    const Tensor& lse) {
  const char* op = "attention_forward";
  const AttentionShape shape = attention_shape(op, q, k, v);
  check_input_bias(op, bias, q, k, v);
  expect_dtype(op, q.dtype(), {&k, &v, &out});
  expect_dtype(op, DType::F32, {&lse});
  expect_contiguous(op, {&out, &lse});
  if (shape.batch * shape.heads * shape.q_len == 0) return;
  activate(op);
  const AttentionMaskArgs args = attention_mask_args(op, mask);
  const AttentionDropoutArgs drop = attention_dropout_args(op, dropout, seed_shift());
  const size_t wmma_smem = size_t(attention_wmma_forward_smem_bytes(shape.head_dim));
  if (q.dtype() == DType::BF16 && tensor_core_attention() &&
      attention_wmma_supports(shape.head_dim) && wmma_smem <= max_shared_memory_) {
    const dim3 grid(unsigned((shape.q_len + kWmmaQueries - 1) / kWmmaQueries),
                    unsigned(shape.batch * shape.heads));
    allow_shared_memory(op, attention_forward_wmma_kernel<>, wmma_smem);
    SP_LAUNCH(grid, kWmmaThreads, wmma_smem, stream_, attention_forward_wmma_kernel<>)
    (const_ptr<__nv_bfloat16>(q), const_ptr<__nv_bfloat16>(k), const_ptr<__nv_bfloat16>(v),
     qkv_bias<__nv_bfloat16>(bias), shape, args, drop, mutable_ptr<__nv_bfloat16>(out),
     mutable_ptr<float>(lse));
    const AttentionWork w = attention_work(shape, args, {kWmmaQueries, kWmmaKeys});
    const double row = double(shape.head_dim) * 2.0;
    SP_CUDA_CHECK_LAUNCH(*this, op, "attention_forward_wmma_kernel",
                         io_traffic(w.scores * (4.0 * double(shape.head_dim) + 12.0), {&out, &lse},
                                    double(shape.batch * shape.heads * shape.q_len) * row +
                                        2.0 * w.key_rows_per_query_tiles * row));
    return;
  }
  const AttentionTiles tiles =
      choose_tiles(op, shape.head_dim, max_shared_memory_, attention_forward_smem_floats);
  const size_t smem = size_t(attention_forward_smem_floats(tiles, shape.head_dim)) * sizeof(float);
  const dim3 grid(unsigned((shape.q_len + tiles.block_q - 1) / tiles.block_q),
                  unsigned(shape.batch * shape.heads));
  dispatch_float(op, q, [&](auto tag) {
    using T = typename decltype(tag)::type;
    allow_shared_memory(op, attention_forward_kernel<T>, smem);
    SP_LAUNCH(grid, kAttentionThreads, smem, stream_, attention_forward_kernel<T>)
    (const_ptr<T>(q), const_ptr<T>(k), const_ptr<T>(v), qkv_bias<T>(bias), shape, args, drop, tiles,
     mutable_ptr<T>(out), mutable_ptr<float>(lse));
    const AttentionWork w = attention_work(shape, args, tiles);
    const double row = double(shape.head_dim) * sizeof(T);
    // Per score: q.k and p.v (2 D each), the online softmax and the dropout draw (~12).
    SP_CUDA_CHECK_LAUNCH(*this, op, "attention_forward_kernel",
                         io_traffic(w.scores * (4.0 * double(shape.head_dim) + 12.0), {&out, &lse},
                                    double(shape.batch * shape.heads * shape.q_len) * row +
                                        2.0 * w.key_rows_per_query_tiles * row));
  });
}

void CudaBackend::attention_backward(const Tensor& q, const Tensor& k, const Tensor& v,
                                     const AttentionInputBias& bias, const AttentionMask& mask,
                                     const AttentionDropout& dropout, const Tensor& out,
                                     const Tensor& lse, const Tensor& d_out, const Tensor& dq,
                                     const Tensor& dk, const Tensor& dv) {
  const char* op = "attention_backward";
  check_input_bias(op, bias, q, k, v);
  expect_dtype(op, q.dtype(), {&k, &v, &out, &d_out, &dq, &dk, &dv});
  expect_dtype(op, DType::F32, {&lse});
  expect_contiguous(op, {&out, &lse, &d_out});
  AttentionShape shape = attention_shape(op, q, k, v);
  auto take_grad_strides = [&](const Tensor& grad, const Tensor& input, int64_t(&strides)[3]) {
    if (!grad.defined()) return;
    SP_CHECK(grad.shape() == input.shape() && grad.stride(3) == 1, op,
             ": a gradient must have its input's shape and unit stride on D, got ", grad.describe(),
             " for ", input.describe());
    for (int a = 0; a < 3; ++a) strides[a] = grad.stride(a);
  };
  take_grad_strides(dq, q, shape.dq_stride);
  take_grad_strides(dk, k, shape.dk_stride);
  take_grad_strides(dv, v, shape.dv_stride);
  if (shape.batch * shape.heads * shape.q_len == 0 || shape.k_len == 0) return;
  if (!dq.defined() && !dk.defined() && !dv.defined()) return;
  activate(op);
  const AttentionMaskArgs args = attention_mask_args(op, mask);
  const AttentionDropoutArgs drop = attention_dropout_args(op, dropout, seed_shift());
  const int64_t bh = shape.batch * shape.heads;
  Workspace delta(*this, size_t(bh * shape.q_len) * sizeof(float));
  dispatch_float(op, q, [&](auto tag) {
    using T = typename decltype(tag)::type;
    const int delta_threads = 128;
    SP_LAUNCH(grid_for(bh * shape.q_len * 32, delta_threads), delta_threads, 0, stream_,
              attention_backward_delta_kernel<T>)
    (const_ptr<T>(out), const_ptr<T>(d_out), shape.batch, shape.q_len, shape.heads, shape.head_dim,
     delta.as<float>());
    SP_CUDA_CHECK_LAUNCH(*this, op, "attention_backward_delta_kernel",
                         io_traffic(2.0 * double(out.numel()), {&out, &d_out},
                                    double(bh * shape.q_len) * sizeof(float)));
    const double row = double(shape.head_dim) * sizeof(T);
    const double query_rows = double(bh * shape.q_len);
    const bool tensor_cores = std::is_same_v<T, __nv_bfloat16> && tensor_core_attention() &&
                              attention_wmma_supports(shape.head_dim);
    const size_t dq_wmma_smem = size_t(attention_wmma_backward_dq_smem_bytes(shape.head_dim));
    const size_t dkv_wmma_smem = size_t(attention_wmma_backward_dkv_smem_bytes(shape.head_dim));
    if (dq.defined() && tensor_cores && dq_wmma_smem <= max_shared_memory_) {
      allow_shared_memory(op, attention_backward_dq_wmma_kernel<>, dq_wmma_smem);
      const dim3 grid(unsigned((shape.q_len + kWmmaQueries - 1) / kWmmaQueries), unsigned(bh));
      SP_LAUNCH(grid, kWmmaThreads, dq_wmma_smem, stream_, attention_backward_dq_wmma_kernel<>)
      (const_ptr<__nv_bfloat16>(q), const_ptr<__nv_bfloat16>(k), const_ptr<__nv_bfloat16>(v),
       qkv_bias<__nv_bfloat16>(bias), const_ptr<__nv_bfloat16>(d_out), const_ptr<float>(lse),
       delta.as<float>(), shape, args, drop, mutable_ptr<__nv_bfloat16>(dq));
      const AttentionWork w = attention_work(shape, args, {kWmmaQueries, kWmmaKeys});
      SP_CUDA_CHECK_LAUNCH(*this, op, "attention_backward_dq_wmma_kernel",
                           KernelTraffic{w.scores * (6.0 * double(shape.head_dim) + 14.0),
                                         3.0 * query_rows * row + 2.0 * query_rows * sizeof(float) +
                                             2.0 * w.key_rows_per_query_tiles * row});
    } else if (dq.defined()) {
      const AttentionTiles tiles =
          choose_tiles(op, shape.head_dim, max_shared_memory_, attention_backward_dq_smem_floats);
      const size_t smem =
          size_t(attention_backward_dq_smem_floats(tiles, shape.head_dim)) * sizeof(float);
      allow_shared_memory(op, attention_backward_dq_kernel<T>, smem);
      const dim3 grid(unsigned((shape.q_len + tiles.block_q - 1) / tiles.block_q), unsigned(bh));
      SP_LAUNCH(grid, kAttentionThreads, smem, stream_, attention_backward_dq_kernel<T>)
      (const_ptr<T>(q), const_ptr<T>(k), const_ptr<T>(v), qkv_bias<T>(bias), const_ptr<T>(d_out),
       const_ptr<float>(lse), delta.as<float>(), shape, args, drop, tiles, mutable_ptr<T>(dq));
      // Per score: q.k, dO.v and dS k (2 D each), P, dS and the dropout draw (~14). Reads q, dO,
      // lse and delta once, K and V per query tile; writes dQ.
      const AttentionWork w = attention_work(shape, args, tiles);
      SP_CUDA_CHECK_LAUNCH(*this, op, "attention_backward_dq_kernel",
                           KernelTraffic{w.scores * (6.0 * double(shape.head_dim) + 14.0),
                                         3.0 * query_rows * row + 2.0 * query_rows * sizeof(float) +
                                             2.0 * w.key_rows_per_query_tiles * row});
    }
    if ((dk.defined() || dv.defined()) && tensor_cores && dkv_wmma_smem <= max_shared_memory_) {
      allow_shared_memory(op, attention_backward_dkv_wmma_kernel<>, dkv_wmma_smem);
      const dim3 grid(unsigned((shape.k_len + kWmmaKeys - 1) / kWmmaKeys),
                      unsigned(shape.batch * shape.kv_heads));
      SP_LAUNCH(grid, kWmmaThreads, dkv_wmma_smem, stream_, attention_backward_dkv_wmma_kernel<>)
      (const_ptr<__nv_bfloat16>(q), const_ptr<__nv_bfloat16>(k), const_ptr<__nv_bfloat16>(v),
       qkv_bias<__nv_bfloat16>(bias), const_ptr<__nv_bfloat16>(d_out), const_ptr<float>(lse),
       delta.as<float>(), shape, args, drop, mutable_ptr<__nv_bfloat16>(dk),
       mutable_ptr<__nv_bfloat16>(dv));
      const AttentionWork w = attention_work(shape, args, {kWmmaQueries, kWmmaKeys});
      const double key_rows = double(shape.batch * shape.kv_heads * shape.k_len);
      SP_CUDA_CHECK_LAUNCH(
          *this, op, "attention_backward_dkv_wmma_kernel",
          KernelTraffic{w.scores * (8.0 * double(shape.head_dim) + 14.0),
                        4.0 * key_rows * row +
                            w.query_rows_per_key_tiles * (2.0 * row + 2.0 * sizeof(float))});
    } else if (dk.defined() || dv.defined()) {
      const AttentionTiles tiles =
          choose_tiles(op, shape.head_dim, max_shared_memory_, attention_backward_dkv_smem_floats);
      const size_t smem =
          size_t(attention_backward_dkv_smem_floats(tiles, shape.head_dim)) * sizeof(float);
      allow_shared_memory(op, attention_backward_dkv_kernel<T>, smem);
      const dim3 grid(unsigned((shape.k_len + tiles.block_k - 1) / tiles.block_k),
                      unsigned(shape.batch * shape.kv_heads));
      SP_LAUNCH(grid, kAttentionThreads, smem, stream_, attention_backward_dkv_kernel<T>)
      (const_ptr<T>(q), const_ptr<T>(k), const_ptr<T>(v), qkv_bias<T>(bias), const_ptr<T>(d_out),
       const_ptr<float>(lse), delta.as<float>(), shape, args, drop, tiles, mutable_ptr<T>(dk),
       mutable_ptr<T>(dv));
      // Per score: q.k, dO.v, P dO and dS q (2 D each), P, dS and the dropout draw (~14). Reads K
      // and V once, Q, dO, lse and delta per key tile; writes dK and dV.
      const AttentionWork w = attention_work(shape, args, tiles);
      const double key_rows = double(shape.batch * shape.kv_heads * shape.k_len);
      SP_CUDA_CHECK_LAUNCH(
          *this, op, "attention_backward_dkv_kernel",
          KernelTraffic{w.scores * (8.0 * double(shape.head_dim) + 14.0),
                        4.0 * key_rows * row +
                            w.query_rows_per_key_tiles * (2.0 * row + 2.0 * sizeof(float))});
    }
  });
}

}  // namespace sp::SP_CUDA_NS
