// rotary_embedding: checks and the backward (the same rotation by the negated angle).
#include "engine/ops/rotary.h"

#include "engine/autograd.h"
#include "engine/backend.h"
#include "engine/ops/common.h"

namespace sp {

Tensor rotary_embedding(const Tensor& x_in, const Tensor& cos_in, const Tensor& sin_in) {
  ops_detail::check_defined("rotary_embedding", {&x_in, &cos_in, &sin_in});
  ops_detail::check_float_inputs("rotary_embedding", {&x_in});
  SP_CHECK(x_in.dim() == 4 && x_in.size(3) % 2 == 0,
           "rotary_embedding: x must be [B, T, H, D] with an even D, got ", x_in.describe());
  const Shape angles = {x_in.size(0), x_in.size(1), x_in.size(3) / 2};
  for (const Tensor* t : {&cos_in, &sin_in})
    SP_CHECK(t->dtype() == DType::F32 && t->shape() == angles && t->device() == x_in.device(),
             "rotary_embedding: cos and sin must be F32", shape_str(angles), " on ",
             x_in.device().str(), ", got ", t->describe());
  Tensor x = x_in.contiguous(), cos = cos_in.contiguous(), sin = sin_in.contiguous();
  Tensor out = Tensor::empty(x.shape(), x.dtype(), x.device());
  if (out.numel() > 0) backend_for(x.device()).rotary_embedding(x, cos, sin, false, out);
  record(out, "rotary_embedding", {x_in},
         [cos = cos.detach(), sin = sin.detach()](const Tensor& g, const NeedsGrad&) {
           Tensor grad = g.contiguous();
           Tensor dx = Tensor::empty(grad.shape(), grad.dtype(), grad.device());
           if (dx.numel() > 0) backend_for(dx.device()).rotary_embedding(grad, cos, sin, true, dx);
           return std::vector<Tensor>{dx};
         });
  return out;
}

}  // namespace sp
