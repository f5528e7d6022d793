// softprompt forward: dump logits, loss and input/prompt-embedding gradients for a text to a
// safetensors file, so parity with transformers/PEFT can be checked from outside.
#include <CLI/CLI.hpp>
#include <cstdio>

#include "cli/commands.h"
#include "cli/common.h"
#include "cli/validate.h"
#include "engine/error.h"
#include "engine/ops/ops.h"
#include "engine/safetensors.h"
#include "models/lm_loss.h"
#include "peft/peft_model.h"

namespace sp::cli {

CommandRunner add_forward_command(CLI::App& app) {
  struct Options {
    CommonOptions common;
    std::string model, adapter, text, target, output;
    int64_t task = -1;
  };
  auto o = std::make_shared<Options>();
  CLI::App* cmd = app.add_subcommand(
      "forward",
      "Run one text through the model (and adapter) and save input_ids, logits, loss and gradients to safetensors");
  cmd->footer(kExitCodeHelp);
  add_common_options(*cmd, o->common);
  cmd->add_option("--model", o->model, "Hugging Face model directory")->required();
  cmd->add_option("--adapter", o->adapter, "PEFT adapter directory (prompt gradients are dumped too)");
  cmd->add_option("--text", o->text, "the text (causal LM: its own tokens are the labels; seq2seq: the encoder input)")->required();
  cmd->add_option("--target", o->target, "seq2seq: the target text (the labels)");
  cmd->add_option("--task", o->task, "task id for multitask adapters")
      ->check(integer(0, kMaxTasks - 1));
  cmd->add_option("--output", o->output, "safetensors file to write")->required();

  return [o]() -> int {
    Device device = apply_common_options(o->common);
    LoadedModel loaded = load_model(o->model, device, model_dtype(o->common, device));
    std::vector<int64_t> ids = loaded.tokenizer->encode(o->text, true);
    SP_CHECK(!ids.empty(), "forward: the text tokenizes to nothing");
    const int64_t T = int64_t(ids.size());
    Tensor input_ids = Tensor::from_ints(ids, {1, T});
    std::vector<std::pair<std::string, Tensor>> tensors{{"input_ids", input_ids}};
    Tensor labels = input_ids;
    if (loaded.seq2seq) {
      SP_CHECK(!o->target.empty(), "forward: a seq2seq model needs --target (the labels)");
      std::vector<int64_t> target = loaded.tokenizer->encode(o->target, true);
      labels = Tensor::from_ints(target, {1, int64_t(target.size())});
      tensors.push_back({"labels", labels});
    }
    Tensor loss;
    if (o->adapter.empty() && loaded.causal) {
      CausalLM& model = *loaded.causal;
      Tensor embeds = model.embed(input_ids.to(device)).detach().set_requires_grad(true);
      Tensor hidden = model.hidden_states(embeds, Tensor(), Tensor(), nullptr, {});
      tensors.push_back({"logits", model.logits(hidden).detach()});
      loss = causal_lm_loss(model, hidden, input_ids).loss;
      loss.backward();
      tensors.push_back({"grad_inputs_embeds", embeds.grad()});
    } else if (o->adapter.empty()) {
      Seq2SeqLM& model = *loaded.seq2seq;
      Tensor embeds = model.embed(input_ids.to(device)).detach().set_requires_grad(true);
      Tensor decoder_embeds =
          model.embed(model.shift_right(labels).to(device)).detach().set_requires_grad(true);
      Tensor hidden = model.decode(decoder_embeds, model.encode(embeds, Tensor(), {}), Tensor(),
                                   Tensor(), nullptr, {});
      tensors.push_back({"logits", model.logits(hidden).detach()});
      loss = seq2seq_lm_loss(model, hidden, labels).loss;
      loss.backward();
      tensors.push_back({"grad_inputs_embeds", embeds.grad()});
      tensors.push_back({"grad_decoder_inputs_embeds", decoder_embeds.grad()});
    } else {
      std::unique_ptr<PeftModel> model = loaded.peft();
      PromptAdapter& adapter = model->load_adapter(o->adapter, "default", /*trainable=*/true);
      PeftBatch batch;
      batch.input_ids = input_ids;
      batch.labels = labels;
      if (o->task >= 0) batch.task_ids = Tensor::from_ints({o->task}, {1});
      PeftOutput out = model->forward(batch, {}, /*return_logits=*/true);
      loss = out.loss;
      loss.backward();
      tensors.push_back({"logits", out.logits.detach()});
      for (auto& [name, param] : adapter.named_parameters())
        tensors.push_back({"grad_" + name, param.grad()});
    }
    tensors.push_back({"loss", loss.detach()});
    save_safetensors(o->output, tensors, {{"format", "pt"}, {"producer", "softprompt forward"}});
    std::printf("loss %.6f over %lld tokens; wrote %s\n", loss.item(), (long long)T, o->output.c_str());
    return kExitOk;
  };
}

}  // namespace sp::cli
