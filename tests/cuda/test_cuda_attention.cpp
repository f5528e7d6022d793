// The fused attention kernels on the emulated device against their oracle, the materialised path
// (GEMM, masked softmax, GEMM) on the same device, and against the CPU backend: every mask kind,
// KV-cache offsets, cross-attention, strided q/k/v views, grouped-query heads, sliding windows,
// several query/key tiles, a head dimension that needs the shared-memory opt-in, bf16, dropout
// drawn inside the kernels (against the materialised path's dropout op), and no T x T buffer.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <map>
#include <string>
#include <vector>

#include "engine/allocator.h"
#include "engine/autograd.h"
#include "tests/cuda/cuda_test_util.h"

namespace sp::cuda_test {
namespace {

struct AttentionCase {
  std::string name;
  int64_t batch, q_len, k_len, heads, head_dim;
  bool causal = false;
  int64_t query_offset = 0;
  bool padding = false;      // batch 1 masks every third key
  int bias = 0;              // 0 none, 1 [H, Tq, Tk], 2 [B, H, Tq, Tk]
  bool strided = false;      // q/k/v as permuted views (non-contiguous, unit stride on D)
  bool blind_batch = false;  // batch 0 sees no key at all (rows of zeros, lse -inf)
  float scale = 0.5f;
  int64_t kv_heads = 0;         // 0: as many as query heads; fewer: grouped-query attention
  int64_t sliding_window = 0;   // Mistral's window (0: none)
  bool odd_row_stride = false;  // q/k/v rows H * D + 1 elements apart (no aligned vector loads)
};

std::vector<AttentionCase> attention_cases() {
  return {
      {"single_query_single_key", 1, 1, 1, 1, 1, false, 0, false, 0, false, false, 1.0f},
      {"causal_two_query_tiles_two_key_tiles", 2, 33, 33, 2, 8, true},
      {"bidirectional_padding_bias_per_head", 2, 17, 17, 2, 3, false, 0, true, 1},
      {"cross_attention_bias_per_batch", 2, 5, 70, 2, 4, false, 0, true, 2},
      {"kv_cache_offset", 2, 3, 40, 3, 8, true, 37},
      {"kv_cache_single_step", 1, 1, 34, 2, 16, true, 33},
      {"strided_views_causal_padding", 2, 20, 20, 2, 8, true, 0, true, 0, true},
      {"rows_without_visible_keys", 2, 6, 9, 2, 5, false, 0, false, 0, false, true},
      {"head_dim_64", 1, 18, 18, 2, 64, true},
      {"head_dim_160_needs_shared_memory_opt_in", 1, 9, 40, 1, 160, true, 31},
      {"grouped_query_4_heads_2_kv_padding", 2, 20, 20, 4, 8, true, 0, true, 0, false, false, 0.5f,
       2},
      {"multi_query_kv_cache_strided", 2, 3, 40, 3, 8, true, 37, false, 0, true, false, 0.5f, 1},
      {"sliding_window_two_key_tiles", 1, 40, 40, 2, 8, true, 0, false, 0, false, false, 0.5f, 0,
       7},
      {"grouped_query_sliding_window_kv_cache", 2, 4, 45, 4, 8, true, 41, true, 0, false, false,
       0.5f, 2, 16},
      // Three 64-query tiles of the tensor-core kernel, each over several 64-key steps.
      {"causal_padding_150_queries", 2, 150, 150, 2, 16, true, 0, true, 0, false, false, 0.25f},
      {"odd_row_stride_causal", 2, 20, 20, 2, 8, true, 0, false, 0, false, false, 0.5f, 0, 0, true},
  };
}

struct Inputs {
  Tensor q, k, v;  // host, contiguous [B, T, H, D]
  AttentionMask mask;
};

// With dtype BF16 the data are bf16-representable, so the fp32 CPU reference sees exactly what
// the device computes on (attention amplifies input perturbations through exp of the scores:
// that is the data's sensitivity, not the kernel's error).
Inputs make_inputs(const AttentionCase& c, DType dtype = DType::F32) {
  Inputs in;
  in.q = data({c.batch, c.q_len, c.heads, c.head_dim}, 1, dtype);
  const int64_t kv_heads = c.kv_heads > 0 ? c.kv_heads : c.heads;
  in.k = data({c.batch, c.k_len, kv_heads, c.head_dim}, 2, dtype);
  in.v = data({c.batch, c.k_len, kv_heads, c.head_dim}, 3, dtype);
  in.mask.sliding_window = c.sliding_window;
  in.mask.scale = c.scale;
  in.mask.causal = c.causal;
  in.mask.query_offset = c.query_offset;
  if (c.padding || c.blind_batch) {
    std::vector<float> keep(size_t(c.batch * c.k_len), 1.0f);
    for (int64_t j = 0; j < c.k_len; ++j) {
      if (c.padding && c.batch > 1 && j % 3 == 1) keep[size_t(c.k_len + j)] = 0.0f;
      if (c.blind_batch) keep[size_t(j)] = 0.0f;
    }
    in.mask.key_padding = Tensor::from_floats(keep, {c.batch, c.k_len});
  }
  if (c.bias == 1) in.mask.bias = data({c.heads, c.q_len, c.k_len}, 4);
  if (c.bias == 2) in.mask.bias = data({c.batch, c.heads, c.q_len, c.k_len}, 5);
  return in;
}

struct Result {
  Tensor out, dq, dk, dv;
};

// Moves a [B, T, H, D] host tensor to `device` in `dtype`, as a permuted view of [B, H, T, D]
// storage when strided (so only D has unit stride).
Tensor place(const Tensor& host, Device device, DType dtype, bool strided, bool odd_row_stride) {
  Tensor t = host.to(device);
  if (t.dtype() != dtype) t = t.to(dtype);
  if (odd_row_stride) {
    // Rows of H * D + 1 elements, starting one element in: no row is 16-byte aligned.
    const int64_t B = t.size(0), T = t.size(1), H = t.size(2), D = t.size(3);
    Tensor rows = Tensor::zeros({B, T, H * D + 1}, dtype, device);
    Tensor view = rows.slice(2, 1, H * D + 1).view({B, T, H, D});
    backend_for(device).copy(t, view);
    return view.detach();
  }
  if (!strided) return t.detach();
  return t.permute({0, 2, 1, 3}).contiguous().permute({0, 2, 1, 3}).detach();
}

template <class AttentionFn>
Result run(const AttentionCase& c, const Inputs& in, Device device, DType dtype, AttentionFn fn) {
  Tensor q = place(in.q, device, dtype, c.strided, c.odd_row_stride).set_requires_grad(true);
  Tensor k = place(in.k, device, dtype, c.strided, c.odd_row_stride).set_requires_grad(true);
  Tensor v = place(in.v, device, dtype, c.strided, c.odd_row_stride).set_requires_grad(true);
  AttentionMask mask = in.mask;
  if (mask.key_padding.defined()) mask.key_padding = mask.key_padding.to(device);
  if (mask.bias.defined()) mask.bias = mask.bias.to(device);
  Tensor out = fn(q, k, v, mask);
  // bf16-representable weights: the bf16 run's upstream gradient is exactly the fp32 one.
  Tensor weights = data(out.shape(), 9, DType::BF16).to(device).to(out.dtype());
  sum_all(mul(out, weights)).backward();
  return {out.detach(), q.grad(), k.grad(), v.grad()};
}

Tensor fused(const Tensor& q, const Tensor& k, const Tensor& v, const AttentionMask& mask) {
  return attention(q, k, v, mask);
}
Tensor materialised(const Tensor& q, const Tensor& k, const Tensor& v, const AttentionMask& mask) {
  return attention_materialized(q, k, v, mask);
}

// GPT-2's attn_pdrop at a large rate (so that many probabilities drop), an offset that starts
// mid-Philox-block, a seed with both words set.
const AttentionDropout kDropout{0.3f, 0x1234567887654321ull, 4099};
Tensor fused_dropout(const Tensor& q, const Tensor& k, const Tensor& v, const AttentionMask& mask) {
  return attention(q, k, v, mask, kDropout);
}
Tensor materialised_dropout(const Tensor& q, const Tensor& k, const Tensor& v,
                            const AttentionMask& mask) {
  return attention_materialized(q, k, v, mask, kDropout);
}

void expect_results_close(const Result& want, const Result& got, float atol, float rtol,
                          const std::string& what) {
  EXPECT_TRUE(all_close(want.out, got.out, atol, rtol)) << what << ": out";
  EXPECT_TRUE(all_close(want.dq, got.dq, atol, rtol)) << what << ": dq";
  EXPECT_TRUE(all_close(want.dk, got.dk, atol, rtol)) << what << ": dk";
  EXPECT_TRUE(all_close(want.dv, got.dv, atol, rtol)) << what << ": dv";
}

class CudaAttention : public ::testing::TestWithParam<AttentionCase> {};

INSTANTIATE_TEST_SUITE_P(Cases, CudaAttention, ::testing::ValuesIn(attention_cases()),
                         [](const ::testing::TestParamInfo<AttentionCase>& info) {
                           return info.param.name;
                         });

// fp32: both paths sum the same products in different orders (online vs two-pass softmax,
// tiled dot products vs BLAS), a few ulps of O(1) values; 2e-5 + 1e-4 relative bounds that.
TEST_P(CudaAttention, FusedMatchesMaterialisedOnTheDevice) {
  const AttentionCase& c = GetParam();
  Inputs in = make_inputs(c);
  Result oracle = run(c, in, kernel_device(), DType::F32, materialised);
  Result got = run(c, in, kernel_device(), DType::F32, fused);
  expect_results_close(oracle, got, 2e-5f, 1e-4f, c.name);
}

TEST_P(CudaAttention, FusedMatchesCpu) {
  const AttentionCase& c = GetParam();
  Inputs in = make_inputs(c);
  Result cpu_result = run(c, in, Device::cpu(), DType::F32, fused);
  Result got = run(c, in, kernel_device(), DType::F32, fused);
  expect_results_close(cpu_result, got, 2e-5f, 1e-4f, c.name);
}

// Dropout: the kernels must draw, for every probability, the element the dropout op draws on the
// materialised [B, H, Tq, Tk] tensor; one differing draw moves an output by a whole p * v / (1 - p)
// term, far outside the fp32 reordering bound used without dropout.
TEST_P(CudaAttention, FusedDropoutMatchesMaterialisedDropoutOnTheDevice) {
  const AttentionCase& c = GetParam();
  Inputs in = make_inputs(c);
  Result oracle = run(c, in, kernel_device(), DType::F32, materialised_dropout);
  Result got = run(c, in, kernel_device(), DType::F32, fused_dropout);
  expect_results_close(oracle, got, 2e-5f, 1e-4f, c.name);
  // And dropout does change the result (a mask that never fires would pass the above).
  if (c.q_len * c.k_len >= 16) {
    EXPECT_FALSE(
        all_close(run(c, in, kernel_device(), DType::F32, fused).out, got.out, 1e-3f, 1e-3f))
        << c.name;
  }
}

TEST_P(CudaAttention, FusedDropoutMatchesMaterialisedDropoutOnTheCpu) {
  const AttentionCase& c = GetParam();
  Inputs in = make_inputs(c);
  Result oracle = run(c, in, Device::cpu(), DType::F32, materialised_dropout);
  Result got = run(c, in, Device::cpu(), DType::F32, fused_dropout);
  expect_results_close(oracle, got, 2e-5f, 1e-4f, c.name);
}

TEST_P(CudaAttention, FusedDropoutMatchesCpu) {
  const AttentionCase& c = GetParam();
  Inputs in = make_inputs(c);
  Result cpu_result = run(c, in, Device::cpu(), DType::F32, fused_dropout);
  Result got = run(c, in, kernel_device(), DType::F32, fused_dropout);
  expect_results_close(cpu_result, got, 2e-5f, 1e-4f, c.name);
}

// bf16 storage, fp32 math inside the kernel, on bf16-representable data: outputs round once to
// 8 significant bits (2^-9 relative), so 3e-2 absolute + 3e-2 relative of the fp32 CPU result
// for O(1) values. The backward also re-reads the rounded output in delta = dO . O, a sum of D
// products whose absolute error grows like sqrt(D) 2^-9 |dO| |O| and enters dS = P (dP - delta)
// after a cancellation, so the gradient allowance scales with sqrt(D / 16) (FlashAttention has
// the same property: it too computes delta from the stored low-precision output).
TEST_P(CudaAttention, Bf16StaysCloseToFp32Cpu) {
  const AttentionCase& c = GetParam();
  Inputs in = make_inputs(c, DType::BF16);
  Result cpu_result = run(c, in, Device::cpu(), DType::F32, fused);
  Result got = run(c, in, kernel_device(), DType::BF16, fused);
  EXPECT_TRUE(all_close(cpu_result.out, got.out, 3e-2f, 3e-2f)) << c.name << ": out";
  const float grad_tol = 3e-2f * std::sqrt(std::max(1.0f, float(c.head_dim) / 16.0f));
  EXPECT_TRUE(all_close(cpu_result.dq, got.dq, grad_tol, 3e-2f)) << c.name << ": dq";
  EXPECT_TRUE(all_close(cpu_result.dk, got.dk, grad_tol, 3e-2f)) << c.name << ": dk";
  EXPECT_TRUE(all_close(cpu_result.dv, got.dv, grad_tol, 3e-2f)) << c.name << ": dv";
}

// The tensor-core kernels (kernels/attention_wmma.cuh) take bf16 with head dimensions that are
// whole 16-wide tiles: every case again with its head dimension widened to 16, 64 or 128, with
// and without dropout, forward and backward, against the fp32 CPU and against the scalar bf16
// kernels. The wmma kernels round P (and, backward, dS) to bf16 before their products, as
// FlashAttention-2 does: another 2^-9 relative rounding of each term, inside the bf16 allowance
// of Bf16StaysCloseToFp32Cpu.
TEST_P(CudaAttention, TensorCoreKernelsStayCloseToFp32CpuAndTheScalarKernels) {
  AttentionCase c = GetParam();
  c.head_dim = c.head_dim <= 16 ? 16 : c.head_dim <= 64 ? 64 : 128;
  Inputs in = make_inputs(c, DType::BF16);
  Backend& backend = kernel_backend();
  // The switch to the scalar kernels is the emulated backend's (a GPU compares with the CPU).
  cuda_emu::CudaBackend* emulated = kernel_device_is_emulated() ? &emu_backend() : nullptr;
  for (auto fn : {fused, fused_dropout}) {
    // Dropout scales the kept probabilities, hence O and the rounding error of the bf16 O that
    // the backward's delta = dO . O reads, by 1 / (1 - p).
    const float grad_tol = 3e-2f * std::sqrt(std::max(1.0f, float(c.head_dim) / 16.0f)) /
                           (fn == fused ? 1.0f : 1.0f - kDropout.p);
    Result cpu_result = run(c, in, Device::cpu(), DType::F32, fn);
    backend.reset_stats();
    std::vector<std::pair<const char*, Result>> results;
    results.emplace_back("tensor cores", run(c, in, kernel_device(), DType::BF16, fn));
    for (const char* kernel : {"attention_forward_wmma_kernel", "attention_backward_dq_wmma_kernel",
                               "attention_backward_dkv_wmma_kernel"})
      EXPECT_EQ(backend.stats().launches_by_kernel.count(kernel), 1u) << kernel;
    if (emulated != nullptr) {
      emulated->set_tensor_core_attention(false);
      results.emplace_back("scalar", run(c, in, kernel_device(), DType::BF16, fn));
      emulated->set_tensor_core_attention(true);
    }
    for (const auto& [which, got] : results) {
      EXPECT_TRUE(all_close(cpu_result.out, got.out, 3e-2f, 3e-2f)) << c.name << " " << which;
      EXPECT_TRUE(all_close(cpu_result.dq, got.dq, grad_tol, 3e-2f)) << c.name << " " << which;
      EXPECT_TRUE(all_close(cpu_result.dk, got.dk, grad_tol, 3e-2f)) << c.name << " " << which;
      EXPECT_TRUE(all_close(cpu_result.dv, got.dv, grad_tol, 3e-2f)) << c.name << " " << which;
    }
  }
}

// GPT-2's packed projection: attention_packed writes dq, dk and dv into one gradient buffer
// through strided views; it must equal attention() on the three slices (whose gradients autograd
// assembles by copies), on both backends.
TEST(CudaAttentionPacked, MatchesAttentionOnTheSlicesOfQkv) {
  const int64_t B = 2, T = 21, H = 3, D = 8;
  const Tensor host = data({B, T, 3 * H * D}, 11);
  AttentionMask mask;
  mask.scale = 0.35f;
  mask.causal = true;
  for (Device device : {Device::cpu(), kernel_device()}) {
    auto grad_of = [&](bool packed) {
      Tensor qkv = host.to(device).detach().set_requires_grad(true);
      Tensor out;
      if (packed) {
        out = attention_packed(qkv, H, mask, kDropout);
      } else {
        auto part = [&](int64_t i) {
          return qkv.slice(2, i * H * D, (i + 1) * H * D).view({B, T, H, D});
        };
        out = attention(part(0), part(1), part(2), mask, kDropout);
      }
      sum_all(mul(out, data(out.shape(), 9).to(device))).backward();
      return std::make_pair(out.detach(), qkv.grad());
    };
    auto [want_out, want_grad] = grad_of(false);
    auto [got_out, got_grad] = grad_of(true);
    // The same kernels on the same data: only where dq/dk/dv land differs.
    EXPECT_TRUE(all_close(want_out, got_out, 0.0f, 0.0f)) << device.str();
    EXPECT_TRUE(all_close(want_grad, got_grad, 0.0f, 0.0f)) << device.str();
  }
}

// GPT-2's qkv bias folded into attention: attention_packed(qkv, ..., bias) must be
// attention_packed(add(qkv, bias)) bit for bit (output, qkv's gradient and the bias's) on the CPU
// and on the device in fp32 and bf16: the kernels round each biased element to the input dtype
// as the add does. D = 8 takes the scalar kernels; D = 16 in bf16 the tensor-core ones. Causal
// with padding, dropout, 70 queries (two tensor-core tiles, five scalar ones).
TEST(CudaAttentionPacked, TheFoldedQkvBiasIsTheAddItReplaces) {
  const int64_t B = 2, T = 70, H = 2;
  std::vector<float> keep(size_t(B * T), 1.0f);
  for (int64_t j = T - 5; j < T; ++j) keep[size_t(T + j)] = 0.0f;  // batch 1's last 5 keys
  Backend& device_backend = kernel_backend();
  for (int64_t D : {8, 16}) {
    const Tensor host = data({B, T, 3 * H * D}, 21), host_bias = data({3 * H * D}, 22);
    for (Device device : {Device::cpu(), kernel_device()})
      for (DType dtype : {DType::F32, DType::BF16}) {
        if (device.is_cpu() && dtype == DType::BF16) continue;
        AttentionMask mask;
        mask.scale = 0.3f;
        mask.causal = true;
        mask.key_padding = Tensor::from_floats(keep, {B, T}).to(device);
        const std::string where =
            device.str() + " " + dtype_name(dtype) + " D=" + std::to_string(D);
        std::map<std::string, uint64_t, std::less<>> launched;  // by the folded forward
        auto run = [&](bool folded) {
          Tensor qkv = host.to(device).to(dtype).detach().set_requires_grad(true);
          Tensor bias = host_bias.to(device).to(dtype).detach().set_requires_grad(true);
          Tensor out;
          if (folded) {
            device_backend.reset_stats();
            out = attention_packed(qkv, H, mask, kDropout, bias);
            launched = device_backend.stats().launches_by_kernel;
          } else {
            out = attention_packed(add(qkv, bias), H, mask, kDropout);
          }
          sum_all(mul(out, data(out.shape(), 9).to(device).to(dtype))).backward();
          return std::vector<Tensor>{out.detach(), qkv.grad(), bias.grad()};
        };
        const std::vector<Tensor> want = run(false);
        const std::vector<Tensor> got = run(true);
        const char* names[] = {"out", "d_qkv", "d_bias"};
        for (size_t i = 0; i < want.size(); ++i)
          EXPECT_TRUE(bitwise_equal(want[i], got[i])) << where << " " << names[i];
        if (device == kernel_device()) {
          const bool tensor_cores = dtype == DType::BF16 && D == 16;
          EXPECT_EQ(launched.count("attention_forward_wmma_kernel"), tensor_cores ? 1u : 0u)
              << where;
          // The add is the kernels' now: no elementwise pass over qkv.
          EXPECT_EQ(
              launched.count("binary_contiguous_kernel") + launched.count("binary_strided_kernel"),
              0u)
              << where;
        }
      }
  }
}

// A NaN key makes every output row (and query gradient) that sees it NaN, as torch's softmax does,
// on every path: fused and materialised, CPU and device, with and without dropout. (The fused
// kernel used to test probabilities with "> 0", which dropped a NaN score from its row, so a
// diverged prompt gave a finite loss on the GPU and a NaN one on the CPU.)
TEST(CudaAttentionNaN, ANaNKeyPoisonsExactlyTheRowsThatSeeIt) {
  const int64_t T = 40, H = 2, D = 8, poisoned_key = 5;  // 40: two key tiles
  Inputs in = make_inputs({"nan", 1, T, T, H, D, true});
  std::vector<float> k = in.k.to_floats();
  k[size_t((poisoned_key * H + 0) * D)] = NAN;  // head 0 only
  in.k = Tensor::from_floats(k, in.k.shape());
  const AttentionCase c{"nan", 1, T, T, H, D, true};
  for (Device device : {Device::cpu(), kernel_device()})
    for (auto fn : {fused, materialised, fused_dropout, materialised_dropout}) {
      Result r = run(c, in, device, DType::F32, fn);
      const std::vector<float> out = r.out.to_floats(), dq = r.dq.to_floats();
      for (int64_t i = 0; i < T; ++i)
        for (int64_t h = 0; h < H; ++h) {
          // Causal: query i sees keys 0..i.
          const bool sees_nan = h == 0 && i >= poisoned_key;
          for (int64_t x = 0; x < D; ++x) {
            const size_t e = size_t((i * H + h) * D + x);
            ASSERT_EQ(std::isnan(out[e]), sees_nan) << device.str() << " out " << i << " " << h;
            // Rows that do not see the key may be NaN too: dQ = dS K multiplies the NaN key by
            // their zero (masked) dS entries wherever a path does not skip masked tiles.
            if (sees_nan) {
              ASSERT_TRUE(std::isnan(dq[e])) << device.str() << " dq " << i;
            }
          }
        }
    }
}

TEST(CudaAttentionMemory, FusedForwardNeverHoldsTheScoreMatrix) {
  const int64_t T = 256, D = 4;
  Tensor q = data({1, T, 1, D}, 1).to(kernel_device());
  Tensor k = data({1, T, 1, D}, 2).to(kernel_device());
  Tensor v = data({1, T, 1, D}, 3).to(kernel_device());
  AttentionMask mask;
  mask.causal = true;
  NoGradGuard no_grad;
  Allocator& allocator = kernel_backend().allocator();
  const size_t before = allocator.stats().bytes_in_use;
  allocator.reset_peak();
  Tensor out = attention(q, k, v, mask);
  const size_t peak = allocator.stats().peak_bytes - before;
  // out (T * D floats) and lse (T floats); a materialised score matrix alone is T * T floats.
  EXPECT_LE(peak, size_t(T * (D + 1)) * sizeof(float));
  EXPECT_LT(peak, size_t(T * T) * sizeof(float) / 10);
  EXPECT_TRUE(
      all_close(attention(q.to(Device::cpu()), k.to(Device::cpu()), v.to(Device::cpu()), mask), out,
                2e-5f, 1e-4f));
}

}  // namespace
}  // namespace sp::cuda_test
