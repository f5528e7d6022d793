// JSONL parsing, tokenization with label masks, batching and epoch orders.
#include "peft/data.h"

#include <algorithm>
#include <nlohmann/json.hpp>
#include <numeric>
#include <set>

#include "engine/error.h"
#include "engine/input_file.h"
#include "engine/log.h"
#include "engine/ops/random.h"
#include "models/tokenizer.h"
#include "peft/config.h"

namespace sp {

namespace {

// Digit-only task names are integer task ids (as PEFT's task_ids), bounded by kMaxTasks.
bool is_integer_text(const std::string& s) {
  return !s.empty() && std::all_of(s.begin(), s.end(), [](char c) { return c >= '0' && c <= '9'; });
}

bool is_task_id_in_range(const std::string& s) {
  return s.size() <= 18 && std::stoll(s) < kMaxTasks;
}

}  // namespace

std::string parse_task_value(const nlohmann::json& value, std::string& problem) {
  if (value.is_string() &&
      (!is_integer_text(value.get<std::string>()) || is_task_id_in_range(value.get<std::string>())))
    return value.get<std::string>();
  if (value.is_number_integer() && value.get<int64_t>() >= 0 && value.get<int64_t>() < kMaxTasks)
    return std::to_string(value.get<int64_t>());
  problem = "field 'task' must be a name or an integer id from 0 to " +
            std::to_string(kMaxTasks - 1) + ", found " + value.dump();
  return "";
}

Dataset load_jsonl(const std::string& path, bool skip_bad_lines) {
  LineReader in(path);
  Dataset data;
  data.source = path;
  while (std::optional<std::string> next = in.next()) {
    const std::string& line = *next;
    const int64_t number = in.line_number();
    if (line.find_first_not_of(" \t\r") == std::string::npos) continue;  // blank lines
    std::string problem;
    Example example;
    example.line = number;
    try {
      nlohmann::json j = parse_json(line, "line");
      if (!j.is_object()) {
        problem = "expected a JSON object, found " + std::string(j.type_name());
      } else {
        for (const char* field : {"input", "output"}) {
          if (!j.contains(field)) {
            problem = std::string("missing field '") + field + "'";
            break;
          }
          if (!j[field].is_string()) {
            problem = std::string("field '") + field + "' must be a string, found " +
                      j[field].type_name();
            break;
          }
        }
        if (problem.empty()) {
          example.input = j["input"].get<std::string>();
          example.output = j["output"].get<std::string>();
          if (j.contains("task") && !j["task"].is_null()) example.task = parse_task_value(j["task"], problem);
        }
      }
    } catch (const Error& e) {
      problem = e.what();  // "line: not valid JSON: ..." or "line: JSON nested more than ..."
      problem.erase(0, std::string("line: ").size());
    }
    if (!problem.empty()) {
      std::string message = path + ":" + std::to_string(number) + ": " + problem;
      if (!skip_bad_lines)
        fail(ErrorKind::kFormat, message, " (use --skip-bad-lines to skip malformed lines)");
      warn(message, "; line skipped");
      ++data.skipped_lines;
      continue;
    }
    data.examples.push_back(std::move(example));
  }
  if (data.examples.empty())
    fail(ErrorKind::kFormat, path, ": no usable examples (", data.skipped_lines,
         " malformed lines skipped)");
  return data;
}

TaskIndex TaskIndex::from_examples(const std::vector<Example>& examples) {
  std::set<std::string> names;
  TaskIndex index;
  for (const Example& e : examples) {
    if (!e.task) continue;
    if (is_integer_text(*e.task))
      index.max_integer_id_ = std::max<int64_t>(index.max_integer_id_, std::stoll(*e.task));
    else
      names.insert(*e.task);
  }
  SP_CHECK(names.empty() || index.max_integer_id_ < 0,
           "tasks mix names and integer ids; use one or the other");
  index.names_.assign(names.begin(), names.end());
  return index;
}

TaskIndex TaskIndex::from_names(std::vector<std::string> names) {
  TaskIndex index;
  index.names_ = std::move(names);
  return index;
}

int64_t TaskIndex::id_of(const Example& e, const std::string& source) const {
  SP_CHECK(e.task.has_value(), source, ":", e.line,
           ": field 'task' is required for multitask prompt tuning");
  if (is_integer_text(*e.task) && names_.empty()) return std::stoll(*e.task);
  auto it = std::find(names_.begin(), names_.end(), *e.task);
  SP_CHECK(it != names_.end(), source, ":", e.line, ": unknown task '", *e.task, "'");
  return int64_t(it - names_.begin());
}

std::vector<TokenizedExample> tokenize_examples(const Dataset& data, const Tokenizer& tokenizer,
                                                const TaskIndex* tasks,
                                                const TokenizeOptions& options) {
  SP_CHECK(options.max_length > 0, "max_length must be positive");
  const std::optional<int64_t> eos = tokenizer.eos_id();
  std::vector<TokenizedExample> out;
  out.reserve(data.examples.size());
  for (size_t i = 0; i < data.examples.size(); ++i) {
    const Example& e = data.examples[i];
    TokenizedExample t;
    t.example_index = i;
    if (tasks) t.task_id = tasks->id_of(e, data.source);
    if (options.task_type == TaskType::kCausalLm) {
      SP_CHECK(eos.has_value(), "the tokenizer has no EOS token, which CAUSAL_LM training appends");
      std::vector<int64_t> input = tokenizer.encode(e.input, true);
      std::vector<int64_t> output = tokenizer.encode(e.output, false);
      output.push_back(*eos);
      const int64_t excess = int64_t(input.size() + output.size()) - options.max_length;
      if (excess > 0) {
        const int64_t from_input = std::min<int64_t>(excess, int64_t(input.size()));
        input.erase(input.begin(), input.begin() + from_input);
        output.resize(size_t(int64_t(output.size()) - (excess - from_input)));
      }
      t.input_ids = input;
      t.input_ids.insert(t.input_ids.end(), output.begin(), output.end());
      t.labels.assign(input.size(), -100);
      t.labels.insert(t.labels.end(), output.begin(), output.end());
    } else {
      std::vector<int64_t> input = tokenizer.encode(e.input, true);
      std::vector<int64_t> target = tokenizer.encode(e.output, true);
      auto clip = [&](std::vector<int64_t>& ids, int64_t limit) {
        if (int64_t(ids.size()) <= limit) return;
        const bool ends_with_eos = eos && !ids.empty() && ids.back() == *eos;
        ids.resize(size_t(limit));
        if (ends_with_eos) ids.back() = *eos;
      };
      clip(input, options.max_length);
      clip(target, options.max_target_length);
      t.input_ids = input;
      t.labels = target;
    }
    SP_CHECK(!t.input_ids.empty(), data.source, ":", e.line, ": the example tokenizes to nothing");
    out.push_back(std::move(t));
  }
  return out;
}

Batch collate(const std::vector<TokenizedExample>& examples, const std::vector<size_t>& indices,
              int64_t pad_id) {
  SP_CHECK(!indices.empty(), "collate: empty batch");
  const int64_t B = int64_t(indices.size());
  int64_t T = 0, L = 0;
  bool same_length_labels = true;
  for (size_t i : indices) {
    T = std::max<int64_t>(T, int64_t(examples[i].input_ids.size()));
    L = std::max<int64_t>(L, int64_t(examples[i].labels.size()));
    same_length_labels =
        same_length_labels && examples[i].labels.size() == examples[i].input_ids.size();
  }
  if (same_length_labels) L = T;  // causal: labels align with the inputs
  std::vector<int64_t> ids(size_t(B * T), pad_id), mask(size_t(B * T), 0),
      labels(size_t(B * L), -100);
  std::vector<int64_t> tasks;
  Batch batch;
  for (int64_t b = 0; b < B; ++b) {
    const TokenizedExample& e = examples[indices[size_t(b)]];
    std::copy(e.input_ids.begin(), e.input_ids.end(), ids.begin() + b * T);
    std::fill_n(mask.begin() + b * T, e.input_ids.size(), 1);
    std::copy(e.labels.begin(), e.labels.end(), labels.begin() + b * L);
    if (e.task_id >= 0) tasks.push_back(e.task_id);
    batch.text_tokens += int64_t(e.input_ids.size());
  }
  batch.input_ids = Tensor::from_ints(ids, {B, T});
  batch.attention_mask = Tensor::from_ints(mask, {B, T});
  batch.labels = Tensor::from_ints(labels, {B, L});
  if (int64_t(tasks.size()) == B) batch.task_ids = Tensor::from_ints(tasks, {B});
  batch.example_indices = indices;
  return batch;
}

std::vector<size_t> epoch_order(const std::vector<TokenizedExample>& examples, uint64_t seed,
                                int64_t epoch, bool shuffle, int64_t batch_size,
                                int64_t bucket_batches) {
  std::vector<size_t> order(examples.size());
  std::iota(order.begin(), order.end(), 0);
  if (shuffle) {
    // Fisher-Yates with a Philox stream keyed by (seed, epoch): the same order on every run.
    Generator gen(seed, uint64_t(epoch) << 40);
    for (size_t i = order.size(); i > 1; --i)
      std::swap(order[i - 1], order[size_t(gen.uniform_int(int64_t(i)))]);
  }
  if (bucket_batches > 1) {
    // Sort runs of bucket_batches * batch_size examples by length: less padding, same mix.
    const size_t run = size_t(bucket_batches * batch_size);
    for (size_t start = 0; start < order.size(); start += run) {
      auto end = order.begin() + long(std::min(order.size(), start + run));
      std::stable_sort(order.begin() + long(start), end, [&](size_t a, size_t b) {
        return examples[a].input_ids.size() < examples[b].input_ids.size();
      });
    }
  }
  return order;
}

}  // namespace sp
