// Evaluation of a prompt-tuned model on tokenized examples: mean loss, and accuracy as exact
// match of the generated output or of the label tokens' argmax (classification).
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "engine/dist/communicator.h"
#include "peft/data.h"
#include "peft/peft_model.h"

namespace sp {

/// What evaluate() scores besides the loss.
enum class Metric {
  kLoss,           ///< loss only
  kExactMatch,     ///< greedy generation, decoded and stripped, equals the stripped output
  kTokenAccuracy,  ///< every label token is the argmax at its position (teacher forced)
};

Metric parse_metric(const std::string& text);  ///< "loss" | "exact_match" | "token_accuracy"
const char* metric_name(Metric metric);

/// How evaluate() batches, generates and scores.
struct EvalOptions {
  Metric metric = Metric::kExactMatch;
  int64_t batch_size = 8;
  int64_t max_new_tokens = 16;
  int64_t pad_id = 0;
  bool use_adapter = true;  ///< false: the frozen base model alone (the "untuned" baseline)
  bool keep_predictions = false;
  /// Data parallel: each rank scores every size()-th batch and the sums are combined, so every
  /// rank returns the single-process result. Null: this process scores everything.
  Communicator* communicator = nullptr;
};

/// Mean loss over counted targets, and the metric's accuracy.
struct EvalResult {
  double loss = 0.0;
  double accuracy = 0.0;  ///< fraction in [0, 1]; 0 when the metric is loss
  int64_t examples = 0;
  int64_t correct = 0;
  std::vector<std::string> predictions;  ///< decoded outputs, when kept
};

/// Scores the active adapter (or the bare model) on `examples` (tokenized from `data`) without
/// recording autograd; rows are batched in order, task ids come from the examples.
EvalResult evaluate(const PeftModel& model, const Tokenizer& tokenizer, const Dataset& data,
                    const std::vector<TokenizedExample>& examples, const EvalOptions& options);

/// Strips leading/trailing ASCII whitespace (the comparison exact match uses).
std::string strip(const std::string& text);

}  // namespace sp
