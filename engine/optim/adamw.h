// AdamW (torch.optim.AdamW semantics: decoupled weight decay, bias correction, eps after the
// square root) and clip_grad_norm (torch.nn.utils.clip_grad_norm_ semantics).
#pragma once

#include <cstdint>
#include <vector>

#include "engine/backend.h"
#include "engine/tensor.h"

namespace sp {

/// torch.optim.AdamW's hyperparameters with its defaults.
struct AdamWOptions {
  float lr = 1e-3f;
  float beta1 = 0.9f;
  float beta2 = 0.999f;
  float eps = 1e-8f;
  float weight_decay = 0.01f;
};

/// AdamW over a fixed list of parameters (for prompt tuning: PromptAdapter::parameters()).
/// Usage per step: loss.backward(); optimizer.step(); optimizer.zero_grad();
class AdamW {
 public:
  AdamW(std::vector<Tensor> params, AdamWOptions options);

  /// Applies one update to every parameter that has a gradient (torch skips grad=None too).
  void step();
  /// The trainer's step, decided on the device so a GPU step needs no host read: the gradients
  /// are clipped to max_grad_norm (0: not clipped) as torch's clip_grad_norm_ would, and the
  /// update is applied only when their global norm and every element of `guard` (F32 on the
  /// parameters' device, e.g. the step's losses; may be undefined) are finite. Returns the norm
  /// before clipping (F32 [1], on the parameters' device). A caller that reads a non-finite norm
  /// or guard value calls discard_skipped_step(), since the step count cannot know.
  Tensor step_if_finite(const Tensor& guard, double max_grad_norm);
  /// Takes back the step count of a step_if_finite whose update the device skipped.
  void discard_skipped_step();
  /// Drops the gradients of every parameter (the next backward starts from zero).
  void zero_grad();
  void set_lr(float lr) { options_.lr = lr; }
  float lr() const { return options_.lr; }
  const AdamWOptions& options() const { return options_; }
  int64_t steps_taken() const { return step_; }

  /// Optimiser state, for checkpoints: step count and the two moment buffers per parameter.
  const std::vector<Tensor>& exp_avg() const { return exp_avg_; }
  const std::vector<Tensor>& exp_avg_sq() const { return exp_avg_sq_; }
  void load_state(int64_t step, const std::vector<Tensor>& exp_avg,
                  const std::vector<Tensor>& exp_avg_sq);

 private:
  std::vector<Tensor> params_;
  AdamWOptions options_;
  int64_t step_ = 0;
  std::vector<Tensor> exp_avg_;
  std::vector<Tensor> exp_avg_sq_;

  // The parameters that have a gradient, with their moments; the update's hyperparameters.
  AdamWGroup group_with_gradients() const;
  AdamWUpdate next_update(double max_grad_norm);
};

/// Global 2-norm of all gradients; when above max_norm, scales every gradient by
/// max_norm / (norm + 1e-6). Returns the norm before clipping. Non-finite norms are returned
/// untouched (the caller decides; the trainer stops on them).
double clip_grad_norm(const std::vector<Tensor>& params, double max_norm);
/// Global 2-norm of all gradients, without clipping.
double grad_norm(const std::vector<Tensor>& params);

}  // namespace sp
