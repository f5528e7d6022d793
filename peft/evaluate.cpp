// Evaluation loops.
#include "peft/evaluate.h"

#include <algorithm>
#include <cmath>

#include "engine/autograd.h"
#include "engine/error.h"
#include "engine/ops/ops.h"
#include "models/lm_loss.h"
#include "models/tokenizer.h"

namespace sp {

Metric parse_metric(const std::string& text) {
  if (text == "loss") return Metric::kLoss;
  if (text == "exact_match") return Metric::kExactMatch;
  if (text == "token_accuracy") return Metric::kTokenAccuracy;
  fail(ErrorKind::kInvalidArgument, "unknown metric '", text,
       "': expected loss, exact_match or token_accuracy");
}

const char* metric_name(Metric metric) {
  switch (metric) {
    case Metric::kLoss:
      return "loss";
    case Metric::kExactMatch:
      return "exact_match";
    case Metric::kTokenAccuracy:
      return "token_accuracy";
  }
  return "?";
}

std::string strip(const std::string& text) {
  const char* space = " \t\n\r\f\v";
  size_t begin = text.find_first_not_of(space);
  if (begin == std::string::npos) return "";
  size_t end = text.find_last_not_of(space);
  return text.substr(begin, end - begin + 1);
}

namespace {

// What generation conditions on: the tokens before the first counted label (causal LM), or the
// whole encoder input (seq2seq).
std::vector<int64_t> generation_prompt(const PeftModel& model, const TokenizedExample& e) {
  if (model.is_seq2seq()) return e.input_ids;
  size_t n = 0;
  while (n < e.labels.size() && e.labels[n] == -100) ++n;
  return std::vector<int64_t>(e.input_ids.begin(), e.input_ids.begin() + long(n));
}

}  // namespace

EvalResult evaluate(const PeftModel& model, const Tokenizer& tokenizer, const Dataset& data,
                    const std::vector<TokenizedExample>& examples, const EvalOptions& options) {
  NoGradGuard no_grad;
  SP_CHECK(options.batch_size > 0, "evaluation batch size must be positive");
  const int ranks = options.communicator ? options.communicator->size() : 1;
  const int rank = options.communicator ? options.communicator->rank() : 0;
  SP_CHECK(ranks == 1 || !options.keep_predictions,
           "evaluate: keeping predictions needs a single process (they are not gathered)");
  EvalResult result;
  result.examples = int64_t(examples.size());
  // Per batch: loss sum, counted targets, correct rows. Each batch is scored by one rank and the
  // others hold zeros there, so the sum over ranks is exact and the totals below add the batches
  // in file order: every rank count gives the single-process result bit for bit.
  const size_t batch_size = size_t(options.batch_size);
  const size_t batches = (examples.size() + batch_size - 1) / batch_size;
  std::vector<double> loss_sums(batches, 0.0), counts(batches, 0.0), correct(batches, 0.0);
  for (size_t b = 0; b < batches; ++b) {
    if (int(b % size_t(ranks)) != rank) continue;
    const size_t start = b * batch_size;
    std::vector<size_t> indices;
    for (size_t i = start; i < std::min(examples.size(), start + batch_size); ++i)
      indices.push_back(i);
    Batch batch = collate(examples, indices, options.pad_id);
    PeftBatch pb{batch.input_ids, batch.attention_mask, batch.labels, batch.task_ids, {}};
    PeftOutput out = model.forward(pb, {}, false, options.use_adapter);
    loss_sums[b] = double(out.loss.item()) * double(out.counted_targets);
    counts[b] = double(out.counted_targets);

    if (options.metric == Metric::kTokenAccuracy) {
      // Correct when the argmax at every counted position is its label.
      SelectedTargets selected = select_targets(out.labels, model.labels_are_shifted());
      Tensor rows = index_select(out.hidden.reshape({-1, out.hidden.size(2)}), selected.rows);
      std::vector<float> logits = model.logits(rows).to_floats();
      std::vector<int64_t> targets = selected.targets.to_ints(), row_ids = selected.rows.to_ints();
      const int64_t V = model.base_info().vocab_size, width = out.labels.size(1);
      std::vector<bool> ok(indices.size(), true);
      for (size_t r = 0; r < targets.size(); ++r) {
        const float* row = logits.data() + r * size_t(V);
        int64_t argmax = int64_t(std::max_element(row, row + V) - row);
        if (argmax != targets[r]) ok[size_t(row_ids[r] / width)] = false;
      }
      for (bool c : ok) correct[b] += c ? 1 : 0;
    } else if (options.metric == Metric::kExactMatch) {
      std::vector<std::vector<int64_t>> prompts;
      std::vector<int64_t> tasks;
      for (size_t i : indices) {
        prompts.push_back(generation_prompt(model, examples[i]));
        if (examples[i].task_id >= 0) tasks.push_back(examples[i].task_id);
      }
      GenerationConfig gen;
      gen.max_new_tokens = options.max_new_tokens;
      gen.eos_token_id = tokenizer.eos_id();
      std::vector<std::vector<int64_t>> outputs = model.generate(
          prompts, gen, {}, tasks.size() == indices.size() ? tasks : std::vector<int64_t>{},
          options.use_adapter);
      for (size_t k = 0; k < indices.size(); ++k) {
        std::vector<int64_t> ids = outputs[k];
        if (!ids.empty() && gen.eos_token_id && ids.back() == *gen.eos_token_id) ids.pop_back();
        std::string text = tokenizer.decode(ids, true);
        const Example& source = data.examples[examples[indices[k]].example_index];
        if (strip(text) == strip(source.output)) correct[b] += 1;
        if (options.keep_predictions) result.predictions.push_back(text);
      }
    }
  }
  if (ranks > 1) {
    std::vector<double> all;
    for (const auto* part : {&loss_sums, &counts, &correct})
      all.insert(all.end(), part->begin(), part->end());
    options.communicator->all_reduce_sum(std::span<double>(all));
    std::copy(all.begin(), all.begin() + long(batches), loss_sums.begin());
    std::copy(all.begin() + long(batches), all.begin() + long(2 * batches), counts.begin());
    std::copy(all.begin() + long(2 * batches), all.end(), correct.begin());
  }
  double loss_sum = 0.0;
  int64_t loss_count = 0;
  for (size_t b = 0; b < batches; ++b) {
    loss_sum += loss_sums[b];
    loss_count += int64_t(counts[b]);
    result.correct += int64_t(correct[b]);
  }
  result.loss = loss_count == 0 ? 0.0 : loss_sum / double(loss_count);
  if (options.metric != Metric::kLoss && result.examples > 0)
    result.accuracy = double(result.correct) / double(result.examples);
  return result;
}

}  // namespace sp
