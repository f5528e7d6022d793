// Tensor creation, metadata, host transfers and the Storage lifetime.
#include "engine/tensor.h"

#include <algorithm>
#include <cstring>
#include <numeric>
#include <sstream>

#include "engine/allocator.h"
#include "engine/autograd.h"
#include "engine/backend.h"
#include "engine/error.h"

namespace sp {

std::string shape_str(const Shape& shape) {
  std::ostringstream out;
  out << "[";
  for (size_t i = 0; i < shape.size(); ++i) out << (i ? ", " : "") << shape[i];
  out << "]";
  return out.str();
}

int64_t shape_numel(const Shape& shape) {
  int64_t n = 1;
  for (int64_t d : shape)
    if (__builtin_mul_overflow(n, d, &n))
      fail(ErrorKind::kInvalidArgument, "tensor shape ", shape_str(shape),
           " has more elements than a 64-bit count holds");
  return n;
}

Shape contiguous_strides(const Shape& shape) {
  Shape strides(shape.size());
  int64_t running = 1;
  for (size_t i = shape.size(); i-- > 0;) {
    strides[i] = running;
    running *= std::max<int64_t>(shape[i], 1);
  }
  return strides;
}

// ---------------------------------------------------------------------------------------------
Storage::Storage(size_t nbytes, Device device) : nbytes_(nbytes), device_(device) {
  allocator_ = &backend_for(device).allocator();
  data_ = allocator_->allocate(nbytes);
}

Storage::Storage(void* data, size_t nbytes, Device device, std::shared_ptr<void> owner)
    : data_(data), nbytes_(nbytes), device_(device), owner_(std::move(owner)) {}

Storage::~Storage() {
  derived_.clear();  // derived forms may refer to the bytes; drop them first
  if (allocator_ != nullptr) allocator_->deallocate(data_, nbytes_);
}

std::shared_ptr<void> Storage::derived(const std::string& key,
                                       const std::function<std::shared_ptr<void>()>& make) const {
  SP_ASSERT(immutable_);
  std::lock_guard<std::mutex> lock(derived_mutex_);
  std::shared_ptr<void>& slot = derived_[key];
  if (!slot) slot = make();
  return slot;
}

size_t Storage::derived_count() const {
  std::lock_guard<std::mutex> lock(derived_mutex_);
  return derived_.size();
}

// ---------------------------------------------------------------------------------------------
namespace {

std::shared_ptr<TensorImpl> new_impl(const Shape& shape, DType dtype, Device device) {
  for (int64_t d : shape)
    SP_CHECK(d >= 0, "tensor shape ", shape_str(shape), " has a negative dimension");
  auto impl = std::make_shared<TensorImpl>();
  size_t nbytes = 0;
  if (__builtin_mul_overflow(size_t(shape_numel(shape)), dtype_size(dtype), &nbytes))
    fail(ErrorKind::kInvalidArgument, "tensor shape ", shape_str(shape), " of ", dtype_name(dtype),
         " needs more bytes than a 64-bit size holds");
  impl->storage = std::make_shared<Storage>(nbytes, device);
  impl->shape = shape;
  impl->strides = contiguous_strides(shape);
  impl->dtype = dtype;
  return impl;
}

int64_t normalize_axis(int64_t axis, int64_t ndim, const char* what) {
  int64_t normalized = axis < 0 ? axis + ndim : axis;
  SP_CHECK(normalized >= 0 && normalized < ndim, what, ": axis ", axis,
           " is out of range for a tensor with ", ndim, " dimensions");
  return normalized;
}

}  // namespace

Tensor Tensor::empty(const Shape& shape, DType dtype, Device device) {
  return Tensor(new_impl(shape, dtype, device));
}

Tensor Tensor::zeros(const Shape& shape, DType dtype, Device device) {
  Tensor t = empty(shape, dtype, device);
  if (t.numel() > 0) backend_for(device).fill(t, 0.0f);
  return t;
}

Tensor Tensor::full(const Shape& shape, float value, DType dtype, Device device) {
  Tensor t = empty(shape, dtype, device);
  if (t.numel() > 0) backend_for(device).fill(t, value);
  return t;
}

Tensor Tensor::from_floats(std::span<const float> values, const Shape& shape, Device device) {
  SP_CHECK(int64_t(values.size()) == shape_numel(shape), "from_floats: ", values.size(),
           " values do not fill shape ", shape_str(shape));
  Tensor t = empty(shape, DType::F32, device);
  if (!values.empty()) backend_for(device).copy_from_host(t.raw_data(), values.data(), t.nbytes());
  return t;
}

Tensor Tensor::from_ints(std::span<const int64_t> values, const Shape& shape, DType dtype,
                         Device device) {
  SP_CHECK(int64_t(values.size()) == shape_numel(shape), "from_ints: ", values.size(),
           " values do not fill shape ", shape_str(shape));
  SP_CHECK(dtype == DType::I64 || dtype == DType::I32, "from_ints: dtype must be I32 or I64, got ",
           dtype_name(dtype));
  Tensor t = empty(shape, dtype, device);
  if (values.empty()) return t;
  if (dtype == DType::I64) {
    backend_for(device).copy_from_host(t.raw_data(), values.data(), t.nbytes());
  } else {
    std::vector<int32_t> narrow(values.begin(), values.end());
    backend_for(device).copy_from_host(t.raw_data(), narrow.data(), t.nbytes());
  }
  return t;
}

Tensor Tensor::from_ints(std::initializer_list<int64_t> values, const Shape& shape, DType dtype,
                         Device device) {
  return from_ints(std::span<const int64_t>(values.begin(), values.size()), shape, dtype, device);
}

Tensor Tensor::arange(int64_t begin, int64_t end, DType dtype, Device device) {
  std::vector<int64_t> values(static_cast<size_t>(std::max<int64_t>(end - begin, 0)));
  std::iota(values.begin(), values.end(), begin);
  return from_ints(values, {int64_t(values.size())}, dtype, device);
}

Tensor Tensor::borrow(void* data, const Shape& shape, DType dtype, Device device,
                      std::shared_ptr<void> owner) {
  auto impl = std::make_shared<TensorImpl>();
  size_t nbytes = size_t(shape_numel(shape)) * dtype_size(dtype);
  impl->storage = std::make_shared<Storage>(data, nbytes, device, std::move(owner));
  impl->shape = shape;
  impl->strides = contiguous_strides(shape);
  impl->dtype = dtype;
  return Tensor(std::move(impl));
}

int64_t Tensor::size(int64_t axis) const {
  return impl_->shape[size_t(normalize_axis(axis, dim(), "size"))];
}

int64_t Tensor::stride(int64_t axis) const {
  return impl_->strides[size_t(normalize_axis(axis, dim(), "stride"))];
}

bool Tensor::is_contiguous() const {
  int64_t expected = 1;
  for (size_t i = impl_->shape.size(); i-- > 0;) {
    if (impl_->shape[i] == 1) continue;
    if (impl_->strides[i] != expected) return false;
    expected *= impl_->shape[i];
  }
  return true;
}

Tensor& Tensor::set_name(std::string name) {
  impl_->name = std::move(name);
  return *this;
}

std::string Tensor::describe() const {
  if (!defined()) return "undefined tensor";
  std::string text =
      std::string(dtype_name(dtype())) + shape_str(shape()) + " on " + device().str();
  if (!impl_->name.empty()) text = "'" + impl_->name + "' " + text;
  return text;
}

void* Tensor::raw_data() const {
  SP_ASSERT(defined());
  return static_cast<char*>(impl_->storage->data()) + impl_->offset * int64_t(dtype_size(dtype()));
}

void Tensor::check_element_type(size_t element_size) const {
  SP_CHECK(defined(), "data() on an undefined tensor");
  SP_CHECK(element_size == dtype_size(dtype()), "data<T>() with a ", element_size, "-byte type on ",
           describe());
}

Tensor& Tensor::set_requires_grad(bool value) {
  SP_CHECK(is_leaf(), "set_requires_grad: only leaf tensors can be marked trainable (", describe(),
           " was produced by op '", impl_->grad_fn->op, "')");
  SP_CHECK(!value || dtype_is_float(dtype()), "set_requires_grad: ", describe(),
           " is not a floating-point tensor");
  impl_->requires_grad = value;
  return *this;
}

Tensor Tensor::grad() const {
  return impl_->grad ? Tensor(impl_->grad) : Tensor();
}

void Tensor::zero_grad() {
  impl_->grad.reset();
}

void Tensor::set_grad(const Tensor& grad) {
  SP_CHECK(!grad.defined() || grad.shape() == shape(), "set_grad: gradient shape ",
           grad.defined() ? shape_str(grad.shape()) : "", " does not match ", describe());
  impl_->grad = grad.defined() ? grad.impl_ptr() : nullptr;
}

void Tensor::backward(const Tensor& seed, bool retain_graph) const {
  run_backward(*this, seed, retain_graph);
}

Tensor Tensor::detach() const {
  auto impl = std::make_shared<TensorImpl>();
  impl->storage = impl_->storage;
  impl->shape = impl_->shape;
  impl->strides = impl_->strides;
  impl->offset = impl_->offset;
  impl->dtype = impl_->dtype;
  impl->name = impl_->name;
  return Tensor(std::move(impl));
}

std::vector<float> Tensor::to_floats() const {
  Tensor host = to(Device::cpu()).contiguous();
  if (host.dtype() != DType::F32) host = host.to(DType::F32);
  const float* data = host.data<float>();
  return std::vector<float>(data, data + host.numel());
}

std::vector<int64_t> Tensor::to_ints() const {
  Tensor host = to(Device::cpu()).contiguous();
  std::vector<int64_t> values(static_cast<size_t>(host.numel()));
  if (host.dtype() == DType::I64) {
    std::memcpy(values.data(), host.raw_data(), host.nbytes());
  } else if (host.dtype() == DType::I32) {
    const int32_t* data = host.data<int32_t>();
    std::copy(data, data + host.numel(), values.begin());
  } else {
    fail(ErrorKind::kInvalidArgument, "to_ints: ", describe(), " is not an integer tensor");
  }
  return values;
}

float Tensor::item() const {
  SP_CHECK(numel() == 1, "item(): ", describe(), " does not have exactly one element");
  if (dtype() == DType::I64 || dtype() == DType::I32) return float(to_ints()[0]);
  return to_floats()[0];
}

Tensor make_view(const Tensor& base, const Shape& shape, const Shape& strides, int64_t offset) {
  auto impl = std::make_shared<TensorImpl>();
  impl->storage = base.impl()->storage;
  impl->shape = shape;
  impl->strides = strides;
  impl->offset = offset;
  impl->dtype = base.dtype();
  impl->name = base.name();
  return Tensor(std::move(impl));
}

}  // namespace sp
