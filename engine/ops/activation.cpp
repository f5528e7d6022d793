// Activation ops: saved input (and bias), derivative-based backward.
#include "engine/ops/activation.h"

#include "engine/autograd.h"
#include "engine/ops/common.h"
#include "engine/ops/elementwise.h"
#include "engine/ops/reduce.h"

namespace sp {

Tensor activation(const Tensor& x_in, Activation act) {
  return activation(x_in, act, Tensor());
}

Tensor activation(const Tensor& x_in, Activation act, const Tensor& bias_in) {
  ops_detail::check_defined("activation", {&x_in});
  ops_detail::check_float_inputs("activation", {&x_in});
  if (bias_in.defined() && !ops_detail::check_last_axis_bias("activation", x_in, bias_in))
    return activation(add(x_in, bias_in), act);
  Tensor x = x_in.contiguous();
  Tensor bias = bias_in.defined() ? bias_in.contiguous() : Tensor();
  Tensor y = Tensor::empty(x.shape(), x.dtype(), x.device());
  if (x.numel() > 0) backend_for(x.device()).activation_forward(act, x, bias, y);
  record(y, "activation", {x_in, bias_in},
         [x = x.detach(), bias = bias.defined() ? bias.detach() : Tensor(), act](
             const Tensor& g, const NeedsGrad& need) {
           Tensor dx = Tensor::empty(x.shape(), x.dtype(), x.device());
           if (x.numel() > 0)
             backend_for(x.device()).activation_backward(act, x, bias, g.contiguous(), dx);
           return std::vector<Tensor>{dx, need[1] ? sum_to_shape(dx, bias.shape()) : Tensor()};
         });
  return y;
}

Tensor gelu_tanh(const Tensor& x) {
  return activation(x, Activation::kGeluTanh);
}
Tensor gelu_erf(const Tensor& x) {
  return activation(x, Activation::kGeluErf);
}
Tensor relu(const Tensor& x) {
  return activation(x, Activation::kRelu);
}

Tensor gated_activation(const Tensor& gate_in, const Tensor& up_in, Activation act) {
  ops_detail::check_defined("gated_activation", {&gate_in, &up_in});
  ops_detail::check_float_inputs("gated_activation", {&gate_in, &up_in});
  SP_CHECK(gate_in.shape() == up_in.shape(), "gated_activation: gate ", gate_in.describe(),
           " and up ", up_in.describe(), " differ in shape");
  Tensor gate = gate_in.contiguous(), up = up_in.contiguous();
  Tensor y = Tensor::empty(gate.shape(), gate.dtype(), gate.device());
  if (y.numel() > 0) backend_for(y.device()).gated_forward(act, gate, up, y);
  record(y, "gated_activation", {gate_in, up_in},
         [gate = gate.detach(), up = up.detach(), act](const Tensor& g, const NeedsGrad& need) {
           std::vector<Tensor> grads(2);
           if (need[0]) grads[0] = Tensor::empty(gate.shape(), gate.dtype(), gate.device());
           if (need[1]) grads[1] = Tensor::empty(up.shape(), up.dtype(), up.device());
           if (gate.numel() > 0)
             backend_for(gate.device())
                 .gated_backward(act, gate, up, g.contiguous(), grads[0], grads[1]);
           return grads;
         });
  return y;
}

Tensor gated_activation_packed(const Tensor& gate_up_in, Activation act) {
  const char* op = "gated_activation_packed";
  ops_detail::check_defined(op, {&gate_up_in});
  ops_detail::check_float_inputs(op, {&gate_up_in});
  SP_CHECK(gate_up_in.dim() >= 1 && gate_up_in.size(-1) % 2 == 0, op,
           ": gate_up must be [..., 2 * width], got ", gate_up_in.describe());
  const int64_t width = gate_up_in.size(-1) / 2,
                rows = gate_up_in.numel() / std::max<int64_t>(2 * width, 1);
  const Tensor packed = gate_up_in.contiguous().view({rows, 2 * width}).detach();
  // [rows, width] halves of one buffer; the gradient's halves have the same strides.
  auto half = [width](const Tensor& t, int64_t part) {
    return t.slice(1, part * width, (part + 1) * width);
  };
  Shape out_shape = gate_up_in.shape();
  out_shape.back() = width;
  Tensor y = Tensor::empty(out_shape, packed.dtype(), packed.device());
  if (y.numel() > 0)
    backend_for(y.device()).gated_forward(act, half(packed, 0), half(packed, 1), y);
  record(y, op, {gate_up_in},
         [packed, half, act, shape = gate_up_in.shape()](const Tensor& g, const NeedsGrad&) {
           Tensor d_packed = Tensor::empty(packed.shape(), packed.dtype(), packed.device());
           if (packed.numel() > 0)
             backend_for(packed.device())
                 .gated_backward(act, half(packed, 0), half(packed, 1), g.contiguous(),
                                 half(d_packed, 0), half(d_packed, 1));
           return std::vector<Tensor>{d_packed.view(shape)};
         });
  return y;
}

Activation parse_activation(std::string_view name, const char* field) {
  if (name == "gelu_new" || name == "gelu_pytorch_tanh" || name == "gelu_fast")
    return Activation::kGeluTanh;
  if (name == "gelu") return Activation::kGeluErf;
  if (name == "relu") return Activation::kRelu;
  if (name == "silu" || name == "swish") return Activation::kSilu;
  fail(ErrorKind::kUnsupported, field, ": activation '", name,
       "' is not supported; expected gelu_new, gelu_pytorch_tanh, gelu, relu or silu");
}

}  // namespace sp
