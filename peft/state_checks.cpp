// copy_saved_tensor.
#include "peft/state_checks.h"

#include "engine/autograd.h"
#include "engine/backend.h"
#include "engine/error.h"

namespace sp {

void copy_saved_tensor(const std::map<std::string, Tensor>& tensors, const std::string& key,
                       const Tensor& parameter, const std::string& source) {
  auto it = tensors.find(key);
  if (it == tensors.end())
    fail(ErrorKind::kFormat, source, ": missing tensor '", key, "'");
  const Tensor& saved = it->second;
  if (saved.shape() != parameter.shape())
    fail(ErrorKind::kFormat, source, ": tensor '", key, "' has shape ", shape_str(saved.shape()),
         " but the adapter config needs ", shape_str(parameter.shape()));
  NoGradGuard no_grad;
  Tensor value = saved.to(DType::F32).to(parameter.device());
  backend_for(parameter.device()).copy(value, parameter);
}

}  // namespace sp
