// Broadcasting binary ops and scalar maps with their backward rules.
#include "engine/ops/elementwise.h"

#include <algorithm>

#include "engine/autograd.h"
#include "engine/ops/common.h"
#include "engine/ops/reduce.h"

namespace sp {

Shape broadcast_shapes(const Shape& a, const Shape& b) {
  const size_t n = std::max(a.size(), b.size());
  Shape out(n);
  for (size_t i = 0; i < n; ++i) {
    int64_t da = i < n - a.size() ? 1 : a[i - (n - a.size())];
    int64_t db = i < n - b.size() ? 1 : b[i - (n - b.size())];
    SP_CHECK(da == db || da == 1 || db == 1, "cannot broadcast shapes ", shape_str(a), " and ",
             shape_str(b));
    out[i] = da == 1 ? db : da;
  }
  return out;
}

namespace {

Tensor binary_forward(BinaryOp op, const char* name, const Tensor& a, const Tensor& b) {
  ops_detail::check_defined(name, {&a, &b});
  ops_detail::check_float_inputs(name, {&a, &b});
  Shape shape = broadcast_shapes(a.shape(), b.shape());
  Tensor out = Tensor::empty(shape, a.dtype(), a.device());
  if (out.numel() > 0) {
    NoGradGuard no_grad;  // the expand views below are not part of the graph
    backend_for(a.device()).binary(op, a.expand(shape), b.expand(shape), out);
  }
  return out;
}

}  // namespace

Tensor add(const Tensor& a, const Tensor& b) {
  Tensor out = binary_forward(BinaryOp::kAdd, "add", a, b);
  Shape sa = a.shape(), sb = b.shape();
  record(out, "add", {a, b}, [sa, sb](const Tensor& g, const NeedsGrad& need) {
    return std::vector<Tensor>{need[0] ? sum_to_shape(g, sa) : Tensor(),
                               need[1] ? sum_to_shape(g, sb) : Tensor()};
  });
  return out;
}

Tensor sub(const Tensor& a, const Tensor& b) {
  Tensor out = binary_forward(BinaryOp::kSub, "sub", a, b);
  Shape sa = a.shape(), sb = b.shape();
  record(out, "sub", {a, b}, [sa, sb](const Tensor& g, const NeedsGrad& need) {
    return std::vector<Tensor>{need[0] ? sum_to_shape(g, sa) : Tensor(),
                               need[1] ? sum_to_shape(scale(g, -1.0f), sb) : Tensor()};
  });
  return out;
}

Tensor mul(const Tensor& a, const Tensor& b) {
  Tensor out = binary_forward(BinaryOp::kMul, "mul", a, b);
  Tensor sa = a.detach(), sb = b.detach();
  bool a_needs = a.requires_grad(), b_needs = b.requires_grad();
  // Save only what the backward will read: b for da, a for db.
  record(out, "mul", {a, b},
         [sa = b_needs ? sa : Tensor(), sb = a_needs ? sb : Tensor(), shape_a = a.shape(),
          shape_b = b.shape()](const Tensor& g, const NeedsGrad& need) {
           return std::vector<Tensor>{need[0] ? sum_to_shape(mul(g, sb), shape_a) : Tensor(),
                                      need[1] ? sum_to_shape(mul(g, sa), shape_b) : Tensor()};
         });
  return out;
}

Tensor affine(const Tensor& x, float factor, float shift) {
  ops_detail::check_defined("affine", {&x});
  ops_detail::check_float_inputs("affine", {&x});
  Tensor src = x.contiguous();
  Tensor out = Tensor::empty(x.shape(), x.dtype(), x.device());
  if (out.numel() > 0) backend_for(x.device()).affine(src, factor, shift, out);
  record(out, "affine", {x}, [factor](const Tensor& g, const NeedsGrad&) {
    return std::vector<Tensor>{scale(g, factor)};
  });
  return out;
}

Tensor scale(const Tensor& x, float factor) {
  return affine(x, factor, 0.0f);
}

void add_(const Tensor& dst, const Tensor& src) {
  SP_CHECK(dst.shape() == src.shape(), "add_: shape mismatch ", dst.describe(),
           " += ", src.describe());
  SP_CHECK(dst.is_contiguous(), "add_: destination ", dst.describe(), " is not contiguous");
  backend_for(dst.device()).binary(BinaryOp::kAdd, dst, src, dst);
}

}  // namespace sp
