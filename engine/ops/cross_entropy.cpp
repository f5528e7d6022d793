// cross_entropy op: per-row losses from the backend, mean over counted rows, fused backward.
#include "engine/ops/cross_entropy.h"

#include <limits>

#include "engine/autograd.h"
#include "engine/ops/common.h"

namespace sp {

CrossEntropyResult cross_entropy(const Tensor& logits_in, const Tensor& targets_in,
                                 int64_t ignore_index) {
  ops_detail::check_defined("cross_entropy", {&logits_in, &targets_in});
  ops_detail::check_float_inputs("cross_entropy", {&logits_in});
  ops_detail::check_index_tensor("cross_entropy", targets_in, logits_in);
  const int64_t V = logits_in.size(-1);
  const int64_t rows = logits_in.numel() / std::max<int64_t>(V, 1);
  SP_CHECK(targets_in.numel() == rows, "cross_entropy: ", targets_in.describe(),
           " has a different number of rows than logits ", logits_in.describe());
  Tensor logits = logits_in.contiguous().view({rows, V});
  Tensor targets = targets_in.contiguous().view({rows});
  int64_t counted = 0;
  for (int64_t t : targets.to_ints()) {
    if (t == ignore_index) continue;
    SP_CHECK(t >= 0 && t < V, "cross_entropy: target ", t, " is outside the vocabulary [0, ", V,
             ") and is not the ignore index ", ignore_index);
    ++counted;
  }
  Backend& backend = backend_for(logits.device());
  Tensor row_loss = Tensor::empty({rows}, DType::F32, logits.device());
  Tensor lse = Tensor::empty({rows}, DType::F32, logits.device());
  if (rows > 0) backend.cross_entropy_forward(logits, targets, ignore_index, row_loss, lse);
  // Sum in double on the host so the mean does not depend on the reduction order.
  double total = 0.0;
  for (float value : row_loss.to_floats()) total += double(value);
  // transformers divides by the count (NaN when every target is ignored); we report 0 there
  // and the trainer flags the batch.
  float mean = counted == 0 ? 0.0f : float(total / double(counted));
  Tensor loss = Tensor::full({}, mean, DType::F32, Device::cpu()).to(logits.device());
  record(loss, "cross_entropy", {logits_in},
         [logits = logits.detach(), targets, lse, ignore_index, counted, shape = logits_in.shape()](
             const Tensor& g, const NeedsGrad&) {
           Tensor d_logits = Tensor::empty(logits.shape(), logits.dtype(), logits.device());
           float upstream = g.item();
           float grad_scale = counted == 0 ? 0.0f : upstream / float(counted);
           if (logits.numel() > 0)
             backend_for(logits.device())
                 .cross_entropy_backward(logits, targets, ignore_index, lse, grad_scale, d_logits);
           return std::vector<Tensor>{d_logits.view(shape)};
         });
  return {loss, counted};
}

}  // namespace sp
