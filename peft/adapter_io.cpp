// Adapter directory IO.
#include "peft/adapter_io.h"

#include <cstdio>
#include <filesystem>

#include "engine/error.h"
#include "engine/safetensors.h"

namespace sp {

namespace fs = std::filesystem;

void save_adapter(const std::string& dir, const PromptAdapter& adapter) {
  std::error_code ec;
  fs::create_directories(dir, ec);
  if (ec) fail(ErrorKind::kIo, dir, ": cannot create the adapter directory: ", ec.message());
  std::vector<std::pair<std::string, Tensor>> tensors;
  for (auto& [name, t] : adapter.named_parameters()) tensors.push_back({name, t.detach()});
  // Stage both files under temporary names, then move them into place together.
  const fs::path weights = fs::path(dir) / kAdapterWeightsFile;
  const fs::path config = fs::path(dir) / kAdapterConfigFile;
  const fs::path staged_weights = fs::path(dir) / ".adapter_model.safetensors.staged";
  const fs::path staged_config = fs::path(dir) / ".adapter_config.json.staged";
  try {
    save_safetensors(staged_weights.string(), tensors, {{"format", "pt"}});
    write_file_atomically(staged_config.string(), adapter.config().to_adapter_config_text());
  } catch (...) {
    fs::remove(staged_weights, ec);
    fs::remove(staged_config, ec);
    throw;
  }
  fs::rename(staged_weights, weights, ec);
  if (!ec) fs::rename(staged_config, config, ec);
  if (ec) fail(ErrorKind::kIo, dir, ": cannot move the adapter files into place: ", ec.message());
}

AdapterFiles read_adapter_files(const std::string& dir) {
  if (!fs::is_directory(dir))
    fail(ErrorKind::kIo, dir, ": not a directory (expected a PEFT adapter directory with ",
         kAdapterConfigFile, " and ", kAdapterWeightsFile, ")");
  const fs::path config_path = fs::path(dir) / kAdapterConfigFile;
  const fs::path weights_path = fs::path(dir) / kAdapterWeightsFile;
  if (!fs::exists(config_path))
    fail(ErrorKind::kIo, dir, ": missing ", kAdapterConfigFile);
  AdapterFiles files;
  files.dir = dir;
  files.config = PromptTuningConfig::load(config_path.string());
  if (!fs::exists(weights_path)) {
    if (fs::exists(fs::path(dir) / "adapter_model.bin"))
      fail(ErrorKind::kUnsupported, dir,
           ": has adapter_model.bin (a PyTorch pickle), which softprompt does not read; re-save "
           "it from PEFT with save_pretrained(..., safe_serialization=True)");
    fail(ErrorKind::kIo, dir, ": missing ", kAdapterWeightsFile);
  }
  auto file = SafetensorsFile::open(weights_path.string());
  for (const std::string& name : file->names()) files.tensors[name] = file->get(name, DType::F32);
  return files;
}

}  // namespace sp
