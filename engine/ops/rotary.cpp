// rotary_embedding: checks and the backward (the same rotation by the negated angle).
#include "engine/ops/rotary.h"

#include "engine/autograd.h"
#include "engine/backend.h"
#include "engine/ops/common.h"

namespace sp {

namespace ops_detail {

void check_rotary_inputs(const char* op, const Tensor& x, const Tensor& cos, const Tensor& sin) {
  check_defined(op, {&x, &cos, &sin});
  check_float_inputs(op, {&x});
  SP_CHECK(x.dim() == 4 && x.size(3) % 2 == 0, op, ": x must be [B, T, H, D] with an even D, got ",
           x.describe());
  const Shape angles = {x.size(0), x.size(1), x.size(3) / 2};
  for (const Tensor* t : {&cos, &sin})
    SP_CHECK(t->dtype() == DType::F32 && t->shape() == angles && t->device() == x.device(), op,
             ": cos and sin must be F32", shape_str(angles), " on ", x.device().str(), ", got ",
             t->describe());
}

}  // namespace ops_detail

Tensor rotary_embedding(const Tensor& x_in, const Tensor& cos_in, const Tensor& sin_in) {
  ops_detail::check_rotary_inputs("rotary_embedding", x_in, cos_in, sin_in);
  // Rows of dense heads (q or k of a packed projection) are read where they are.
  const Tensor x = rotary_row_stride(x_in) ? x_in : x_in.contiguous();
  const Tensor cos = cos_in.contiguous(), sin = sin_in.contiguous();
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
