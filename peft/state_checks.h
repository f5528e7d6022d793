// copy_saved_tensor: loads one named tensor of an adapter file into a parameter in place, with
// an error naming the file, the key and both shapes when it is missing or mis-shaped.
#pragma once

#include <map>
#include <string>

#include "engine/tensor.h"

namespace sp {

void copy_saved_tensor(const std::map<std::string, Tensor>& tensors, const std::string& key,
                       const Tensor& parameter, const std::string& source);

}  // namespace sp
