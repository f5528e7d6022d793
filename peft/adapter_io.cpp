// Adapter directory IO.
#include "peft/adapter_io.h"

#include <cstdio>
#include <filesystem>

#include "engine/durable_fs.h"
#include "engine/error.h"
#include "engine/safetensors.h"

namespace sp {

namespace fs = std::filesystem;

void save_adapter(const std::string& dir, const PromptAdapter& adapter) {
  std::error_code ec;
  if (!fs::is_directory(dir, ec)) {
    fs_hook_point("mkdir", dir);
    fs::create_directories(dir, ec);
    if (ec) fail(ErrorKind::kIo, dir, ": cannot create the adapter directory: ", ec.message());
  }
  std::vector<std::pair<std::string, Tensor>> tensors;
  for (auto& [name, t] : adapter.named_parameters()) tensors.push_back({name, t.detach()});
  // Two files cannot be swapped in one step while the directory keeps its path (PEFT's
  // from_pretrained wants both at its top level). Each file is replaced atomically, config
  // first: re-saving the same adapter rewrites an identical config, so every intermediate
  // state is a loadable adapter (old or new weights); only a first save cut short leaves a
  // config without weights, which read_adapter_files and PEFT both report as missing weights.
  // Writers that need the pair switched as a whole keep the authoritative copy elsewhere
  // (commit_directory) and re-publish from it, as the Trainer does from training_state/.
  write_file_atomically((fs::path(dir) / kAdapterConfigFile).string(),
                        adapter.config().to_adapter_config_text());
  save_safetensors((fs::path(dir) / kAdapterWeightsFile).string(), tensors, {{"format", "pt"}});
}

void remove_stale_adapter_temporaries(const std::string& dir) {
  remove_stale_temporaries(dir, {kAdapterConfigFile, kAdapterWeightsFile});
}

AdapterFiles read_adapter_files(const std::string& dir) {
  if (!fs::is_directory(dir))
    fail(ErrorKind::kIo, dir, ": not a directory (expected a PEFT adapter directory with ",
         kAdapterConfigFile, " and ", kAdapterWeightsFile, ")");
  const fs::path config_path = fs::path(dir) / kAdapterConfigFile;
  const fs::path weights_path = fs::path(dir) / kAdapterWeightsFile;
  if (!fs::exists(config_path)) fail(ErrorKind::kIo, dir, ": missing ", kAdapterConfigFile);
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
