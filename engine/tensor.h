// Tensor: a reference-counted, strided view of typed memory on a device, with autograd metadata.
// Views (reshape, transpose, slice, expand) share storage; ops in engine/ops produce new tensors.
#pragma once

#include <cstdint>
#include <functional>
#include <initializer_list>
#include <map>
#include <memory>
#include <mutex>
#include <span>
#include <string>
#include <vector>

#include "engine/device.h"
#include "engine/dtype.h"

namespace sp {

/// Tensor dimensions (and strides, in elements), outermost axis first.
using Shape = std::vector<int64_t>;

std::string shape_str(const Shape& shape);  ///< "[2, 3, 4]"
/// Number of elements of a shape (1 for the scalar shape []).
int64_t shape_numel(const Shape& shape);
/// Row-major strides of a contiguous tensor of this shape.
Shape contiguous_strides(const Shape& shape);

class Allocator;
struct Node;

/// Owns (or borrows) a block of device memory; freed through its allocator or owner.
class Storage {
 public:
  Storage(size_t nbytes, Device device);  ///< allocated by the device's backend allocator
  /// Borrowed memory (e.g. a memory-mapped file); `owner` keeps it alive.
  Storage(void* data, size_t nbytes, Device device, std::shared_ptr<void> owner);
  ~Storage();
  Storage(const Storage&) = delete;
  Storage& operator=(const Storage&) = delete;

  void* data() const { return data_; }
  size_t nbytes() const { return nbytes_; }
  Device device() const { return device_; }

  /// Promises that these bytes are never written again (frozen model weights), so a backend may
  /// keep derived forms of them, such as a GEMM operand packed into its kernel's layout.
  void mark_immutable() { immutable_ = true; }
  bool immutable() const { return immutable_; }
  /// The derived form filed under `key`, made by `make` on first use; it lives exactly as long
  /// as this storage, so freed memory reused at the same address can never meet a stale one.
  /// Only for immutable storage. Thread-safe; `make` runs under a lock, once per key.
  std::shared_ptr<void> derived(const std::string& key,
                                const std::function<std::shared_ptr<void>()>& make) const;
  size_t derived_count() const;  ///< how many derived forms are held (for tests)

 private:
  void* data_ = nullptr;
  size_t nbytes_ = 0;
  Device device_;
  Allocator* allocator_ = nullptr;
  std::shared_ptr<void> owner_;
  bool immutable_ = false;
  mutable std::mutex derived_mutex_;
  mutable std::map<std::string, std::shared_ptr<void>> derived_;
};

/// The state a Tensor handle points to: storage, geometry, dtype and autograd links.
struct TensorImpl {
  std::shared_ptr<Storage> storage;
  Shape shape;
  Shape strides;       ///< in elements
  int64_t offset = 0;  ///< in elements
  DType dtype = DType::F32;
  /// True for trainable leaves and for every output of an op recorded on the tape.
  bool requires_grad = false;
  std::shared_ptr<Node> grad_fn;     ///< the node that produced this tensor; null for leaves
  std::shared_ptr<TensorImpl> grad;  ///< accumulated gradient (trainable leaves only)
  std::string name;                  ///< optional, used in error messages
};

/// A reference-counted handle to a strided view of typed memory on a device. Copying a Tensor
/// copies the handle, not the data; a default-constructed Tensor is undefined and stands for
/// an optional argument. Ops (engine/ops) return new tensors and record autograd nodes when an
/// input requires grad.
class Tensor {
 public:
  Tensor() = default;
  explicit Tensor(std::shared_ptr<TensorImpl> impl) : impl_(std::move(impl)) {}

  // ---- creation (contiguous, on `device`) ----
  /// Uninitialised, zeros, a constant, or copies of host values (floats; integers as I64/I32).
  static Tensor empty(const Shape& shape, DType dtype = DType::F32, Device device = Device::cpu());
  static Tensor zeros(const Shape& shape, DType dtype = DType::F32, Device device = Device::cpu());
  static Tensor full(const Shape& shape, float value, DType dtype = DType::F32,
                     Device device = Device::cpu());
  static Tensor from_floats(std::span<const float> values, const Shape& shape,
                            Device device = Device::cpu());
  static Tensor from_ints(std::span<const int64_t> values, const Shape& shape,
                          DType dtype = DType::I64, Device device = Device::cpu());
  static Tensor from_ints(std::initializer_list<int64_t> values, const Shape& shape,
                          DType dtype = DType::I64, Device device = Device::cpu());
  /// begin, begin + 1, ..., end - 1.
  static Tensor arange(int64_t begin, int64_t end, DType dtype = DType::I64,
                       Device device = Device::cpu());
  /// Wraps existing memory without copying; `owner` keeps it alive.
  static Tensor borrow(void* data, const Shape& shape, DType dtype, Device device,
                       std::shared_ptr<void> owner);

  // ---- metadata ----
  /// False for a default-constructed (optional, absent) tensor.
  bool defined() const { return impl_ != nullptr; }
  const Shape& shape() const { return impl_->shape; }
  const Shape& strides() const { return impl_->strides; }
  int64_t offset() const { return impl_->offset; }
  int64_t dim() const { return int64_t(impl_->shape.size()); }
  int64_t size(int64_t axis) const;  ///< negative axes count from the end
  int64_t stride(int64_t axis) const;
  int64_t numel() const { return shape_numel(impl_->shape); }
  size_t nbytes() const { return size_t(numel()) * dtype_size(impl_->dtype); }
  DType dtype() const { return impl_->dtype; }
  Device device() const { return impl_->storage->device(); }
  bool is_contiguous() const;
  const std::string& name() const { return impl_->name; }
  Tensor& set_name(std::string name);
  std::string describe() const;  ///< "F32[2, 3] on cpu"

  // ---- raw access (device memory; only dereference on CPU) ----
  /// The first element of this view in device memory.
  void* raw_data() const;
  /// Typed pointer to the first element; T must match the dtype's size (CPU tensors only).
  template <class T>
  T* data() const {
    check_element_type(sizeof(T));
    return static_cast<T*>(raw_data());
  }

  // ---- autograd ----
  /// True for trainable leaves and for results of recorded ops.
  bool requires_grad() const { return impl_->requires_grad; }
  /// Marks a leaf as trainable: it will receive .grad() on backward.
  Tensor& set_requires_grad(bool value);
  bool is_leaf() const { return impl_->grad_fn == nullptr; }
  Tensor grad() const;  ///< undefined until a backward reaches this leaf
  void zero_grad();     ///< drops the accumulated gradient
  /// Replaces the accumulated gradient (clipping, tests).
  void set_grad(const Tensor& grad);
  const std::shared_ptr<Node>& grad_fn() const { return impl_->grad_fn; }
  /// Runs reverse mode from this scalar (or with an explicit seed gradient).
  void backward(const Tensor& seed = Tensor(), bool retain_graph = false) const;
  /// Same storage, no autograd history.
  Tensor detach() const;

  // ---- views (share storage; recorded for autograd) ----
  Tensor reshape(const Shape& shape) const;  ///< copies only when the layout forbids a view
  Tensor view(const Shape& shape) const;     ///< never copies; throws if impossible
  Tensor transpose(int64_t a, int64_t b) const;
  Tensor permute(const std::vector<int64_t>& order) const;
  Tensor slice(int64_t axis, int64_t begin, int64_t end) const;
  Tensor select(int64_t axis, int64_t index) const;  ///< slice of width 1, axis removed
  Tensor unsqueeze(int64_t axis) const;
  Tensor squeeze(int64_t axis) const;
  Tensor expand(const Shape& shape) const;  ///< broadcast with zero strides

  // ---- copies ----
  Tensor contiguous() const;  ///< this tensor when already contiguous
  Tensor clone() const;
  /// A copy on another device, or converted to another dtype.
  Tensor to(Device device) const;
  Tensor to(DType dtype) const;
  /// Host copies for tests and IO; convert from any float dtype.
  std::vector<float> to_floats() const;
  std::vector<int64_t> to_ints() const;
  float item() const;  ///< the single element as float

  TensorImpl* impl() const { return impl_.get(); }
  const std::shared_ptr<TensorImpl>& impl_ptr() const { return impl_; }

 private:
  void check_element_type(size_t element_size) const;
  std::shared_ptr<TensorImpl> impl_;
};

/// Marks t's storage immutable (Storage::mark_immutable): a frozen model weight, written never
/// again, which GEMMs may then keep packed.
inline void freeze_storage(const Tensor& t) {
  if (t.defined()) t.impl()->storage->mark_immutable();
}

/// A tensor that shares `base`'s storage with a new geometry (no autograd record).
Tensor make_view(const Tensor& base, const Shape& shape, const Shape& strides, int64_t offset);

}  // namespace sp
