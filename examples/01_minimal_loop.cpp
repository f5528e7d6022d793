// Example 1, the minimal loop: prompt-tune a Hugging Face GPT-2 directory on a handful of strings
// with AdamW, then save a PEFT adapter (PeftModel.from_pretrained in Python loads it too).
#include <softprompt/softprompt.h>

#include <cstdio>
#include <memory>
#include <string>
#include <vector>

int main(int argc, char** argv) {
  if (argc < 3) {
    std::fprintf(stderr, "usage: %s GPT2_MODEL_DIR ADAPTER_OUT_DIR [STEPS]\n", argv[0]);
    return 2;
  }
  const std::string model_dir = argv[1], adapter_dir = argv[2];
  const int steps = argc > 3 ? std::stoi(argv[3]) : 30;
  try {
    std::shared_ptr<sp::CausalLM> gpt2 = sp::load_causal_lm(model_dir);  // frozen weights
    std::shared_ptr<const sp::Tokenizer> tokenizer = sp::load_tokenizer(model_dir);
    sp::PeftModel model(gpt2, tokenizer);

    sp::PromptTuningConfig config;  // PEFT's PromptTuningConfig, field for field
    config.task_type = sp::TaskType::kCausalLm;
    config.num_virtual_tokens = 8;
    config.prompt_tuning_init = sp::PromptInit::kText;
    config.prompt_tuning_init_text = "Answer like a weather report:";
    config.tokenizer_name_or_path = config.base_model_name_or_path = model_dir;
    sp::PromptAdapter& prompt = model.add_adapter("default", config);
    std::printf("%s\n", model.trainable_parameters_summary().c_str());

    // The batch: every string right padded; the labels are the ids (the loss shifts them).
    const std::vector<std::string> texts = {
        "The sky is clear and the sun is warm.", "Rain will fall over the hills tonight.",
        "A cold wind blows from the north.", "The day will be bright with a light breeze."};
    std::vector<sp::TokenizedExample> examples(texts.size());
    std::vector<size_t> rows;
    for (size_t i = 0; i < texts.size(); ++i) {
      examples[i].input_ids = examples[i].labels = tokenizer->encode(texts[i]);
      rows.push_back(i);
    }
    sp::Batch batch = sp::collate(examples, rows, tokenizer->eos_id().value_or(0));
    sp::PeftBatch inputs{batch.input_ids, batch.attention_mask, batch.labels, {}, {}};

    // Only the prompt is trainable: AdamW sees just its parameters.
    sp::AdamW optimizer(prompt.parameters(), {.lr = 0.05f, .weight_decay = 0.0f});
    float first_loss = 0.0f, last_loss = 0.0f;
    for (int step = 0; step < steps; ++step) {
      sp::Tensor loss = model.forward(inputs, {.train = true}).loss;
      loss.backward();
      sp::clip_grad_norm(prompt.parameters(), 1.0);
      optimizer.step();
      optimizer.zero_grad();
      last_loss = loss.item();
      if (step == 0) first_loss = last_loss;
      if (step % 10 == 0 || step + 1 == steps)
        std::printf("step %3d  loss %.4f\n", step, last_loss);
    }
    model.save_pretrained(adapter_dir);  // adapter_config.json + adapter_model.safetensors

    // Check the result: the loss went down and the saved adapter reloads bit for bit.
    sp::PromptAdapter& reloaded = model.load_adapter(adapter_dir, "reloaded");
    const bool same = reloaded.parameters()[0].to_floats() == prompt.parameters()[0].to_floats();
    std::printf("loss %.4f -> %.4f; adapter saved to %s, reload %s\n", first_loss, last_loss,
                adapter_dir.c_str(), same ? "identical" : "DIFFERS");
    return last_loss < first_loss && same ? 0 : 1;
  } catch (const sp::Error& error) {
    std::fprintf(stderr, "error: %s\n", error.what());
    return 1;
  }
}
