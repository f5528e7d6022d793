// Shared pieces of the softprompt commands: exit codes, options every command takes, loading a
// model directory with its tokenizer, and printing errors.
#pragma once

#include <memory>
#include <string>

#include "engine/device.h"
#include "engine/dist/communicator.h"
#include "models/causal_lm.h"
#include "models/seq2seq_lm.h"
#include "models/tokenizer.h"
#include "peft/peft_model.h"

namespace CLI {
class App;
}

namespace sp::cli {

// Documented in README.md and `softprompt --help`.
enum ExitCode : int {
  kExitOk = 0,
  kExitError = 1,          // bad input: files, configs, data, shapes, model/adapter mismatch
  kExitUsage = 2,          // bad command-line arguments
  kExitNumerical = 3,      // NaN/inf loss or gradients (training stopped; checkpoint kept)
  kExitUnsupported = 4,    // a valid request this build or machine cannot serve (e.g. cuda)
  kExitInternal = 5,       // a bug in softprompt
  kExitInterrupted = 130,  // SIGINT/SIGTERM during training (a checkpoint was saved)
};

inline constexpr const char* kExitCodeHelp =
    "Exit codes: 0 ok, 1 bad input (files, configs, data), 2 bad arguments, 3 NaN/inf in "
    "training, 4 unsupported on this build/machine (or out of memory), 5 internal error, 130 "
    "interrupted (checkpoint saved).";

struct CommonOptions {
  std::string device = "cpu";
  int threads = 0;  // 0: SOFTPROMPT_NUM_THREADS or all cores
  bool quiet = false;
  std::string dtype = "f32";  // f32, bf16 or auto: the frozen model's GEMM weights
};

// The data-parallel group of this process: MPI's when an MPI launcher started it (main() sets
// it), else a single process.
Communicator& ranks();
void set_ranks(Communicator* communicator);

// Adds --device, --dtype, --threads, --quiet to a command.
void add_common_options(CLI::App& command, CommonOptions& options);
// Applies threads/quiet; returns the parsed device. With several ranks on a machine, the default
// thread count is the cores divided among them and plain "cuda" means cuda:<local rank>.
Device apply_common_options(const CommonOptions& options);

// A Hugging Face model directory: a causal LM (gpt2) or a seq2seq model (t5), and its tokenizer.
struct LoadedModel {
  std::shared_ptr<CausalLM> causal;
  std::shared_ptr<Seq2SeqLM> seq2seq;
  std::shared_ptr<Tokenizer> tokenizer;
  std::string dir;
  const ModelInfo& info() const { return causal ? causal->info() : seq2seq->info(); }
  // A PeftModel (no adapters yet) over this model.
  std::unique_ptr<PeftModel> peft() const;
};

// The model dtype --dtype asks for on `device` ("auto": bf16 where the device multiplies bf16
// natively, else f32); says which and how GEMMs run unless quiet.
DType model_dtype(const CommonOptions& options, Device device);

// Loads the model directory and its tokenizer (errors name the directory and file).
LoadedModel load_model(const std::string& dir, Device device, DType dtype = DType::F32);

// Prints "softprompt: <message>" to stderr unless quiet; with several ranks, rank 0 alone does.
void note(const CommonOptions& options, const std::string& message);

}  // namespace sp::cli
