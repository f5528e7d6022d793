// layernorm and rms_norm: shape checks, saved statistics, backward wiring.
#include "engine/ops/layernorm.h"

#include "engine/autograd.h"
#include "engine/ops/common.h"
#include "engine/ops/dropout.h"

namespace sp {

namespace {

void check_norm(const char* op, const Tensor& x, const Tensor& weight, const Tensor& bias) {
  ops_detail::check_defined(op, {&x, &weight});
  ops_detail::check_float_inputs(op, {&x, &weight, &bias});
  SP_CHECK(x.dim() >= 1, op, ": input must have at least one dimension");
  const int64_t cols = x.size(-1);
  SP_CHECK(weight.dim() == 1 && weight.size(0) == cols, op, ": weight ", weight.describe(),
           " does not match the last axis of ", x.describe());
  SP_CHECK(!bias.defined() || (bias.dim() == 1 && bias.size(0) == cols), op, ": bias ",
           bias.describe(), " does not match the last axis of ", x.describe());
}

Shape row_stats_shape(const Tensor& x) {
  return {x.numel() / x.size(-1)};
}

}  // namespace

namespace {

// Records y = layernorm(x_in, weight, bias) on the tape, x being x_in's contiguous values.
void record_layernorm(Tensor& y, const Tensor& x_in, const Tensor& weight, const Tensor& bias,
                      const Tensor& x, const Tensor& mean, const Tensor& rstd) {
  record(y, "layernorm", {x_in, weight, bias},
         [x = x.detach(), w = weight.contiguous().detach(), mean, rstd](const Tensor& g,
                                                                        const NeedsGrad& need) {
           std::vector<Tensor> grads(3);
           // The residual stream's pending gradient, when the engine offers it, takes dx in
           // place: the accumulation costs no pass of its own.
           const Tensor& pending = need.accumulate_target(0);
           const bool add_into = need[0] && pending.defined() && pending.dtype() == x.dtype();
           if (need[0])
             grads[0] = add_into ? pending : Tensor::empty(x.shape(), x.dtype(), x.device());
           if (need[1]) grads[1] = Tensor::zeros(w.shape(), w.dtype(), w.device());
           if (need[2]) grads[2] = Tensor::zeros(w.shape(), w.dtype(), w.device());
           if (x.numel() > 0)
             backend_for(x.device())
                 .layernorm_backward(x, w, mean, rstd, g.contiguous(), grads[0], add_into, grads[1],
                                     grads[2]);
           return grads;
         });
}

}  // namespace

Tensor layernorm(const Tensor& x_in, const Tensor& weight, const Tensor& bias, float eps) {
  check_norm("layernorm", x_in, weight, bias);
  SP_CHECK(bias.defined(), "layernorm: bias is required (use rms_norm for T5)");
  Tensor x = x_in.contiguous();
  Tensor y = Tensor::empty(x.shape(), x.dtype(), x.device());
  Tensor mean = Tensor::empty(row_stats_shape(x), DType::F32, x.device());
  Tensor rstd = Tensor::empty(row_stats_shape(x), DType::F32, x.device());
  if (x.numel() > 0)
    backend_for(x.device())
        .layernorm_forward(x, weight.contiguous(), bias.contiguous(), eps, y, mean, rstd);
  record_layernorm(y, x_in, weight, bias, x, mean, rstd);
  return y;
}

ResidualAndNorm residual_dropout_add_layernorm(const Tensor& residual_in, const Tensor& x_in,
                                               const Tensor& bias_in, float p, uint64_t seed,
                                               uint64_t offset, const Tensor& weight,
                                               const Tensor& norm_bias, float eps) {
  const char* op = "residual_dropout_add_layernorm";
  check_norm(op, x_in, weight, norm_bias);
  SP_CHECK(norm_bias.defined(), op, ": the norm's bias is required");
  if (!ops_detail::check_residual_dropout_add(op, residual_in, x_in, bias_in, p) ||
      x_in.numel() == 0) {
    Tensor sum = residual_dropout_add(residual_in, x_in, bias_in, p, seed, offset);
    return {sum, layernorm(sum, weight, norm_bias, eps)};
  }
  Tensor residual = residual_in.contiguous(), x = x_in.contiguous();
  Tensor bias = bias_in.defined() ? bias_in.contiguous() : Tensor();
  Tensor sum = Tensor::empty(x.shape(), x.dtype(), x.device());
  Tensor y = Tensor::empty(x.shape(), x.dtype(), x.device());
  Tensor mean = Tensor::empty(row_stats_shape(x), DType::F32, x.device());
  Tensor rstd = Tensor::empty(row_stats_shape(x), DType::F32, x.device());
  backend_for(x.device())
      .residual_layernorm_forward(residual, x, bias, p, seed, offset, weight.contiguous(),
                                  norm_bias.contiguous(), eps, sum, y, mean, rstd);
  // The tape holds the two ops it replaces, so the backward is theirs.
  ops_detail::record_residual_dropout_add(sum, residual_in, x_in, bias_in, p, seed, offset);
  record_layernorm(y, sum, weight, norm_bias, sum, mean, rstd);
  return {sum, y};
}

namespace {

// Records y = rms_norm(x_in, weight) on the tape, x being x_in's contiguous values.
void record_rms_norm(Tensor& y, const Tensor& x_in, const Tensor& weight, const Tensor& x,
                     const Tensor& rstd) {
  record(y, "rms_norm", {x_in, weight},
         [x = x.detach(), w = weight.contiguous().detach(), rstd](const Tensor& g,
                                                                  const NeedsGrad& need) {
           std::vector<Tensor> grads(2);
           // As layernorm's: the residual stream's pending gradient takes dx in place.
           const Tensor& pending = need.accumulate_target(0);
           const bool add_into = need[0] && pending.defined() && pending.dtype() == x.dtype();
           if (need[0])
             grads[0] = add_into ? pending : Tensor::empty(x.shape(), x.dtype(), x.device());
           if (need[1]) grads[1] = Tensor::zeros(w.shape(), w.dtype(), w.device());
           if (x.numel() > 0)
             backend_for(x.device())
                 .rmsnorm_backward(x, w, rstd, g.contiguous(), grads[0], add_into, grads[1]);
           return grads;
         });
}

}  // namespace

Tensor rms_norm(const Tensor& x_in, const Tensor& weight, float eps) {
  check_norm("rms_norm", x_in, weight, Tensor());
  Tensor x = x_in.contiguous();
  Tensor y = Tensor::empty(x.shape(), x.dtype(), x.device());
  Tensor rstd = Tensor::empty(row_stats_shape(x), DType::F32, x.device());
  if (x.numel() > 0) backend_for(x.device()).rmsnorm_forward(x, weight.contiguous(), eps, y, rstd);
  record_rms_norm(y, x_in, weight, x, rstd);
  return y;
}

ResidualAndNorm residual_dropout_add_rms_norm(const Tensor& residual_in, const Tensor& x_in,
                                              const Tensor& bias_in, float p, uint64_t seed,
                                              uint64_t offset, const Tensor& weight, float eps) {
  const char* op = "residual_dropout_add_rms_norm";
  check_norm(op, x_in, weight, Tensor());
  if (!ops_detail::check_residual_dropout_add(op, residual_in, x_in, bias_in, p) ||
      x_in.numel() == 0) {
    Tensor sum = residual_dropout_add(residual_in, x_in, bias_in, p, seed, offset);
    return {sum, rms_norm(sum, weight, eps)};
  }
  Tensor residual = residual_in.contiguous(), x = x_in.contiguous();
  Tensor bias = bias_in.defined() ? bias_in.contiguous() : Tensor();
  Tensor sum = Tensor::empty(x.shape(), x.dtype(), x.device());
  Tensor y = Tensor::empty(x.shape(), x.dtype(), x.device());
  Tensor rstd = Tensor::empty(row_stats_shape(x), DType::F32, x.device());
  backend_for(x.device())
      .residual_rmsnorm_forward(residual, x, bias, p, seed, offset, weight.contiguous(), eps, sum,
                                y, rstd);
  // The tape holds the two ops it replaces, so the backward is theirs.
  ops_detail::record_residual_dropout_add(sum, residual_in, x_in, bias_in, p, seed, offset);
  record_rms_norm(y, sum, weight, sum, rstd);
  return {sum, y};
}

}  // namespace sp
