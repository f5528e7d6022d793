// WeightLoader: fetches named tensors from a checkpoint with shape checks, a name prefix that
// may or may not be present, dtype conversion and device placement; errors name the tensor.
#pragma once

#include <string>
#include <vector>

#include "engine/safetensors.h"
#include "engine/tensor.h"

namespace sp {

class WeightLoader {
 public:
  // `optional_prefixes`: prefixes that some checkpoints put in front of every name (e.g.
  // "transformer."); the first one present in the checkpoint is used throughout.
  WeightLoader(const std::string& model_dir, const std::vector<std::string>& optional_prefixes,
               DType dtype, Device device);

  bool contains(const std::string& name) const;
  // The tensor `name` (prefix added when the checkpoint uses one), checked against `shape`.
  Tensor get(const std::string& name, const Shape& shape) const;
  // The first of `names` that exists (for weights stored under alternative names).
  Tensor get_any(const std::vector<std::string>& names, const Shape& shape) const;
  int64_t parameters_loaded() const { return parameters_loaded_; }
  const std::string& prefix() const { return prefix_; }

 private:
  std::string model_dir_;
  Checkpoint checkpoint_;
  std::string prefix_;
  DType dtype_;
  Device device_;
  mutable int64_t parameters_loaded_ = 0;
};

}  // namespace sp
