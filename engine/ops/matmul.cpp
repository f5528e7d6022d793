// matmul via the backend's strided-batched GEMM; the backward issues only the GEMMs whose
// operand needs a gradient.
#include "engine/ops/matmul.h"

#include "engine/autograd.h"
#include "engine/ops/common.h"
#include "engine/ops/elementwise.h"

namespace sp {

namespace {

struct Operand {
  Tensor storage;  // keeps the (possibly copied) data alive
  bool trans = false;
  int64_t ld = 0;
  int64_t batch_stride = 0;
};

// Describes the last two axes of t as a GEMM operand, copying only when neither a row-major
// nor a transposed layout fits, and the leading axes as one uniform batch stride.
Operand describe_operand(const Tensor& t_in, int64_t batch) {
  Tensor t = t_in;
  for (int attempt = 0; attempt < 2; ++attempt) {
    const int64_t rows = t.size(-2), cols = t.size(-1);
    Operand op;
    op.storage = t;
    bool ok = true;
    if (t.stride(-1) == 1 && (rows == 1 || t.stride(-2) >= cols)) {
      op.trans = false;
      op.ld = rows == 1 ? cols : t.stride(-2);
    } else if (t.stride(-2) == 1 && (cols == 1 || t.stride(-1) >= rows)) {
      op.trans = true;
      op.ld = cols == 1 ? rows : t.stride(-1);
    } else {
      ok = false;
    }
    if (ok && t.dim() > 2) {
      // Batch axes must collapse to a single stride (or be broadcast with stride 0).
      int64_t expected = -1;
      for (int64_t axis = t.dim() - 3; axis >= 0 && ok; --axis) {
        if (t.size(axis) == 1) continue;
        if (expected < 0) {
          op.batch_stride = t.stride(axis);
          expected = t.stride(axis) * t.size(axis);
        } else {
          ok = t.stride(axis) == expected;
          expected *= t.size(axis);
        }
      }
      if (batch == 1) op.batch_stride = 0;
    }
    if (ok) return op;
    t = t_in.contiguous();
  }
  SP_ASSERT(false);
  return {};
}

}  // namespace

namespace ops_detail {

MatmulPlan plan_matmul(const Tensor& a, const Tensor& b) {
  const GemmDtypes types = gemm_dtypes("matmul", a, b);
  SP_CHECK(a.dim() >= 2 && b.dim() >= 2, "matmul: operands need at least 2 dimensions, got ",
           a.describe(), " and ", b.describe());
  const int64_t M = a.size(-2), K = a.size(-1), N = b.size(-1);
  SP_CHECK(b.size(-2) == K, "matmul: inner dimensions differ: ", a.describe(), " @ ", b.describe());
  Shape batch_shape(a.shape().begin(), a.shape().end() - 2);
  if (b.dim() > 2) {
    Shape b_batch(b.shape().begin(), b.shape().end() - 2);
    SP_CHECK(b_batch == batch_shape, "matmul: batch dimensions differ: ", a.describe(), " @ ",
             b.describe());
  }
  const int64_t batch = shape_numel(batch_shape);
  MatmulPlan plan;
  plan.out_shape = batch_shape;
  plan.out_shape.push_back(M);
  plan.out_shape.push_back(N);
  plan.out_dtype = types.result;
  if (shape_numel(plan.out_shape) == 0) return plan;
  NoGradGuard no_grad;  // a cast or copied operand is the GEMM's input, not a graph node
  GemmArgs& g = plan.gemm;
  g.dtype = types.operands;
  g.c_dtype = types.result;
  g.n = N;
  g.k = K;
  g.ldc = N;
  Operand A = describe_operand(a.dtype() == types.operands ? a : a.to(types.operands), batch);
  Operand B = describe_operand(b.dtype() == types.operands ? b : b.to(types.operands), batch);
  if (b.dim() == 2 && !A.trans && (batch == 1 || A.batch_stride == M * A.ld)) {
    // Batch rows are evenly spaced: one big GEMM over batch * M rows.
    g.m = batch * M;
    g.batch = 1;
  } else {
    g.m = M;
    g.batch = batch;
    g.stride_a = A.batch_stride;
    g.stride_b = b.dim() == 2 ? 0 : B.batch_stride;
    g.stride_c = M * N;
  }
  g.a = A.storage.raw_data();
  g.b = B.storage.raw_data();
  g.trans_a = A.trans;
  g.trans_b = B.trans;
  g.lda = A.ld;
  g.ldb = B.ld;
  if (g.stride_b == 0) g.b_storage = immutable_storage(B.storage);
  plan.a_storage = std::move(A.storage);
  plan.b_storage = std::move(B.storage);
  return plan;
}

}  // namespace ops_detail

Tensor matmul(const Tensor& a, const Tensor& b) {
  ops_detail::check_defined("matmul", {&a, &b});
  ops_detail::MatmulPlan plan = ops_detail::plan_matmul(a, b);
  Tensor out = Tensor::empty(plan.out_shape, plan.out_dtype, a.device());
  if (out.numel() > 0) {
    NoGradGuard no_grad;
    plan.gemm.c = out.raw_data();
    backend_for(a.device()).gemm(plan.gemm);
  }
  bool a_needs = a.requires_grad(), b_needs = b.requires_grad();
  record(out, "matmul", {a, b},
         [sa = b_needs ? a.detach() : Tensor(), sb = a_needs ? b.detach() : Tensor(),
          b_shape = b.shape(), a_dtype = a.dtype(),
          b_dtype = b.dtype()](const Tensor& g, const NeedsGrad& need) {
           std::vector<Tensor> grads(2);
           if (need[0]) grads[0] = matmul(g, sb.transpose(-1, -2));
           if (need[1]) {
             if (b_shape.size() == 2 && sa.dim() > 2) {
               // Shared weight: dB = A^T dC over all batch rows flattened.
               Tensor a2 = sa.reshape({-1, sa.size(-1)});
               Tensor g2 = g.reshape({-1, g.size(-1)});
               grads[1] = matmul(a2.transpose(0, 1), g2);
             } else {
               grads[1] = matmul(sa.transpose(-1, -2), g);
             }
           }
           // Mixed precision: each gradient in its input's dtype (a BF16 weight's is rounded).
           if (grads[0].defined() && grads[0].dtype() != a_dtype) grads[0] = grads[0].to(a_dtype);
           if (grads[1].defined() && grads[1].dtype() != b_dtype) grads[1] = grads[1].to(b_dtype);
           return grads;
         });
  return out;
}

Tensor linear(const Tensor& x, const Tensor& weight, const Tensor& bias, WeightLayout layout) {
  Tensor y = matmul(x, layout == WeightLayout::kInOut ? weight : weight.transpose(0, 1));
  return bias.defined() ? add(y, bias) : y;
}

}  // namespace sp
