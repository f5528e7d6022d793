// softprompt generate: text from prompts, with one or several PEFT adapters on one frozen model
// (each prompt may pick its adapter and task).
#include <CLI/CLI.hpp>
#include <algorithm>
#include <cstdio>
#include <optional>
#include <nlohmann/json.hpp>

#include "cli/commands.h"
#include "cli/common.h"
#include "cli/train_pipeline.h"
#include "cli/validate.h"
#include "engine/error.h"
#include "engine/input_file.h"
#include "peft/data.h"

namespace sp::cli {

namespace {

// One line of --input: {"input": ..., "adapter": optional, "task": optional}. Unlike training
// data there is no "output" to require.
struct PromptRow {
  std::string input;
  std::optional<std::string> adapter, task;
  int64_t line = 0;
};

std::vector<PromptRow> read_prompt_rows(const std::string& path) {
  LineReader in(path);
  std::vector<PromptRow> rows;
  while (std::optional<std::string> text = in.next()) {
    const int64_t number = in.line_number();
    if (text->find_first_not_of(" \t\r") == std::string::npos) continue;  // blank lines
    const std::string where = path + ":" + std::to_string(number);
    const nlohmann::json j = parse_json(*text, where);
    if (!j.is_object())
      fail(ErrorKind::kFormat, where, ": expected a JSON object, found ", j.type_name());
    PromptRow row;
    row.line = number;
    auto input = j.find("input");
    if (input == j.end() || !input->is_string())
      fail(ErrorKind::kFormat, where, ": field 'input' must be a string, found ",
           input == j.end() ? std::string("nothing") : std::string(input->type_name()));
    row.input = input->get<std::string>();
    if (auto adapter = j.find("adapter"); adapter != j.end() && !adapter->is_null()) {
      if (!adapter->is_string())
        fail(ErrorKind::kFormat, where,
             ": field 'adapter' must be an adapter name (a string), found ", adapter->type_name());
      row.adapter = adapter->get<std::string>();
    }
    if (auto task = j.find("task"); task != j.end() && !task->is_null()) {
      std::string problem;
      row.task = parse_task_value(*task, problem);
      if (!problem.empty()) fail(ErrorKind::kFormat, where, ": ", problem);
    }
    rows.push_back(std::move(row));
  }
  if (rows.empty()) fail(ErrorKind::kFormat, path, ": no prompts");
  return rows;
}

}  // namespace

CommandRunner add_generate_command(CLI::App& app) {
  struct Options {
    CommonOptions common;
    std::string model, input_file;
    std::vector<std::string> adapters, prompts, row_adapters, tasks;
    GenerationConfig gen;
    bool json = false;
  };
  auto o = std::make_shared<Options>();
  o->gen.max_new_tokens = 32;
  CLI::App* cmd = app.add_subcommand("generate", "Generate text with a model and optional PEFT adapters");
  cmd->footer(kExitCodeHelp);
  add_common_options(*cmd, o->common);
  cmd->add_option("--model", o->model, "Hugging Face model directory")->required();
  cmd->add_option("--adapter", o->adapters, "PEFT adapter directory, or NAME=DIR; repeat to load several");
  cmd->add_option("--prompt", o->prompts, "prompt text (repeatable)");
  cmd->add_option("--input", o->input_file, "JSONL of prompts: {\"input\": ..., \"adapter\"/\"task\": optional}");
  cmd->add_option("--use", o->row_adapters, "adapter name for each --prompt, in order (default: the first adapter)");
  cmd->add_option("--task", o->tasks, "task (name or id) for each --prompt, or one for all (multitask adapters)");
  cmd->add_option("--max-new-tokens", o->gen.max_new_tokens,
                  "gpt2: virtual tokens + prompt + this must fit n_positions")
      ->capture_default_str()
      ->check(integer(1, kMaxTokens));
  cmd->add_flag("--do-sample", o->gen.do_sample, "sample instead of greedy decoding");
  cmd->add_option("--temperature", o->gen.temperature,
                  "sampling temperature (greedy decoding is the default; see --do-sample)")
      ->capture_default_str()
      ->check(real(0, kNoLimit, Bound::kOpen, Bound::kClosed, true));
  cmd->add_option("--top-k", o->gen.top_k, "0 = off; above the vocabulary size keeps every token")
      ->capture_default_str()
      ->check(integer(0, std::numeric_limits<int64_t>::max()));
  cmd->add_option("--top-p", o->gen.top_p, "nucleus sampling mass; 1 = off")
      ->capture_default_str()
      ->check(real(0, 1, Bound::kOpen, Bound::kClosed, true));
  cmd->add_option("--seed", o->gen.seed, "sampling seed")
      ->capture_default_str()
      ->check(unsigned64());
  cmd->add_flag("--json", o->json, "one JSON object per output line");

  return [o]() -> int {
    Device device = apply_common_options(o->common);
    LoadedModel loaded = load_model(o->model, device, model_dtype(o->common, device));
    std::unique_ptr<PeftModel> peft = loaded.peft();
    PeftModel& model = *peft;
    std::vector<std::string> names;
    std::map<std::string, std::vector<std::string>> task_names;
    for (const std::string& spec : o->adapters) {
      size_t eq = spec.find('=');
      std::string name = eq == std::string::npos ? "adapter" + std::to_string(names.size()) : spec.substr(0, eq);
      std::string dir = eq == std::string::npos ? spec : spec.substr(eq + 1);
      model.load_adapter(dir, name);
      task_names[name] = read_task_names(dir);
      names.push_back(name);
    }
    // The longest soft prompt bounds what --max-new-tokens may ask of a gpt2 context.
    if (!model.is_seq2seq()) {
      int64_t virtual_tokens = 0;
      for (const std::string& name : names)
        virtual_tokens =
            std::max(virtual_tokens, model.adapter(name).config().total_virtual_tokens());
      const int64_t room = text_positions(loaded.info(), virtual_tokens, {"--adapter", false});
      check_generation_fits(o->gen.max_new_tokens, room, {"--max-new-tokens"});
    }
    std::vector<std::string> texts = o->prompts, rows = o->row_adapters, tasks = o->tasks;
    if (!o->input_file.empty()) {
      const std::vector<PromptRow> input_rows = read_prompt_rows(o->input_file);
      // Each row runs with its own "adapter" (default: the first one). --prompt rows keep --use's
      // names, or the first adapter without --use; a --use count that does not match --prompt is
      // left for the check below to report.
      const bool extend_rows = !names.empty() && (rows.empty() || rows.size() == o->prompts.size());
      if (extend_rows && rows.empty()) rows.assign(o->prompts.size(), names[0]);
      std::string loaded_names;  // for the error below
      for (const std::string& name : names)
        loaded_names += (loaded_names.empty() ? "" : ", ") + name;
      for (const PromptRow& row : input_rows) {
        texts.push_back(row.input);
        if (row.task) tasks.push_back(*row.task);
        if (row.adapter) {
          const std::string where = o->input_file + ":" + std::to_string(row.line);
          SP_CHECK(!names.empty(), where, ": field 'adapter' names '", *row.adapter,
                   "', but no --adapter is loaded");
          SP_CHECK(std::find(names.begin(), names.end(), *row.adapter) != names.end(), where,
                   ": field 'adapter' names '", *row.adapter,
                   "', which is not loaded (loaded: ", loaded_names, ")");
        }
        if (extend_rows) rows.push_back(row.adapter.value_or(names[0]));
      }
    }
    SP_CHECK(!texts.empty(), "generate: give --prompt or --input");
    SP_CHECK(rows.empty() || rows.size() == texts.size(), "--use names ", rows.size(), " adapters for ", texts.size(), " prompts");
    if (tasks.size() == 1 && texts.size() > 1) tasks.assign(texts.size(), tasks[0]);
    SP_CHECK(tasks.empty() || tasks.size() == texts.size(), "--task gives ", tasks.size(), " tasks for ", texts.size(), " prompts");
    std::vector<std::vector<int64_t>> ids;
    for (const std::string& t : texts) ids.push_back(loaded.tokenizer->encode(t, true));
    o->gen.eos_token_id = loaded.tokenizer->eos_id();
    std::vector<std::vector<int64_t>> outputs;
    if (names.empty()) {
      outputs = model.generate(ids, o->gen, {}, {}, /*use_adapter=*/false);
    } else {
      if (rows.empty()) rows.assign(texts.size(), names[0]);
      std::vector<int64_t> task_ids;
      for (size_t i = 0; i < tasks.size(); ++i) {
        const auto& known = task_names[rows[i]];
        auto it = std::find(known.begin(), known.end(), tasks[i]);
        if (it != known.end()) {
          task_ids.push_back(int64_t(it - known.begin()));
        } else {
          char* end = nullptr;
          long long value = std::strtoll(tasks[i].c_str(), &end, 10);
          SP_CHECK(end && *end == '\0' && value >= 0, "unknown task '", tasks[i], "' for adapter '", rows[i], "'");
          task_ids.push_back(value);
        }
      }
      outputs = model.generate(ids, o->gen, rows, task_ids);
    }
    for (size_t i = 0; i < outputs.size(); ++i) {
      std::vector<int64_t> out = outputs[i];
      if (!out.empty() && o->gen.eos_token_id && out.back() == *o->gen.eos_token_id) out.pop_back();
      std::string text = loaded.tokenizer->decode(out, true);
      if (o->json)
        std::printf("%s\n", nlohmann::json{{"prompt", texts[i]}, {"output", text}, {"ids", outputs[i]}}.dump().c_str());
      else if (model.is_seq2seq())
        std::printf("%s\n", text.c_str());
      else
        std::printf("%s\n", (texts[i] + text).c_str());
    }
    return kExitOk;
  };
}

}  // namespace sp::cli
