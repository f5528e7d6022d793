// Example 3, multitask prompt tuning (PEFT's MPT): a source stage trains one shared prompt with
// per-task low-rank factors over several tasks; a target task then starts from one source task's
// prompt (EXACT_SOURCE_TASK) and is tuned on its own data. Every stage is evaluated per task.
#include <softprompt/softprompt.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <memory>
#include <string>
#include <utility>
#include <vector>

namespace {

struct Task {
  std::string name;
  std::string prefix;  // the input is prefix + word
  std::vector<std::pair<std::string, std::string>> pairs;
};

// One line per task reads better than one line per pair.
// clang-format off
const std::vector<Task> kSourceTasks = {
    {"opposite", "The opposite of ",
     {{"hot", "cold"}, {"up", "down"}, {"big", "small"}, {"day", "night"}, {"fast", "slow"},
      {"old", "new"}}},
    {"plural", "The plural of ",
     {{"cat", "cats"}, {"dog", "dogs"}, {"tree", "trees"}, {"book", "books"}, {"car", "cars"},
      {"hand", "hands"}}},
    {"color", "The color of ",
     {{"grass", "green"}, {"snow", "white"}, {"coal", "black"}, {"sky", "blue"},
      {"blood", "red"}, {"sun", "yellow"}}},
};
// The target task asks for opposites in another phrasing: it starts from the "opposite" prompt.
const Task kTargetTask = {"antonym", "Antonym of ",
                          {{"wet", "dry"}, {"early", "late"}, {"rich", "poor"}, {"loud", "quiet"},
                           {"hard", "soft"}, {"light", "dark"}}};
// clang-format on

// One JSONL-like example per pair: {"input": "The opposite of hot is", "output": " cold"}.
sp::Dataset make_dataset(const Task& task) {
  sp::Dataset data;
  data.source = task.name;
  for (const auto& [word, answer] : task.pairs) {
    sp::Example example;
    example.input = task.prefix + word + " is";
    example.output = " " + answer;
    example.task = task.name;
    example.line = int64_t(data.examples.size()) + 1;
    data.examples.push_back(example);
  }
  return data;
}

// The explicit loop: seeded epoch order, collated batches (with task ids), AdamW with HF's
// linear schedule and warmup. Returns the mean loss of the first and of the last epoch.
std::pair<double, double> train(sp::PeftModel& model, const std::string& adapter,
                                const std::vector<sp::TokenizedExample>& data, int64_t steps,
                                float lr, int64_t pad_id) {
  model.set_adapter(adapter);
  sp::AdamW optimizer(model.adapter(adapter).parameters(), {.lr = lr, .weight_decay = 0.0f});
  const int64_t batch_size = 6, batches_per_epoch = (int64_t(data.size()) + 5) / 6;
  double first = 0, last = 0, epoch_sum = 0;
  for (int64_t step = 0; step < steps; ++step) {
    const int64_t epoch = step / batches_per_epoch, in_epoch = step % batches_per_epoch;
    std::vector<size_t> order = sp::epoch_order(data, /*seed=*/7, epoch, /*shuffle=*/true,
                                                batch_size, /*bucket_batches=*/0);
    const size_t begin = size_t(in_epoch * batch_size);
    std::vector<size_t> rows(order.begin() + long(begin),
                             order.begin() + long(std::min(order.size(), begin + batch_size)));
    sp::Batch batch = sp::collate(data, rows, pad_id);
    optimizer.set_lr(lr * float(sp::schedule_factor(sp::Schedule::kLinear, step, 2, steps)));
    sp::PeftBatch inputs{batch.input_ids, batch.attention_mask, batch.labels, batch.task_ids, {}};
    sp::Tensor loss = model.forward(inputs, {.train = true}).loss;
    loss.backward();
    optimizer.step();
    optimizer.zero_grad();
    epoch_sum += loss.item();
    if (in_epoch + 1 == batches_per_epoch) {
      if (epoch == 0) first = epoch_sum / double(batches_per_epoch);
      last = epoch_sum / double(batches_per_epoch);
      epoch_sum = 0;
    }
  }
  return {first, last};
}

}  // namespace

int main(int argc, char** argv) {
  if (argc < 3) {
    std::fprintf(stderr, "usage: %s GPT2_MODEL_DIR OUT_DIR [SOURCE_STEPS] [TARGET_STEPS]\n",
                 argv[0]);
    return 2;
  }
  const std::string model_dir = argv[1], out_dir = argv[2];
  const int64_t source_steps = argc > 3 ? std::stoll(argv[3]) : 60;
  const int64_t target_steps = argc > 4 ? std::stoll(argv[4]) : 30;
  try {
    std::shared_ptr<sp::CausalLM> gpt2 = sp::load_causal_lm(model_dir);
    std::shared_ptr<const sp::Tokenizer> tokenizer = sp::load_tokenizer(model_dir);
    const int64_t pad_id = tokenizer->eos_id().value_or(0);
    sp::PeftModel model(gpt2, tokenizer);
    bool ok = true;

    // Data: one dataset per task, task ids from the task names' order.
    std::vector<std::string> names;
    for (const Task& task : kSourceTasks) names.push_back(task.name);
    const sp::TaskIndex source_index = sp::TaskIndex::from_names(names);
    std::vector<sp::Dataset> source_data;
    std::vector<std::vector<sp::TokenizedExample>> source_examples;
    std::vector<sp::TokenizedExample> all_source;
    for (const Task& task : kSourceTasks) {
      source_data.push_back(make_dataset(task));
      source_examples.push_back(
          sp::tokenize_examples(source_data.back(), *tokenizer, &source_index, {}));
      all_source.insert(all_source.end(), source_examples.back().begin(),
                        source_examples.back().end());
    }
    // Loss per task: the fixture model is tiny and random, so exact-match accuracy stays near 0;
    // on a real checkpoint use Metric::kExactMatch or kTokenAccuracy (EvalResult::accuracy).
    const sp::EvalOptions eval_options{.metric = sp::Metric::kLoss, .pad_id = pad_id};
    auto evaluate_task = [&](size_t t) {
      return sp::evaluate(model, *tokenizer, source_data[t], source_examples[t], eval_options);
    };

    // ---- source stage: one shared prompt, a rank-2 factor pair per task ----
    sp::MultitaskPromptTuningConfig source;
    source.task_type = sp::TaskType::kCausalLm;
    source.num_virtual_tokens = 6;
    source.num_tasks = int64_t(kSourceTasks.size());
    source.num_ranks = 2;
    source.prompt_tuning_init = sp::PromptInit::kText;
    source.prompt_tuning_init_text = std::string("Answer with one word");
    source.tokenizer_name_or_path = source.base_model_name_or_path = model_dir;
    model.add_adapter("source", source);
    std::vector<double> before(kSourceTasks.size());
    for (size_t t = 0; t < kSourceTasks.size(); ++t) before[t] = evaluate_task(t).loss;
    auto [source_first, source_last] =
        train(model, "source", all_source, source_steps, 0.2f, pad_id);
    std::printf("source stage: mean epoch loss %.4f -> %.4f\n", source_first, source_last);
    std::vector<double> source_loss(kSourceTasks.size());
    for (size_t t = 0; t < kSourceTasks.size(); ++t) {
      sp::EvalResult result = evaluate_task(t);
      source_loss[t] = result.loss;
      std::printf("  task %-8s loss %.4f -> %.4f\n", names[t].c_str(), before[t], result.loss);
      ok = ok && result.loss < before[t];
    }
    const std::string source_dir = out_dir + "/source";
    model.save_pretrained(source_dir, "source");

    // ---- target stage: start from the "opposite" task of the saved source adapter ----
    const int64_t from_task =
        int64_t(std::find(names.begin(), names.end(), "opposite") - names.begin());
    sp::MultitaskPromptTuningConfig target;
    target.task_type = sp::TaskType::kCausalLm;
    target.num_virtual_tokens = 6;
    target.num_tasks = 1;
    target.num_ranks = 2;
    target.prompt_tuning_init = sp::PromptInit::kExactSourceTask;
    target.prompt_tuning_init_state_dict_path = source_dir + "/adapter_model.safetensors";
    target.prompt_tuning_init_task = from_task;
    model.add_adapter("target", target);
    model.set_adapter("target");

    // The exact init copies the source task's prompt: on that task's data, the target adapter
    // (task id 0) scores exactly what the source adapter scored.
    std::vector<sp::TokenizedExample> as_target = source_examples[size_t(from_task)];
    for (sp::TokenizedExample& example : as_target) example.task_id = 0;
    const double copied =
        sp::evaluate(model, *tokenizer, source_data[size_t(from_task)], as_target, eval_options)
            .loss;
    std::printf("target init from task '%s': loss there %.6f (source adapter: %.6f)\n",
                names[size_t(from_task)].c_str(), copied, source_loss[size_t(from_task)]);
    ok = ok && std::abs(copied - source_loss[size_t(from_task)]) < 1e-4;

    const sp::Dataset target_data = make_dataset(kTargetTask);
    const sp::TaskIndex target_index = sp::TaskIndex::from_names({kTargetTask.name});
    const auto target_examples = sp::tokenize_examples(target_data, *tokenizer, &target_index, {});
    const sp::EvalResult target_before =
        sp::evaluate(model, *tokenizer, target_data, target_examples, eval_options);
    train(model, "target", target_examples, target_steps, 0.2f, pad_id);
    const sp::EvalResult target_after =
        sp::evaluate(model, *tokenizer, target_data, target_examples, eval_options);
    std::printf("target task %-8s loss %.4f -> %.4f\n", kTargetTask.name.c_str(),
                target_before.loss, target_after.loss);
    ok = ok && target_after.loss < target_before.loss;
    model.save_pretrained(out_dir + "/target", "target");

    if (!ok) std::fprintf(stderr, "FAILED: a stage did not improve or the exact init differs\n");
    return ok ? 0 : 1;
  } catch (const sp::Error& error) {
    std::fprintf(stderr, "error: %s\n", error.what());
    return 1;
  }
}
