// The one place command-line values are checked. Every numeric or enum flag carries a validator
// from here (CLI11 runs it on the text at parse time, so a bad value is a usage error, exit 2,
// before any file is read); checks that need the loaded model (its context length) run right
// after loading, before anything sized by a flag is allocated, and also throw UsageError.
#pragma once

#include <CLI/CLI.hpp>
#include <cstdint>
#include <functional>
#include <limits>
#include <stdexcept>
#include <string>
#include <vector>

#include "cli/common.h"
#include "peft/config.h"
#include "peft/data.h"

namespace sp::cli {

// Upper bounds on sizes taken from flags. They are far above any real use and far below where a
// size times an element width overflows int64 or asks for terabytes, so a typo fails at once
// with the flag named instead of allocating or looping forever.
inline constexpr int64_t kMaxBatchSize = int64_t(1) << 20;  // --batch-size, --grad-accum, ...
inline constexpr int64_t kMaxSteps = 1'000'000'000'000;     // --max-steps, --save-every, ...
inline constexpr int64_t kMaxEpochs = 1'000'000;            // --epochs
inline constexpr int64_t kMaxTokens = int64_t(1) << 20;     // lengths and new-token counts
// Soft-prompt sizes (kMaxVirtualTokens, kMaxTasks, kMaxRanks, kMaxAdapterElements) are bounded
// by peft/config.h, which config files are checked against too.
// bench: text tokens of one synthetic batch (--batch-size x --seq-len).
inline constexpr int64_t kMaxBatchTokens = int64_t(1) << 24;

// A bad command-line value or combination of values: main() prints it and exits 2.
class UsageError : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

// Throws UsageError("<flag>: <message>").
[[noreturn]] void usage_error(const std::string& flag, const std::string& message);

// Runs `check`; an sp::Error of kind kInvalidArgument from it (a value that is wrong, not a
// file that is) becomes a UsageError naming `flag`.
void as_usage(const std::string& flag, const std::function<void()>& check);

// Validators. Integers are parsed strictly (no sign for unsigned, no trailing text, no
// saturation: a value that does not fit int64 is refused, not clamped).
CLI::Validator integer(int64_t lo, int64_t hi);
CLI::Validator unsigned64();  // seeds: 0 .. 2^64-1
enum class Bound { kClosed, kOpen };
// A finite real in [lo, hi] (or open at either end); hi = infinity: no upper bound.
// `float32`: the value must also stay finite as a 32-bit float.
CLI::Validator real(double lo, double hi, Bound lo_bound = Bound::kClosed,
                    Bound hi_bound = Bound::kClosed, bool float32 = false);
inline constexpr double kNoLimit = std::numeric_limits<double>::infinity();
// An enum value: `parse` throws sp::Error for an invalid one. A value that parses but is
// unsupported on this build (ErrorKind::kUnsupported) passes, to exit 4 when it is used.
CLI::Validator choice(const std::string& values, std::function<void(const std::string&)> parse);

// Where a size came from, for messages: a flag (a bad value is a usage error, exit 2) or a
// config file field (bad input, exit 1).
struct Setting {
  std::string name;  // "--max-length" or "<file>: max_length"
  bool flag = true;
};
[[noreturn]] void refuse(const Setting& setting, const std::string& message);

// Positions a causal model leaves for text after `virtual_tokens` soft-prompt tokens; refuses a
// soft prompt that leaves none. Unbounded models (T5's relative positions) give kMaxTokens.
int64_t text_positions(const ModelInfo& info, int64_t virtual_tokens, const Setting& virtual_from);

// Refuses a soft prompt (with its MPT factors) above kMaxAdapterElements, before allocating it.
void check_adapter_size(const PromptTuningConfig& prompt, int64_t token_dim,
                        const Setting& virtual_from);

// The --max-length to use: a value given explicitly must fit `room`; the default is ours, so
// when the model is shorter it is lowered to `room` with a note.
int64_t fit_max_length(int64_t max_length, bool given, int64_t room, const Setting& from,
                       const CommonOptions& common);

// exact_match generation needs one prompt position plus max_new_tokens within `room`.
void check_generation_fits(int64_t max_new_tokens, int64_t room, const Setting& from);

// Every evaluation row's generation prompt plus max_new_tokens must fit `room`; refuses the
// first that does not, naming its file and line (bad data: exit 1).
void check_eval_rows_fit(const Dataset& data, const std::vector<TokenizedExample>& examples,
                         int64_t max_new_tokens, int64_t room, int64_t virtual_tokens);

}  // namespace sp::cli
