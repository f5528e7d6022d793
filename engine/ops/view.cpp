// Tensor's view methods (reshape, transpose, permute, slice, expand, ...) and copies (contiguous,
// clone, to device/dtype), each recorded on the tape when its input requires grad.
#include <algorithm>
#include <numeric>

#include "engine/autograd.h"
#include "engine/backend.h"
#include "engine/error.h"
#include "engine/ops/reduce.h"
#include "engine/tensor.h"

namespace sp {

namespace {

int64_t wrap_axis(int64_t axis, int64_t ndim, const char* op) {
  int64_t wrapped = axis < 0 ? axis + ndim : axis;
  SP_CHECK(wrapped >= 0 && wrapped < ndim, op, ": axis ", axis, " is out of range for ", ndim,
           " dimensions");
  return wrapped;
}

// Resolves one -1 entry and checks the element count.
Shape infer_shape(const Shape& requested, int64_t numel, const Tensor& from) {
  Shape shape = requested;
  int64_t known = 1, infer_at = -1;
  for (size_t i = 0; i < shape.size(); ++i) {
    if (shape[i] == -1) {
      SP_CHECK(infer_at < 0, "reshape: more than one -1 in ", shape_str(requested));
      infer_at = int64_t(i);
    } else {
      SP_CHECK(shape[i] >= 0, "reshape: negative size in ", shape_str(requested));
      known *= shape[i];
    }
  }
  if (infer_at >= 0) {
    SP_CHECK(known > 0 && numel % known == 0, "reshape: cannot reshape ", from.describe(), " to ",
             shape_str(requested));
    shape[size_t(infer_at)] = numel / known;
  }
  SP_CHECK(shape_numel(shape) == numel, "reshape: cannot reshape ", from.describe(), " (", numel,
           " elements) to ", shape_str(requested));
  return shape;
}

// Strides for viewing `t` as `shape` without a copy, or empty if the layout forbids it.
Shape view_strides(const Tensor& t, const Shape& shape) {
  if (t.is_contiguous()) return contiguous_strides(shape);
  // Walk groups of old axes that map onto groups of new axes with matching element counts;
  // each old group must be internally contiguous.
  const Shape& old_shape = t.shape();
  const Shape& old_strides = t.strides();
  Shape strides(shape.size());
  size_t oi = 0, ni = 0;
  while (oi < old_shape.size() || ni < shape.size()) {
    int64_t old_count = 1, new_count = 1;
    size_t o_begin = oi, n_begin = ni;
    if (oi < old_shape.size()) old_count = old_shape[oi++];
    if (ni < shape.size()) new_count = shape[ni++];
    while (old_count != new_count) {
      if (old_count < new_count) {
        if (oi >= old_shape.size()) return {};
        old_count *= old_shape[oi++];
      } else {
        if (ni >= shape.size()) return {};
        new_count *= shape[ni++];
      }
    }
    for (size_t a = o_begin; a + 1 < oi; ++a)
      if (old_shape[a + 1] != 1 && old_shape[a] != 1 &&
          old_strides[a] != old_strides[a + 1] * old_shape[a + 1])
        return {};
    int64_t running = o_begin < oi ? old_strides[oi - 1] : 1;
    for (size_t a = ni; a-- > n_begin;) {
      strides[a] = running;
      running *= shape[a];
    }
  }
  return strides;
}

}  // namespace

Tensor Tensor::view(const Shape& requested) const {
  Shape shape = infer_shape(requested, numel(), *this);
  Shape strides = view_strides(*this, shape);
  SP_CHECK(!strides.empty() || shape.empty(), "view: ", describe(), " with strides ",
           shape_str(this->strides()), " cannot be viewed as ", shape_str(shape),
           " without a copy; use reshape");
  Tensor out = make_view(*this, shape, strides, offset());
  Shape input_shape = this->shape();
  record(out, "view", {*this}, [input_shape](const Tensor& g, const NeedsGrad&) {
    return std::vector<Tensor>{g.reshape(input_shape)};
  });
  return out;
}

Tensor Tensor::reshape(const Shape& requested) const {
  Shape shape = infer_shape(requested, numel(), *this);
  if (!view_strides(*this, shape).empty() || shape.empty()) return view(shape);
  return contiguous().view(shape);
}

Tensor Tensor::permute(const std::vector<int64_t>& order) const {
  SP_CHECK(int64_t(order.size()) == dim(), "permute: order has ", order.size(),
           " axes for a tensor with ", dim());
  Shape shape(order.size()), strides(order.size());
  std::vector<int64_t> inverse(order.size(), -1);
  for (size_t i = 0; i < order.size(); ++i) {
    int64_t axis = wrap_axis(order[i], dim(), "permute");
    SP_CHECK(inverse[size_t(axis)] < 0, "permute: axis ", axis, " repeated");
    inverse[size_t(axis)] = int64_t(i);
    shape[i] = this->shape()[size_t(axis)];
    strides[i] = this->strides()[size_t(axis)];
  }
  Tensor out = make_view(*this, shape, strides, offset());
  record(out, "permute", {*this}, [inverse](const Tensor& g, const NeedsGrad&) {
    return std::vector<Tensor>{g.permute(inverse)};
  });
  return out;
}

Tensor Tensor::transpose(int64_t a, int64_t b) const {
  std::vector<int64_t> order(static_cast<size_t>(dim()));
  std::iota(order.begin(), order.end(), 0);
  std::swap(order[size_t(wrap_axis(a, dim(), "transpose"))],
            order[size_t(wrap_axis(b, dim(), "transpose"))]);
  return permute(order);
}

Tensor Tensor::slice(int64_t axis, int64_t begin, int64_t end) const {
  axis = wrap_axis(axis, dim(), "slice");
  const int64_t n = size(axis);
  SP_CHECK(0 <= begin && begin <= end && end <= n, "slice: range [", begin, ", ", end,
           ") is outside axis ", axis, " of ", describe());
  Shape shape = this->shape();
  shape[size_t(axis)] = end - begin;
  Tensor out = make_view(*this, shape, strides(), offset() + begin * stride(axis));
  Shape input_shape = this->shape();
  record(out, "slice", {*this}, [=](const Tensor& g, const NeedsGrad&) {
    Tensor full = Tensor::zeros(input_shape, g.dtype(), g.device());
    Tensor window = make_view(full, g.shape(), full.strides(), begin * full.stride(axis));
    backend_for(g.device()).copy(g, window);
    return std::vector<Tensor>{full};
  });
  return out;
}

Tensor Tensor::select(int64_t axis, int64_t index) const {
  axis = wrap_axis(axis, dim(), "select");
  SP_CHECK(index >= 0 && index < size(axis), "select: index ", index, " is outside axis ", axis,
           " of ", describe());
  return slice(axis, index, index + 1).squeeze(axis);
}

Tensor Tensor::unsqueeze(int64_t axis) const {
  axis = wrap_axis(axis, dim() + 1, "unsqueeze");
  Shape shape = this->shape();
  shape.insert(shape.begin() + axis, 1);
  return reshape(shape);
}

Tensor Tensor::squeeze(int64_t axis) const {
  axis = wrap_axis(axis, dim(), "squeeze");
  SP_CHECK(size(axis) == 1, "squeeze: axis ", axis, " of ", describe(), " is not 1");
  Shape shape = this->shape();
  shape.erase(shape.begin() + axis);
  return reshape(shape);
}

Tensor Tensor::expand(const Shape& target) const {
  SP_CHECK(int64_t(target.size()) >= dim(), "expand: cannot expand ", describe(), " to ",
           shape_str(target));
  const size_t lead = target.size() - size_t(dim());
  Shape strides(target.size(), 0);
  for (size_t i = 0; i < size_t(dim()); ++i) {
    int64_t have = shape()[i], want = target[lead + i];
    SP_CHECK(have == want || have == 1, "expand: cannot expand ", describe(), " to ",
             shape_str(target));
    strides[lead + i] = have == want ? this->strides()[i] : 0;
  }
  Tensor out = make_view(*this, target, strides, offset());
  Shape input_shape = shape();
  record(out, "expand", {*this}, [input_shape](const Tensor& g, const NeedsGrad&) {
    return std::vector<Tensor>{sum_to_shape(g, input_shape)};
  });
  return out;
}

Tensor Tensor::contiguous() const {
  if (is_contiguous()) return *this;
  return clone();
}

Tensor Tensor::clone() const {
  Tensor out = Tensor::empty(shape(), dtype(), device());
  if (numel() > 0) backend_for(device()).copy(*this, out);
  record(out, "clone", {*this},
         [](const Tensor& g, const NeedsGrad&) { return std::vector<Tensor>{g}; });
  return out;
}

Tensor Tensor::to(Device target) const {
  if (target == device()) return *this;
  Tensor src = contiguous();
  Tensor out = Tensor::empty(shape(), dtype(), target);
  if (numel() > 0) {
    if (src.device().is_cpu()) {
      backend_for(target).copy_from_host(out.raw_data(), src.raw_data(), src.nbytes());
    } else if (target.is_cpu()) {
      backend_for(src.device()).copy_to_host(out.raw_data(), src.raw_data(), src.nbytes());
    } else {  // device to device through the host
      Tensor host = src.to(Device::cpu());
      backend_for(target).copy_from_host(out.raw_data(), host.raw_data(), host.nbytes());
    }
  }
  Device source_device = device();
  record(out, "to_device", {*this}, [source_device](const Tensor& g, const NeedsGrad&) {
    return std::vector<Tensor>{g.to(source_device)};
  });
  return out;
}

Tensor Tensor::to(DType target) const {
  if (target == dtype()) return *this;
  Tensor src = contiguous();
  Tensor out = Tensor::empty(shape(), target, device());
  if (numel() > 0) backend_for(device()).cast(src, out);
  DType source_dtype = dtype();
  if (dtype_is_float(target) && dtype_is_float(source_dtype))
    record(out, "cast", {*this}, [source_dtype](const Tensor& g, const NeedsGrad&) {
      return std::vector<Tensor>{g.to(source_dtype)};
    });
  return out;
}

}  // namespace sp
