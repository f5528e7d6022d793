// Shared command plumbing.
#include "cli/common.h"
#include "cli/validate.h"

#include <CLI/CLI.hpp>
#include <cstdio>

#include "engine/backend.h"
#include "engine/error.h"
#include "engine/log.h"
#include "engine/thread_pool.h"
#include "models/model_loader.h"

namespace sp::cli {

void add_common_options(CLI::App& command, CommonOptions& options) {
  command
      .add_option("--device", options.device,
                  "cpu, cuda-emu (CUDA kernels emulated on the CPU) or cuda[:N]")
      ->capture_default_str()
      ->check(choice("cpu|cuda-emu|cuda[:N]", [](const std::string& s) { Device::parse(s); }));
  command
      .add_option("--threads", options.threads,
                  "CPU threads (default: SOFTPROMPT_NUM_THREADS or all cores)")
      ->check(integer(1, 1024));
  command.add_flag("-q,--quiet", options.quiet, "only print results and errors");
}

Device apply_common_options(const CommonOptions& options) {
  set_quiet(options.quiet);
  if (options.threads > 0) set_num_threads(options.threads);
  Device device = Device::parse(options.device);
  if (!backend_available(device))
    fail(ErrorKind::kUnsupported, "device ", device.str(), " is not available in this build or on this machine");
  return device;
}

LoadedModel load_model(const std::string& dir, Device device) {
  LoadedModel loaded;
  loaded.dir = dir;
  if (read_model_type(dir) == "t5")
    loaded.seq2seq = load_seq2seq_lm(dir, device);
  else
    loaded.causal = load_causal_lm(dir, device);
  loaded.tokenizer = load_tokenizer(dir);
  if (loaded.tokenizer->vocab_size() > loaded.info().vocab_size)
    fail(ErrorKind::kFormat, dir, ": the tokenizer has ", loaded.tokenizer->vocab_size(),
         " tokens but the model's vocab_size is ", loaded.info().vocab_size);
  return loaded;
}

std::unique_ptr<PeftModel> LoadedModel::peft() const {
  return causal ? std::make_unique<PeftModel>(causal, tokenizer)
                : std::make_unique<PeftModel>(seq2seq, tokenizer);
}

void note(const CommonOptions& options, const std::string& message) {
  if (!options.quiet) std::fprintf(stderr, "softprompt: %s\n", message.c_str());
}

}  // namespace sp::cli
