// Target selection and the LM losses on selected rows.
#include "models/lm_loss.h"

#include "engine/error.h"
#include "engine/ops/ops.h"

namespace sp {

SelectedTargets select_targets(const Tensor& labels, bool shifted, int64_t ignore_index) {
  SP_CHECK(labels.dim() == 2, "labels must be [B, T], got ", labels.describe());
  const int64_t B = labels.size(0), T = labels.size(1), shift = shifted ? 1 : 0;
  std::vector<int64_t> values = labels.to_ints();
  std::vector<int64_t> rows, targets;
  for (int64_t b = 0; b < B; ++b)
    for (int64_t t = 0; t + shift < T; ++t) {
      int64_t target = values[size_t(b * T + t + shift)];
      if (target == ignore_index) continue;
      rows.push_back(b * T + t);
      targets.push_back(target);
    }
  const int64_t n = int64_t(rows.size());
  return {Tensor::from_ints(rows, {n}, DType::I64), Tensor::from_ints(targets, {n}, DType::I64)};
}

namespace {

Tensor selected_rows(const Tensor& hidden, const SelectedTargets& selected) {
  return index_select(hidden.reshape({-1, hidden.size(2)}), selected.rows);
}

void check_labels(const char* what, const Tensor& hidden, const Tensor& labels) {
  SP_CHECK(hidden.dim() == 3 && labels.shape() == Shape({hidden.size(0), hidden.size(1)}), what,
           ": labels ", labels.describe(), " do not match hidden states ", hidden.describe());
}

}  // namespace

CrossEntropyResult causal_lm_loss(const CausalLM& model, const Tensor& hidden,
                                  const Tensor& labels) {
  check_labels("causal_lm_loss", hidden, labels);
  SelectedTargets selected = select_targets(labels, /*shifted=*/true);
  return linear_cross_entropy(selected_rows(hidden, selected), model.output_embeddings(),
                              selected.targets);
}

CrossEntropyResult seq2seq_lm_loss(const Seq2SeqLM& model, const Tensor& decoder_hidden,
                                   const Tensor& labels) {
  check_labels("seq2seq_lm_loss", decoder_hidden, labels);
  SelectedTargets selected = select_targets(labels, /*shifted=*/false);
  Tensor rows = selected_rows(decoder_hidden, selected);
  if (model.output_scale() != 1.0f) rows = scale(rows, model.output_scale());
  return linear_cross_entropy(rows, model.output_embeddings(), selected.targets);
}

}  // namespace sp
