// AdamW state management and gradient clipping on top of the backend kernels.
#include "engine/optim/adamw.h"

#include <cmath>

#include "engine/backend.h"
#include "engine/error.h"

namespace sp {

AdamW::AdamW(std::vector<Tensor> params, AdamWOptions options)
    : params_(std::move(params)), options_(options) {
  SP_CHECK(options_.lr >= 0.0f, "AdamW: learning rate must be >= 0, got ", options_.lr);
  SP_CHECK(options_.eps >= 0.0f, "AdamW: eps must be >= 0, got ", options_.eps);
  SP_CHECK(options_.beta1 >= 0.0f && options_.beta1 < 1.0f, "AdamW: beta1 must be in [0, 1), got ",
           options_.beta1);
  SP_CHECK(options_.beta2 >= 0.0f && options_.beta2 < 1.0f, "AdamW: beta2 must be in [0, 1), got ",
           options_.beta2);
  SP_CHECK(options_.weight_decay >= 0.0f, "AdamW: weight decay must be >= 0, got ",
           options_.weight_decay);
  for (const Tensor& p : params_) {
    SP_CHECK(p.defined() && p.requires_grad() && p.is_leaf() && p.is_contiguous() &&
                 p.dtype() == DType::F32,
             "AdamW: parameters must be contiguous trainable F32 leaves, got ", p.describe());
    exp_avg_.push_back(Tensor::zeros(p.shape(), DType::F32, p.device()));
    exp_avg_sq_.push_back(Tensor::zeros(p.shape(), DType::F32, p.device()));
  }
}

AdamWGroup AdamW::group_with_gradients() const {
  AdamWGroup group;
  for (size_t i = 0; i < params_.size(); ++i) {
    Tensor grad = params_[i].grad();
    if (!grad.defined()) continue;
    group.params.push_back(params_[i]);
    group.grads.push_back(grad.contiguous());
    group.exp_avg.push_back(exp_avg_[i]);
    group.exp_avg_sq.push_back(exp_avg_sq_[i]);
  }
  return group;
}

AdamWUpdate AdamW::next_update(double max_grad_norm) {
  AdamWUpdate update;
  update.lr = options_.lr;
  update.beta1 = options_.beta1;
  update.beta2 = options_.beta2;
  update.eps = options_.eps;
  update.weight_decay = options_.weight_decay;
  update.step = ++step_;
  update.max_grad_norm = max_grad_norm;
  return update;
}

void AdamW::step() {
  const AdamWUpdate update = next_update(0.0);
  const AdamWGroup group = group_with_gradients();
  if (group.params.empty()) return;
  backend_for(group.params[0].device()).adamw_step(group, update, Tensor(), Tensor());
}

Tensor AdamW::step_if_finite(const Tensor& guard, double max_grad_norm) {
  SP_CHECK(std::isfinite(max_grad_norm) && max_grad_norm >= 0.0,
           "AdamW: max_grad_norm must be a finite number >= 0, got ", max_grad_norm);
  const Device device = params_.empty() ? Device::cpu() : params_[0].device();
  Tensor norm = Tensor::empty({1}, DType::F32, device);  // always written by adamw_step
  const AdamWUpdate update = next_update(max_grad_norm);
  backend_for(device).adamw_step(group_with_gradients(), update, guard, norm);
  return norm;
}

void AdamW::discard_skipped_step() {
  SP_CHECK(step_ > 0, "AdamW: no step to discard");
  --step_;
}

void AdamW::zero_grad() {
  for (Tensor& p : params_) p.zero_grad();
}

void AdamW::load_state(int64_t step, const std::vector<Tensor>& exp_avg,
                       const std::vector<Tensor>& exp_avg_sq) {
  SP_CHECK(exp_avg.size() == params_.size() && exp_avg_sq.size() == params_.size(),
           "AdamW state: expected moments for ", params_.size(), " parameters, got ",
           exp_avg.size(), " and ", exp_avg_sq.size());
  for (size_t i = 0; i < params_.size(); ++i) {
    SP_CHECK(
        exp_avg[i].shape() == params_[i].shape() && exp_avg_sq[i].shape() == params_[i].shape(),
        "AdamW state: moment shapes ", shape_str(exp_avg[i].shape()), " / ",
        shape_str(exp_avg_sq[i].shape()), " do not match parameter ", params_[i].describe());
    backend_for(params_[i].device()).copy(exp_avg[i].to(params_[i].device()), exp_avg_[i]);
    backend_for(params_[i].device()).copy(exp_avg_sq[i].to(params_[i].device()), exp_avg_sq_[i]);
  }
  step_ = step;
}

double grad_norm(const std::vector<Tensor>& params) {
  double total = 0.0;
  for (const Tensor& p : params) {
    Tensor g = p.grad();
    if (!g.defined()) continue;
    total += backend_for(g.device()).sum_squares(g.contiguous());
  }
  return std::sqrt(total);
}

double clip_grad_norm(const std::vector<Tensor>& params, double max_norm) {
  SP_CHECK(max_norm > 0.0, "clip_grad_norm: max_norm must be positive, got ", max_norm);
  double norm = grad_norm(params);
  if (!std::isfinite(norm)) return norm;
  float coef = float(max_norm / (norm + 1e-6));
  if (coef >= 1.0f) return norm;
  for (const Tensor& p : params) {
    Tensor g = p.grad();
    if (g.defined()) backend_for(g.device()).affine(g, coef, 0.0f, g);
  }
  return norm;
}

}  // namespace sp
