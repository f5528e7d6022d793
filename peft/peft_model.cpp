// PeftModel: adapter management and prompt injection for causal LMs.
#include "peft/peft_model.h"

#include <algorithm>
#include <cstdio>
#include <set>

#include "engine/autograd.h"
#include "engine/error.h"
#include "engine/ops/ops.h"
#include "models/generate_seq2seq.h"
#include "models/lm_loss.h"
#include "models/tokenizer.h"
#include "peft/adapter_io.h"

namespace sp {

PeftModel::PeftModel(std::shared_ptr<CausalLM> base, std::shared_ptr<const Tokenizer> tokenizer)
    : causal_(std::move(base)), tokenizer_(std::move(tokenizer)) {
  SP_CHECK(causal_ != nullptr, "PeftModel: no base model");
}

PeftModel::PeftModel(std::shared_ptr<Seq2SeqLM> base, std::shared_ptr<const Tokenizer> tokenizer)
    : seq2seq_(std::move(base)), tokenizer_(std::move(tokenizer)) {
  SP_CHECK(seq2seq_ != nullptr, "PeftModel: no base model");
}

const ModelInfo& PeftModel::base_info() const {
  return causal_ ? causal_->info() : seq2seq_->info();
}
Device PeftModel::device() const {
  return causal_ ? causal_->device() : seq2seq_->device();
}
Tensor PeftModel::word_embeddings() const {
  return causal_ ? causal_->word_embeddings() : seq2seq_->word_embeddings();
}

CausalLM& PeftModel::causal_base() const {
  SP_CHECK(causal_, "this operation needs a causal LM; the base model is ", base_info().model_type,
           " (seq2seq)");
  return *causal_;
}

Seq2SeqLM& PeftModel::seq2seq_base() const {
  SP_CHECK(seq2seq_, "this operation needs a seq2seq model; the base model is ",
           base_info().model_type, " (causal LM)");
  return *seq2seq_;
}

Tensor PeftModel::logits(const Tensor& hidden) const {
  return causal_ ? causal_->logits(hidden) : seq2seq_->logits(hidden);
}

void PeftModel::prepare_config(PromptTuningConfig& config, const std::string& where) const {
  SP_CHECK(config.task_type == task_type(), where, "task_type ", task_type_name(*config.task_type),
           " does not match this ", base_info().model_type, " model (", task_type_name(task_type()),
           ")");
  config.fill_from_model(base_info());
}

PromptAdapter& PeftModel::add_adapter(const std::string& name, PromptTuningConfig config,
                                      uint64_t seed) {
  SP_CHECK(!name.empty(), "adapter names must not be empty");
  SP_CHECK(!has_adapter(name), "an adapter named '", name, "' already exists");
  config.validate();
  prepare_config(config, "adapter '" + name + "': ");
  // A TEXT init whose tokenizer is the base model's uses the tokenizer we already hold.
  const Tokenizer* tokenizer = tokenizer_.get();
  if (config.prompt_tuning_init == PromptInit::kText && config.tokenizer_name_or_path &&
      config.base_model_name_or_path != config.tokenizer_name_or_path)
    tokenizer = nullptr;
  adapters_[name] = make_prompt_adapter(config, word_embeddings(), tokenizer, seed);
  if (active_.empty()) active_ = name;
  return *adapters_[name];
}

PromptAdapter& PeftModel::load_adapter(const std::string& dir, const std::string& name,
                                       bool trainable) {
  AdapterFiles files = read_adapter_files(dir);
  PromptTuningConfig config = files.config;
  SP_CHECK(!has_adapter(name), "an adapter named '", name, "' already exists");
  try {
    prepare_config(config, "");
  } catch (const Error& e) {
    throw Error(e.kind(), dir + "/" + kAdapterConfigFile + ": " + e.what() +
                              " (is this adapter for another model?)");
  }
  config.inference_mode = true;  // skip the init: the saved values replace it
  auto adapter = make_prompt_adapter(config, word_embeddings(), nullptr, 0);
  adapter->load_state(files.tensors, dir + "/" + kAdapterWeightsFile);
  adapter->mutable_config().inference_mode = !trainable;
  adapters_[name] = std::move(adapter);
  if (active_.empty()) active_ = name;
  return *adapters_[name];
}

void PeftModel::set_adapter(const std::string& name) {
  SP_CHECK(has_adapter(name), "no adapter named '", name, "'");
  active_ = name;
}

void PeftModel::delete_adapter(const std::string& name) {
  SP_CHECK(has_adapter(name), "no adapter named '", name, "'");
  adapters_.erase(name);
  if (active_ == name) active_ = adapters_.empty() ? "" : adapters_.begin()->first;
}

std::vector<std::string> PeftModel::list_adapters() const {
  std::vector<std::string> names;
  for (auto& [name, a] : adapters_) names.push_back(name);
  return names;
}

const std::string& PeftModel::active_adapter() const {
  SP_CHECK(!active_.empty(), "the model has no adapter; add or load one first");
  return active_;
}

PromptAdapter& PeftModel::adapter(const std::string& name) const {
  auto it = adapters_.find(name);
  SP_CHECK(it != adapters_.end(), "no adapter named '", name, "'");
  return *it->second;
}

void PeftModel::save_pretrained(const std::string& dir, const std::string& name) const {
  save_adapter(dir, adapter(name.empty() ? active_adapter() : name));
}

namespace {

// The prompts of a batch: one [B, N * S, d] tensor when every row uses the same adapter, else
// one [N_b * S_b, d] tensor per row.
struct BatchPrompts {
  Tensor uniform;
  std::vector<Tensor> rows;
  std::vector<const PromptAdapter*> adapters;  // per row
  int64_t virtual_tokens(size_t row) const { return *adapters[row]->config().num_virtual_tokens; }
  // Seq2seq multitask adapters with two submodules give the decoder rows [N, 2N) too.
  bool decoder_prompt(size_t row) const {
    const PromptTuningConfig& c = adapters[row]->config();
    return c.is_multitask() && c.num_transformer_submodules.value_or(1) == 2;
  }
  Tensor row(size_t b) const { return uniform.defined() ? uniform.select(0, int64_t(b)) : rows[b]; }
};

Tensor take_rows(const Tensor& t, const std::vector<int64_t>& rows) {
  return index_select(t, Tensor::from_ints(rows, {int64_t(rows.size())}, DType::I64));
}

Tensor ignore_labels(int64_t rows, int64_t width, Device device) {
  return Tensor::full({rows, width}, -100.0f, DType::F32, device).to(DType::I64);
}

// Joins per-row prefixes with a [B, T, d] body (and its mask and labels): [prefix][body] when the
// prefixes are equal-length, else each row padded to the widest one, on the right
// (pad_left = false: positions of a row do not change) or on the left (pad_left = true: the
// decoder of an encoder-decoder, whose positions are relative). The mask and labels are joined
// where they are (the host, from forward()), so they cost the device nothing but one upload.
struct Joined {
  Tensor embeds, mask, labels;
};

Joined join_prefix(const std::vector<Tensor>& prefixes, const Tensor& uniform_prefix,
                   const Tensor& body, const Tensor& body_mask, const Tensor& body_labels,
                   bool pad_left) {
  const int64_t B = body.size(0), d = body.size(2);
  const Device device = body.device(), mask_device = body_mask.device();
  // Prompts stay F32 (trainable, as in PEFT); like PEFT they are cast to the model's activation
  // dtype where they are injected, so a bf16 model's prompt gradient is cast back to F32.
  const DType dtype = body.dtype();
  Joined out;
  if (uniform_prefix.defined()) {
    const int64_t N = uniform_prefix.size(1);
    out.embeds = concat({uniform_prefix.to(dtype), body}, 1);
    out.mask = concat({Tensor::full({B, N}, 1.0f, DType::F32, mask_device), body_mask}, 1);
    if (body_labels.defined())
      out.labels = concat({ignore_labels(B, N, body_labels.device()), body_labels}, 1);
    return out;
  }
  int64_t widest = 0;
  for (const Tensor& p : prefixes) widest = std::max(widest, p.defined() ? p.size(0) : 0);
  std::vector<Tensor> embeds, masks, labels;
  for (int64_t b = 0; b < B; ++b) {
    const Tensor& p = prefixes[size_t(b)];
    const int64_t N = p.defined() ? p.size(0) : 0, pad = widest - N;
    std::vector<Tensor> e, m, l;
    Tensor pad_embeds = Tensor::zeros({pad, d}, dtype, device);
    Tensor pad_mask = Tensor::zeros({1, pad}, DType::F32, mask_device);
    if (pad_left) e.push_back(pad_embeds), m.push_back(pad_mask);
    if (N > 0)
      e.push_back(p.to(dtype)), m.push_back(Tensor::full({1, N}, 1.0f, DType::F32, mask_device));
    e.push_back(body.select(0, b));
    m.push_back(body_mask.slice(0, b, b + 1));
    if (!pad_left) e.push_back(pad_embeds), m.push_back(pad_mask);
    embeds.push_back(concat(e, 0).unsqueeze(0));
    masks.push_back(concat(m, 1));
    if (body_labels.defined()) {
      l.push_back(ignore_labels(1, pad_left ? widest : N, body_labels.device()));
      l.push_back(body_labels.slice(0, b, b + 1));
      if (!pad_left) l.push_back(ignore_labels(1, pad, body_labels.device()));
      labels.push_back(concat(l, 1));
    }
  }
  out.embeds = concat(embeds, 0);
  out.mask = concat(masks, 0);
  if (body_labels.defined()) out.labels = concat(labels, 0);
  return out;
}

}  // namespace

namespace {

BatchPrompts collect_prompts(const PeftModel& model, int64_t B,
                             const std::vector<std::string>& row_adapters, const Tensor& task_ids) {
  SP_CHECK(row_adapters.empty() || int64_t(row_adapters.size()) == B, "row_adapters names ",
           row_adapters.size(), " adapters for ", B, " rows");
  BatchPrompts prompts;
  std::map<std::string, std::vector<int64_t>> groups;
  for (int64_t b = 0; b < B; ++b) {
    const std::string& name =
        row_adapters.empty() ? model.active_adapter() : row_adapters[size_t(b)];
    groups[name].push_back(b);
    prompts.adapters.push_back(&model.adapter(name));
  }
  if (groups.size() == 1) {
    prompts.uniform = model.adapter(groups.begin()->first).prompts(B, task_ids);
    return prompts;
  }
  prompts.rows.resize(size_t(B));
  for (auto& [name, rows] : groups) {
    Tensor group_tasks = task_ids.defined() ? take_rows(task_ids, rows) : Tensor();
    Tensor group = model.adapter(name).prompts(int64_t(rows.size()), group_tasks);
    for (size_t i = 0; i < rows.size(); ++i)
      prompts.rows[size_t(rows[i])] = group.select(0, int64_t(i));
  }
  return prompts;
}

// One adapter for the whole batch, and for a multitask one, one task: the prompt rows are then
// equal, which lets a causal model compute them once (ForwardOptions::shared_prefix).
bool same_prompt_in_every_row(const BatchPrompts& prompts, const Tensor& task_ids) {
  if (!prompts.uniform.defined()) return false;
  if (!prompts.adapters.front()->config().is_multitask() || !task_ids.defined()) return true;
  const std::vector<int64_t> tasks = task_ids.to_ints();
  return std::all_of(tasks.begin(), tasks.end(), [&](int64_t t) { return t == tasks.front(); });
}

}  // namespace

PeftOutput PeftModel::forward(const PeftBatch& batch, const ForwardOptions& options,
                              bool return_logits, bool use_adapter) const {
  SP_CHECK(batch.input_ids.defined() && batch.input_ids.dim() == 2,
           "input_ids must be [B, T], got ", batch.input_ids.describe());
  const int64_t B = batch.input_ids.size(0), T = batch.input_ids.size(1);
  SP_CHECK(!batch.attention_mask.defined() || batch.attention_mask.shape() == Shape({B, T}),
           "attention_mask must be [", B, ", ", T, "], got ", batch.attention_mask.describe());
  SP_CHECK(!batch.labels.defined() || (batch.labels.dim() == 2 && batch.labels.size(0) == B),
           "labels must be [", B, ", L], got ", batch.labels.describe());
  return causal_ ? forward_causal(batch, options, return_logits, use_adapter)
                 : forward_seq2seq(batch, options, return_logits, use_adapter);
}

PeftOutput PeftModel::forward_causal(const PeftBatch& batch, const ForwardOptions& options,
                                     bool return_logits, bool use_adapter) const {
  const int64_t B = batch.input_ids.size(0), T = batch.input_ids.size(1);
  const Device device = causal_->device();
  SP_CHECK(!batch.labels.defined() || batch.labels.size(1) == T, "labels must be [", B, ", ", T,
           "] for a causal LM, got ", batch.labels.describe());
  // Ids and labels stay where the caller made them (the host, normally): the embedding and the
  // loss check them there and upload them without making the host wait for the device.
  Tensor text = causal_->embed(batch.input_ids);
  Tensor mask = batch.attention_mask.defined() ? batch.attention_mask.to(DType::F32)
                                               : Tensor::full({B, T}, 1.0f, DType::F32);
  Tensor labels = batch.labels.defined() ? batch.labels.to(DType::I64) : Tensor();
  Joined joined{text, mask, labels};
  ForwardOptions run = options;
  if (use_adapter) {
    // PEFT's layout: [prompt][text], mask with N ones in front, labels with N times -100.
    const Tensor task_ids = batch.task_ids.defined() ? batch.task_ids.to(DType::I64) : Tensor();
    BatchPrompts prompts = collect_prompts(*this, B, batch.row_adapters, task_ids);
    joined = join_prefix(prompts.rows, prompts.uniform, text, mask, labels, /*pad_left=*/false);
    if (same_prompt_in_every_row(prompts, task_ids)) run.shared_prefix = prompts.uniform.size(1);
  }
  PeftOutput out;
  out.hidden =
      causal_->hidden_states(joined.embeds, joined.mask.to(device), Tensor(), nullptr, run);
  out.labels = joined.labels;
  if (labels.defined()) {
    CrossEntropyResult ce = causal_lm_loss(*causal_, out.hidden, joined.labels);
    out.loss = ce.loss;
    out.counted_targets = ce.counted_rows;
  }
  if (return_logits) out.logits = causal_->logits(out.hidden);
  return out;
}

PeftOutput PeftModel::forward_seq2seq(const PeftBatch& batch, const ForwardOptions& options,
                                      bool return_logits, bool use_adapter) const {
  const int64_t B = batch.input_ids.size(0), S = batch.input_ids.size(1);
  const Device device = seq2seq_->device();
  SP_CHECK(batch.labels.defined(), "a seq2seq forward needs labels (the decoder targets)");
  Tensor source = seq2seq_->embed(batch.input_ids);
  Tensor source_mask = batch.attention_mask.defined() ? batch.attention_mask.to(DType::F32)
                                                      : Tensor::full({B, S}, 1.0f, DType::F32);
  Tensor labels = batch.labels.to(DType::I64);
  const int64_t L = labels.size(1);
  Tensor target = seq2seq_->embed(seq2seq_->shift_right(labels));
  Tensor target_mask = Tensor::full({B, L}, 1.0f, DType::F32);
  Joined encoder{source, source_mask, Tensor()};
  Joined decoder{target, target_mask, labels};
  bool decoder_mask_needed = false;
  if (use_adapter) {
    BatchPrompts prompts =
        collect_prompts(*this, B, batch.row_adapters,
                        batch.task_ids.defined() ? batch.task_ids.to(DType::I64) : Tensor());
    // Encoder: rows [0, N) of each prompt. Decoder: rows [N, 2N) for two-submodule MPT.
    std::vector<Tensor> encoder_rows(static_cast<size_t>(B)), decoder_rows(static_cast<size_t>(B));
    bool any_decoder = false, all_decoder = true;
    for (int64_t b = 0; b < B; ++b) {
      const int64_t N = prompts.virtual_tokens(size_t(b));
      Tensor row = prompts.row(size_t(b));
      encoder_rows[size_t(b)] = row.slice(0, 0, N);
      if (prompts.decoder_prompt(size_t(b))) {
        decoder_rows[size_t(b)] = row.slice(0, N, 2 * N);
        any_decoder = true;
      } else {
        all_decoder = false;
      }
    }
    Tensor uniform_encoder, uniform_decoder;
    if (prompts.uniform.defined()) {
      const int64_t N = prompts.virtual_tokens(0);
      uniform_encoder = prompts.uniform.slice(1, 0, N);
      if (any_decoder) uniform_decoder = prompts.uniform.slice(1, N, 2 * N);
    }
    encoder = join_prefix(encoder_rows, uniform_encoder, source, source_mask, Tensor(), false);
    if (any_decoder) {
      decoder = join_prefix(decoder_rows, uniform_decoder, target, target_mask, labels,
                            /*pad_left=*/true);
      decoder_mask_needed = !all_decoder || !prompts.uniform.defined();
    }
  }
  PeftOutput out;
  const Tensor encoder_mask = encoder.mask.to(device);
  Tensor encoder_hidden = seq2seq_->encode(encoder.embeds, encoder_mask, options);
  out.hidden =
      seq2seq_->decode(decoder.embeds, encoder_hidden, encoder_mask,
                       decoder_mask_needed ? decoder.mask.to(device) : Tensor(), nullptr, options);
  out.labels = decoder.labels;
  CrossEntropyResult ce = seq2seq_lm_loss(*seq2seq_, out.hidden, decoder.labels);
  out.loss = ce.loss;
  out.counted_targets = ce.counted_rows;
  if (return_logits) out.logits = seq2seq_->logits(out.hidden);
  return out;
}

std::vector<std::vector<int64_t>> PeftModel::generate(
    const std::vector<std::vector<int64_t>>& prompt_ids, const GenerationConfig& config,
    const std::vector<std::string>& row_adapters, const std::vector<int64_t>& task_ids,
    bool use_adapter) const {
  NoGradGuard no_grad;
  const size_t B = prompt_ids.size();
  SP_CHECK(task_ids.empty() || task_ids.size() == B, "task_ids has ", task_ids.size(),
           " entries for ", B, " prompts");
  BatchPrompts prompts;
  if (use_adapter) {
    Tensor tasks = task_ids.empty() ? Tensor() : Tensor::from_ints(task_ids, {int64_t(B)});
    prompts = collect_prompts(*this, int64_t(B), row_adapters, tasks);
  }
  if (causal_) {
    std::vector<GenerationRequest> requests(B);
    for (size_t b = 0; b < B; ++b) {
      requests[b].prompt_ids = prompt_ids[b];
      if (use_adapter) requests[b].prefix_embeds = prompts.row(b).contiguous();
    }
    return sp::generate(*causal_, requests, config);
  }
  std::vector<Seq2SeqGenerationRequest> requests(B);
  for (size_t b = 0; b < B; ++b) {
    requests[b].input_ids = prompt_ids[b];
    if (!use_adapter) continue;
    const int64_t N = prompts.virtual_tokens(b);
    Tensor row = prompts.row(b);
    // PEFT's generate injects only the encoder half.
    requests[b].encoder_prefix_embeds = row.slice(0, 0, N).contiguous();
    if (decoder_prompt_in_generate_ && prompts.decoder_prompt(b))
      requests[b].decoder_prefix_embeds = row.slice(0, N, 2 * N).contiguous();
  }
  return generate_seq2seq(*seq2seq_, requests, config);
}

int64_t PeftModel::trainable_parameter_count() const {
  return adapter().parameter_count();
}

int64_t PeftModel::all_parameter_count() const {
  int64_t total = base_info().parameter_count;
  for (auto& [name, a] : adapters_) total += a->parameter_count();
  return total;
}

namespace {

std::string with_thousands(int64_t value) {
  std::string digits = std::to_string(value), out;
  for (size_t i = 0; i < digits.size(); ++i) {
    if (i > 0 && (digits.size() - i) % 3 == 0) out += ',';
    out += digits[i];
  }
  return out;
}

}  // namespace

std::string PeftModel::trainable_parameters_summary() const {
  const int64_t trainable = trainable_parameter_count(), all = all_parameter_count();
  char percent[32];
  std::snprintf(percent, sizeof percent, "%.4f", 100.0 * double(trainable) / double(all));
  return "trainable params: " + with_thousands(trainable) +
         " || all params: " + with_thousands(all) + " || trainable%: " + percent;
}

}  // namespace sp
