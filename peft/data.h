// Training data: JSONL examples ({"input", "output", optional "task"}), tokenization with label
// masking for CAUSAL_LM and SEQ_2_SEQ_LM, truncation, seeded shuffling, bucketing and batching.
#pragma once

#include <cstdint>
#include <map>
#include <nlohmann/json.hpp>
#include <optional>
#include <string>
#include <vector>

#include "engine/tensor.h"
#include "peft/config.h"

namespace sp {

class Tokenizer;

/// One training example: a JSONL line {"input": ..., "output": ..., "task": ...}.
struct Example {
  std::string input;
  std::string output;
  std::optional<std::string> task;  ///< as written in the file: a name, or an integer id as text
  int64_t line = 0;                 ///< 1-based line number in its file
};

/// Examples with the file they came from (error messages name it).
struct Dataset {
  std::string source;
  std::vector<Example> examples;
  int64_t skipped_lines = 0;  ///< malformed lines skipped with --skip-bad-lines
};

/// A JSONL row's "task" value as text: a name, or an integer id from 0 to kMaxTasks - 1 (also
/// when written as a digit string). Empty, with `problem` set, when the value is neither.
std::string parse_task_value(const nlohmann::json& value, std::string& problem);

/// Reads a JSONL file. A malformed line is an error naming the file, the line and the field,
/// unless skip_bad_lines, which skips it (with a warning) and counts it.
Dataset load_jsonl(const std::string& path, bool skip_bad_lines = false);

/// Maps the task labels of examples to ids: integers are used as given; names get ids in the
/// order of `names` (when given) or sorted order. Throws for unknown names.
class TaskIndex {
 public:
  static TaskIndex from_examples(const std::vector<Example>& examples);
  static TaskIndex from_names(std::vector<std::string> names);
  /// The task id of an example; throws naming `source` and the line for unknown tasks.
  int64_t id_of(const Example& example, const std::string& source) const;
  const std::vector<std::string>& names() const { return names_; }
  int64_t size() const { return names_.empty() ? max_integer_id_ + 1 : int64_t(names_.size()); }

 private:
  std::vector<std::string> names_;
  int64_t max_integer_id_ = -1;
};

/// One tokenized example. Causal: ids = input + output + EOS, labels -100 over the input.
/// Seq2seq: ids = encoder input, labels = target ids (decoder side).
struct TokenizedExample {
  std::vector<int64_t> input_ids;
  std::vector<int64_t> labels;  ///< causal: same length as input_ids; seq2seq: the targets
  int64_t task_id = -1;
  size_t example_index = 0;
};

/// How tokenize_examples() builds sequences.
struct TokenizeOptions {
  TaskType task_type = TaskType::kCausalLm;
  /// Causal: the whole sequence (text only, prompts excluded). When longer, tokens are dropped
  /// from the START of the input first (the end of the input is what conditions the output),
  /// then from the end of the output (the EOS goes first). Seq2seq: the encoder input keeps its
  /// start and its EOS.
  int64_t max_length = 512;
  int64_t max_target_length = 128;  ///< seq2seq labels, same rule as the output above
};

/// Tokenizes every example (with task ids from `tasks` when given, else -1).
std::vector<TokenizedExample> tokenize_examples(const Dataset& data, const Tokenizer& tokenizer,
                                                const TaskIndex* tasks,
                                                const TokenizeOptions& options);

/// A padded batch of tokenized examples, ready for PeftBatch.
struct Batch {
  Tensor input_ids;       ///< I64 [B, T], right padded
  Tensor attention_mask;  ///< I64 [B, T]
  Tensor labels;          ///< I64 [B, T] (causal) or [B, L] (seq2seq), -100 on padding
  Tensor task_ids;        ///< I64 [B] when tasks are present
  std::vector<size_t> example_indices;
  int64_t text_tokens = 0;  ///< non-padding input tokens (throughput counts)
};

/// Pads examples[indices] on the right with `pad_id` (labels with -100) into one Batch.
Batch collate(const std::vector<TokenizedExample>& examples, const std::vector<size_t>& indices,
              int64_t pad_id);

/// The order of one epoch: a seeded permutation (epoch-dependent), optionally bucketed so that
/// each run of `bucket_batches` batches holds examples of similar length.
std::vector<size_t> epoch_order(const std::vector<TokenizedExample>& examples, uint64_t seed,
                                int64_t epoch, bool shuffle, int64_t batch_size,
                                int64_t bucket_batches);

}  // namespace sp
