// Example 4, serving: one frozen GPT-2 in memory, several PEFT adapters loaded on it, and one
// mixed batch in which every row generates with its own adapter (and task id, for multitask
// adapters). The check: each row's output equals what that adapter generates for it alone.
#include <softprompt/softprompt.h>

#include <cstdio>
#include <memory>
#include <string>
#include <vector>

int main(int argc, char** argv) {
  if (argc < 3) {
    std::fprintf(stderr, "usage: %s GPT2_MODEL_DIR NAME=ADAPTER_DIR [NAME=ADAPTER_DIR ...]\n",
                 argv[0]);
    return 2;
  }
  try {
    std::shared_ptr<sp::CausalLM> gpt2 = sp::load_causal_lm(argv[1]);
    std::shared_ptr<const sp::Tokenizer> tokenizer = sp::load_tokenizer(argv[1]);
    sp::PeftModel model(gpt2, tokenizer);  // the base weights exist once, whatever the adapters

    std::vector<std::string> names;
    for (int i = 2; i < argc; ++i) {
      const std::string spec = argv[i];
      const size_t equals = spec.find('=');
      SP_CHECK(equals != std::string::npos && equals > 0, "expected NAME=ADAPTER_DIR, got '", spec,
               "'");
      names.push_back(spec.substr(0, equals));
      const sp::PromptAdapter& adapter = model.load_adapter(spec.substr(equals + 1), names.back());
      std::printf("adapter %-10s %-24s %lld virtual tokens, %lld tasks\n", names.back().c_str(),
                  sp::peft_type_name(adapter.config().peft_type),
                  (long long)*adapter.config().num_virtual_tokens,
                  (long long)adapter.config().num_tasks.value_or(1));
    }

    // The requests of many users at once: row r uses adapter r % A; a multitask adapter's rows
    // cycle through its tasks (plain prompt tuning ignores task ids).
    const std::vector<std::string> texts = {"The weather today is", "Once upon a time",
                                            "My favourite food is", "The capital city has"};
    const size_t rows = 3 * names.size();
    std::vector<std::vector<int64_t>> prompts;
    std::vector<std::string> row_adapters;
    std::vector<int64_t> task_ids;
    for (size_t r = 0; r < rows; ++r) {
      prompts.push_back(tokenizer->encode(texts[r % texts.size()]));
      row_adapters.push_back(names[r % names.size()]);
      const sp::PromptTuningConfig& config = model.adapter(row_adapters.back()).config();
      const int64_t use = int64_t(r / names.size());  // how often this adapter came before
      task_ids.push_back(config.is_multitask() ? use % config.num_tasks.value_or(1) : 0);
    }
    sp::GenerationConfig generation;
    generation.max_new_tokens = 12;
    generation.eos_token_id = tokenizer->eos_id();
    const auto mixed = model.generate(prompts, generation, row_adapters, task_ids);

    bool all_equal = true;
    for (size_t r = 0; r < rows; ++r) {
      model.set_adapter(row_adapters[r]);
      const auto alone = model.generate({prompts[r]}, generation, {}, {task_ids[r]});
      const bool equal = alone[0] == mixed[r];
      all_equal = all_equal && equal;
      std::printf("row %zu [%s, task %lld] %s -> \"%s\"%s\n", r, row_adapters[r].c_str(),
                  (long long)task_ids[r], texts[r % texts.size()].c_str(),
                  tokenizer->decode(mixed[r], /*skip_special_tokens=*/true).c_str(),
                  equal ? "" : "  (DIFFERS from the row alone)");
    }
    std::printf("mixed batch of %zu rows over %zu adapters: %s\n", rows, names.size(),
                all_equal ? "every row equals its per-adapter run" : "MISMATCH");
    return all_equal ? 0 : 1;
  } catch (const sp::Error& error) {
    std::fprintf(stderr, "error: %s\n", error.what());
    return 1;
  }
}
