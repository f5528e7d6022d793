// Shifted-label selection and the causal LM loss on selected rows.
#include "models/lm_loss.h"

#include "engine/error.h"
#include "engine/ops/embedding.h"

namespace sp {

SelectedTargets shifted_targets(const Tensor& labels, int64_t ignore_index) {
  SP_CHECK(labels.dim() == 2, "labels must be [B, T], got ", labels.describe());
  const int64_t B = labels.size(0), T = labels.size(1);
  std::vector<int64_t> values = labels.to_ints();
  std::vector<int64_t> rows, targets;
  for (int64_t b = 0; b < B; ++b)
    for (int64_t t = 0; t + 1 < T; ++t) {
      int64_t target = values[size_t(b * T + t + 1)];
      if (target == ignore_index) continue;
      rows.push_back(b * T + t);
      targets.push_back(target);
    }
  const int64_t n = int64_t(rows.size());
  return {Tensor::from_ints(rows, {n}, DType::I64, labels.device()),
          Tensor::from_ints(targets, {n}, DType::I64, labels.device())};
}

CrossEntropyResult causal_lm_loss(const CausalLM& model, const Tensor& hidden,
                                  const Tensor& labels) {
  SP_CHECK(hidden.dim() == 3 && labels.shape() == Shape({hidden.size(0), hidden.size(1)}),
           "causal_lm_loss: labels ", labels.describe(), " do not match hidden states ",
           hidden.describe());
  SelectedTargets selected = shifted_targets(labels.to(hidden.device()));
  Tensor flat = hidden.reshape({-1, hidden.size(2)});
  Tensor rows = index_select(flat, selected.rows);
  return cross_entropy(model.logits(rows), selected.targets);
}

}  // namespace sp
