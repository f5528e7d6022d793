// Example 2, verbalizer classification: a soft prompt turns a frozen GPT-2 into a sentiment
// classifier. The loss is our own: cross-entropy over the verbalizer words only ("good", "bad"),
// computed from the hidden state at each row's label position, not an LM loss over the text.
#include <softprompt/softprompt.h>

#include <cstdio>
#include <memory>
#include <string>
#include <vector>

namespace {

struct Review {
  std::string text;
  int64_t label;  // index into the verbalizer
};

const std::vector<Review> kReviews = {
    {"I loved this film", 0},   {"What a wonderful day", 0},    {"The food was great", 0},
    {"She smiled with joy", 0}, {"A bright and happy song", 0}, {"The best trip of my life", 0},
    {"I hated this film", 1},   {"What a terrible day", 1},     {"The food was awful", 1},
    {"He cried in pain", 1},    {"A dull and boring song", 1},  {"The worst trip of my life", 1},
};

// The template puts the label position last: the word after "Sentiment:" is the class.
std::string render(const Review& review) {
  return "Review: " + review.text + ". Sentiment:";
}

// Class logits [B, C]: the hidden state at each row's last real token, scored against the output
// embeddings of the verbalizer tokens only. The LM head never runs over the whole vocabulary.
sp::Tensor class_logits(const sp::PeftModel& model, const sp::Batch& batch,
                        const std::vector<int64_t>& lengths, const sp::Tensor& verbalizer_rows,
                        const sp::ForwardOptions& options) {
  sp::PeftBatch inputs{batch.input_ids, batch.attention_mask, {}, {}, {}};
  sp::Tensor hidden = model.forward(inputs, options).hidden;  // [B, N + T, d], prompt first
  const int64_t rows = hidden.size(0), width = hidden.size(1), dim = hidden.size(2);
  const int64_t prompt_length = width - batch.input_ids.size(1);
  std::vector<int64_t> label_positions;
  for (int64_t b = 0; b < rows; ++b)
    label_positions.push_back(b * width + prompt_length + lengths[size_t(b)] - 1);
  sp::Tensor at_label = sp::index_select(hidden.reshape({rows * width, dim}),
                                         sp::Tensor::from_ints(label_positions, {rows}));
  // GPT-2's head is the tied embedding with no output scaling: logits = h @ E^T.
  return sp::matmul(at_label, verbalizer_rows.transpose(0, 1));
}

double accuracy(const sp::Tensor& logits, const std::vector<int64_t>& targets) {
  std::vector<float> values = logits.to_floats();
  const size_t classes = size_t(logits.size(1));
  int64_t correct = 0;
  for (size_t b = 0; b < targets.size(); ++b) {
    size_t best = 0;
    for (size_t c = 1; c < classes; ++c)
      if (values[b * classes + c] > values[b * classes + best]) best = c;
    correct += int64_t(best) == targets[b] ? 1 : 0;
  }
  return double(correct) / double(targets.size());
}

}  // namespace

int main(int argc, char** argv) {
  if (argc < 2) {
    std::fprintf(stderr, "usage: %s GPT2_MODEL_DIR [STEPS]\n", argv[0]);
    return 2;
  }
  const std::string model_dir = argv[1];
  const int steps = argc > 2 ? std::stoi(argv[2]) : 60;
  try {
    std::shared_ptr<sp::CausalLM> gpt2 = sp::load_causal_lm(model_dir);
    std::shared_ptr<const sp::Tokenizer> tokenizer = sp::load_tokenizer(model_dir);
    sp::PeftModel model(gpt2, tokenizer);
    sp::PromptTuningConfig config;
    config.task_type = sp::TaskType::kCausalLm;
    config.num_virtual_tokens = 10;
    config.prompt_tuning_init = sp::PromptInit::kSampleVocab;
    sp::PromptAdapter& prompt = model.add_adapter("sentiment", config, /*seed=*/3);

    // The verbalizer: the first token of each class word (the word a continuation would start
    // with, hence the leading space of GPT-2's byte-level BPE).
    std::vector<int64_t> verbalizer;
    for (const char* word : {" good", " bad"}) verbalizer.push_back(tokenizer->encode(word).at(0));
    SP_CHECK(verbalizer[0] != verbalizer[1], "the verbalizer words share their first token");
    const sp::Tensor verbalizer_rows = sp::index_select(
        gpt2->output_embeddings(), sp::Tensor::from_ints(verbalizer, {int64_t(verbalizer.size())}));

    std::vector<sp::TokenizedExample> examples(kReviews.size());
    std::vector<size_t> all_rows;
    std::vector<int64_t> lengths, targets;
    for (size_t i = 0; i < kReviews.size(); ++i) {
      examples[i].input_ids = tokenizer->encode(render(kReviews[i]));
      examples[i].labels.assign(examples[i].input_ids.size(), -100);  // unused: our own loss
      all_rows.push_back(i);
      lengths.push_back(int64_t(examples[i].input_ids.size()));
      targets.push_back(kReviews[i].label);
    }
    const sp::Batch batch = sp::collate(examples, all_rows, tokenizer->eos_id().value_or(0));
    const sp::Tensor target_tensor = sp::Tensor::from_ints(targets, {int64_t(targets.size())});

    auto evaluate = [&] {
      sp::NoGradGuard no_grad;  // inference: nothing is recorded on the tape
      return accuracy(class_logits(model, batch, lengths, verbalizer_rows, {}), targets);
    };
    const double accuracy_before = evaluate();

    sp::AdamW optimizer(prompt.parameters(), {.lr = 0.1f, .weight_decay = 0.0f});
    float first_loss = 0.0f, last_loss = 0.0f;
    for (int step = 0; step < steps; ++step) {
      sp::Tensor logits = class_logits(model, batch, lengths, verbalizer_rows, {.train = true});
      sp::Tensor loss = sp::cross_entropy(logits, target_tensor).loss;  // over 2 classes, not V
      loss.backward();
      optimizer.step();
      optimizer.zero_grad();
      last_loss = loss.item();
      if (step == 0) first_loss = last_loss;
      if (step % 10 == 0 || step + 1 == steps)
        std::printf("step %3d  loss %.4f\n", step, last_loss);
    }
    const double accuracy_after = evaluate();
    std::printf("verbalizer loss %.4f -> %.4f; training accuracy %.2f -> %.2f\n", first_loss,
                last_loss, accuracy_before, accuracy_after);
    const bool learned = last_loss < 0.5f * first_loss && accuracy_after >= 0.9;
    if (!learned) std::fprintf(stderr, "FAILED: the classifier did not learn the training set\n");
    return learned ? 0 : 1;
  } catch (const sp::Error& error) {
    std::fprintf(stderr, "error: %s\n", error.what());
    return 1;
  }
}
