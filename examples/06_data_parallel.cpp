// Example 6, data parallel by hand: run as `mpiexec -n 2 06_data_parallel GPT2_DIR OUT [STEPS]`.
// Each rank trains on its half of every batch; the prompt's gradient is all-reduced, so every
// rank takes the same AdamW step and holds the same prompt; rank 0 alone saves the adapter.
#include <softprompt/softprompt.h>

#include <cstdio>
#include <memory>
#include <string>
#include <vector>

int main(int argc, char** argv) {
  if (argc < 3) {
    std::fprintf(stderr, "usage: mpiexec -n N %s GPT2_MODEL_DIR ADAPTER_OUT_DIR [STEPS]\n",
                 argv[0]);
    return 2;
  }
  const std::string model_dir = argv[1], adapter_dir = argv[2];
  const int steps = argc > 3 ? std::stoi(argv[3]) : 30;
  try {
    sp::MpiCommunicator comm;  // MPI_Init; rank and size come from the launcher
    const int rank = comm.rank(), ranks = comm.size();
    std::shared_ptr<sp::CausalLM> gpt2 = sp::load_causal_lm(model_dir);
    std::shared_ptr<const sp::Tokenizer> tokenizer = sp::load_tokenizer(model_dir);
    sp::PeftModel model(gpt2, tokenizer);
    sp::PromptTuningConfig config;
    config.task_type = sp::TaskType::kCausalLm;
    config.num_virtual_tokens = 8;
    config.base_model_name_or_path = model_dir;
    sp::PromptAdapter& prompt = model.add_adapter("default", config, /*seed=*/1);
    // Same seed, same init on every rank; broadcasting rank 0's makes it so whatever the init.
    sp::broadcast_tensors(comm, prompt.parameters(), 0);

    // The global batch; rank r takes rows r, r + ranks, ...
    const std::vector<std::string> texts = {
        "The sky is clear and the sun is warm.", "Rain will fall over the hills tonight.",
        "A cold wind blows from the north.",     "The day will be bright with a light breeze.",
        "Snow covers the roads this morning.",   "Fog lifts by noon over the bay."};
    std::vector<sp::TokenizedExample> examples(texts.size());
    std::vector<size_t> mine;
    for (size_t i = 0; i < texts.size(); ++i) {
      examples[i].input_ids = examples[i].labels = tokenizer->encode(texts[i]);
      if (int(i % size_t(ranks)) == rank) mine.push_back(i);
    }
    sp::Batch batch = sp::collate(examples, mine, tokenizer->eos_id().value_or(0));
    sp::PeftBatch inputs{batch.input_ids, batch.attention_mask, batch.labels, {}, {}};

    sp::AdamW optimizer(prompt.parameters(), {.lr = 0.05f, .weight_decay = 0.0f});
    double first_loss = 0, last_loss = 0;
    for (int step = 0; step < steps; ++step) {
      sp::Tensor loss = model.forward(inputs, {.train = true}).loss;
      // Mean over ranks: each rank's gradient is scaled by 1 / ranks, then summed.
      sp::scale(loss, 1.0f / float(ranks)).backward();
      std::vector<sp::Tensor> grads;
      for (const sp::Tensor& p : prompt.parameters()) grads.push_back(p.grad());
      comm.all_reduce_sum(grads);
      sp::clip_grad_norm(prompt.parameters(), 1.0);
      optimizer.step();
      optimizer.zero_grad();
      std::vector<double> mean_loss = {double(loss.item()) / ranks};
      comm.all_reduce_sum(std::span<double>(mean_loss));
      last_loss = mean_loss[0];
      if (step == 0) first_loss = last_loss;
      if (rank == 0 && (step % 10 == 0 || step + 1 == steps))
        std::printf("step %3d  loss %.4f (mean over %d ranks)\n", step, last_loss, ranks);
    }
    if (rank == 0) model.save_pretrained(adapter_dir);

    // Check: the loss went down and every rank holds rank 0's prompt, bit for bit.
    std::vector<sp::Tensor> root_prompt = {prompt.parameters()[0].clone()};
    sp::broadcast_tensors(comm, root_prompt, 0);
    std::vector<double> differing = {
        root_prompt[0].to_floats() == prompt.parameters()[0].to_floats() ? 0.0 : 1.0};
    comm.all_reduce_sum(std::span<double>(differing));
    if (rank == 0)
      std::printf("loss %.4f -> %.4f; %d ranks hold the same prompt: %s; adapter saved to %s\n",
                  first_loss, last_loss, ranks, differing[0] == 0 ? "yes" : "NO",
                  adapter_dir.c_str());
    return last_loss < first_loss && differing[0] == 0 ? 0 : 1;
  } catch (const sp::Error& error) {
    std::fprintf(stderr, "error: %s\n", error.what());
    return 1;
  }
}
