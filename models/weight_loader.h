// WeightLoader: fetches named tensors from a checkpoint with shape checks, a name prefix that
// may or may not be present, dtype conversion and device placement; errors name the tensor.
// GEMM weights load in the requested dtype, the rest in the activation dtype of the device.
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
  // The tensor `name` (prefix added when the checkpoint uses one), checked against `shape`, in
  // the model's activation dtype (biases, norms, position tables: what non-GEMM ops read).
  Tensor get(const std::string& name, const Shape& shape) const;
  // The same for a GEMM weight (and the token table feeding the LM head), in the weight dtype.
  Tensor get_matrix(const std::string& name, const Shape& shape) const;
  // The first of `names` that exists, as a GEMM weight (for tables stored under several names).
  Tensor get_any_matrix(const std::vector<std::string>& names, const Shape& shape) const;
  int64_t parameters_loaded() const { return parameters_loaded_; }
  const std::string& prefix() const { return prefix_; }

 private:
  std::string model_dir_;
  Checkpoint checkpoint_;
  std::string prefix_;
  Tensor load(const std::string& name, const Shape& shape, DType dtype) const;

  DType weight_dtype_;
  DType activation_dtype_;
  Device device_;
  mutable int64_t parameters_loaded_ = 0;
};

}  // namespace sp
