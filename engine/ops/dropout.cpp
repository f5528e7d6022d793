// dropout op: the backward applies the same (seed, offset) mask to the gradient.
#include "engine/ops/dropout.h"

#include "engine/autograd.h"
#include "engine/ops/common.h"
#include "engine/ops/elementwise.h"
#include "engine/ops/reduce.h"

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

namespace ops_detail {

bool check_residual_dropout_add(const char* op, const Tensor& residual, const Tensor& x,
                                const Tensor& bias, float p) {
  check_defined(op, {&residual, &x});
  check_float_inputs(op, {&residual, &x});
  SP_CHECK(p >= 0.0f && p < 1.0f, op, ": probability must be in [0, 1), got ", p);
  SP_CHECK(residual.shape() == x.shape() && residual.dtype() == x.dtype() &&
               residual.device() == x.device() && x.dim() >= 1,
           op, ": residual ", residual.describe(), " and x ", x.describe(),
           " must have one shape, dtype and device");
  return !bias.defined() || check_last_axis_bias(op, x, bias);
}

void record_residual_dropout_add(Tensor& out, const Tensor& residual, const Tensor& x,
                                 const Tensor& bias, float p, uint64_t seed, uint64_t offset) {
  record(out, "residual_dropout_add", {residual, x, bias},
         [p, seed, offset, bias_shape = bias.defined() ? bias.shape() : Shape()](
             const Tensor& g, const NeedsGrad& need) {
           // d residual = g; d x = dropout(g) with the forward's mask; d bias sums d x's rows.
           const Tensor dx = need[1] || need[2] ? dropout(g, p, seed, offset) : Tensor();
           return std::vector<Tensor>{need[0] ? g : Tensor(), need[1] ? dx : Tensor(),
                                      need[2] ? sum_to_shape(dx, bias_shape) : Tensor()};
         });
}

}  // namespace ops_detail

Tensor residual_dropout_add(const Tensor& residual_in, const Tensor& x_in, const Tensor& bias_in,
                            float p, uint64_t seed, uint64_t offset) {
  if (!ops_detail::check_residual_dropout_add("residual_dropout_add", residual_in, x_in, bias_in,
                                              p))
    return add(residual_in, dropout(add(x_in, bias_in), p, seed, offset));
  Tensor residual = residual_in.contiguous(), x = x_in.contiguous();
  Tensor bias = bias_in.defined() ? bias_in.contiguous() : Tensor();
  Tensor out = Tensor::empty(x.shape(), x.dtype(), x.device());
  if (x.numel() > 0)
    backend_for(x.device()).residual_dropout_add(residual, x, bias, p, seed, offset, out);
  ops_detail::record_residual_dropout_add(out, residual_in, x_in, bias_in, p, seed, offset);
  return out;
}

}  // namespace sp
