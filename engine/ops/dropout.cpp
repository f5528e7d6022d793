// dropout op: the backward applies the same (seed, offset) mask to the gradient.
#include "engine/ops/dropout.h"

#include "engine/autograd.h"
#include "engine/ops/common.h"

namespace sp {

Tensor dropout(const Tensor& x_in, float p, uint64_t seed, uint64_t offset) {
  ops_detail::check_defined("dropout", {&x_in});
  SP_CHECK(p >= 0.0f && p < 1.0f, "dropout: probability must be in [0, 1), got ", p);
  if (p == 0.0f) return x_in;
  ops_detail::check_float_inputs("dropout", {&x_in});
  Tensor x = x_in.contiguous();
  Tensor y = Tensor::empty(x.shape(), x.dtype(), x.device());
  if (x.numel() > 0) backend_for(x.device()).dropout(x, p, seed, offset, y);
  record(y, "dropout", {x_in}, [p, seed, offset](const Tensor& g, const NeedsGrad&) {
    Tensor gc = g.contiguous();
    Tensor dx = Tensor::empty(gc.shape(), gc.dtype(), gc.device());
    if (gc.numel() > 0) backend_for(gc.device()).dropout(gc, p, seed, offset, dx);
    return std::vector<Tensor>{dx};
  });
  return y;
}

}  // namespace sp
