// Every CUDA kernel family on the emulated device against the CPU backend, at the Backend level,
// over awkward sizes: 1, 31, 33, 767 and 769 columns (tails of every pack, warp and block width),
// 8 and 768 (whole 16-byte packs), a single row and three rows, in fp32 and bf16.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <vector>

#include "engine/ops/ops.h"
#include "tests/cuda/cuda_test_util.h"

namespace sp::cuda_test {
namespace {

struct Size {
  int64_t rows;
  int64_t cols;
  DType dtype;
};

std::vector<Size> sweep() {
  std::vector<Size> sizes;
  for (DType dtype : {DType::F32, DType::BF16})
    for (int64_t cols : {1, 8, 31, 33, 767, 768, 769})
      for (int64_t rows : {1, 3}) sizes.push_back({rows, cols, dtype});
  return sizes;
}

std::string size_name(const ::testing::TestParamInfo<Size>& info) {
  return dtype_label(info.param.dtype) + "_" + std::to_string(info.param.rows) + "x" +
         std::to_string(info.param.cols);
}

class CudaKernels : public ::testing::TestWithParam<Size> {
 protected:
  int64_t rows() const { return GetParam().rows; }
  int64_t cols() const { return GetParam().cols; }
  DType dtype() const { return GetParam().dtype; }
  float atol() const { return atol_for(dtype()); }
  float rtol() const { return rtol_for(dtype()); }
  Tensor dev(const Tensor& host) const { return on_kernel_device(host, dtype()); }
  Tensor dev_empty(const Shape& shape) const {
    return Tensor::empty(shape, dtype(), kernel_device());
  }
  Tensor in(const Shape& shape, uint64_t seed, float std = 1.0f) const {
    return data(shape, seed, dtype(), std);
  }
};

INSTANTIATE_TEST_SUITE_P(Sweep, CudaKernels, ::testing::ValuesIn(sweep()), size_name);

// ---- data movement ----

TEST_P(CudaKernels, CopyStridedBroadcastAndWindowed) {
  for (DType dt : {dtype(), DType::I32, DType::I64}) {
    Tensor base = data({cols(), rows()}, 1).to(dt);
    Tensor base_dev = base.to(kernel_device());
    // Transposed source.
    Tensor want = Tensor::empty({rows(), cols()}, dt),
           got = Tensor::empty({rows(), cols()}, dt, kernel_device());
    cpu().copy(base.transpose(0, 1), want);
    kernel_backend().copy(base_dev.transpose(0, 1), got);
    EXPECT_TRUE(bitwise_equal(want, got)) << "transpose " << dtype_name(dt);
    // Broadcast row (zero stride) into a window of a wider destination (offset, row stride).
    Tensor row = data({1, cols()}, 2).to(dt), row_dev = row.to(kernel_device());
    Tensor wide = Tensor::zeros({rows(), cols() + 3}, dt),
           wide_dev = Tensor::zeros({rows(), cols() + 3}, dt, kernel_device());
    cpu().copy(row.expand({rows(), cols()}), wide.slice(1, 2, 2 + cols()));
    kernel_backend().copy(row_dev.expand({rows(), cols()}), wide_dev.slice(1, 2, 2 + cols()));
    EXPECT_TRUE(bitwise_equal(wide, wide_dev)) << "broadcast window " << dtype_name(dt);
    // Dense.
    Tensor dense = Tensor::empty({cols(), rows()}, dt, kernel_device());
    kernel_backend().copy(base_dev, dense);
    EXPECT_TRUE(bitwise_equal(base, dense)) << "dense " << dtype_name(dt);
  }
}

void check_casts(int64_t rows, int64_t cols) {
  // Values representable in every float type and in range of every integer type.
  std::vector<float> values(static_cast<size_t>(rows * cols));
  for (size_t i = 0; i < values.size(); ++i) values[i] = float(int(i % 37) - 18) * 0.75f + 0.125f;
  Tensor f32 = Tensor::from_floats(values, {rows, cols});
  const DType all[] = {DType::F32, DType::BF16, DType::F16, DType::I32, DType::I64};
  for (DType from : all) {
    Tensor src = from == DType::F32 ? f32 : f32.to(from);
    Tensor src_dev = src.to(kernel_device());
    for (DType to : all) {
      if (to == from) continue;
      Tensor want = Tensor::empty(src.shape(), to),
             got = Tensor::empty(src.shape(), to, kernel_device());
      cpu().cast(src, want);
      kernel_backend().cast(src_dev, got);
      EXPECT_TRUE(bitwise_equal(want, got))
          << dtype_name(from) << " -> " << dtype_name(to) << " at " << rows << "x" << cols;
    }
  }
}

// Every (from, to) pair of F32, BF16, F16, I32 and I64 at every size of the sweep.
TEST(CudaKernelsCast, EveryDtypePairAtEverySize) {
  for (const Size& size : sweep()) {
    if (size.dtype != DType::F32) continue;  // the sweep's shapes, once
    check_casts(size.rows, size.cols);
  }
}

TEST_P(CudaKernels, FillEveryDtype) {
  for (DType dt : {dtype(), DType::F16, DType::I32, DType::I64}) {
    for (float value : {0.0f, 1.5f, -2.25f}) {
      Tensor want = Tensor::empty({rows(), cols()}, dt);
      Tensor got = Tensor::empty({rows() * cols() + 1}, dt, kernel_device())
                       .slice(0, 1, 1 + rows() * cols());
      cpu().fill(want, value);
      kernel_backend().fill(got, value);  // an unaligned destination: scalar stores only
      EXPECT_TRUE(bitwise_equal(want.view({rows() * cols()}), got))
          << dtype_name(dt) << " " << value;
      Tensor aligned = Tensor::empty({rows(), cols()}, dt, kernel_device());
      kernel_backend().fill(aligned, value);
      EXPECT_TRUE(bitwise_equal(want, aligned)) << dtype_name(dt) << " " << value;
    }
  }
}

// ---- dense math ----

TEST_P(CudaKernels, BinaryBroadcastsAndAliases) {
  const int64_t r = rows(), c = cols();
  Tensor a = in({r, c}, 1), same = in({r, c}, 2), row = in({c}, 3), column = in({r, 1}, 4);
  Tensor scalar = in({1}, 5), transposed = in({c, r}, 6);
  // Each variant: the CPU operand and the same view of device memory.
  struct Variant {
    const char* name;
    Tensor b, b_dev;
  };
  const Variant variants[] = {
      {"same", same, dev(same)},
      {"row", row.expand({r, c}), dev(row).expand({r, c})},
      {"column", column.expand({r, c}), dev(column).expand({r, c})},
      {"scalar", scalar.view({1, 1}).expand({r, c}), dev(scalar).view({1, 1}).expand({r, c})},
      {"transposed", transposed.transpose(0, 1), dev(transposed).transpose(0, 1)}};
  for (BinaryOp op : {BinaryOp::kAdd, BinaryOp::kSub, BinaryOp::kMul}) {
    for (const Variant& v : variants) {
      Tensor want = Tensor::empty({r, c});
      cpu().binary(op, a, v.b, want);
      Tensor got = dev_empty({r, c});
      kernel_backend().binary(op, dev(a), v.b_dev, got);
      EXPECT_TRUE(all_close(want, got, atol(), rtol())) << v.name << " op " << int(op);
    }
  }
  // In place (out aliases a) on an unaligned contiguous window: scalar path.
  Tensor buffer = dev(in({r * c + 1}, 7));
  Tensor window = buffer.slice(0, 1, 1 + r * c);
  Tensor want = Tensor::empty({r * c});
  cpu().binary(BinaryOp::kAdd, window.to(Device::cpu()).to(DType::F32), same.view({r * c}), want);
  kernel_backend().binary(BinaryOp::kAdd, window, dev(same).view({r * c}), window);
  EXPECT_TRUE(all_close(want, window, atol(), rtol())) << "in place, unaligned";
}

TEST_P(CudaKernels, AffineInPlaceAndUnaligned) {
  Tensor x = in({rows(), cols()}, 1);
  Tensor want = Tensor::empty({rows(), cols()});
  cpu().affine(x, -1.5f, 0.25f, want);
  Tensor xd = dev(x);
  kernel_backend().affine(xd, -1.5f, 0.25f, xd);
  EXPECT_TRUE(all_close(want, xd, atol(), rtol()));
  Tensor buffer = dev(in({rows() * cols() + 1}, 2));
  Tensor window = buffer.slice(0, 1, 1 + rows() * cols());
  Tensor want2 = Tensor::empty({rows() * cols()});
  cpu().affine(window.to(Device::cpu()).to(DType::F32), 3.0f, -1.0f, want2);
  Tensor out = dev_empty({rows() * cols()});
  kernel_backend().affine(window, 3.0f, -1.0f, out);
  EXPECT_TRUE(all_close(want2, out, atol(), rtol()));
}

TEST_P(CudaKernels, GemmEveryTransposeBatchedAndPadded) {
  // C[m, n] = op(A) op(B) with m = rows, n = 5, k = cols; padded leading dimensions.
  const int64_t m = rows(), n = 5, k = cols();
  for (bool ta : {false, true}) {
    for (bool tb : {false, true}) {
      for (int64_t batch : {1, 2}) {
        const int64_t a_rows = ta ? k : m, a_cols = ta ? m : k;
        const int64_t b_rows = tb ? n : k, b_cols = tb ? k : n;
        const int64_t lda = a_cols + 1, ldb = b_cols + 2, ldc = n + 3;
        Tensor a = in({batch, a_rows, lda}, 1), b = in({batch, b_rows, ldb}, 2);
        Tensor c = in({batch, m, ldc}, 3);
        GemmArgs g;
        g.trans_a = ta, g.trans_b = tb, g.m = m, g.n = n, g.k = k;
        g.lda = lda, g.ldb = ldb, g.ldc = ldc, g.batch = batch;
        g.stride_a = a_rows * lda, g.stride_b = b_rows * ldb, g.stride_c = m * ldc;
        g.alpha = 0.5f, g.beta = batch == 1 ? 0.0f : -1.0f;
        Tensor want = c.clone();
        g.a = a.raw_data(), g.b = b.raw_data(), g.c = want.raw_data();
        cpu().gemm(g);
        Tensor ad = dev(a), bd = dev(b), got = dev(c);
        g.dtype = g.c_dtype = dtype();
        g.a = ad.raw_data(), g.b = bd.raw_data(), g.c = got.raw_data();
        kernel_backend().gemm(g);
        // fp32 through the emulated cuBLAS is the CPU's OpenBLAS: agreement to rounding. bf16
        // rounds the output once; sums of k products of O(1) values need an absolute allowance.
        const float tol = dtype() == DType::F32 ? 1e-4f : 2e-2f * std::sqrt(float(k));
        EXPECT_TRUE(all_close(want, got, tol, rtol()))
            << "ta " << ta << " tb " << tb << " batch " << batch;
      }
    }
  }
}

TEST(CudaKernelsGemm, EmptyInnerDimensionScalesC) {
  // k = 0: C = beta * C, and exactly 0 for beta = 0 even over NaN (as the CPU backend does).
  for (float beta : {0.0f, 2.0f}) {
    for (DType dtype : {DType::F32, DType::BF16}) {
      Tensor c = data({2, 3, 5}, 1, dtype);
      // The CPU reference computes in F32 (it writes no bf16 GEMM results).
      Tensor want = c.to(DType::F32).clone(), got = on_kernel_device(c, dtype);
      float nan = std::nanf("");
      if (beta == 0.0f) {
        kernel_backend().fill(got, nan);
        cpu().fill(want, nan);
      }
      GemmArgs g;
      g.m = 3, g.n = 4, g.k = 0, g.lda = 1, g.ldb = 4, g.ldc = 5, g.batch = 2;
      g.stride_c = 15, g.beta = beta, g.c = want.raw_data();
      float unused = 0;
      g.a = g.b = &unused;
      cpu().gemm(g);
      g.dtype = g.c_dtype = dtype, g.c = got.raw_data();
      kernel_backend().gemm(g);
      EXPECT_TRUE(all_close(want, got, 0.0f, 0.0f)) << "beta " << beta << " " << dtype_name(dtype);
    }
  }
}

// bf16 operands with an fp32 result (cublasGemmEx with A/B 16BF and C 32F): what matmul does for
// F32 activations and a BF16 weight. The CPU runs the same products through oneDNN; both sum
// exact products of bf16 values in fp32, so they agree to fp32 summation order (1e-5 * k).
TEST(CudaKernelsGemm, Bf16OperandsWithAnF32Result) {
  const int64_t m = 7, k = 45, n = 19;
  Tensor x = data({m, k}, 21);
  Tensor w = data({k, n}, 22, DType::BF16).to(DType::BF16);    // [in, out]
  Tensor w_t = data({n, k}, 23, DType::BF16).to(DType::BF16);  // [out, in], used transposed
  for (bool transposed : {false, true}) {
    Tensor want = matmul(x, transposed ? w_t.transpose(0, 1) : w);
    Tensor got = matmul(x.to(kernel_device()), transposed ? w_t.to(kernel_device()).transpose(0, 1)
                                                          : w.to(kernel_device()));
    ASSERT_EQ(got.dtype(), DType::F32);
    EXPECT_TRUE(all_close(want, got, 1e-5f * float(k), 1e-5f)) << "transposed " << transposed;
  }
}

// ---- reductions ----

TEST_P(CudaKernels, SumLastRowsToAndSquares) {
  const int64_t r = rows(), c = cols();
  Tensor x = in({r, c}, 1);
  Tensor want = Tensor::empty({r, 1}), got = dev_empty({r, 1});
  cpu().sum_last(x, want);
  kernel_backend().sum_last(dev(x), got);
  const float sum_atol = atol() * std::sqrt(float(c));
  EXPECT_TRUE(all_close(want, got, sum_atol, rtol())) << "sum_last";
  Tensor want_cols = Tensor::empty({1, c}), got_cols = dev_empty({1, c});
  cpu().sum_rows(x, want_cols);
  kernel_backend().sum_rows(dev(x), got_cols);
  EXPECT_TRUE(all_close(want_cols, got_cols, atol(), rtol())) << "sum_rows";
  // A reduction neither leading nor trailing: [2, r, c] -> [1, r, 1] and [2, 1, c].
  Tensor x3 = in({2, r, c}, 2);
  for (Shape target : {Shape{1, r, 1}, Shape{2, 1, c}, Shape{1, 1, 1}}) {
    Tensor w = Tensor::empty(target), g = dev_empty(target);
    cpu().sum_to(x3, w);
    kernel_backend().sum_to(dev(x3), g);
    EXPECT_TRUE(all_close(w, g, sum_atol, rtol())) << "sum_to " << shape_str(target);
  }
  const double want_sq = cpu().sum_squares(x);
  const double got_sq = kernel_backend().sum_squares(dev(x));
  EXPECT_NEAR(got_sq, want_sq, 1e-6 * want_sq + 1e-9);
}

TEST(CudaKernelsLarge, SumRowsAndNormGradsSplitRowsIntoChunks) {
  // 200 rows make several row chunks (64 rows each) in the two-pass column sums.
  Tensor x = data({200, 33}, 1);
  Tensor want = Tensor::empty({33}), got = Tensor::empty({33}, DType::F32, kernel_device());
  cpu().sum_rows(x, want);
  kernel_backend().sum_rows(on_kernel_device(x), got);
  EXPECT_TRUE(all_close(want, got, 1e-4f, 1e-4f));
  Tensor w = data({33}, 2), dy = data({200, 33}, 3);
  Tensor y = Tensor::empty({200, 33}), rstd = Tensor::empty({200});
  cpu().rmsnorm_forward(x, w, 1e-6f, y, rstd);
  Tensor dw = Tensor::zeros({33}), dx = Tensor::empty({200, 33});
  cpu().rmsnorm_backward(x, w, rstd, dy, dx, false, dw);
  Tensor rstd_d = Tensor::empty({200}, DType::F32, kernel_device());
  Tensor y_d = Tensor::empty({200, 33}, DType::F32, kernel_device());
  kernel_backend().rmsnorm_forward(on_kernel_device(x), on_kernel_device(w), 1e-6f, y_d, rstd_d);
  Tensor dw_d = Tensor::zeros({33}, DType::F32, kernel_device());
  kernel_backend().rmsnorm_backward(on_kernel_device(x), on_kernel_device(w), rstd_d,
                                    on_kernel_device(dy), Tensor(), false, dw_d);
  EXPECT_TRUE(all_close(dw, dw_d, 1e-4f, 1e-4f));
}

// ---- activations ----

// Without and with a bias over the last axis (a linear layer's, fused into its activation).
TEST_P(CudaKernels, ActivationsForwardBackward) {
  Tensor x = in({rows(), cols()}, 1, 2.0f), dy = in({rows(), cols()}, 2), bias = in({cols()}, 3);
  for (bool with_bias : {false, true})
    for (Activation act :
         {Activation::kGeluTanh, Activation::kGeluErf, Activation::kRelu, Activation::kSilu}) {
      const Tensor b = with_bias ? bias : Tensor(), b_d = with_bias ? dev(bias) : Tensor();
      Tensor y = Tensor::empty(x.shape()), dx = Tensor::empty(x.shape());
      cpu().activation_forward(act, x, b, y);
      cpu().activation_backward(act, x, b, dy, dx);
      Tensor y_d = dev_empty(x.shape()), dx_d = dev_empty(x.shape());
      kernel_backend().activation_forward(act, dev(x), b_d, y_d);
      kernel_backend().activation_backward(act, dev(x), b_d, dev(dy), dx_d);
      EXPECT_TRUE(all_close(y, y_d, atol(), rtol())) << "forward " << int(act) << " " << with_bias;
      EXPECT_TRUE(all_close(dx, dx_d, atol(), rtol()))
          << "backward " << int(act) << " " << with_bias;
    }
}

TEST_P(CudaKernels, GatedActivationForwardBackward) {
  Tensor gate = in({rows(), cols()}, 1, 2.0f), up = in({rows(), cols()}, 2),
         dy = in({rows(), cols()}, 3);
  for (Activation act : {Activation::kGeluTanh, Activation::kRelu, Activation::kSilu}) {
    Tensor y = Tensor::empty(gate.shape()), dg = Tensor::empty(gate.shape()),
           du = Tensor::empty(gate.shape());
    cpu().gated_forward(act, gate, up, y);
    cpu().gated_backward(act, gate, up, dy, dg, du);
    Tensor y_d = dev_empty(gate.shape());
    kernel_backend().gated_forward(act, dev(gate), dev(up), y_d);
    EXPECT_TRUE(all_close(y, y_d, atol(), rtol()));
    for (int which = 0; which < 3; ++which) {  // both, gate only, up only
      Tensor dg_d = which != 2 ? dev_empty(gate.shape()) : Tensor();
      Tensor du_d = which != 1 ? dev_empty(gate.shape()) : Tensor();
      kernel_backend().gated_backward(act, dev(gate), dev(up), dev(dy), dg_d, du_d);
      if (dg_d.defined()) {
        EXPECT_TRUE(all_close(dg, dg_d, atol(), rtol())) << "d_gate " << which;
      }
      if (du_d.defined()) {
        EXPECT_TRUE(all_close(du, du_d, atol(), rtol())) << "d_up " << which;
      }
    }
  }
}

// ---- normalisation ----

TEST_P(CudaKernels, LayerNormForwardBackwardAccumulatesParamGrads) {
  const int64_t r = rows(), c = cols();
  Tensor x = in({r, c}, 1, 2.0f), w = in({c}, 2), b = in({c}, 3), dy = in({r, c}, 4);
  Tensor y = Tensor::empty({r, c}), mean = Tensor::empty({r}), rstd = Tensor::empty({r});
  cpu().layernorm_forward(x, w, b, 1e-5f, y, mean, rstd);
  Tensor y_d = dev_empty({r, c});
  Tensor mean_d = Tensor::empty({r}, DType::F32, kernel_device()),
         rstd_d = Tensor::empty({r}, DType::F32, kernel_device());
  kernel_backend().layernorm_forward(dev(x), dev(w), dev(b), 1e-5f, y_d, mean_d, rstd_d);
  EXPECT_TRUE(all_close(y, y_d, atol(), rtol())) << "y";
  EXPECT_TRUE(all_close(mean, mean_d, 1e-5f, 1e-5f)) << "mean";
  EXPECT_TRUE(all_close(rstd, rstd_d, 1e-5f, 1e-4f)) << "rstd";
  // Gradients accumulate into existing d_weight / d_bias.
  Tensor dw0 = in({c}, 5), db0 = in({c}, 6);
  Tensor dx = Tensor::empty({r, c}), dw = dw0.clone(), db = db0.clone();
  cpu().layernorm_backward(x, w, mean, rstd, dy, dx, false, dw, db);
  Tensor dx_d = dev_empty({r, c}), dw_d = dev(dw0), db_d = dev(db0);
  kernel_backend().layernorm_backward(dev(x), dev(w), mean_d, rstd_d, dev(dy), dx_d, false, dw_d,
                                      db_d);
  // dx of a 1-column row is a difference of equal values: exactly representable zero in fp32,
  // so the tolerance is the usual one; rstd (~316 at one column) scales the absolute error.
  const float grad_atol = atol() * (c == 1 ? 400.0f : 4.0f);
  EXPECT_TRUE(all_close(dx, dx_d, grad_atol, rtol())) << "dx";
  EXPECT_TRUE(all_close(dw, dw_d, grad_atol, rtol())) << "d_weight";
  EXPECT_TRUE(all_close(db, db_d, atol(), rtol())) << "d_bias";
  // Frozen weights: only dx.
  Tensor dx_only = dev_empty({r, c});
  kernel_backend().layernorm_backward(dev(x), dev(w), mean_d, rstd_d, dev(dy), dx_only, false,
                                      Tensor(), Tensor());
  EXPECT_TRUE(all_close(dx, dx_only, grad_atol, rtol())) << "dx, frozen";
  // Added into a pending gradient (the residual stream's) instead of written: the CPU's sum.
  Tensor pending = in({r, c}, 7);
  Tensor summed = pending.clone();
  cpu().layernorm_backward(x, w, mean, rstd, dy, summed, true, Tensor(), Tensor());
  EXPECT_TRUE(all_close(add(pending, dx), summed, 1e-6f, 1e-6f)) << "cpu: pending + dx";
  Tensor summed_d = dev(pending);
  kernel_backend().layernorm_backward(dev(x), dev(w), mean_d, rstd_d, dev(dy), summed_d, true,
                                      Tensor(), Tensor());
  EXPECT_TRUE(all_close(summed, summed_d, grad_atol, rtol())) << "dx added into pending";
}

TEST_P(CudaKernels, RmsNormForwardBackward) {
  const int64_t r = rows(), c = cols();
  Tensor x = in({r, c}, 1, 2.0f), w = in({c}, 2), dy = in({r, c}, 3);
  Tensor y = Tensor::empty({r, c}), rstd = Tensor::empty({r});
  cpu().rmsnorm_forward(x, w, 1e-6f, y, rstd);
  Tensor y_d = dev_empty({r, c}), rstd_d = Tensor::empty({r}, DType::F32, kernel_device());
  kernel_backend().rmsnorm_forward(dev(x), dev(w), 1e-6f, y_d, rstd_d);
  EXPECT_TRUE(all_close(y, y_d, atol(), rtol()));
  EXPECT_TRUE(all_close(rstd, rstd_d, 1e-5f, 1e-4f));
  Tensor dw0 = in({c}, 4);
  Tensor dx = Tensor::empty({r, c}), dw = dw0.clone();
  cpu().rmsnorm_backward(x, w, rstd, dy, dx, false, dw);
  Tensor dx_d = dev_empty({r, c}), dw_d = dev(dw0);
  kernel_backend().rmsnorm_backward(dev(x), dev(w), rstd_d, dev(dy), dx_d, false, dw_d);
  const float grad_atol = atol() * 4.0f;
  EXPECT_TRUE(all_close(dx, dx_d, grad_atol, rtol())) << "dx";
  EXPECT_TRUE(all_close(dw, dw_d, grad_atol, rtol())) << "d_weight";
  // Added into a pending gradient (the residual stream's) instead of written: the CPU's sum.
  Tensor pending = in({r, c}, 5);
  Tensor summed = pending.clone();
  cpu().rmsnorm_backward(x, w, rstd, dy, summed, true, Tensor());
  EXPECT_TRUE(all_close(add(pending, dx), summed, 1e-6f, 1e-6f)) << "cpu: pending + dx";
  Tensor summed_d = dev(pending);
  kernel_backend().rmsnorm_backward(dev(x), dev(w), rstd_d, dev(dy), summed_d, true, Tensor());
  EXPECT_TRUE(all_close(summed, summed_d, grad_atol, rtol())) << "dx added into pending";
}

// ---- rotary position embedding ----

// [rows, 2, heads 2, D = 2 * cols]: the forward, then the inverse rotation (the backward), which
// must also undo the forward up to rounding.
TEST_P(CudaKernels, RotaryEmbeddingForwardAndInverse) {
  const int64_t B = rows(), T = 2, H = 2, half = cols();
  Tensor x = in({B, T, H, 2 * half}, 1, 2.0f);
  std::vector<float> angle = data({B, T, half}, 2, DType::F32, 3.0f).to_floats();
  std::vector<float> c(angle.size()), s(angle.size());
  for (size_t i = 0; i < angle.size(); ++i) c[i] = std::cos(angle[i]), s[i] = std::sin(angle[i]);
  Tensor cos = Tensor::from_floats(c, {B, T, half}), sin = Tensor::from_floats(s, {B, T, half});
  Tensor cos_d = cos.to(kernel_device()), sin_d = sin.to(kernel_device());
  Tensor y = Tensor::empty(x.shape()), y_d = dev_empty(x.shape());
  cpu().rotary_embedding(x, cos, sin, false, y);
  kernel_backend().rotary_embedding(dev(x), cos_d, sin_d, false, y_d);
  EXPECT_TRUE(all_close(y, y_d, atol(), rtol())) << "forward";
  Tensor back = Tensor::empty(x.shape()), back_d = dev_empty(x.shape());
  cpu().rotary_embedding(y, cos, sin, true, back);
  kernel_backend().rotary_embedding(y_d, cos_d, sin_d, true, back_d);
  EXPECT_TRUE(all_close(back, back_d, atol() * 2, rtol())) << "inverse";
  EXPECT_TRUE(all_close(x, back, 1e-5f, 1e-5f)) << "the inverse undoes the rotation";
}

// ---- softmax ----

TEST_P(CudaKernels, MaskedSoftmaxEveryMaskKind) {
  const int64_t B = 2, H = 2, Tq = rows(), Tk = cols();
  Tensor scores = in({B, H, Tq, Tk}, 1, 2.0f), d_probs = in({B, H, Tq, Tk}, 2);
  std::vector<float> keep(size_t(B * Tk), 1.0f);
  for (int64_t j = 0; j < Tk; j += 3) keep[size_t(Tk + j)] = 0.0f;  // batch 1 masks every third key
  Tensor padding = Tensor::from_floats(keep, {B, Tk});
  std::vector<float> all_masked(size_t(B * Tk), 1.0f);
  for (int64_t j = 0; j < Tk; ++j) all_masked[size_t(j)] = 0.0f;  // batch 0 sees nothing
  for (int variant = 0; variant < 4; ++variant) {
    AttentionMask mask, mask_d;
    mask.scale = 0.7f;
    if (variant == 0) {  // causal with a query offset, bias per head
      mask.causal = true;
      mask.query_offset = 1;
      mask.bias = data({H, Tq, Tk}, 3);
    } else if (variant == 1) {  // key padding, bias per batch
      mask.key_padding = padding;
      mask.bias = data({B, H, Tq, Tk}, 4);
    } else if (variant == 2) {  // rows with no visible key become zeros
      mask.key_padding = Tensor::from_floats(all_masked, {B, Tk});
    }
    mask_d = mask;
    if (mask.bias.defined()) mask_d.bias = on_kernel_device(mask.bias);
    if (mask.key_padding.defined()) mask_d.key_padding = on_kernel_device(mask.key_padding);
    Tensor probs = Tensor::empty(scores.shape());
    cpu().masked_softmax_forward(scores, mask, probs);
    Tensor probs_d = dev_empty(scores.shape());
    kernel_backend().masked_softmax_forward(dev(scores), mask_d, probs_d);
    EXPECT_TRUE(all_close(probs, probs_d, atol(), rtol())) << "variant " << variant;
    Tensor ds = Tensor::empty(scores.shape()), ds_d = dev_empty(scores.shape());
    Tensor probs_in = dtype() == DType::F32 ? probs : probs.to(DType::BF16).to(DType::F32);
    cpu().masked_softmax_backward(probs_in, d_probs, mask.scale, ds);
    kernel_backend().masked_softmax_backward(dev(probs_in), dev(d_probs), mask.scale, ds_d);
    EXPECT_TRUE(all_close(ds, ds_d, atol(), rtol())) << "backward variant " << variant;
  }
}

// ---- gather / scatter ----

TEST_P(CudaKernels, GatherRowsEveryWidthAndAlignment) {
  const int64_t V = 7, c = cols();
  for (DType ids_dtype : {DType::I32, DType::I64}) {
    Tensor ids = Tensor::from_ints({4, 0, 4, 6, 1}, {5}, ids_dtype);
    for (DType dt : {dtype(), DType::I64, DType::I32}) {
      Tensor table = data({V + 1, c}, 1).to(dt);
      // Row 1 onwards: the base is aligned only when a row is a multiple of 16 bytes.
      Tensor window = table.slice(0, 1, V + 1);
      Tensor want = Tensor::empty({5, c}, dt), got = Tensor::empty({5, c}, dt, kernel_device());
      cpu().gather_rows(window, ids, want);
      kernel_backend().gather_rows(table.to(kernel_device()).slice(0, 1, V + 1),
                                   ids.to(kernel_device()), got);
      EXPECT_TRUE(bitwise_equal(want, got)) << dtype_name(dt) << " ids " << dtype_name(ids_dtype);
    }
  }
}

// Repeated ids, unused table rows and ids out of order: each destination row sums its rows in the
// ids' order. fp32 is bit for bit the CPU (the same additions in the same order); bf16 sums in
// fp32 and rounds once.
TEST_P(CudaKernels, ScatterAddRowsRepeatedIds) {
  const int64_t V = 6, c = cols();
  const std::vector<int64_t> ids = {2, 5, 2, 0, 2};
  Tensor d_out = in({5, c}, 1), table0 = in({V, c}, 2);
  Tensor want = table0.clone();
  cpu().scatter_add_rows(d_out, group_rows_by_destination(ids, Device::cpu()), want);
  // The reference: the additions written out in the ids' order.
  Tensor by_hand = table0.clone();
  for (size_t i = 0; i < ids.size(); ++i) {
    float* row = by_hand.data<float>() + ids[i] * c;
    const float* grad = d_out.data<float>() + int64_t(i) * c;
    for (int64_t col = 0; col < c; ++col) row[col] += grad[col];
  }
  EXPECT_TRUE(bitwise_equal(by_hand, want)) << "cpu";
  Tensor got = dev(table0);
  kernel_backend().scatter_add_rows(dev(d_out), group_rows_by_destination(ids, kernel_device()),
                                    got);
  if (dtype() == DType::F32)
    EXPECT_TRUE(bitwise_equal(want, got));
  else
    EXPECT_TRUE(all_close(want, got, atol(), rtol()));
}

// The groups: destinations ascending, each with its rows in the ids' order.
TEST(RowGroups, GroupRowsByDestinationKeepsTheIdsOrder) {
  const RowGroups g = group_rows_by_destination({2, 5, 2, 0, 2}, Device::cpu());
  EXPECT_EQ(g.targets.to_ints(), (std::vector<int64_t>{0, 2, 5}));
  EXPECT_EQ(g.starts.to_ints(), (std::vector<int64_t>{0, 1, 4, 5}));
  EXPECT_EQ(g.order.to_ints(), (std::vector<int64_t>{3, 0, 2, 4, 1}));
  const RowGroups none = group_rows_by_destination({}, Device::cpu());
  EXPECT_EQ(none.targets.numel(), 0);
  EXPECT_EQ(none.starts.to_ints(), (std::vector<int64_t>{0}));
}

// ---- loss ----

TEST_P(CudaKernels, CrossEntropyIgnoredRowsAndInPlaceBackward) {
  const int64_t r = rows() + 1, V = cols();  // one more row so that one is always ignored
  Tensor logits = in({r, V}, 1, 2.0f);
  std::vector<int64_t> t(static_cast<size_t>(r));
  for (int64_t i = 0; i < r; ++i) t[size_t(i)] = (i * 7 + 3) % V;
  t[size_t(r - 1)] = -100;
  for (DType targets_dtype : {DType::I64, DType::I32}) {
    Tensor targets = Tensor::from_ints(t, {r}, targets_dtype),
           targets_d = targets.to(kernel_device());
    Tensor loss = Tensor::empty({r}), lse = Tensor::empty({r});
    cpu().cross_entropy_forward(logits, targets, -100, loss, lse);
    Tensor loss_d = Tensor::empty({r}, DType::F32, kernel_device()),
           lse_d = Tensor::empty({r}, DType::F32, kernel_device());
    kernel_backend().cross_entropy_forward(dev(logits), targets_d, -100, loss_d, lse_d);
    EXPECT_TRUE(all_close(loss, loss_d, 1e-5f, 1e-5f)) << "loss";
    EXPECT_TRUE(all_close(lse, lse_d, 1e-5f, 1e-5f)) << "lse";
    // The mean over the counted rows, reduced on the device: both sum the same floats in double
    // (in another order), so the float results agree to rounding; no rows counted gives 0.
    for (int64_t count : {r - 1, int64_t(0)}) {
      Tensor mean = Tensor::empty({}), mean_d = Tensor::empty({}, DType::F32, kernel_device());
      cpu().cross_entropy_mean(loss, count, mean);
      kernel_backend().cross_entropy_mean(loss.to(kernel_device()), count, mean_d);
      EXPECT_FLOAT_EQ(mean.item(), mean_d.item()) << "mean over " << count;
      if (count == 0) {
        EXPECT_EQ(mean_d.item(), 0.0f);
      }
    }
    Tensor d = Tensor::empty({r, V});
    cpu().cross_entropy_backward(logits, targets, -100, lse, 0.5f, d);
    Tensor d_d = dev_empty({r, V});
    kernel_backend().cross_entropy_backward(dev(logits), targets_d, -100, lse_d, 0.5f, d_d);
    EXPECT_TRUE(all_close(d, d_d, atol(), rtol())) << "d_logits";
    Tensor in_place = dev(logits);  // d_logits written over the logits
    kernel_backend().cross_entropy_backward(in_place, targets_d, -100, lse_d, 0.5f, in_place);
    EXPECT_TRUE(all_close(d, in_place, atol(), rtol())) << "in place";
    // Forward and backward in one kernel, into a separate buffer and over the logits (the target's
    // logit must be read for the loss before the row is overwritten): the CPU's two passes.
    for (bool over_logits : {false, true}) {
      Tensor fused_loss = Tensor::empty({r}, DType::F32, kernel_device()),
             fused_lse = Tensor::empty({r}, DType::F32, kernel_device());
      Tensor fused_logits = dev(logits);
      Tensor fused_d = over_logits ? fused_logits : dev_empty({r, V});
      kernel_backend().cross_entropy_forward_backward(fused_logits, targets_d, -100, 0.5f,
                                                      fused_loss, fused_lse, fused_d);
      EXPECT_TRUE(all_close(loss, fused_loss, 1e-5f, 1e-5f)) << "fused loss " << over_logits;
      EXPECT_TRUE(all_close(lse, fused_lse, 1e-5f, 1e-5f)) << "fused lse " << over_logits;
      EXPECT_TRUE(all_close(d, fused_d, atol(), rtol())) << "fused d_logits " << over_logits;
    }
  }
}

// The LM head's logits rows are padded (linear_cross_entropy): the loss kernels read rows `ld`
// elements apart, whole packs where every row starts aligned (ld a multiple of the pack) and the
// last vocab % pack logits one by one, element by element otherwise (ld = V + 3). Both backends
// on padded rows give what the CPU gives on contiguous ones; the padding is never written.
TEST_P(CudaKernels, CrossEntropyOverPaddedRows) {
  const int64_t r = rows() + 1, V = cols();
  Tensor logits = in({r, V}, 2, 2.0f);
  std::vector<int64_t> t(static_cast<size_t>(r));
  for (int64_t i = 0; i < r; ++i) t[size_t(i)] = (i * 5 + 1) % V;
  t[0] = -100;
  const Tensor targets = Tensor::from_ints(t, {r});
  Tensor loss = Tensor::empty({r}), lse = Tensor::empty({r}), d = Tensor::empty({r, V});
  cpu().cross_entropy_forward(logits, targets, -100, loss, lse);
  cpu().cross_entropy_backward(logits, targets, -100, lse, 0.25f, d);
  for (int64_t ld : {(V + 63) / 64 * 64, V + 3}) {
    for (Device device : {Device::cpu(), kernel_device()}) {
      const DType dtype = device.is_cpu() ? DType::F32 : this->dtype();
      // On the CPU, where a row starts decides which logits Eigen's vectorised exp takes and
      // which its scalar tail does: an ulp apart (1e-6 relative).
      const float atol = device.is_cpu() ? 0.0f : this->atol(),
                  rtol = device.is_cpu() ? 1e-6f : this->rtol();
      Backend& backend = backend_for(device);
      // Padding filled with a sentinel (2^100, exact in bf16) that any read would turn into an
      // inf or NaN loss.
      const float sentinel = std::ldexp(1.0f, 100);
      Tensor padded = Tensor::full({r, ld}, sentinel, dtype, device);
      Tensor rows_view = padded.slice(1, 0, V);
      backend.copy(logits.to(device).to(dtype), rows_view);
      Tensor loss_d = Tensor::empty({r}, DType::F32, device),
             lse_d = Tensor::empty({r}, DType::F32, device);
      backend.cross_entropy_forward_backward(rows_view, targets.to(device), -100, 0.25f, loss_d,
                                             lse_d, rows_view);
      const std::string what = device.str() + " ld " + std::to_string(ld);
      EXPECT_TRUE(all_close(loss, loss_d, 1e-5f, 1e-5f)) << what;
      EXPECT_TRUE(all_close(lse, lse_d, 1e-5f, 1e-5f)) << what;
      EXPECT_TRUE(all_close(d, rows_view, atol, rtol)) << what;
      const std::vector<float> pad = padded.slice(1, V, ld).to_floats();
      EXPECT_EQ(std::count(pad.begin(), pad.end(), sentinel), std::ptrdiff_t(pad.size())) << what;
    }
  }
}

// The chunked LM head splits its rows by the backend's logits budget: 16 MiB on the CPU (longer
// chunks measured no faster there), 256 MiB on CUDA devices, whose every chunk re-reads the head.
TEST(CudaLogitsChunks, DevicesTakeLargerChunksThanTheCpu) {
  EXPECT_EQ(cpu().logits_chunk_bytes(), size_t(16) << 20);
  EXPECT_EQ(kernel_backend().logits_chunk_bytes(), size_t(256) << 20);
}

// ---- randomness ----

TEST_P(CudaKernels, DropoutDrawsTheCpuMask) {
  Tensor x = in({rows(), cols()}, 1);
  for (float p : {0.1f, 0.5f}) {
    Tensor want = Tensor::empty(x.shape());
    cpu().dropout(x, p, 1234, 77, want);
    Tensor got = dev_empty(x.shape());
    kernel_backend().dropout(dev(x), p, 1234, 77, got);
    if (dtype() == DType::F32)
      EXPECT_TRUE(bitwise_equal(want, got)) << p;
    else
      EXPECT_TRUE(all_close(want, got, atol(), rtol())) << p;
  }
}

// The fused branch end: the CPU backend (itself the dropout, add and add ops' arithmetic, checked
// by the op table) is the oracle, at every awkward size, with and without bias and dropout. fp32
// may differ by a rounding where the device contracts the kept value's scale and the residual add
// into one fma.
TEST_P(CudaKernels, ResidualDropoutAddDrawsTheCpuMask) {
  Tensor residual = in({rows(), cols()}, 1), x = in({rows(), cols()}, 2), bias = in({cols()}, 3);
  for (bool with_bias : {true, false})
    for (float p : {0.0f, 0.3f}) {
      const Tensor b = with_bias ? bias : Tensor();
      Tensor want = Tensor::empty(x.shape());
      cpu().residual_dropout_add(residual, x, b, p, 4321, 13, want);
      Tensor got = dev_empty(x.shape());
      kernel_backend().residual_dropout_add(dev(residual), dev(x), with_bias ? dev(bias) : Tensor(),
                                            p, 4321, 13, got);
      const bool tight = dtype() == DType::F32;
      EXPECT_TRUE(all_close(want, got, tight ? 1e-6f : atol(), tight ? 1e-6f : rtol()))
          << "p " << p << " bias " << with_bias;
    }
}

// A branch's end and the norm after it in one kernel (LayerNorm: GPT-2; RMS norm: Llama, T5).
// Under the emulator it is bit for bit the two kernels it replaces (the same draws, the same
// rounded sum, normalised in the same reduction order); a GPU may contract the two code paths'
// arithmetic differently, so there it is within one rounding. The CPU backend's fused method is
// the usual cross-backend oracle.
TEST_P(CudaKernels, ResidualNormForwardIsTheTwoKernelsInOnePass) {
  const int64_t r = rows(), c = cols();
  Tensor residual = in({r, c}, 1), x = in({r, c}, 2), bias = in({c}, 3), w = in({c}, 4),
         norm_bias = in({c}, 5);
  auto stats = [&](Device device) {
    return std::pair{Tensor::empty({r}, DType::F32, device),
                     Tensor::empty({r}, DType::F32, device)};
  };
  auto same = [&](const Tensor& want, const Tensor& got) {
    return kernel_device_is_emulated()
               ? bitwise_equal(want, got)
               : all_close(want, got, 1e-6f, dtype() == DType::F32 ? 1e-6f : 8e-3f);
  };
  for (bool rms : {false, true})
    for (bool with_bias : {true, false})
      for (float p : {0.0f, 0.3f}) {
        SCOPED_TRACE(::testing::Message()
                     << (rms ? "rms" : "layernorm") << " p " << p << " bias " << with_bias);
        const Tensor b = with_bias ? bias : Tensor(), b_d = with_bias ? dev(bias) : Tensor();
        Backend& device = kernel_backend();
        Tensor sum_two = dev_empty({r, c}), y_two = dev_empty({r, c});
        auto [mean_two, rstd_two] = stats(kernel_device());
        device.residual_dropout_add(dev(residual), dev(x), b_d, p, 4321, 13, sum_two);
        if (rms)
          device.rmsnorm_forward(sum_two, dev(w), 1e-5f, y_two, rstd_two);
        else
          device.layernorm_forward(sum_two, dev(w), dev(norm_bias), 1e-5f, y_two, mean_two,
                                   rstd_two);
        Tensor sum = dev_empty({r, c}), y = dev_empty({r, c});
        auto [mean, rstd] = stats(kernel_device());
        if (rms)
          device.residual_rmsnorm_forward(dev(residual), dev(x), b_d, p, 4321, 13, dev(w), 1e-5f,
                                          sum, y, rstd);
        else
          device.residual_layernorm_forward(dev(residual), dev(x), b_d, p, 4321, 13, dev(w),
                                            dev(norm_bias), 1e-5f, sum, y, mean, rstd);
        EXPECT_TRUE(same(sum_two, sum)) << "sum";
        EXPECT_TRUE(same(y_two, y)) << "y";
        EXPECT_TRUE(same(rstd_two, rstd)) << "rstd";
        if (!rms) {
          EXPECT_TRUE(same(mean_two, mean)) << "mean";
        }

        Tensor sum_cpu = Tensor::empty({r, c}), y_cpu = Tensor::empty({r, c});
        auto [mean_cpu, rstd_cpu] = stats(Device::cpu());
        if (rms)
          cpu().residual_rmsnorm_forward(residual, x, b, p, 4321, 13, w, 1e-5f, sum_cpu, y_cpu,
                                         rstd_cpu);
        else
          cpu().residual_layernorm_forward(residual, x, b, p, 4321, 13, w, norm_bias, 1e-5f,
                                           sum_cpu, y_cpu, mean_cpu, rstd_cpu);
        const bool tight = dtype() == DType::F32;
        EXPECT_TRUE(all_close(sum_cpu, sum, tight ? 1e-6f : atol(), tight ? 1e-6f : rtol()))
            << "sum";
        EXPECT_TRUE(all_close(y_cpu, y, atol(), rtol())) << "y";
        // In bf16 the device normalises the sum rounded to bf16 (2^-9 relative an element), the
        // CPU the exact one.
        if (!rms) {
          EXPECT_TRUE(all_close(mean_cpu, mean, tight ? 1e-5f : atol(), tight ? 1e-5f : rtol()))
              << "mean";
        }
      }
}

TEST_P(CudaKernels, NormalFillIsBitwiseTheCpuStream) {
  Tensor want = Tensor::empty({rows(), cols()});
  cpu().normal_fill(want, 0.5f, 2.0f, 99, 1000);
  Tensor got = dev_empty({rows(), cols()});
  kernel_backend().normal_fill(got, 0.5f, 2.0f, 99, 1000);
  // Under the emulator the kernel runs the same libm as the CPU: identical bits (a GPU's logf /
  // cosf may differ in the last place).
  EXPECT_TRUE(bitwise_equal(dtype() == DType::F32 ? want : want.to(DType::BF16), got));
}

// ---- T5 relative position bias ----

TEST_P(CudaKernels, RelativePositionBias) {
  const int64_t H = 3, buckets = 32;
  Tensor table = in({buckets, H}, 1);
  for (bool bidirectional : {true, false}) {
    for (int64_t offset : {0, 5}) {
      Tensor want = Tensor::empty({H, rows(), cols()}), got = dev_empty({H, rows(), cols()});
      cpu().relative_position_bias(table, offset, bidirectional, buckets, 128, want);
      kernel_backend().relative_position_bias(dev(table), offset, bidirectional, buckets, 128, got);
      EXPECT_TRUE(all_close(want, got, 0.0f, 0.0f)) << bidirectional << " " << offset;
    }
  }
}

// ---- optimiser ----

TEST_P(CudaKernels, AdamWSteps) {
  const int64_t n = rows() * cols();
  Tensor param = in({n}, 1), m = Tensor::zeros({n}), v = Tensor::zeros({n});
  Tensor param_d = dev(param), m_d = Tensor::zeros({n}, DType::F32, kernel_device()),
         v_d = Tensor::zeros({n}, DType::F32, kernel_device());
  for (int64_t step = 1; step <= 3; ++step) {
    Tensor grad = in({n}, 10 + uint64_t(step));
    AdamWUpdate update{1e-2f, 0.9f, 0.999f, 1e-8f, 0.01f, step};
    cpu().adamw_step({{param}, {grad}, {m}, {v}}, update, Tensor(), Tensor());
    kernel_backend().adamw_step({{param_d}, {dev(grad)}, {m_d}, {v_d}}, update, Tensor(), Tensor());
  }
  // fp32: the same scalar update on the same inputs (kernels/adamw_math.h). bf16 parameters
  // round after each step: three roundings of O(1) values.
  EXPECT_TRUE(all_close(param, param_d, dtype() == DType::F32 ? 1e-6f : 3e-2f, 1e-5f));
  if (dtype() == DType::F32) {
    EXPECT_TRUE(all_close(m, m_d, 1e-7f, 1e-6f));
    EXPECT_TRUE(all_close(v, v_d, 1e-7f, 1e-6f));
  }
}

// The trainer's step: the gradient norm, the clipping factor and the decision to skip a
// non-finite step are made on the device (gradient_scale_kernel), against the CPU backend.
TEST_P(CudaKernels, AdamWClipsAndSkipsNonFiniteStepsOnTheDevice) {
  const int64_t n = rows() * cols();
  // Two parameters of different sizes, so the norm sums over both; gradients of std 10 put the
  // norm far above 1, so clipping to 1 changes the update.
  const std::vector<Shape> shapes = {{n}, {5}};
  AdamWGroup host, device;
  for (size_t i = 0; i < shapes.size(); ++i) {
    Tensor p = in(shapes[i], 1 + i), g = in(shapes[i], 3 + i, 10.0f);
    host.params.push_back(p.clone());
    host.grads.push_back(g);
    device.params.push_back(dev(p));
    device.grads.push_back(dev(g));
    for (auto* moments : {&host.exp_avg, &host.exp_avg_sq})
      moments->push_back(Tensor::zeros(shapes[i]));
    for (auto* moments : {&device.exp_avg, &device.exp_avg_sq})
      moments->push_back(Tensor::zeros(shapes[i], DType::F32, kernel_device()));
  }
  const Tensor guard = Tensor::from_floats(std::vector<float>{0.5f, 2.0f}, {2});
  const Tensor guard_d = guard.to(kernel_device());
  Tensor norm = Tensor::empty({1}), norm_d = Tensor::empty({1}, DType::F32, kernel_device());
  int64_t step = 0;
  for (double max_grad_norm : {1.0, 0.0, 1e6}) {
    ++step;
    const AdamWUpdate update{1e-2f, 0.9f, 0.999f, 1e-8f, 0.01f, step, max_grad_norm};
    cpu().adamw_step(host, update, guard, norm);
    kernel_backend().adamw_step(device, update, guard_d, norm_d);
    // Both accumulate the squares in double, in different orders: the float norms agree to an
    // ulp.
    EXPECT_NEAR(norm_d.item(), norm.item(), 1e-6f * norm.item()) << max_grad_norm;
    for (size_t i = 0; i < shapes.size(); ++i) {
      // As AdamWSteps: the same scalar update; bf16 parameters round after each step.
      EXPECT_TRUE(
          all_close(host.params[i], device.params[i], dtype() == DType::F32 ? 1e-6f : 3e-2f, 1e-5f))
          << max_grad_norm << " " << i;
      EXPECT_TRUE(all_close(host.exp_avg[i], device.exp_avg[i], 1e-6f, 1e-5f));
    }
  }

  // A non-finite guard value, or a non-finite gradient, leaves every parameter and moment as it
  // was, bit for bit; the norm is still written.
  auto snapshot = [&] {
    std::vector<std::vector<float>> values;
    for (const auto* list : {&device.params, &device.exp_avg, &device.exp_avg_sq})
      for (const Tensor& t : *list) values.push_back(t.to_floats());
    return values;
  };
  const auto before = snapshot();
  const AdamWUpdate update{1e-2f, 0.9f, 0.999f, 1e-8f, 0.01f, ++step, 1.0};
  for (float bad : {NAN, INFINITY}) {
    const Tensor bad_guard = Tensor::from_floats(std::vector<float>{1.0f, bad}, {2});
    kernel_backend().adamw_step(device, update, bad_guard.to(kernel_device()), norm_d);
    EXPECT_TRUE(std::isfinite(norm_d.item()));
    EXPECT_EQ(snapshot(), before) << "guard " << bad;
  }
  std::vector<float> poisoned = device.grads[1].to_floats();
  poisoned[2] = INFINITY;
  device.grads[1] = on_kernel_device(Tensor::from_floats(poisoned, {5}), dtype());
  kernel_backend().adamw_step(device, update, Tensor(), norm_d);
  EXPECT_EQ(norm_d.item(), INFINITY);
  EXPECT_EQ(snapshot(), before) << "infinite gradient";
}

}  // namespace
}  // namespace sp::cuda_test
