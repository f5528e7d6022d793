// Example 5, seq2seq prompt tuning of a T5 directory with the ready-made Trainer: the prompt sits
// before the encoder input, the labels are the decoder targets. The Trainer writes checkpoints,
// metrics.jsonl and a PEFT adapter directory; we reload that adapter and generate with it.
#include <softprompt/softprompt.h>

#include <cstdio>
#include <memory>
#include <string>
#include <utility>
#include <vector>

int main(int argc, char** argv) {
  if (argc < 3) {
    std::fprintf(stderr, "usage: %s T5_MODEL_DIR OUT_DIR [STEPS]\n", argv[0]);
    return 2;
  }
  const std::string model_dir = argv[1], out_dir = argv[2];
  const int64_t steps = argc > 3 ? std::stoll(argv[3]) : 40;
  try {
    std::shared_ptr<sp::Seq2SeqLM> t5 = sp::load_seq2seq_lm(model_dir);
    std::shared_ptr<const sp::Tokenizer> tokenizer = sp::load_tokenizer(model_dir);
    sp::PeftModel model(t5, tokenizer);

    sp::PromptTuningConfig config;
    config.task_type = sp::TaskType::kSeq2SeqLm;
    config.num_virtual_tokens = 8;
    config.prompt_tuning_init = sp::PromptInit::kText;
    config.prompt_tuning_init_text = "answer the question";
    config.tokenizer_name_or_path = config.base_model_name_or_path = model_dir;
    model.add_adapter("qa", config);
    std::printf("%s\n", model.trainable_parameters_summary().c_str());

    // In-memory data in the trainer's JSONL shape; sp::load_jsonl(path) reads the same from a file.
    sp::Dataset data;
    data.source = "colours";
    const std::vector<std::pair<std::string, std::string>> pairs = {
        {"What colour is the sky?", "blue"},   {"What colour is grass?", "green"},
        {"What colour is snow?", "white"},     {"What colour is coal?", "black"},
        {"What colour is a lemon?", "yellow"}, {"What colour is blood?", "red"},
        {"What colour is the sea?", "blue"},   {"What colour is a leaf?", "green"}};
    for (const auto& [question, answer] : pairs) {
      sp::Example example;
      example.input = question;
      example.output = answer;
      example.line = int64_t(data.examples.size()) + 1;
      data.examples.push_back(example);
    }
    sp::TokenizeOptions tokenize;
    tokenize.task_type = sp::TaskType::kSeq2SeqLm;  // labels are the target ids, not a shift
    const auto examples = sp::tokenize_examples(data, *tokenizer, nullptr, tokenize);

    sp::EvalOptions eval;
    eval.metric = sp::Metric::kLoss;
    eval.pad_id = tokenizer->pad_id().value_or(0);
    const double loss_before = sp::evaluate(model, *tokenizer, data, examples, eval).loss;

    sp::TrainConfig train;
    train.output_dir = out_dir;
    train.batch_size = 4;
    train.max_steps = steps;
    train.optim.lr = 0.3f;  // prompt tuning of T5 likes large rates (Lester et al. use 0.3)
    train.optim.weight_decay = 0.0f;
    train.schedule = sp::Schedule::kLinear;
    train.warmup_steps = 2;
    train.metric = sp::Metric::kLoss;
    sp::Trainer trainer(model, *tokenizer, train, data, examples, &data, examples);
    trainer.set_event_callback([](const sp::TrainEvent& event) {
      if (event.kind == sp::TrainEvent::Kind::kStep && (event.step % 10 == 0 || event.step == 1))
        std::printf("step %3lld/%lld  loss %.4f  lr %.3g\n", (long long)event.step,
                    (long long)event.total_steps, event.loss, event.lr);
    });
    const sp::TrainResult result = trainer.run();
    const double loss_after = sp::evaluate(model, *tokenizer, data, examples, eval).loss;

    // The output directory is a PEFT adapter: reload it and generate with both copies.
    model.load_adapter(out_dir, "reloaded");
    std::vector<std::vector<int64_t>> questions;
    for (size_t i = 0; i < 3; ++i) questions.push_back(examples[i].input_ids);
    sp::GenerationConfig generation;
    generation.max_new_tokens = 6;
    generation.eos_token_id = tokenizer->eos_id();
    const auto trained = model.generate(questions, generation, {"qa", "qa", "qa"});
    const auto reloaded =
        model.generate(questions, generation, {"reloaded", "reloaded", "reloaded"});
    for (size_t i = 0; i < questions.size(); ++i)
      std::printf("%s -> \"%s\" (want \"%s\")\n", data.examples[i].input.c_str(),
                  tokenizer->decode(trained[i], /*skip_special_tokens=*/true).c_str(),
                  data.examples[i].output.c_str());

    std::printf("%lld steps; eval loss %.4f -> %.4f; reloaded adapter generates %s\n",
                (long long)result.steps, loss_before, loss_after,
                trained == reloaded ? "the same" : "DIFFERENTLY");
    const bool ok = loss_after < loss_before && trained == reloaded;
    if (!ok) std::fprintf(stderr, "FAILED: the loss did not go down or the reload differs\n");
    return ok ? 0 : 1;
  } catch (const sp::Error& error) {
    std::fprintf(stderr, "error: %s\n", error.what());
    return 1;
  }
}
