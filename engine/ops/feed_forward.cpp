// feed_forward: the frozen-weight MLP node. Forward: GEMM with the bias and activation in its
// epilogue (or GEMM + activation kernel); backward: GEMM times act' (or GEMM + activation
// backward), then the GEMM into x's gradient.
#include "engine/ops/feed_forward.h"

#include "engine/autograd.h"
#include "engine/ops/activation.h"
#include "engine/ops/common.h"
#include "engine/ops/matmul.h"

namespace sp {

namespace {

Tensor composed(const Tensor& x, const Tensor& w_in, const Tensor& b_in, Activation act,
                const Tensor& w_out) {
  return matmul(activation(matmul(x, w_in), act, b_in), w_out);
}

// The fused node needs frozen weights (no weight gradients to produce) of x's dtype and device.
bool single_node(const Tensor& x, const Tensor& w_in, const Tensor& b_in, const Tensor& w_out) {
  if (any_requires_grad({&w_in, &b_in, &w_out})) return false;
  if (x.dim() < 2 || w_in.dim() != 2 || w_out.dim() != 2) return false;
  for (const Tensor* t : {&w_in, &b_in, &w_out}) {
    if (t->defined() && (t->dtype() != x.dtype() || t->device() != x.device())) return false;
  }
  return !b_in.defined() || b_in.shape() == Shape({w_in.size(1)});
}

}  // namespace

Tensor feed_forward(const Tensor& x, const Tensor& w_in, const Tensor& b_in, Activation act,
                    const Tensor& w_out) {
  const char* op = "feed_forward";
  ops_detail::check_defined(op, {&x, &w_in, &w_out});
  if (!single_node(x, w_in, b_in, w_out)) return composed(x, w_in, b_in, act, w_out);
  ops_detail::MatmulPlan up = ops_detail::plan_matmul(x, w_in);
  Backend& backend = backend_for(x.device());
  const Tensor bias = b_in.defined() ? b_in.contiguous() : Tensor();
  const bool keep_pre = any_requires_grad({&x});
  Tensor hidden = Tensor::empty(up.out_shape, up.out_dtype, x.device());
  Tensor pre;       // act's input, for the backward
  Tensor pre_bias;  // the bias act adds to `pre`, when the GEMM did not add it already
  if (hidden.numel() > 0) {
    if (keep_pre) pre = Tensor::empty(up.out_shape, up.out_dtype, x.device());
    up.gemm.c = hidden.raw_data();
    const bool fused =
        backend.gemm_bias_activation(up.gemm, act, bias.defined() ? bias.raw_data() : nullptr,
                                     keep_pre ? pre.raw_data() : nullptr);
    if (!fused) {
      Tensor product = keep_pre ? pre : Tensor::empty(up.out_shape, up.out_dtype, x.device());
      up.gemm.c = product.raw_data();
      backend.gemm(up.gemm);
      backend.activation_forward(act, product, bias, hidden);
      pre_bias = bias;
    }
  }
  ops_detail::MatmulPlan down = ops_detail::plan_matmul(hidden, w_out);
  Tensor out = Tensor::empty(down.out_shape, down.out_dtype, x.device());
  if (out.numel() > 0) {
    down.gemm.c = out.raw_data();
    backend.gemm(down.gemm);
  }
  record(out, op, {x},
         [pre, pre_bias, w_in = w_in.detach(), w_out = w_out.detach(), act](const Tensor& g,
                                                                            const NeedsGrad&) {
           ops_detail::MatmulPlan back = ops_detail::plan_matmul(g, w_out.transpose(0, 1));
           Tensor d_pre = Tensor::empty(back.out_shape, back.out_dtype, g.device());
           if (d_pre.numel() > 0) {
             Backend& backend = backend_for(g.device());
             back.gemm.c = d_pre.raw_data();
             // A `pre` without its bias came from the unfused forward: the epilogue's act' would
             // be taken at the wrong point.
             const bool fused = !pre_bias.defined() &&
                                backend.gemm_activation_backward(back.gemm, act, pre.raw_data());
             if (!fused) {
               Tensor d_hidden = Tensor::empty(back.out_shape, back.out_dtype, g.device());
               back.gemm.c = d_hidden.raw_data();
               backend.gemm(back.gemm);
               backend.activation_backward(act, pre, pre_bias, d_hidden, d_pre);
             }
           }
           return std::vector<Tensor>{matmul(d_pre, w_in.transpose(0, 1))};
         });
  return out;
}

}  // namespace sp
