// cross_entropy op: per-row losses from the backend, mean over counted rows, fused backward.
#include "engine/ops/cross_entropy.h"

#include <limits>

#include "engine/autograd.h"
#include "engine/ops/common.h"
#include "engine/ops/elementwise.h"

namespace sp {

namespace {

struct CheckedTargets {
  Tensor targets;  // [rows] on `device`
  int64_t counted = 0;
};

// Checks every target is in [0, V) or the ignore index, and counts them. Targets on the host are
// checked for free and uploaded once (asynchronously); targets already on the device cost a copy
// back to the host, i.e. a wait for the device, so callers that have them on the host pass those.
CheckedTargets check_targets(const char* op, const Tensor& targets_in, int64_t rows, int64_t V,
                             int64_t ignore_index, Device device) {
  SP_CHECK(targets_in.dtype() == DType::I64 || targets_in.dtype() == DType::I32, op,
           ": targets must be I32 or I64, got ", targets_in.describe());
  SP_CHECK(targets_in.device().is_cpu() || targets_in.device() == device, op, ": targets ",
           targets_in.describe(), " are neither on the host nor on ", device.str());
  SP_CHECK(targets_in.numel() == rows, op, ": ", targets_in.describe(), " does not have ", rows,
           " targets");
  Tensor targets = targets_in.contiguous().view({rows});
  CheckedTargets checked;
  for (int64_t t : targets.to_ints()) {
    if (t == ignore_index) continue;
    SP_CHECK(t >= 0 && t < V, op, ": target ", t, " is outside the vocabulary [0, ", V,
             ") and is not the ignore index ", ignore_index);
    ++checked.counted;
  }
  checked.targets = targets.to(device);
  return checked;
}

// What the mean multiplies the summed losses by: 1 / counted, 0 when no target counts.
float inverse_of_count(int64_t counted) {
  return counted == 0 ? 0.0f : 1.0f / float(counted);
}

// The [] mean of the per-row losses, computed where they are.
Tensor mean_loss(const Tensor& row_loss, int64_t counted) {
  Tensor loss = Tensor::empty({}, DType::F32, row_loss.device());
  backend_for(row_loss.device()).cross_entropy_mean(row_loss, counted, loss);
  return loss;
}

// x * g for the [] upstream gradient g of a loss. A device-resident g is multiplied there rather
// than read on the host: reading it would make the host wait for the whole forward. A host g
// (backward()'s default seed for a loss) of one costs nothing.
Tensor times_upstream(const Tensor& x, const Tensor& g) {
  if (!g.device().is_cpu()) return mul(x, g.to(x.dtype()));
  const float upstream = g.item();
  return upstream == 1.0f ? x : scale(x, upstream);
}

}  // namespace

CrossEntropyResult cross_entropy(const Tensor& logits_in, const Tensor& targets_in,
                                 int64_t ignore_index) {
  ops_detail::check_defined("cross_entropy", {&logits_in, &targets_in});
  ops_detail::check_float_inputs("cross_entropy", {&logits_in});
  const int64_t V = logits_in.size(-1);
  const int64_t rows = logits_in.numel() / std::max<int64_t>(V, 1);
  Tensor logits = logits_in.contiguous().view({rows, V});
  const auto [targets, counted] =
      check_targets("cross_entropy", targets_in, rows, V, ignore_index, logits.device());
  Backend& backend = backend_for(logits.device());
  Tensor row_loss = Tensor::empty({rows}, DType::F32, logits.device());
  Tensor lse = Tensor::empty({rows}, DType::F32, logits.device());
  if (rows > 0) backend.cross_entropy_forward(logits, targets, ignore_index, row_loss, lse);
  // transformers divides by the count (NaN when every target is ignored); we report 0 there
  // and the trainer flags the batch.
  Tensor loss = mean_loss(row_loss, counted);
  record(loss, "cross_entropy", {logits_in},
         [logits = logits.detach(), targets, lse, ignore_index, counted, shape = logits_in.shape()](
             const Tensor& g, const NeedsGrad&) {
           Tensor d_logits = Tensor::empty(logits.shape(), logits.dtype(), logits.device());
           // A host upstream value folds into the kernel's scale; a device one is multiplied in.
           const bool host_upstream = g.device().is_cpu();
           const float upstream = host_upstream ? g.item() : 1.0f;
           const float grad_scale = counted == 0 ? 0.0f : upstream / float(counted);
           if (logits.numel() > 0)
             backend_for(logits.device())
                 .cross_entropy_backward(logits, targets, ignore_index, lse, grad_scale, d_logits);
           if (!host_upstream) d_logits = times_upstream(d_logits, g);
           return std::vector<Tensor>{d_logits.view(shape)};
         });
  accept_host_upstream(loss);
  return {loss, counted};
}

namespace {

// Logits rows are padded to a multiple of 64 elements, so that every row starts 16-byte aligned
// (and 128-byte aligned in bf16): the head's GEMMs write, and the loss kernels read, whole
// vectors. GPT-2's 50257 becomes 50304, as in llm.c.
int64_t padded_row(int64_t vocab) {
  return (vocab + 63) / 64 * 64;
}

// Rows per chunk: a chunk's logits fill the backend's logits_chunk_bytes (at least 16 rows).
int64_t chunk_rows(const Backend& backend, int64_t vocab, DType logits_dtype) {
  const int64_t row_bytes = std::max<int64_t>(vocab, 1) * int64_t(dtype_size(logits_dtype));
  return std::max<int64_t>(16, int64_t(backend.logits_chunk_bytes()) / row_bytes);
}

// out[rows, N] (= beta * out +) a[rows, K] @ op(b); b is [N, K] when trans_b, else [K, N].
// a and b share a dtype; out has it or is F32. Each may have padded rows (unit column stride).
void chunk_gemm(Backend& backend, const Tensor& a, const Tensor& b, bool trans_a, bool trans_b,
                const Tensor& out, float beta) {
  GemmArgs g;
  g.dtype = a.dtype();
  g.c_dtype = out.dtype();
  g.a = a.raw_data();
  g.b = b.raw_data();
  g.c = out.raw_data();
  g.trans_a = trans_a;
  g.trans_b = trans_b;
  g.m = out.size(0);
  g.n = out.size(1);
  g.k = trans_a ? a.size(0) : a.size(1);
  g.lda = a.stride(0);
  g.ldb = b.stride(0);
  g.ldc = out.stride(0);
  g.beta = beta;
  g.b_storage = ops_detail::immutable_storage(b);
  backend.gemm(g);
}

// The chunked loss on checked targets on the device. The mean divides by `counted` (a host value
// folded into the kernels) or, when inverse_count is defined, multiplies by that F32 [] device
// scalar, which a captured step's replays refill (LossTargets).
CrossEntropyResult linear_cross_entropy_on(const char* op, const Tensor& hidden_in,
                                           const Tensor& weight_in, const Tensor& targets,
                                           int64_t counted, const Tensor& inverse_count_on_device,
                                           int64_t ignore_index) {
  const ops_detail::GemmDtypes types = ops_detail::gemm_dtypes(op, hidden_in, weight_in);
  SP_CHECK(!types.mixed || (weight_in.dtype() == DType::BF16 && !weight_in.requires_grad()), op,
           ": F32 hidden states with a BF16 head need a frozen BF16 weight, got hidden ",
           hidden_in.describe(), " and weight ", weight_in.describe(),
           weight_in.requires_grad() ? " (requires grad)" : "");
  SP_CHECK(hidden_in.dim() == 2 && weight_in.dim() == 2 && hidden_in.size(1) == weight_in.size(1),
           op, ": hidden ", hidden_in.describe(), " and weight ", weight_in.describe(),
           " must be [n, d] and [V, d]");
  const bool device_count = inverse_count_on_device.defined();
  SP_CHECK(!device_count || !weight_in.requires_grad(), op,
           ": a trainable head weight reads the upstream gradient on the host; with targets on "
           "the device it must be frozen, got ",
           weight_in.describe());
  const int64_t n = hidden_in.size(0), V = weight_in.size(0), d = hidden_in.size(1);
  Tensor hidden = hidden_in.contiguous(), weight = weight_in.contiguous();
  Backend& backend = backend_for(hidden.device());
  const bool grad_hidden = grad_mode_enabled() && hidden_in.requires_grad();
  // The kernels scale the logit gradients by 1 / count; a device count scales afterwards.
  float inverse_count = 1.0f;
  if (!device_count) inverse_count = inverse_of_count(counted);
  const int64_t padded_vocab = padded_row(V);
  const int64_t step = chunk_rows(backend, padded_vocab, types.result);
  Tensor row_loss = Tensor::empty({n}, DType::F32, hidden.device());
  Tensor lse = Tensor::empty({n}, DType::F32, hidden.device());
  Tensor unit_grad =
      grad_hidden ? Tensor::empty({n, d}, hidden.dtype(), hidden.device()) : Tensor();
  Tensor logits = Tensor::empty({std::min(step, std::max<int64_t>(n, 1)), padded_vocab},
                                types.result, hidden.device());
  // Mixed precision: the head multiplies bf16 copies of the hidden states and logit gradients.
  const Tensor gemm_hidden = types.mixed ? hidden.detach().to(DType::BF16) : hidden;
  for (int64_t r0 = 0; r0 < n; r0 += step) {
    const int64_t rows = std::min(step, n - r0);
    Tensor chunk_logits = logits.slice(0, 0, rows).slice(1, 0, V);
    Tensor chunk_targets = targets.slice(0, r0, r0 + rows);
    chunk_gemm(backend, gemm_hidden.slice(0, r0, r0 + rows), weight, false, true, chunk_logits,
               0.0f);
    if (!grad_hidden) {
      backend.cross_entropy_forward(chunk_logits, chunk_targets, ignore_index,
                                    row_loss.slice(0, r0, r0 + rows), lse.slice(0, r0, r0 + rows));
    } else {
      // The loss and d(mean loss)/d logits for an upstream gradient of 1, in place, then through
      // the head.
      backend.cross_entropy_forward_backward(chunk_logits, chunk_targets, ignore_index,
                                             inverse_count, row_loss.slice(0, r0, r0 + rows),
                                             lse.slice(0, r0, r0 + rows), chunk_logits);
      chunk_gemm(backend, types.mixed ? chunk_logits.to(DType::BF16) : chunk_logits, weight, false,
                 false, unit_grad.slice(0, r0, r0 + rows), 0.0f);
    }
  }
  Tensor loss = mean_loss(row_loss, device_count ? 1 : counted);
  if (device_count) loss = mul(loss, inverse_count_on_device);
  record(loss, op, {hidden_in, weight_in},
         [unit_grad, hidden = hidden.detach(), weight = weight.detach(), targets, lse, ignore_index,
          inverse_count, inverse_count_on_device, step](const Tensor& g, const NeedsGrad& need) {
           std::vector<Tensor> grads(2);
           if (need[0]) {
             SP_ASSERT(unit_grad.defined());
             grads[0] = times_upstream(unit_grad, g);
             if (inverse_count_on_device.defined())
               grads[0] = mul(grads[0], inverse_count_on_device.to(grads[0].dtype()));
           }
           if (need[1]) {
             // The rare trainable head (not prompt tuning) reads the upstream value on the host.
             const float upstream = g.item();
             Backend& b = backend_for(hidden.device());
             const int64_t rows_total = hidden.size(0), vocab = weight.size(0);
             grads[1] = Tensor::zeros(weight.shape(), weight.dtype(), weight.device());
             Tensor logits =
                 Tensor::empty({std::min(step, std::max<int64_t>(rows_total, 1)), vocab},
                               hidden.dtype(), hidden.device());
             for (int64_t r0 = 0; r0 < rows_total; r0 += step) {
               const int64_t rows = std::min(step, rows_total - r0);
               Tensor chunk_logits = logits.slice(0, 0, rows);
               Tensor h = hidden.slice(0, r0, r0 + rows);
               chunk_gemm(b, h, weight, false, true, chunk_logits, 0.0f);
               b.cross_entropy_backward(chunk_logits, targets.slice(0, r0, r0 + rows), ignore_index,
                                        lse.slice(0, r0, r0 + rows), upstream * inverse_count,
                                        chunk_logits);
               chunk_gemm(b, chunk_logits, h, true, false, grads[1], 1.0f);  // dW += dlogits^T h
             }
           }
           return grads;
         });
  accept_host_upstream(loss);
  return {loss, counted};
}

}  // namespace

CrossEntropyResult linear_cross_entropy(const Tensor& hidden_in, const Tensor& weight_in,
                                        const Tensor& targets_in, int64_t ignore_index) {
  const char* op = "linear_cross_entropy";
  ops_detail::check_defined(op, {&hidden_in, &weight_in, &targets_in});
  SP_CHECK(hidden_in.dim() == 2 && weight_in.dim() == 2, op, ": hidden ", hidden_in.describe(),
           " and weight ", weight_in.describe(), " must be [n, d] and [V, d]");
  const auto [targets, counted] = check_targets(
      op, targets_in, hidden_in.size(0), weight_in.size(0), ignore_index, hidden_in.device());
  return linear_cross_entropy_on(op, hidden_in, weight_in, targets, counted, Tensor(),
                                 ignore_index);
}

LossTargets::LossTargets(const Tensor& targets, int64_t vocab, int64_t ignore_index, Device device)
    : targets_("loss targets", targets, vocab, device, ignore_index), ignore_index_(ignore_index) {
  inverse_count_ = Tensor::full({}, inverse_of_count(targets_.counted())).to(device);
}

int64_t LossTargets::refill(const Tensor& targets) {
  const int64_t counted = targets_.refill(targets);
  const float inverse = inverse_of_count(counted);
  backend_for(inverse_count_.device())
      .copy_from_host(inverse_count_.raw_data(), &inverse, sizeof(inverse));
  return counted;
}

CrossEntropyResult linear_cross_entropy(const Tensor& hidden, const Tensor& weight,
                                        const LossTargets& targets) {
  const char* op = "linear_cross_entropy";
  ops_detail::check_defined(op, {&hidden, &weight, &targets.targets().on_device()});
  const Tensor& on_device = targets.targets().on_device();
  SP_CHECK(hidden.dim() == 2 && weight.dim() == 2 && on_device.shape() == Shape({hidden.size(0)}),
           op, ": hidden ", hidden.describe(), ", weight ", weight.describe(), " and targets ",
           on_device.describe(), " must be [n, d], [V, d] and [n]");
  SP_CHECK(targets.targets().bound() == weight.size(0), op, ": targets checked against ",
           targets.targets().bound(), " classes, the head has ", weight.size(0));
  SP_CHECK(on_device.device() == hidden.device(), op, ": targets on ", on_device.device().str(),
           ", hidden states ", hidden.describe());
  return linear_cross_entropy_on(op, hidden, weight, on_device, targets.counted(),
                                 targets.inverse_count(), targets.ignore_index());
}

}  // namespace sp
