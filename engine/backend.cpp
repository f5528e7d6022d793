// The backend registry: one lazily created backend per device.
#include "engine/backend.h"

#include <algorithm>
#include <initializer_list>
#include <mutex>
#include <numeric>
#include <utility>

#include "engine/cpu/cpu_backend.h"
#include "engine/cuda/cuda_backend_factory.h"
#include "engine/error.h"

namespace sp {

namespace {

std::mutex g_mutex;

}  // namespace

DType activation_dtype(Device device, DType weight_dtype) {
  return device.kind == DeviceKind::CPU ? DType::F32 : weight_dtype;
}

Backend& backend_for(Device device) {
  static std::unique_ptr<Backend> cpu = make_cpu_backend();
  if (device.kind == DeviceKind::CPU) return *cpu;
  std::lock_guard<std::mutex> lock(g_mutex);
  // Device backends are never destroyed: tensors in static storage may be freed after main
  // returns, into the backend's caching allocator. A static raw pointer also keeps that
  // allocator's cached blocks reachable, so LeakSanitizer does not report them at exit.
  if (device.kind == DeviceKind::CUDA_EMU) {
    static Backend* const emu = make_cuda_emu_backend().release();
    return *emu;
  }
  static Backend* cuda[16] = {};
  SP_CHECK(device.index >= 0 && device.index < 16, "device ", device.str(), " is out of range");
  if (!cuda[device.index]) cuda[device.index] = make_cuda_backend(device.index).release();
  return *cuda[device.index];
}

bool backend_available(Device device) {
  switch (device.kind) {
    case DeviceKind::CPU:
      return true;
    case DeviceKind::CUDA_EMU:
      return cuda_emu_backend_built();
    case DeviceKind::CUDA:
      return cuda_device_count() > device.index;
  }
  return false;
}

std::vector<Device> available_devices() {
  std::vector<Device> devices{Device::cpu()};
  if (backend_available(Device::cuda_emu())) devices.push_back(Device::cuda_emu());
  for (int i = 0; i < cuda_device_count(); ++i) devices.push_back(Device::cuda(i));
  return devices;
}

std::vector<int64_t> packed_row_groups(const std::vector<int64_t>& ids, bool with_ids,
                                       int64_t* groups) {
  const int64_t n = int64_t(ids.size());
  std::vector<int64_t> order(static_cast<size_t>(n));
  std::iota(order.begin(), order.end(), int64_t(0));
  std::stable_sort(order.begin(), order.end(),
                   [&](int64_t a, int64_t b) { return ids[size_t(a)] < ids[size_t(b)]; });
  std::vector<int64_t> targets, starts;
  for (int64_t k = 0; k < n; ++k)
    if (k == 0 || ids[size_t(order[size_t(k)])] != ids[size_t(order[size_t(k - 1)])]) {
      targets.push_back(ids[size_t(order[size_t(k)])]);
      starts.push_back(k);
    }
  starts.push_back(n);
  std::vector<int64_t> packed;
  if (with_ids) packed = ids;
  for (const std::vector<int64_t>* part : {&targets, &starts, &order})
    packed.insert(packed.end(), part->begin(), part->end());
  *groups = int64_t(targets.size());
  return packed;
}

RowGroups group_rows_by_destination(const std::vector<int64_t>& ids, Device device,
                                    Tensor* ids_on_device) {
  const int64_t n = int64_t(ids.size());
  int64_t groups = 0;
  // One buffer, one upload: [ids,] targets, starts, order.
  const std::vector<int64_t> packed = packed_row_groups(ids, ids_on_device != nullptr, &groups);
  const int64_t first = ids_on_device ? n : 0;
  const Tensor all = Tensor::from_ints(packed, {int64_t(packed.size())}).to(device);
  if (ids_on_device) *ids_on_device = all.slice(0, 0, n);
  return {all.slice(0, first, first + groups), all.slice(0, first + groups, first + 2 * groups + 1),
          all.slice(0, first + 2 * groups + 1, first + 2 * groups + 1 + n)};
}

namespace {

// The row stride shared by named operands of one shape: each is contiguous (its width) or a
// [rows, width] view with unit column stride; undefined operands are skipped.
int64_t shared_row_stride(const char* op,
                          std::initializer_list<std::pair<const char*, const Tensor*>> operands) {
  const Tensor& first = *operands.begin()->second;
  const int64_t width = first.dim() > 0 ? first.size(-1) : 0;
  auto row_stride = [&](const char* name, const Tensor& t) {
    if (t.is_contiguous()) return width;
    SP_CHECK(t.dim() == 2 && t.stride(1) == 1 && t.stride(0) >= width, op, ": ", name, " ",
             t.describe(), " is neither contiguous nor [rows, ", width,
             "] with unit column stride (strides ", shape_str(t.strides()), ")");
    return t.stride(0);
  };
  const int64_t ld = row_stride(operands.begin()->first, first);
  for (const auto& [name, t] : operands)
    if (t->defined())
      SP_CHECK(t->shape() == first.shape() && row_stride(name, *t) == ld, op, ": ", name, " ",
               t->describe(), " does not have ", operands.begin()->first, " ", first.describe(),
               "'s shape and row stride ", ld);
  return ld;
}

}  // namespace

int64_t logits_row_stride(const char* op, const Tensor& logits, const Tensor& d_logits) {
  return shared_row_stride(op, {{"logits", &logits}, {"d_logits", &d_logits}});
}

int64_t gated_row_stride(const char* op, const Tensor& gate, const Tensor& up, const Tensor& d_gate,
                         const Tensor& d_up) {
  return shared_row_stride(op,
                           {{"gate", &gate}, {"up", &up}, {"d_gate", &d_gate}, {"d_up", &d_up}});
}

std::optional<int64_t> rotary_row_stride(const Tensor& t) {
  if (t.dim() != 4) return std::nullopt;
  const int64_t B = t.size(0), T = t.size(1), H = t.size(2), D = t.size(3);
  if (t.is_contiguous()) return H * D;
  const bool heads_dense = (D <= 1 || t.stride(3) == 1) && (H <= 1 || t.stride(2) == D);
  const bool rows_even = B <= 1 || T <= 1 || t.stride(0) == T * t.stride(1);
  const int64_t ld = T > 1 ? t.stride(1) : t.stride(0);
  if (!heads_dense || !rows_even || ld < H * D) return std::nullopt;
  return ld;
}

void check_adamw_step_args(const AdamWGroup& group, const Tensor& guard, const Tensor& grad_norm) {
  const size_t n = group.params.size();
  SP_CHECK(group.grads.size() == n && group.exp_avg.size() == n && group.exp_avg_sq.size() == n,
           "adamw_step: ", n, " parameters but ", group.grads.size(), " gradients and ",
           group.exp_avg.size(), " / ", group.exp_avg_sq.size(), " moments");
  const Device device = n > 0                 ? group.params[0].device()
                        : guard.defined()     ? guard.device()
                        : grad_norm.defined() ? grad_norm.device()
                                              : Device::cpu();
  auto check = [&](const Tensor& t, const char* role, DType dtype) {
    SP_CHECK(t.defined() && t.device() == device && t.is_contiguous() && t.dtype() == dtype,
             "adamw_step: ", role, " must be a contiguous ", dtype_name(dtype), " tensor on ",
             device.str(), ", got ", t.defined() ? t.describe() : std::string("none"));
  };
  for (size_t i = 0; i < n; ++i) {
    const Tensor& p = group.params[i];
    SP_CHECK(p.defined() && dtype_is_float(p.dtype()),
             "adamw_step: parameters must be float tensors, got ",
             p.defined() ? p.describe() : std::string("none"));
    check(p, "a parameter", p.dtype());
    check(group.grads[i], "a gradient", p.dtype());
    check(group.exp_avg[i], "a first moment", DType::F32);
    check(group.exp_avg_sq[i], "a second moment", DType::F32);
    SP_CHECK(group.grads[i].numel() == p.numel() && group.exp_avg[i].numel() == p.numel() &&
                 group.exp_avg_sq[i].numel() == p.numel(),
             "adamw_step: parameter ", p.describe(), ", gradient ", group.grads[i].describe(),
             " and moments ", group.exp_avg[i].describe(), ", ", group.exp_avg_sq[i].describe(),
             " differ in size");
  }
  if (guard.defined()) check(guard, "the guard", DType::F32);
  if (grad_norm.defined()) {
    check(grad_norm, "the gradient norm output", DType::F32);
    SP_CHECK(grad_norm.numel() == 1,
             "adamw_step: the gradient norm output must hold one value, got ",
             grad_norm.describe());
  }
}

}  // namespace sp
