// Model-type dispatch for Hugging Face directories.
#include "models/model_loader.h"

#include <filesystem>

#include "engine/error.h"
#include "models/gpt2.h"
#include "models/hf_config.h"
#include "models/llama.h"
#include "models/t5.h"

namespace sp {

std::string read_model_type(const std::string& model_dir) {
  namespace fs = std::filesystem;
  if (!fs::is_directory(model_dir))
    fail(ErrorKind::kIo, model_dir, ": not a directory (expected a Hugging Face model directory)");
  HfConfig config = HfConfig::load((fs::path(model_dir) / "config.json").string());
  return config.get_string("model_type");
}

std::unique_ptr<CausalLM> load_causal_lm(const std::string& model_dir, Device device, DType dtype) {
  std::string type = read_model_type(model_dir);
  if (type == "gpt2") return Gpt2Model::load(model_dir, device, dtype);
  if (type == "llama" || type == "mistral" || type == "qwen2")
    return LlamaModel::load(model_dir, device, dtype);
  fail(ErrorKind::kUnsupported, model_dir, "/config.json: model_type '", type,
       "' is not a supported causal LM (supported: gpt2, llama, mistral, qwen2; t5 is a seq2seq "
       "model)");
}

std::unique_ptr<Seq2SeqLM> load_seq2seq_lm(const std::string& model_dir, Device device,
                                           DType dtype) {
  std::string type = read_model_type(model_dir);
  if (type == "t5") return T5Model::load(model_dir, device, dtype);
  fail(ErrorKind::kUnsupported, model_dir, "/config.json: model_type '", type,
       "' is not a supported seq2seq model (supported: t5; gpt2 and llama are causal LMs)");
}

}  // namespace sp
