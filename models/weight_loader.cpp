// WeightLoader: name resolution, shape validation, conversion.
#include "models/weight_loader.h"

#include "engine/backend.h"
#include "engine/error.h"

namespace sp {

WeightLoader::WeightLoader(const std::string& model_dir,
                           const std::vector<std::string>& optional_prefixes, DType dtype,
                           Device device)
    : model_dir_(model_dir),
      checkpoint_(Checkpoint::open(model_dir)),
      weight_dtype_(dtype),
      activation_dtype_(activation_dtype(device, dtype)),
      device_(device) {
  for (const std::string& prefix : optional_prefixes) {
    for (const std::string& name : checkpoint_.names()) {
      if (name.starts_with(prefix)) {
        prefix_ = prefix;
        return;
      }
    }
  }
}

bool WeightLoader::contains(const std::string& name) const {
  return checkpoint_.contains(prefix_ + name) || checkpoint_.contains(name);
}

Tensor WeightLoader::get(const std::string& name, const Shape& shape) const {
  return load(name, shape, activation_dtype_);
}

Tensor WeightLoader::get_matrix(const std::string& name, const Shape& shape) const {
  return load(name, shape, weight_dtype_);
}

Tensor WeightLoader::load(const std::string& name, const Shape& shape, DType dtype) const {
  std::string stored = checkpoint_.contains(prefix_ + name) ? prefix_ + name : name;
  if (!checkpoint_.contains(stored))
    fail(ErrorKind::kFormat, model_dir_, ": missing tensor '", prefix_ + name,
         "' in the checkpoint");
  const SafetensorsEntry& entry = checkpoint_.entry(stored);
  if (entry.shape != shape)
    fail(ErrorKind::kFormat, model_dir_, ": tensor '", stored, "' has shape ",
         shape_str(entry.shape), ", expected ", shape_str(shape), " from config.json");
  Tensor t = checkpoint_.get(stored, dtype);
  SP_CHECK_KIND(kFormat, dtype_is_float(t.dtype()), model_dir_, ": tensor '", stored,
                "' is not a floating-point tensor (", entry.dtype, ")");
  parameters_loaded_ += t.numel();
  return t.to(device_).set_name(stored);
}

Tensor WeightLoader::get_any_matrix(const std::vector<std::string>& names,
                                    const Shape& shape) const {
  for (const std::string& name : names)
    if (contains(name)) return get_matrix(name, shape);
  std::string listed;
  for (const std::string& name : names) listed += (listed.empty() ? "'" : ", '") + name + "'";
  fail(ErrorKind::kFormat, model_dir_, ": missing tensor: none of ", listed,
       " is in the checkpoint");
}

}  // namespace sp
