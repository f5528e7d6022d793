// Command-line validation: strict parsing, bounds, enum choices, and the model-context checks.
#include "cli/validate.h"

#include <charconv>
#include <cmath>
#include <sstream>

#include "engine/error.h"

namespace sp::cli {

namespace {

std::string bound_text(int64_t lo, int64_t hi) {
  if (hi == std::numeric_limits<int64_t>::max()) return ">= " + std::to_string(lo);
  return "in [" + std::to_string(lo) + ", " + std::to_string(hi) + "]";
}

std::string number(double v) {
  std::ostringstream out;
  out << v;
  return out.str();
}

std::string bound_text(double lo, double hi, Bound lo_bound, Bound hi_bound) {
  const std::string low = number(lo);
  if (std::isinf(hi)) return std::string(lo_bound == Bound::kOpen ? "> " : ">= ") + low;
  return std::string(lo_bound == Bound::kOpen ? "in (" : "in [") + low + ", " + number(hi) +
         (hi_bound == Bound::kOpen ? ")" : "]");
}

template <typename T>
std::string parse_integer(const std::string& text, T& value) {
  const char* end = text.data() + text.size();
  auto [ptr, ec] = std::from_chars(text.data(), end, value);
  if (ec == std::errc::result_out_of_range) return "out of range";
  if (ec != std::errc() || ptr != end) return "not an integer";
  return "";
}

}  // namespace

void usage_error(const std::string& flag, const std::string& message) {
  throw UsageError(flag + ": " + message);
}

void as_usage(const std::string& flag, const std::function<void()>& check) {
  try {
    check();
  } catch (const Error& e) {
    if (e.kind() != ErrorKind::kInvalidArgument) throw;
    usage_error(flag, e.what());
  }
}

CLI::Validator integer(int64_t lo, int64_t hi) {
  const std::string expected = "an integer " + bound_text(lo, hi);
  return CLI::Validator(
      [=](std::string& text) -> std::string {
        int64_t value = 0;
        std::string problem = parse_integer(text, value);
        if (problem.empty() && (value < lo || value > hi)) problem = "out of range";
        return problem.empty() ? ""
                               : "expected " + expected + ", got '" + text + "' (" + problem + ")";
      },
      "INT " + bound_text(lo, hi));
}

CLI::Validator unsigned64() {
  return CLI::Validator(
      [](std::string& text) -> std::string {
        uint64_t value = 0;
        std::string problem = parse_integer(text, value);
        return problem.empty() ? ""
                               : "expected an integer in [0, 18446744073709551615], got '" + text +
                                     "' (" + problem + ")";
      },
      "UINT64");
}

CLI::Validator real(double lo, double hi, Bound lo_bound, Bound hi_bound, bool float32) {
  const std::string range = bound_text(lo, hi, lo_bound, hi_bound);
  return CLI::Validator(
      [=](std::string& text) -> std::string {
        double value = 0;
        const char* end = text.data() + text.size();
        auto [ptr, ec] = std::from_chars(text.data(), end, value);
        std::string problem;
        if (ec != std::errc() || ptr != end)
          problem = "not a number";
        else if (!std::isfinite(value) || (float32 && !std::isfinite(float(value))))
          problem = float32 ? "not finite as a 32-bit float" : "not finite";
        else if (value < lo || (lo_bound == Bound::kOpen && value == lo) || value > hi ||
                 (hi_bound == Bound::kOpen && value == hi))
          problem = "out of range";
        return problem.empty()
                   ? ""
                   : "expected a finite number " + range + ", got '" + text + "' (" + problem + ")";
      },
      "FLOAT " + range);
}

CLI::Validator choice(const std::string& values, std::function<void(const std::string&)> parse) {
  return CLI::Validator(
      [parse](std::string& text) -> std::string {
        try {
          parse(text);
        } catch (const Error& e) {
          if (e.kind() != ErrorKind::kUnsupported) return e.what();
        }
        return "";
      },
      values);
}

void refuse(const Setting& setting, const std::string& message) {
  if (setting.flag) usage_error(setting.name, message);
  fail(ErrorKind::kInvalidArgument, setting.name, ": ", message);
}

int64_t text_positions(const ModelInfo& info, int64_t virtual_tokens, const Setting& virtual_from) {
  if (info.max_positions == 0) return std::numeric_limits<int64_t>::max();
  if (virtual_tokens >= info.max_positions)
    refuse(virtual_from, std::to_string(virtual_tokens) +
                             " virtual tokens leave no room for text in the model's " +
                             std::to_string(info.max_positions) + " positions (n_positions)");
  return info.max_positions - virtual_tokens;
}

void check_adapter_size(const PromptTuningConfig& prompt, int64_t token_dim,
                        const Setting& virtual_from) {
  // Bounded sizes (flags and validated config files), so the count cannot overflow.
  const int64_t count = prompt.trainable_elements(token_dim);
  if (count <= kMaxAdapterElements) return;
  const std::string flags =
      virtual_from.flag
          ? (prompt.is_multitask() ? "--num-virtual-tokens, --num-tasks or --num-ranks"
                                   : "--num-virtual-tokens")
          : "num_virtual_tokens, num_tasks or num_ranks";
  refuse(virtual_from, "the soft prompt would have " + std::to_string(count) +
                           " parameters, above the limit of " +
                           std::to_string(kMaxAdapterElements) + " (2^30): lower " + flags);
}

int64_t fit_max_length(int64_t max_length, bool given, int64_t room, const Setting& from,
                       const CommonOptions& common) {
  if (max_length <= room) return max_length;
  if (given)
    refuse(from, std::to_string(max_length) + " exceeds the " + std::to_string(room) +
                     " positions the model has for text after the soft prompt (n_positions minus "
                     "virtual tokens)");
  note(common, from.name + " " + std::to_string(max_length) +
                   " is longer than the model's context; using " + std::to_string(room) +
                   " (n_positions minus virtual tokens)");
  return room;
}

void check_generation_fits(int64_t max_new_tokens, int64_t room, const Setting& from) {
  if (room == std::numeric_limits<int64_t>::max() || max_new_tokens < room) return;
  refuse(from, std::to_string(max_new_tokens) +
                   " new tokens plus at least one prompt token exceed the " + std::to_string(room) +
                   " positions the model has after the soft prompt (expected at most " +
                   std::to_string(room - 1) + ")");
}

void check_eval_rows_fit(const Dataset& data, const std::vector<TokenizedExample>& examples,
                         int64_t max_new_tokens, int64_t room, int64_t virtual_tokens) {
  if (room == std::numeric_limits<int64_t>::max()) return;
  for (const TokenizedExample& e : examples) {
    // exact_match generates from the tokens before the first counted label.
    int64_t prompt = 0;
    while (prompt < int64_t(e.labels.size()) && e.labels[size_t(prompt)] == -100) ++prompt;
    if (prompt + max_new_tokens <= room) continue;
    fail(ErrorKind::kInvalidArgument, data.source, ":", data.examples[e.example_index].line,
         ": the input is ", prompt, " tokens; with ", virtual_tokens,
         " virtual tokens and --max-new-tokens ", max_new_tokens, " generation needs ",
         virtual_tokens + prompt + max_new_tokens, " positions but the model has ",
         room + virtual_tokens, " (shorten the input, or lower --max-new-tokens or --max-length)");
  }
}

}  // namespace sp::cli
