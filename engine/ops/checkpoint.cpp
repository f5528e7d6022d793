// checkpoint: a node whose backward replays the forward with recording on and backpropagates
// through the replay.
#include "engine/ops/checkpoint.h"

#include "engine/autograd.h"
#include "engine/error.h"

namespace sp {

Tensor checkpoint(const std::function<Tensor(const std::vector<Tensor>&)>& fn,
                  const std::vector<Tensor>& inputs) {
  Tensor out;
  {
    NoGradGuard no_grad;
    out = fn(inputs);
  }
  if (!any_requires_grad(inputs)) return out;
  std::vector<Tensor> saved;
  for (const Tensor& t : inputs) saved.push_back(t.defined() ? t.detach() : Tensor());
  Tensor result = out.detach();
  record(result, "checkpoint", inputs, [fn, saved](const Tensor& g, const NeedsGrad& need) {
    GradModeGuard record_replay(true);  // backward runs with recording off
    std::vector<Tensor> replay_inputs;
    for (size_t i = 0; i < saved.size(); ++i) {
      Tensor t = saved[i];
      if (t.defined() && need[i]) t = t.detach().set_requires_grad(true);
      replay_inputs.push_back(t);
    }
    Tensor replay = fn(replay_inputs);
    SP_CHECK(replay.shape() == g.shape(), "checkpoint: the replayed forward produced ",
             replay.describe(), " but the gradient is ", g.describe());
    std::vector<Tensor> grads(saved.size());
    if (replay.requires_grad()) {
      replay.backward(g);
      for (size_t i = 0; i < saved.size(); ++i)
        if (need[i]) grads[i] = replay_inputs[i].grad();
    }
    for (size_t i = 0; i < saved.size(); ++i)
      if (need[i] && !grads[i].defined())
        grads[i] = Tensor::zeros(saved[i].shape(), saved[i].dtype(), saved[i].device());
    return grads;
  });
  return result;
}

}  // namespace sp
