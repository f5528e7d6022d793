// masked_softmax and attention ops: validation of shapes and masks, backward wiring.
#include "engine/ops/attention.h"

#include "engine/autograd.h"
#include "engine/ops/common.h"
#include "engine/ops/dropout.h"
#include "engine/ops/elementwise.h"
#include "engine/ops/matmul.h"
#include "engine/ops/reduce.h"
#include "engine/ops/rotary.h"

namespace sp {

namespace {

void check_mask(const char* op, const AttentionMask& mask, int64_t B, int64_t H, int64_t Tq,
                int64_t Tk, const Tensor& like) {
  if (mask.key_padding.defined()) {
    SP_CHECK(mask.key_padding.dtype() == DType::F32 && mask.key_padding.device() == like.device() &&
                 mask.key_padding.shape() == Shape({B, Tk}) && mask.key_padding.is_contiguous(),
             op, ": key padding mask must be contiguous F32[", B, ", ", Tk, "] on ",
             like.device().str(), ", got ", mask.key_padding.describe());
  }
  if (mask.bias.defined()) {
    bool per_head = mask.bias.shape() == Shape({H, Tq, Tk});
    bool per_batch = mask.bias.shape() == Shape({B, H, Tq, Tk});
    SP_CHECK((per_head || per_batch) && mask.bias.is_contiguous() &&
                 mask.bias.dtype() == DType::F32 && mask.bias.device() == like.device(),
             op, ": bias must be contiguous F32[", H, ", ", Tq, ", ", Tk, "] or [", B, ", ", H,
             ", ", Tq, ", ", Tk, "], got ", mask.bias.describe());
  }
  SP_CHECK(mask.query_offset >= 0, op, ": negative query offset");
  SP_CHECK(mask.sliding_window >= 0, op, ": negative sliding window");
}

}  // namespace

Tensor masked_softmax(const Tensor& scores_in, const AttentionMask& mask) {
  ops_detail::check_defined("masked_softmax", {&scores_in});
  ops_detail::check_float_inputs("masked_softmax", {&scores_in});
  SP_CHECK(scores_in.dim() == 4, "masked_softmax: scores must be [B, H, Tq, Tk], got ",
           scores_in.describe());
  Tensor scores = scores_in.contiguous();
  check_mask("masked_softmax", mask, scores.size(0), scores.size(1), scores.size(2), scores.size(3),
             scores);
  Tensor probs = Tensor::empty(scores.shape(), scores.dtype(), scores.device());
  if (probs.numel() > 0) backend_for(probs.device()).masked_softmax_forward(scores, mask, probs);
  record(probs, "masked_softmax", {scores_in},
         [p = probs.detach(), scale = mask.scale](const Tensor& g, const NeedsGrad&) {
           Tensor ds = Tensor::empty(p.shape(), p.dtype(), p.device());
           if (p.numel() > 0)
             backend_for(p.device()).masked_softmax_backward(p, g.contiguous(), scale, ds);
           return std::vector<Tensor>{ds};
         });
  return probs;
}

namespace {

struct FusedAttention {
  Tensor q, k, v;  // the inputs with unit stride on D, detached
  Tensor out, lse;
};

// Validates q/k/v, the mask and the dropout, and runs the fused forward (no autograd record).
FusedAttention fused_attention_forward(const char* op, const Tensor& q_in, const Tensor& k_in,
                                       const Tensor& v_in, const AttentionInputBias& bias,
                                       const AttentionMask& mask, const AttentionDropout& dropout) {
  ops_detail::check_defined(op, {&q_in, &k_in, &v_in});
  ops_detail::check_float_inputs(op, {&q_in, &k_in, &v_in});
  SP_CHECK(q_in.dim() == 4 && k_in.dim() == 4 && v_in.dim() == 4, op,
           ": q, k, v must be [B, T, H, D], got ", q_in.describe(), ", ", k_in.describe(), ", ",
           v_in.describe());
  const int64_t B = q_in.size(0), Tq = q_in.size(1), H = q_in.size(2), D = q_in.size(3);
  const int64_t Tk = k_in.size(1), Hkv = k_in.size(2);
  SP_CHECK(k_in.shape() == Shape({B, Tk, Hkv, D}) && v_in.shape() == k_in.shape() && Hkv > 0 &&
               H % Hkv == 0,
           op, ": k ", k_in.describe(), " and v ", v_in.describe(), " do not match q ",
           q_in.describe(), " (k/v heads must divide the query heads)");
  check_mask(op, mask, B, H, Tq, Tk, q_in);
  SP_CHECK(dropout.p >= 0.0f && dropout.p < 1.0f, op,
           ": dropout probability must be in [0, 1), got ", dropout.p);
  // Unit stride on D is all the kernels need; other axes may be any strided view.
  auto unit_inner = [](const Tensor& t) {
    return (t.stride(3) == 1 ? t : t.contiguous()).detach();
  };
  FusedAttention f{unit_inner(q_in), unit_inner(k_in), unit_inner(v_in), {}, {}};
  f.out = Tensor::empty({B, Tq, H, D}, f.q.dtype(), f.q.device());
  f.lse = Tensor::empty({B, H, Tq}, DType::F32, f.q.device());
  if (f.out.numel() > 0 && Tk > 0) {
    backend_for(f.q.device()).attention_forward(f.q, f.k, f.v, bias, mask, dropout, f.out, f.lse);
  } else if (f.out.numel() > 0) {
    backend_for(f.q.device()).fill(f.out, 0.0f);
  }
  return f;
}

// Whether the backward kernels have work; when they do, they write every gradient element.
bool backward_runs(const FusedAttention& f) {
  return f.out.numel() > 0 && f.k.size(1) > 0;
}

}  // namespace

Tensor attention(const Tensor& q_in, const Tensor& k_in, const Tensor& v_in,
                 const AttentionMask& mask, const AttentionDropout& dropout) {
  FusedAttention f = fused_attention_forward("attention", q_in, k_in, v_in, {}, mask, dropout);
  Tensor out = f.out;
  f.out = out.detach();  // the node must not own the tensor that owns it
  record(out, "attention", {q_in, k_in, v_in},
         [f = std::move(f), mask, dropout](const Tensor& g, const NeedsGrad& need) {
           const bool run = backward_runs(f);
           std::vector<Tensor> grads(3);
           for (int i = 0; i < 3; ++i) {
             const Tensor& like = i == 0 ? f.q : (i == 1 ? f.k : f.v);
             if (need[size_t(i)])
               grads[size_t(i)] = run ? Tensor::empty(like.shape(), like.dtype(), like.device())
                                      : Tensor::zeros(like.shape(), like.dtype(), like.device());
           }
           if (run)
             backend_for(f.q.device())
                 .attention_backward(f.q, f.k, f.v, {}, mask, dropout, f.out, f.lse, g.contiguous(),
                                     grads[0], grads[1], grads[2]);
           return grads;
         });
  return out;
}

Tensor packed_heads(const Tensor& packed, int64_t first, int64_t count, int64_t head_dim) {
  return packed.slice(2, first * head_dim, (first + count) * head_dim)
      .view({packed.size(0), packed.size(1), count, head_dim});
}

Tensor attention_packed(const Tensor& qkv, int64_t heads, const AttentionMask& mask,
                        const AttentionDropout& dropout, const Tensor& qkv_bias) {
  const char* op = "attention_packed";
  ops_detail::check_defined(op, {&qkv});
  SP_CHECK(qkv.dim() == 3 && heads > 0 && qkv.size(2) % (3 * heads) == 0,
           "attention_packed: qkv must be [B, T, 3 * heads * D] with ", heads, " heads, got ",
           qkv.describe());
  // A bias the kernels cannot take as it is (another dtype: mixed precision) is added first.
  if (qkv_bias.defined() && !ops_detail::check_last_axis_bias(op, qkv, qkv_bias))
    return attention_packed(add(qkv, qkv_bias), heads, mask, dropout);
  const int64_t width = qkv.size(2) / 3, D = width / heads;
  // Views of one contiguous buffer: q, k, v and (in the backward) dq, dk, dv have the same strides.
  auto split = [heads, D](const Tensor& packed, int64_t part) {
    return packed_heads(packed, part * heads, heads, D);
  };
  const Tensor packed = qkv.contiguous().detach();
  AttentionInputBias bias;
  if (qkv_bias.defined()) {
    const Tensor b = qkv_bias.contiguous().detach();
    bias = {b.slice(0, 0, width), b.slice(0, width, 2 * width), b.slice(0, 2 * width, 3 * width)};
  }
  FusedAttention f = fused_attention_forward(op, split(packed, 0), split(packed, 1),
                                             split(packed, 2), bias, mask, dropout);
  Tensor out = f.out;
  f.out = out.detach();  // the node must not own the tensor that owns it
  record(out, op, {qkv, qkv_bias},
         [f = std::move(f), bias, mask, dropout, split, packed_shape = packed.shape()](
             const Tensor& g, const NeedsGrad& need) {
           // The gradient of qkv + bias is qkv's; the bias's sums it over the rows.
           Tensor d_packed;
           if (!backward_runs(f)) {
             d_packed = Tensor::zeros(packed_shape, f.q.dtype(), f.q.device());
           } else {
             d_packed = Tensor::empty(packed_shape, f.q.dtype(), f.q.device());
             backend_for(f.q.device())
                 .attention_backward(f.q, f.k, f.v, bias, mask, dropout, f.out, f.lse,
                                     g.contiguous(), split(d_packed, 0), split(d_packed, 1),
                                     split(d_packed, 2));
           }
           Tensor d_bias;
           if (need[1]) d_bias = sum_to_shape(d_packed, Shape{packed_shape[2]});
           return std::vector<Tensor>{need[0] ? d_packed : Tensor(), d_bias};
         });
  return out;
}

Tensor attention_kv_packed(const Tensor& q, const Tensor& kv, const AttentionMask& mask,
                           const AttentionDropout& dropout) {
  const char* op = "attention_kv_packed";
  ops_detail::check_defined(op, {&q, &kv});
  SP_CHECK(q.dim() == 4 && kv.dim() == 3 && kv.size(0) == q.size(0) &&
               kv.size(2) == 2 * q.size(2) * q.size(3),
           op, ": q must be [B, Tq, H, D] and kv [B, Tk, 2 * H * D], got ", q.describe(), " and ",
           kv.describe());
  const int64_t H = q.size(2), D = q.size(3);
  auto split = [H, D](const Tensor& packed, int64_t part) {
    return packed_heads(packed, part * H, H, D);
  };
  const Tensor packed = kv.contiguous().detach();
  FusedAttention f =
      fused_attention_forward(op, q, split(packed, 0), split(packed, 1), {}, mask, dropout);
  Tensor out = f.out;
  f.out = out.detach();  // the node must not own the tensor that owns it
  record(out, op, {q, kv},
         [f = std::move(f), mask, dropout, split, packed_shape = packed.shape()](
             const Tensor& g, const NeedsGrad& need) {
           const bool run = backward_runs(f);
           auto make = [&](const Shape& shape) {
             return run ? Tensor::empty(shape, f.q.dtype(), f.q.device())
                        : Tensor::zeros(shape, f.q.dtype(), f.q.device());
           };
           Tensor dq = need[0] ? make(f.q.shape()) : Tensor();
           Tensor d_kv = need[1] ? make(packed_shape) : Tensor();
           if (run)
             backend_for(f.q.device())
                 .attention_backward(f.q, f.k, f.v, {}, mask, dropout, f.out, f.lse, g.contiguous(),
                                     dq, d_kv.defined() ? split(d_kv, 0) : Tensor(),
                                     d_kv.defined() ? split(d_kv, 1) : Tensor());
           return std::vector<Tensor>{dq, d_kv};
         });
  return out;
}

Tensor rotary_attention_packed(const Tensor& qkv, int64_t heads, int64_t kv_heads,
                               const Tensor& cos_in, const Tensor& sin_in,
                               const AttentionMask& mask, const AttentionDropout& dropout) {
  const char* op = "rotary_attention_packed";
  ops_detail::check_defined(op, {&qkv});
  SP_CHECK(qkv.dim() == 3 && heads > 0 && kv_heads > 0 && qkv.size(2) % (heads + 2 * kv_heads) == 0,
           op, ": qkv must be [B, T, (heads + 2 kv_heads) * D] with ", heads, " heads and ",
           kv_heads, " kv heads, got ", qkv.describe());
  const int64_t B = qkv.size(0), T = qkv.size(1), D = qkv.size(2) / (heads + 2 * kv_heads);
  // q and k are adjacent: one rotation covers both, as heads + kv_heads heads of each row.
  auto qk_heads = [=](const Tensor& packed) {
    return packed_heads(packed, 0, heads + kv_heads, D);
  };
  auto v_heads = [=](const Tensor& packed) {
    return packed_heads(packed, heads + kv_heads, kv_heads, D);
  };
  const Tensor packed = qkv.contiguous().detach();
  ops_detail::check_rotary_inputs(op, qk_heads(packed), cos_in, sin_in);
  const Tensor cos = cos_in.contiguous().detach(), sin = sin_in.contiguous().detach();
  const Tensor qk = Tensor::empty({B, T, heads + kv_heads, D}, packed.dtype(), packed.device());
  if (qk.numel() > 0)
    backend_for(qk.device()).rotary_embedding(qk_heads(packed), cos, sin, false, qk);
  FusedAttention f =
      fused_attention_forward(op, qk.slice(2, 0, heads), qk.slice(2, heads, heads + kv_heads),
                              v_heads(packed), {}, mask, dropout);
  Tensor out = f.out;
  f.out = out.detach();  // the node must not own the tensor that owns it
  record(out, op, {qkv},
         [f = std::move(f), mask, dropout, cos, sin, heads, qk_heads, v_heads,
          packed_shape = packed.shape()](const Tensor& g, const NeedsGrad&) {
           if (!backward_runs(f))
             return std::vector<Tensor>{Tensor::zeros(packed_shape, f.q.dtype(), f.q.device())};
           Tensor d_packed = Tensor::empty(packed_shape, f.q.dtype(), f.q.device());
           const Tensor d_qk = qk_heads(d_packed);
           Backend& backend = backend_for(f.q.device());
           backend.attention_backward(f.q, f.k, f.v, {}, mask, dropout, f.out, f.lse,
                                      g.contiguous(), d_qk.slice(2, 0, heads),
                                      d_qk.slice(2, heads, d_qk.size(2)), v_heads(d_packed));
           // The rotation's transpose, in place: d(pre-rotation q, k) from d(rotated q, k).
           backend.rotary_embedding(d_qk, cos, sin, true, d_qk);
           return std::vector<Tensor>{d_packed};
         });
  return out;
}

Tensor attention_materialized(const Tensor& q, const Tensor& k, const Tensor& v,
                              const AttentionMask& mask, const AttentionDropout& dropout) {
  // [B, T, H, D] -> [B, H, T, D] views; matmul copies only if the batch axes need it. Grouped
  // key/value heads are repeated here (this path materialises everything anyway).
  const int64_t H = q.size(2), Hkv = k.size(2);
  SP_CHECK(Hkv > 0 && H % Hkv == 0 && v.size(2) == Hkv, "attention_materialized: k/v heads ", Hkv,
           " must divide the query heads ", H);
  auto repeat_heads = [&](const Tensor& t) {
    if (Hkv == H) return t;
    const int64_t B = t.size(0), T = t.size(1), D = t.size(3);
    return t.unsqueeze(3).expand({B, T, Hkv, H / Hkv, D}).reshape({B, T, H, D});
  };
  Tensor qh = q.permute({0, 2, 1, 3});
  Tensor kh = repeat_heads(k).permute({0, 2, 1, 3});
  Tensor vh = repeat_heads(v).permute({0, 2, 1, 3});
  Tensor scores = matmul(qh, kh.transpose(-1, -2));
  Tensor probs = sp::dropout(masked_softmax(scores, mask), dropout.p, dropout.seed, dropout.offset);
  return matmul(probs, vh).permute({0, 2, 1, 3}).contiguous();
}

}  // namespace sp
