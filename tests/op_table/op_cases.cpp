// Every op case of the engine, in one table (see op_cases.h for how the modes use it).
#include "tests/op_table/op_cases.h"

#include <cmath>

#include "engine/ops/ops.h"

namespace sp::testing {

Tensor random_tensor(const Shape& shape, uint64_t seed, float std) {
  return randn(shape, seed, 0, 0.0f, std);
}

Tensor random_away_from_zero(const Shape& shape, uint64_t seed, float margin) {
  std::vector<float> values = randn(shape, seed).to_floats();
  for (float& v : values) v = v >= 0 ? v + margin : v - margin;
  return Tensor::from_floats(values, shape);
}

Tensor random_ids(const Shape& shape, int64_t vocab, uint64_t seed) {
  Generator gen(seed);
  std::vector<int64_t> ids(static_cast<size_t>(shape_numel(shape)));
  for (auto& id : ids) id = gen.uniform_int(vocab);
  return Tensor::from_ints(ids, shape);
}

namespace {

bool perf(CaseSize s) {
  return s == CaseSize::kPerf;
}

// A key padding mask [B, Tk] with the last `pad` keys of row b masked for odd b.
Tensor padding_mask(int64_t B, int64_t Tk, int64_t pad) {
  std::vector<float> keep(size_t(B * Tk), 1.0f);
  for (int64_t b = 1; b < B; b += 2)
    for (int64_t j = Tk - pad; j < Tk; ++j) keep[size_t(b * Tk + j)] = 0.0f;
  return Tensor::from_floats(keep, {B, Tk});
}

std::vector<OpCase> build_cases() {
  std::vector<OpCase> cases;
  auto add_case = [&](OpCase c) { cases.push_back(std::move(c)); };

  // ---- elementwise with broadcasting and non-contiguous views ----
  add_case({"add/broadcast_row",
            [](CaseSize s) {
              int64_t r = perf(s) ? 4096 : 5, c = perf(s) ? 768 : 7;
              return std::vector<Tensor>{random_tensor({r, c}, 1), random_tensor({c}, 2)};
            },
            {0, 1},
            [](const std::vector<Tensor>& in) { return add(in[0], in[1]); }});
  add_case({"add/broadcast_middle_axis",
            [](CaseSize) {
              return std::vector<Tensor>{random_tensor({2, 3, 4}, 3), random_tensor({2, 1, 4}, 4)};
            },
            {0, 1},
            [](const std::vector<Tensor>& in) { return add(in[0], in[1]); }});
  add_case({"sub/transposed_input",
            [](CaseSize) {
              return std::vector<Tensor>{random_tensor({4, 3}, 5), random_tensor({3, 4}, 6)};
            },
            {0, 1},
            [](const std::vector<Tensor>& in) { return sub(in[0].transpose(0, 1), in[1]); }});
  add_case({"mul/broadcast_scalar_axis",
            [](CaseSize s) {
              int64_t n = perf(s) ? 1 << 20 : 6;
              return std::vector<Tensor>{random_tensor({n, 3}, 7), random_tensor({n, 1}, 8)};
            },
            {0, 1},
            [](const std::vector<Tensor>& in) { return mul(in[0], in[1]); }});
  add_case({"affine/scale_shift",
            [](CaseSize) {
              return std::vector<Tensor>{random_tensor({3, 5}, 9)};
            },
            {0},
            [](const std::vector<Tensor>& in) { return affine(in[0], -1.5f, 0.25f); }});

  // ---- matmul / linear ----
  add_case({"matmul/plain",
            [](CaseSize s) {
              int64_t m = perf(s) ? 1024 : 5, k = perf(s) ? 768 : 7, n = perf(s) ? 2304 : 3;
              return std::vector<Tensor>{random_tensor({m, k}, 10), random_tensor({k, n}, 11)};
            },
            {0, 1},
            [](const std::vector<Tensor>& in) { return matmul(in[0], in[1]); }});
  add_case({"matmul/a_transposed_view",
            [](CaseSize) {
              return std::vector<Tensor>{random_tensor({7, 5}, 12), random_tensor({7, 3}, 13)};
            },
            {0, 1},
            [](const std::vector<Tensor>& in) { return matmul(in[0].transpose(0, 1), in[1]); }});
  add_case({"matmul/linear_layout_weight",
            [](CaseSize) {
              return std::vector<Tensor>{random_tensor({2, 4, 6}, 14), random_tensor({3, 6}, 15),
                                         random_tensor({3}, 16)};
            },
            {0, 1, 2},
            [](const std::vector<Tensor>& in) {
              return linear(in[0], in[1], in[2], WeightLayout::kOutIn);
            }});
  add_case({"matmul/conv1d_layout_weight",
            [](CaseSize) {
              return std::vector<Tensor>{random_tensor({2, 4, 6}, 17), random_tensor({6, 3}, 18),
                                         random_tensor({3}, 19)};
            },
            {0, 1, 2},
            [](const std::vector<Tensor>& in) {
              return linear(in[0], in[1], in[2], WeightLayout::kInOut);
            }});
  add_case({"matmul/batched_both",
            [](CaseSize) {
              return std::vector<Tensor>{random_tensor({2, 3, 5, 4}, 20),
                                         random_tensor({2, 3, 4, 2}, 21)};
            },
            {0, 1},
            [](const std::vector<Tensor>& in) { return matmul(in[0], in[1]); }});
  add_case(
      {"matmul/batched_noncontiguous",
       [](CaseSize) {
         return std::vector<Tensor>{random_tensor({5, 2, 4}, 22), random_tensor({2, 3, 4}, 23)};
       },
       {0, 1},
       [](const std::vector<Tensor>& in) {
         // [2, 5, 4] from a permuted [5, 2, 4]: batch stride 4, row stride 8.
         return matmul(in[0].permute({1, 0, 2}), in[1].transpose(1, 2));
       }});

  // ---- gathers, concat, views, reductions ----
  add_case({"embedding/lookup",
            [](CaseSize s) {
              int64_t v = perf(s) ? 50257 : 11, d = perf(s) ? 768 : 4;
              return std::vector<Tensor>{random_tensor({v, d}, 24),
                                         random_ids({2, perf(s) ? 1024 : 5}, v, 25)};
            },
            {0},
            [](const std::vector<Tensor>& in) { return embedding(in[0], in[1]); }});
  add_case({"index_select/rows",
            [](CaseSize) {
              return std::vector<Tensor>{random_tensor({6, 2, 3}, 26),
                                         Tensor::from_ints({4, 0, 4, 5}, {4})};
            },
            {0},
            [](const std::vector<Tensor>& in) { return index_select(in[0], in[1]); }});
  add_case(
      {"concat/axis1",
       [](CaseSize) {
         return std::vector<Tensor>{random_tensor({2, 3, 4}, 27), random_tensor({2, 2, 4}, 28)};
       },
       {0, 1},
       [](const std::vector<Tensor>& in) {
         return concat({in[0], in[1]}, 1);
       }});
  add_case({"slice/middle_and_select",
            [](CaseSize) {
              return std::vector<Tensor>{random_tensor({3, 6, 2}, 29)};
            },
            {0},
            [](const std::vector<Tensor>& in) {
              return mul(in[0].slice(1, 1, 5), in[0].select(1, 0).unsqueeze(1));
            }});
  add_case({"view/permute_reshape_expand",
            [](CaseSize) {
              return std::vector<Tensor>{random_tensor({2, 3, 1}, 30)};
            },
            {0},
            [](const std::vector<Tensor>& in) {
              return in[0]
                  .permute({2, 0, 1})
                  .reshape({2, 3})
                  .unsqueeze(0)
                  .expand({4, 2, 3})
                  .contiguous();
            }});
  add_case({"sum/axes_keepdim",
            [](CaseSize) {
              return std::vector<Tensor>{random_tensor({2, 3, 4}, 31)};
            },
            {0},
            [](const std::vector<Tensor>& in) {
              return sum(in[0], {0, 2}, true);
            }});
  add_case({"mean/last_axis",
            [](CaseSize) {
              return std::vector<Tensor>{random_tensor({3, 5}, 32)};
            },
            {0},
            [](const std::vector<Tensor>& in) { return mean(in[0], {-1}); }});
  add_case({"sum/all",
            [](CaseSize) {
              return std::vector<Tensor>{random_tensor({4, 3}, 33)};
            },
            {0},
            [](const std::vector<Tensor>& in) { return sum_all(in[0].transpose(0, 1)); }});

  // ---- feed_forward (frozen weights: one node, the GELU in the GEMM epilogue on CUDA) ----
  // Inner widths that are multiples of 8 take cuBLASLt's epilogue under cuda-emu; 7 cannot (the
  // saved GELU input's row stride) and runs GEMM + activation kernels inside the same node. bf16
  // would cast only x (the weights are not differentiable), a mixed-dtype composition: the bf16
  // epilogue is CudaGemmEpilogues' to test.
  const auto feed_forward_inputs = [](int64_t rows, int64_t d, int64_t inner, uint64_t seed) {
    return std::vector<Tensor>{
        random_tensor({2, rows, d}, seed), random_tensor({d, inner}, seed + 1, 0.3f),
        random_tensor({inner}, seed + 2, 0.5f), random_tensor({inner, d}, seed + 3, 0.3f)};
  };
  // fp32 only; every input but x frozen, as in prompt tuning.
  const auto add_feed_forward_case = [&](std::string name, auto make, Activation act,
                                         float fd_step) {
    add_case({std::move(name),
              make,
              {0},
              [act](const std::vector<Tensor>& in) {
                return feed_forward(in[0], in[1], in[2], act, in[3]);
              },
              1e-5f,
              1e-4f,
              fd_step,
              2e-2f,
              false});
  };
  add_feed_forward_case(
      "feed_forward/gelu_tanh_bias",
      [feed_forward_inputs](CaseSize s) {
        return perf(s) ? feed_forward_inputs(2048, 768, 3072, 140)
                       : feed_forward_inputs(3, 8, 16, 140);
      },
      Activation::kGeluTanh, 1e-2f);
  add_feed_forward_case(
      "feed_forward/gelu_tanh_odd_inner",
      [feed_forward_inputs](CaseSize) { return feed_forward_inputs(3, 8, 7, 144); },
      Activation::kGeluTanh, 1e-2f);
  // nn.Linear-layout ([out, in]) weights passed as transposed views, no bias: the epilogue
  // without BIAS and with both GEMMs' operands transposed.
  add_case({"feed_forward/gelu_tanh_linear_layout_no_bias",
            [feed_forward_inputs](CaseSize) {
              std::vector<Tensor> in = feed_forward_inputs(3, 8, 16, 148);
              return std::vector<Tensor>{in[0], in[1].transpose(0, 1).contiguous(),
                                         in[3].transpose(0, 1).contiguous()};
            },
            {0},
            [](const std::vector<Tensor>& in) {
              return feed_forward(in[0], in[1].transpose(0, 1), Tensor(), Activation::kGeluTanh,
                                  in[2].transpose(0, 1));
            },
            1e-5f,
            1e-4f,
            1e-2f,
            2e-2f,
            false});
  // x a slice along the sequence: its rows are not evenly spaced, so the GEMMs are batched, which
  // the CUDA backend declines to fuse; the node's unfused path runs them.
  add_case({"feed_forward/gelu_tanh_rows_not_evenly_spaced",
            [feed_forward_inputs](CaseSize) { return feed_forward_inputs(5, 8, 16, 160); },
            {0},
            [](const std::vector<Tensor>& in) {
              return feed_forward(in[0].slice(1, 1, 4), in[1], in[2], Activation::kGeluTanh, in[3]);
            },
            1e-5f,
            1e-4f,
            1e-2f,
            2e-2f,
            false});
  add_feed_forward_case(
      "feed_forward/relu",
      [feed_forward_inputs](CaseSize) { return feed_forward_inputs(3, 8, 16, 152); },
      Activation::kRelu, 1e-3f);
  // Trainable weights: the composed ops, whose gradients reach every input.
  add_case({"feed_forward/trainable_weights",
            [feed_forward_inputs](CaseSize) { return feed_forward_inputs(2, 4, 8, 156); },
            {0, 1, 2, 3},
            [](const std::vector<Tensor>& in) {
              return feed_forward(in[0], in[1], in[2], Activation::kGeluTanh, in[3]);
            },
            1e-5f,
            1e-4f,
            1e-2f,
            2e-2f,
            false});

  // ---- normalisation ----
  add_case({"layernorm/rows",
            [](CaseSize s) {
              int64_t r = perf(s) ? 4096 : 4, c = perf(s) ? 768 : 33;
              return std::vector<Tensor>{random_tensor({r, c}, 34, 2.0f),
                                         affine(random_tensor({c}, 35, 0.3f), 1.0f, 1.0f),
                                         random_tensor({c}, 36, 0.3f)};
            },
            {0, 1, 2},
            [](const std::vector<Tensor>& in) { return layernorm(in[0], in[1], in[2], 1e-5f); }});
  add_case({"layernorm/wide_odd",
            [](CaseSize) {
              return std::vector<Tensor>{random_tensor({2, 769}, 37), random_tensor({769}, 38),
                                         random_tensor({769}, 39)};
            },
            {0, 1, 2},
            [](const std::vector<Tensor>& in) { return layernorm(in[0], in[1], in[2], 1e-5f); },
            1e-5f,
            1e-4f,
            0.0f});  // 1.5k inputs: forward/backend check only, FD too slow
  add_case({"rms_norm/rows",
            [](CaseSize s) {
              int64_t r = perf(s) ? 4096 : 3, c = perf(s) ? 512 : 31;
              return std::vector<Tensor>{random_tensor({r, c}, 40, 2.0f),
                                         affine(random_tensor({c}, 41, 0.3f), 1.0f, 1.0f)};
            },
            {0, 1},
            [](const std::vector<Tensor>& in) { return rms_norm(in[0], in[1], 1e-6f); }});

  // ---- activations ----
  add_case({"activation/gelu_tanh",
            [](CaseSize s) {
              return std::vector<Tensor>{
                  random_tensor({perf(s) ? 4096 : 3, perf(s) ? 3072 : 7}, 42, 2.0f)};
            },
            {0},
            [](const std::vector<Tensor>& in) { return gelu_tanh(in[0]); }});
  add_case({"activation/gelu_tanh_with_bias",
            [](CaseSize s) {
              const int64_t cols = perf(s) ? 3072 : 7;
              return std::vector<Tensor>{random_tensor({perf(s) ? 4096 : 3, cols}, 45, 2.0f),
                                         random_tensor({cols}, 46)};
            },
            {0, 1},
            [](const std::vector<Tensor>& in) {
              return activation(in[0], Activation::kGeluTanh, in[1]);
            }});
  add_case({"activation/gelu_erf",
            [](CaseSize) {
              return std::vector<Tensor>{random_tensor({3, 7}, 43, 2.0f)};
            },
            {0},
            [](const std::vector<Tensor>& in) { return gelu_erf(in[0]); }});
  add_case({"activation/relu",
            [](CaseSize) {
              return std::vector<Tensor>{random_away_from_zero({3, 7}, 44)};
            },
            {0},
            [](const std::vector<Tensor>& in) { return relu(in[0]); }});
  add_case({"activation/silu",
            [](CaseSize) {
              return std::vector<Tensor>{random_tensor({3, 7}, 93, 3.0f)};
            },
            {0},
            [](const std::vector<Tensor>& in) { return activation(in[0], Activation::kSilu); }});
  add_case(
      {"activation/gated_silu_swiglu",
       [](CaseSize) {
         return std::vector<Tensor>{random_tensor({4, 5}, 94, 2.0f), random_tensor({4, 5}, 95)};
       },
       {0, 1},
       [](const std::vector<Tensor>& in) {
         return gated_activation(in[0], in[1], Activation::kSilu);
       }});
  add_case(
      {"activation/gated_gelu",
       [](CaseSize) {
         return std::vector<Tensor>{random_tensor({4, 5}, 45, 2.0f), random_tensor({4, 5}, 46)};
       },
       {0, 1},
       [](const std::vector<Tensor>& in) {
         return gated_activation(in[0], in[1], Activation::kGeluTanh);
       }});

  // One [rows, 2 * width] projection, gate then up: width 5 loads element by element, width 16
  // in whole packs (4 fp32, 8 bf16), from the two halves' row-strided views.
  add_case({"gated_activation_packed/swiglu_odd_width",
            [](CaseSize s) {
              return std::vector<Tensor>{random_tensor(
                  {perf(s) ? 8 : 2, perf(s) ? 148 : 3, perf(s) ? 2 * 3001 : 10}, 99, 2.0f)};
            },
            {0},
            [](const std::vector<Tensor>& in) {
              return gated_activation_packed(in[0], Activation::kSilu);
            }});
  add_case({"gated_activation_packed/gelu_whole_packs",
            [](CaseSize) {
              return std::vector<Tensor>{random_tensor({3, 32}, 100, 2.0f)};
            },
            {0},
            [](const std::vector<Tensor>& in) {
              return gated_activation_packed(in[0], Activation::kGeluTanh);
            }});

  add_case({"rotary_embedding/llama_rotate_half",
            [](CaseSize s) {
              const int64_t B = perf(s) ? 8 : 2, T = perf(s) ? 148 : 3, H = perf(s) ? 12 : 2,
                            D = perf(s) ? 64 : 6;
              // Angles of real positions: cos^2 + sin^2 = 1, as the model computes them.
              Tensor angle = random_tensor({B, T, D / 2}, 96, 3.0f);
              std::vector<float> a = angle.to_floats(), c(a.size()), si(a.size());
              for (size_t i = 0; i < a.size(); ++i) c[i] = std::cos(a[i]), si[i] = std::sin(a[i]);
              return std::vector<Tensor>{random_tensor({B, T, H, D}, 97),
                                         Tensor::from_floats(c, angle.shape()),
                                         Tensor::from_floats(si, angle.shape())};
            },
            {0},
            [](const std::vector<Tensor>& in) { return rotary_embedding(in[0], in[1], in[2]); }});

  // ---- softmax and attention ----
  add_case({"masked_softmax/causal_padding_bias",
            [](CaseSize) {
              return std::vector<Tensor>{random_tensor({2, 2, 4, 5}, 47, 2.0f),
                                         random_tensor({2, 4, 5}, 48), padding_mask(2, 5, 2)};
            },
            {0},
            [](const std::vector<Tensor>& in) {
              AttentionMask mask;
              mask.scale = 0.5f;
              mask.causal = true;
              mask.query_offset = 1;
              mask.bias = in[1];
              mask.key_padding = in[2];
              return masked_softmax(in[0], mask);
            }});
  add_case({"attention/causal_packed_qkv",
            [](CaseSize s) {
              int64_t B = perf(s) ? 8 : 2, T = perf(s) ? 148 : 5, H = perf(s) ? 12 : 2,
                      D = perf(s) ? 64 : 3;
              return std::vector<Tensor>{random_tensor({B, T, 3 * H * D}, 49)};
            },
            {0},
            [](const std::vector<Tensor>& in) {
              const Tensor& qkv = in[0];
              int64_t B = qkv.size(0), T = qkv.size(1), HD = qkv.size(2) / 3;
              int64_t H = HD >= 768 ? 12 : 2, D = HD / H;
              Tensor q = qkv.slice(2, 0, HD).view({B, T, H, D});
              Tensor k = qkv.slice(2, HD, 2 * HD).view({B, T, H, D});
              Tensor v = qkv.slice(2, 2 * HD, 3 * HD).view({B, T, H, D});
              AttentionMask mask;
              mask.scale = 1.0f / std::sqrt(float(D));
              mask.causal = true;
              return attention(q, k, v, mask);
            }});
  add_case(
      {"attention_packed/causal_dropout_padding",
       [](CaseSize s) {
         int64_t B = perf(s) ? 8 : 2, T = perf(s) ? 148 : 5, H = perf(s) ? 12 : 2,
                 D = perf(s) ? 64 : 3;
         return std::vector<Tensor>{random_tensor({B, T, 3 * H * D}, 96), padding_mask(B, T, 1)};
       },
       {0},
       [](const std::vector<Tensor>& in) {
         const int64_t H = in[0].size(2) >= 3 * 768 ? 12 : 2;
         AttentionMask mask;  // GPT-2's training attention: packed c_attn output, dropout
         mask.scale = 1.0f / std::sqrt(float(in[0].size(2) / (3 * H)));
         mask.causal = true;
         mask.key_padding = in[1];
         return attention_packed(in[0], H, mask, {0.2f, 5, 1});
       }});
  add_case({"attention_packed/qkv_bias_folded",
            [](CaseSize s) {
              int64_t B = perf(s) ? 8 : 2, T = perf(s) ? 148 : 5, H = perf(s) ? 12 : 2,
                      D = perf(s) ? 64 : 3;
              return std::vector<Tensor>{random_tensor({B, T, 3 * H * D}, 97),
                                         random_tensor({3 * H * D}, 98), padding_mask(B, T, 1)};
            },
            {0, 1},
            [](const std::vector<Tensor>& in) {
              const int64_t H = in[0].size(2) >= 3 * 768 ? 12 : 2;
              AttentionMask mask;  // GPT-2's c_attn bias added by the attention kernels
              mask.scale = 1.0f / std::sqrt(float(in[0].size(2) / (3 * H)));
              mask.causal = true;
              mask.key_padding = in[2];
              return attention_packed(in[0], H, mask, {0.2f, 5, 1}, in[1]);
            }});
  // T5's cross-attention: q from the decoder, k|v from one GEMM over the encoder output (another
  // length), unscaled, encoder padding masked, dropout.
  add_case({"attention_kv_packed/cross_padding_dropout",
            [](CaseSize s) {
              const int64_t B = perf(s) ? 8 : 2, Tq = perf(s) ? 64 : 3, Tk = perf(s) ? 148 : 5,
                            H = perf(s) ? 12 : 2, D = perf(s) ? 64 : 4;
              return std::vector<Tensor>{random_tensor({B, Tq, H, D}, 103),
                                         random_tensor({B, Tk, 2 * H * D}, 104),
                                         padding_mask(B, Tk, 2)};
            },
            {0, 1},
            [](const std::vector<Tensor>& in) {
              AttentionMask mask;
              mask.key_padding = in[2];
              return attention_kv_packed(in[0], in[1], mask, {0.2f, 7, 3});
            }});
  // Llama's packed q_proj / k_proj / v_proj output with grouped-query heads (4 query heads over 2
  // key/value heads), rotated inside the op; angles of real positions as the model makes them.
  add_case({"rotary_attention_packed/gqa_causal_dropout_padding",
            [](CaseSize s) {
              const int64_t B = perf(s) ? 8 : 2, T = perf(s) ? 148 : 5, H = perf(s) ? 32 : 4,
                            Hkv = perf(s) ? 8 : 2, D = perf(s) ? 64 : 6;
              Tensor angle = random_tensor({B, T, D / 2}, 101, 3.0f);
              std::vector<float> a = angle.to_floats(), c(a.size()), si(a.size());
              for (size_t i = 0; i < a.size(); ++i) c[i] = std::cos(a[i]), si[i] = std::sin(a[i]);
              return std::vector<Tensor>{random_tensor({B, T, (H + 2 * Hkv) * D}, 102),
                                         Tensor::from_floats(c, angle.shape()),
                                         Tensor::from_floats(si, angle.shape()),
                                         padding_mask(B, T, 1)};
            },
            {0},
            [](const std::vector<Tensor>& in) {
              const bool large = in[0].size(2) == 48 * 64;
              const int64_t H = large ? 32 : 4, Hkv = large ? 8 : 2, D = in[1].size(2) * 2;
              AttentionMask mask;
              mask.scale = 1.0f / std::sqrt(float(D));
              mask.causal = true;
              mask.key_padding = in[3];
              return rotary_attention_packed(in[0], H, Hkv, in[1], in[2], mask, {0.2f, 5, 1});
            }});
  add_case({"attention/padding_mask",
            [](CaseSize) {
              return std::vector<Tensor>{random_tensor({2, 4, 2, 3}, 50),
                                         random_tensor({2, 4, 2, 3}, 51),
                                         random_tensor({2, 4, 2, 3}, 52), padding_mask(2, 4, 2)};
            },
            {0, 1, 2},
            [](const std::vector<Tensor>& in) {
              AttentionMask mask;
              mask.scale = 0.7f;
              mask.causal = true;
              mask.key_padding = in[3];
              return attention(in[0], in[1], in[2], mask);
            }});
  add_case({"attention/t5_bias_unscaled_bidirectional",
            [](CaseSize) {
              return std::vector<Tensor>{random_tensor({1, 5, 2, 4}, 53),
                                         random_tensor({1, 5, 2, 4}, 54),
                                         random_tensor({1, 5, 2, 4}, 55),
                                         random_tensor({2, 5, 5}, 56), padding_mask(1, 5, 0)};
            },
            {0, 1, 2},
            [](const std::vector<Tensor>& in) {
              AttentionMask mask;
              mask.bias = in[3];
              mask.key_padding = in[4];
              return attention(in[0], in[1], in[2], mask);
            }});
  add_case({"attention/cross_and_kv_cache_offset",
            [](CaseSize) {
              return std::vector<Tensor>{random_tensor({2, 2, 3, 4}, 57),
                                         random_tensor({2, 6, 3, 4}, 58),
                                         random_tensor({2, 6, 3, 4}, 59)};
            },
            {0, 1, 2},
            [](const std::vector<Tensor>& in) {
              AttentionMask mask;  // two new queries at positions 4 and 5 over a 6-key cache
              mask.scale = 0.5f;
              mask.causal = true;
              mask.query_offset = 4;
              return attention(in[0], in[1], in[2], mask);
            }});

  add_case({"attention/dropout_grouped_query_padding",
            [](CaseSize) {
              return std::vector<Tensor>{random_tensor({2, 5, 4, 3}, 93),
                                         random_tensor({2, 5, 2, 3}, 94),
                                         random_tensor({2, 5, 2, 3}, 95), padding_mask(2, 5, 1)};
            },
            {0, 1, 2},
            [](const std::vector<Tensor>& in) {
              AttentionMask mask;  // GPT-2-style causal attention with probabilities dropped
              mask.scale = 0.6f;
              mask.causal = true;
              mask.key_padding = in[3];
              return attention(in[0], in[1], in[2], mask, {0.25f, 77, 3});
            }});
  add_case({"attention/grouped_query_sliding_window",
            [](CaseSize) {
              return std::vector<Tensor>{random_tensor({2, 6, 4, 3}, 90),
                                         random_tensor({2, 6, 2, 3}, 91),
                                         random_tensor({2, 6, 2, 3}, 92), padding_mask(2, 6, 1)};
            },
            {0, 1, 2},
            [](const std::vector<Tensor>& in) {
              AttentionMask mask;  // 4 query heads over 2 key/value heads, a 3-key window
              mask.scale = 0.6f;
              mask.causal = true;
              mask.sliding_window = 3;
              mask.key_padding = in[3];
              return attention(in[0], in[1], in[2], mask);
            }});

  // ---- loss and dropout ----
  add_case(
      {"cross_entropy/ignore_index",
       [](CaseSize s) {
         int64_t n = perf(s) ? 1024 : 6, v = perf(s) ? 50257 : 9;
         Tensor targets = random_ids({n}, v, 61);
         std::vector<int64_t> t = targets.to_ints();
         for (size_t i = 0; i < t.size(); i += 3) t[i] = -100;
         return std::vector<Tensor>{random_tensor({n, v}, 60, 2.0f), Tensor::from_ints(t, {n})};
       },
       {0},
       [](const std::vector<Tensor>& in) { return cross_entropy(in[0], in[1]).loss; }});
  add_case({"linear_cross_entropy/chunked_head",
            [](CaseSize s) {
              int64_t n = perf(s) ? 1024 : 5, d = perf(s) ? 768 : 4, v = perf(s) ? 50257 : 7;
              std::vector<int64_t> t = random_ids({n}, v, 64).to_ints();
              t[1] = -100;
              return std::vector<Tensor>{random_tensor({n, d}, 63), random_tensor({v, d}, 65),
                                         Tensor::from_ints(t, {n})};
            },
            {0, 1},
            [](const std::vector<Tensor>& in) {
              return linear_cross_entropy(in[0], in[1], in[2]).loss;
            }});
  add_case(
      {"dropout/train_mode",
       [](CaseSize s) { return std::vector<Tensor>{random_tensor({perf(s) ? 1 << 22 : 40}, 62)}; },
       {0},
       [](const std::vector<Tensor>& in) { return dropout(in[0], 0.3f, 1234, 77); }});
  add_case({"residual_dropout_add/bias_odd_width",
            [](CaseSize s) {
              const int64_t rows = perf(s) ? 8 * 148 : 7, width = perf(s) ? 768 : 6;
              return std::vector<Tensor>{random_tensor({rows, width}, 63),
                                         random_tensor({rows, width}, 64),
                                         random_tensor({width}, 65)};
            },
            {0, 1, 2},
            [](const std::vector<Tensor>& in) {
              return residual_dropout_add(in[0], in[1], in[2], 0.3f, 99, 5);
            }});
  add_case(
      {"residual_dropout_add/no_bias_eval_mode",
       [](CaseSize) {
         return std::vector<Tensor>{random_tensor({3, 2, 5}, 66), random_tensor({3, 2, 5}, 67)};
       },
       {0, 1},
       [](const std::vector<Tensor>& in) {
         return residual_dropout_add(in[0], in[1], Tensor(), 0.0f, 0, 0);
       }});
  // The fused branch end + LayerNorm: both outputs feed the loss, so both recorded ops'
  // gradients are checked (the residual stream's reaches residual through two paths).
  add_case({"residual_dropout_add_layernorm/bias_dropout",
            [](CaseSize s) {
              const int64_t rows = perf(s) ? 8 * 148 : 5, width = perf(s) ? 768 : 9;
              return std::vector<Tensor>{
                  random_tensor({rows, width}, 68), random_tensor({rows, width}, 69),
                  random_tensor({width}, 70), affine(random_tensor({width}, 71, 0.3f), 1.0f, 1.0f),
                  random_tensor({width}, 72, 0.3f)};
            },
            {0, 1, 2, 3, 4},
            [](const std::vector<Tensor>& in) {
              const ResidualAndNorm r = residual_dropout_add_layernorm(in[0], in[1], in[2], 0.3f,
                                                                       99, 5, in[3], in[4], 1e-5f);
              return add(r.sum, r.normed);
            }});
  add_case({"residual_dropout_add_rms_norm/bias_dropout",
            [](CaseSize s) {
              const int64_t rows = perf(s) ? 8 * 148 : 5, width = perf(s) ? 768 : 9;
              return std::vector<Tensor>{
                  random_tensor({rows, width}, 73), random_tensor({rows, width}, 74),
                  random_tensor({width}, 75), affine(random_tensor({width}, 76, 0.3f), 1.0f, 1.0f)};
            },
            {0, 1, 2, 3},
            [](const std::vector<Tensor>& in) {
              const ResidualAndNorm r =
                  residual_dropout_add_rms_norm(in[0], in[1], in[2], 0.3f, 99, 5, in[3], 1e-6f);
              return add(r.sum, r.normed);
            }});
  return cases;
}

}  // namespace

const std::vector<OpCase>& op_cases() {
  static const std::vector<OpCase> cases = build_cases();
  return cases;
}

}  // namespace sp::testing
