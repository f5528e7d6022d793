// Small checks every op shares: same device, same dtype, F32-on-CPU, defined inputs.
// Messages name the op and describe the offending tensors.
#pragma once

#include <initializer_list>

#include "engine/backend.h"
#include "engine/error.h"
#include "engine/tensor.h"

namespace sp::ops_detail {

// The storage behind t when it is marked immutable (for GemmArgs::b_storage), else null.
inline const Storage* immutable_storage(const Tensor& t) {
  const Storage* storage = t.impl()->storage.get();
  return storage->immutable() ? storage : nullptr;
}

inline void check_defined(const char* op, std::initializer_list<const Tensor*> tensors) {
  int index = 0;
  for (const Tensor* t : tensors) {
    SP_CHECK(t->defined(), op, ": input ", index, " is undefined");
    ++index;
  }
}

// All defined tensors share the first one's device and floating dtype; the CPU computes in F32.
inline void check_float_inputs(const char* op, std::initializer_list<const Tensor*> tensors) {
  const Tensor* first = nullptr;
  for (const Tensor* t : tensors) {
    if (!t->defined()) continue;
    if (!first) {
      first = t;
      SP_CHECK(dtype_is_float(t->dtype()), op, ": expected a floating-point tensor, got ",
               t->describe());
      SP_CHECK(!t->device().is_cpu() || t->dtype() == DType::F32, op,
               ": the CPU backend computes in F32, got ", t->describe(), "; convert with .to(F32)");
      continue;
    }
    SP_CHECK(t->device() == first->device(), op,
             ": tensors on different devices: ", first->describe(), " and ", t->describe());
    SP_CHECK(t->dtype() == first->dtype(), op, ": dtype mismatch: ", first->describe(), " and ",
             t->describe());
  }
}

// A bias over x's last axis (fused into an elementwise op): a float [x.size(-1)] tensor on x's
// device. Returns whether it can be fused as is; false when its dtype differs from x's (mixed
// precision), where the caller composes the unfused ops to keep add's promotion rules.
inline bool check_last_axis_bias(const char* op, const Tensor& x, const Tensor& bias) {
  check_float_inputs(op, {&bias});
  SP_CHECK(x.dim() >= 1 && bias.shape() == Shape({x.size(-1)}) && bias.device() == x.device(), op,
           ": bias must be [", x.dim() >= 1 ? x.size(-1) : 0, "] on ", x.device().str(), ", got ",
           bias.describe(), " for x ", x.describe());
  return bias.dtype() == x.dtype();
}

// The dtypes of a GEMM over a and b. Equal float dtypes multiply as they are (the CPU in F32
// only). An F32 activation with a BF16 weight, in either order, is the CPU's bf16 model: the F32
// operand is rounded to bf16 for the GEMM, which accumulates in fp32 and returns F32 (what
// torch.autocast does, without rounding the result back to bf16).
struct GemmDtypes {
  DType operands;
  DType result;
  bool mixed;  // true when one operand must be cast to `operands` first
};

inline GemmDtypes gemm_dtypes(const char* op, const Tensor& a, const Tensor& b) {
  const bool mixed = (a.dtype() == DType::F32 && b.dtype() == DType::BF16) ||
                     (a.dtype() == DType::BF16 && b.dtype() == DType::F32);
  if (!mixed) {
    check_float_inputs(op, {&a, &b});
    return {a.dtype(), a.dtype(), false};
  }
  SP_CHECK(a.device() == b.device(), op, ": tensors on different devices: ", a.describe(), " and ",
           b.describe());
  return {DType::BF16, DType::F32, true};
}

}  // namespace sp::ops_detail
