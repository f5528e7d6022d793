// softprompt inspect: a summary of a model directory or a PEFT adapter directory.
#include <CLI/CLI.hpp>
#include <cstdio>
#include <filesystem>

#include "cli/commands.h"
#include "cli/common.h"
#include "engine/error.h"
#include "engine/safetensors.h"
#include "models/model_loader.h"
#include "peft/adapter_io.h"
#include "peft/peft_model.h"

namespace sp::cli {

namespace fs = std::filesystem;

CommandRunner add_inspect_command(CLI::App& app) {
  struct Options {
    CommonOptions common;
    std::string path, model;
  };
  auto o = std::make_shared<Options>();
  CLI::App* cmd = app.add_subcommand("inspect", "Summarise a model directory or a PEFT adapter directory");
  cmd->footer(kExitCodeHelp);
  add_common_options(*cmd, o->common);
  cmd->add_option("path", o->path, "model or adapter directory")->required();
  cmd->add_option("--model", o->model, "with an adapter: the base model, to print PEFT's trainable-parameter line");

  return [o]() -> int {
    Device device = apply_common_options(o->common);
    if (fs::exists(fs::path(o->path) / kAdapterConfigFile)) {
      AdapterFiles files = read_adapter_files(o->path);
      std::printf("PEFT adapter: %s\n%s\n", o->path.c_str(), files.config.to_adapter_config_text().c_str());
      int64_t count = 0;
      for (auto& [name, t] : files.tensors) {
        std::printf("  %-20s %s\n", name.c_str(), t.describe().c_str());
        count += t.numel();
      }
      std::printf("trainable parameters: %lld\n", (long long)count);
      if (!o->model.empty()) {
        LoadedModel loaded = load_model(o->model, device, model_dtype(o->common, device));
        std::unique_ptr<PeftModel> model = loaded.peft();
        model->load_adapter(o->path, "default");
        std::printf("%s\n", model->trainable_parameters_summary().c_str());
      }
      return kExitOk;
    }
    std::string type = read_model_type(o->path);
    LoadedModel loaded = load_model(o->path, device, model_dtype(o->common, device));
    const ModelInfo& info = loaded.info();
    std::printf("model: %s (%s)\n", o->path.c_str(), type.c_str());
    std::printf("  hidden size %lld, layers %lld, heads %lld, vocab %lld, max positions %lld\n",
                (long long)info.token_dim, (long long)info.num_layers, (long long)info.num_heads,
                (long long)info.vocab_size, (long long)info.max_positions);
    std::printf("  parameters %lld (frozen), weights %s on %s\n", (long long)info.parameter_count,
                (loaded.causal ? loaded.causal->word_embeddings() : loaded.seq2seq->word_embeddings()).describe().c_str(),
                device.str().c_str());
    std::printf("  tokenizer: %s, %lld tokens, eos %s, pad %s\n", loaded.tokenizer->kind().c_str(),
                (long long)loaded.tokenizer->vocab_size(),
                loaded.tokenizer->eos_id() ? std::to_string(*loaded.tokenizer->eos_id()).c_str() : "none",
                loaded.tokenizer->pad_id() ? std::to_string(*loaded.tokenizer->pad_id()).c_str() : "none");
    return kExitOk;
  };
}

}  // namespace sp::cli
