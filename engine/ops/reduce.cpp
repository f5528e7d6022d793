// Reductions with autograd: the backward of a sum broadcasts the gradient back (expand).
#include "engine/ops/reduce.h"

#include <algorithm>

#include "engine/autograd.h"
#include "engine/ops/common.h"
#include "engine/ops/elementwise.h"

namespace sp {

namespace {

// x reduced over `axes` with size-1 axes kept, using the fastest backend kernel for the layout.
Tensor reduce_keepdim(const Tensor& x_in, const std::vector<bool>& reduce) {
  Tensor x = x_in.contiguous();
  Backend& backend = backend_for(x.device());
  Shape out_shape = x.shape();
  for (size_t a = 0; a < reduce.size(); ++a)
    if (reduce[a]) out_shape[a] = 1;
  Tensor out = Tensor::empty(out_shape, x.dtype(), x.device());
  if (out.numel() == 0) return out;
  if (x.numel() == 0) {
    backend.fill(out, 0.0f);
    return out;
  }
  // Leading axes reduced, trailing kept: sum_rows. Trailing reduced, leading kept: sum_last.
  size_t first_kept = 0;
  while (first_kept < reduce.size() && reduce[first_kept]) ++first_kept;
  bool rest_kept =
      std::none_of(reduce.begin() + long(first_kept), reduce.end(), [](bool r) { return r; });
  size_t last_kept = reduce.size();
  while (last_kept > 0 && reduce[last_kept - 1]) --last_kept;
  bool head_kept =
      std::none_of(reduce.begin(), reduce.begin() + long(last_kept), [](bool r) { return r; });
  if (rest_kept)
    backend.sum_rows(x, out);
  else if (head_kept)
    backend.sum_last(x, out);
  else
    backend.sum_to(x, out);
  return out;
}

}  // namespace

Tensor sum(const Tensor& x, const std::vector<int64_t>& axes, bool keepdim) {
  ops_detail::check_defined("sum", {&x});
  ops_detail::check_float_inputs("sum", {&x});
  std::vector<bool> reduce(size_t(x.dim()), false);
  for (int64_t axis : axes) {
    int64_t a = axis < 0 ? axis + x.dim() : axis;
    SP_CHECK(a >= 0 && a < x.dim(), "sum: axis ", axis, " is out of range for ", x.describe());
    reduce[size_t(a)] = true;
  }
  Tensor out;
  {
    NoGradGuard no_grad;
    out = reduce_keepdim(x, reduce);
  }
  Shape keep_shape = out.shape();
  Shape input_shape = x.shape();
  record(out, "sum", {x}, [input_shape](const Tensor& g, const NeedsGrad&) {
    return std::vector<Tensor>{g.expand(input_shape).contiguous()};
  });
  if (keepdim) return out;
  Shape squeezed;
  for (size_t a = 0; a < keep_shape.size(); ++a)
    if (!reduce[a]) squeezed.push_back(keep_shape[a]);
  return out.reshape(squeezed);
}

Tensor mean(const Tensor& x, const std::vector<int64_t>& axes, bool keepdim) {
  int64_t count = 1;
  for (int64_t axis : axes) count *= x.size(axis);
  return scale(sum(x, axes, keepdim), count == 0 ? 0.0f : 1.0f / float(count));
}

Tensor sum_all(const Tensor& x) {
  std::vector<int64_t> axes(static_cast<size_t>(x.dim()));
  for (int64_t a = 0; a < x.dim(); ++a) axes[size_t(a)] = a;
  return sum(x, axes, false);
}

Tensor mean_all(const Tensor& x) {
  return scale(sum_all(x), x.numel() == 0 ? 0.0f : 1.0f / float(x.numel()));
}

Tensor sum_to_shape(const Tensor& x, const Shape& shape) {
  if (x.shape() == shape) return x;
  SP_CHECK(x.dim() >= int64_t(shape.size()), "sum_to_shape: cannot reduce ", x.describe(), " to ",
           shape_str(shape));
  const size_t lead = size_t(x.dim()) - shape.size();
  std::vector<int64_t> axes;
  for (size_t a = 0; a < size_t(x.dim()); ++a) {
    if (a < lead) {
      axes.push_back(int64_t(a));
      continue;
    }
    int64_t want = shape[a - lead];
    SP_CHECK(want == x.shape()[a] || want == 1, "sum_to_shape: cannot reduce ", x.describe(),
             " to ", shape_str(shape));
    if (want == 1 && x.shape()[a] != 1) axes.push_back(int64_t(a));
  }
  return sum(x, axes, true).reshape(shape);
}

}  // namespace sp
