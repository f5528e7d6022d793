// concat through strided copies into windows of the output.
#include "engine/ops/concat.h"

#include "engine/autograd.h"
#include "engine/ops/common.h"

namespace sp {

Tensor concat(const std::vector<Tensor>& tensors, int64_t axis_in) {
  SP_CHECK(!tensors.empty(), "concat: no tensors given");
  const Tensor& first = tensors[0];
  SP_CHECK(first.defined(), "concat: input 0 is undefined");
  const int64_t ndim = first.dim();
  const int64_t axis = axis_in < 0 ? axis_in + ndim : axis_in;
  SP_CHECK(axis >= 0 && axis < ndim, "concat: axis ", axis_in, " is out of range for ",
           first.describe());
  Shape out_shape = first.shape();
  out_shape[size_t(axis)] = 0;
  std::vector<int64_t> sizes;
  for (size_t i = 0; i < tensors.size(); ++i) {
    const Tensor& t = tensors[i];
    SP_CHECK(t.defined(), "concat: input ", i, " is undefined");
    SP_CHECK(t.dim() == ndim && t.dtype() == first.dtype() && t.device() == first.device(),
             "concat: input ", i, " ", t.describe(), " does not match input 0 ", first.describe());
    for (int64_t a = 0; a < ndim; ++a)
      SP_CHECK(a == axis || t.size(a) == first.size(a), "concat: input ", i, " ", t.describe(),
               " differs from input 0 ", first.describe(), " outside axis ", axis);
    sizes.push_back(t.size(axis));
    out_shape[size_t(axis)] += t.size(axis);
  }
  Tensor out = Tensor::empty(out_shape, first.dtype(), first.device());
  Backend& backend = backend_for(first.device());
  int64_t begin = 0;
  for (size_t i = 0; i < tensors.size(); ++i) {
    Shape window_shape = out_shape;
    window_shape[size_t(axis)] = sizes[i];
    if (shape_numel(window_shape) > 0) {
      Tensor window = make_view(out, window_shape, out.strides(), begin * out.stride(axis));
      backend.copy(tensors[i], window);
    }
    begin += sizes[i];
  }
  record(out, "concat", tensors, [sizes, axis](const Tensor& g, const NeedsGrad& need) {
    std::vector<Tensor> grads(sizes.size());
    int64_t start = 0;
    for (size_t i = 0; i < sizes.size(); ++i) {
      if (need[i]) grads[i] = g.slice(axis, start, start + sizes[i]).contiguous();
      start += sizes[i];
    }
    return grads;
  });
  return out;
}

}  // namespace sp
