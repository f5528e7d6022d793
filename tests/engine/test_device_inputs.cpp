// CheckedIndices and LossTargets: indices and loss targets checked on the host and kept on a
// device, so that gathers and the loss need no host round trip (what a captured step reads).
// Each is compared with the host-index op it stands in for, on every available device.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <string>
#include <vector>

#include "engine/autograd.h"
#include "engine/error.h"
#include "engine/ops/ops.h"

namespace sp {
namespace {

template <class F>
std::string error_of(F&& f) {
  try {
    f();
  } catch (const Error& e) {
    return e.what();
  }
  return "no error";
}

TEST(CheckedIndices, GathersAreTheHostIndexGathersOnEveryDevice) {
  const Tensor table_host = randn({10, 6}, 1);
  const Tensor ids = Tensor::from_ints({3, 0, 9, 3, 7, 1}, {2, 3}, DType::I64);
  const Tensor rows = Tensor::from_ints({4, 4, 0, 8}, {4}, DType::I32);
  for (Device device : available_devices()) {
    SCOPED_TRACE(device.str());
    const Tensor table = table_host.to(device);
    const CheckedIndices checked_ids("ids", ids, 10, device);
    const CheckedIndices checked_rows("rows", rows, 10, device);
    EXPECT_EQ(checked_ids.counted(), 6);
    EXPECT_EQ(embedding(table, checked_ids).to_floats(), embedding(table, ids).to_floats());
    EXPECT_EQ(embedding(table, checked_ids).shape(), Shape({2, 3, 6}));
    EXPECT_EQ(index_select(table, checked_rows).to_floats(), index_select(table, rows).to_floats());
  }
}

// Distinct indices keep their scatter grouping, refilled with them: index_select's backward into
// the table is the host-index one, before and after a refill (same kernels, same grouping: exact).
TEST(CheckedIndices, DistinctIndicesGiveTheTableItsGradient) {
  const Tensor first = Tensor::from_ints({5, 1, 8, 2}, {4}),
               second = Tensor::from_ints({0, 9, 3, 4}, {4});
  for (Device device : available_devices()) {
    SCOPED_TRACE(device.str());
    CheckedIndices rows("rows", first, 10, device);
    ASSERT_TRUE(rows.groups().targets.defined());
    for (const Tensor& host_rows : {first, second}) {
      rows.refill(host_rows);
      const auto table_grad = [&](auto&& pick) {
        Tensor table = randn({10, 3}, 12).to(device).detach().set_requires_grad(true);
        sum_all(mul(pick(table), randn({4, 3}, 13).to(device))).backward();
        return table.grad().to_floats();
      };
      EXPECT_EQ(table_grad([&](const Tensor& t) { return index_select(t, rows); }),
                table_grad([&](const Tensor& t) { return index_select(t, host_rows); }));
    }
  }
}

TEST(CheckedIndices, RefillChecksThenWritesInPlace) {
  for (Device device : available_devices()) {
    SCOPED_TRACE(device.str());
    const Tensor table = randn({10, 4}, 2).to(device);
    CheckedIndices ids("input ids", Tensor::from_ints({1, 2, 3}, {3}), 10, device);
    const void* storage = ids.on_device().raw_data();
    const Tensor next = Tensor::from_ints({9, 0, 5}, {3});
    EXPECT_EQ(ids.refill(next), 3);
    EXPECT_EQ(ids.on_device().raw_data(), storage);  // where a captured step reads them
    EXPECT_EQ(embedding(table, ids).to_floats(), embedding(table, next).to_floats());
    // A bad refill changes nothing.
    EXPECT_NE(error_of([&] {
                ids.refill(Tensor::from_ints({1, 10, 2}, {3}));
              }).find("input ids: index 10 is outside [0, 10)"),
              std::string::npos);
    EXPECT_NE(error_of([&] {
                ids.refill(Tensor::from_ints({1, 2}, {2}));
              }).find("expected the shape"),
              std::string::npos);
    EXPECT_EQ(ids.on_device().to_ints(), std::vector<int64_t>({9, 0, 5}));
  }
}

TEST(CheckedIndices, WhatTheyCannotDoIsOneClearError) {
  const Tensor ids = Tensor::from_ints({1, 2}, {2});
  EXPECT_NE(error_of([&] {
              CheckedIndices("ids", Tensor::full({1}, 1.0f), 4, Device::cpu());
            }).find("expected I32 or I64 indices on the host"),
            std::string::npos);
  EXPECT_NE(error_of([&] {
              CheckedIndices("ids", Tensor::from_ints({-1}, {1}), 4, Device::cpu());
            }).find("index -1 is outside [0, 4)"),
            std::string::npos);
  Tensor trainable = randn({4, 3}, 3).detach().set_requires_grad(true);
  const Tensor repeated = Tensor::from_ints({2, 2}, {2});
  EXPECT_NE(error_of([&] {
              embedding(trainable, CheckedIndices("ids", repeated, 4, Device::cpu()));
            }).find("pass host indices"),
            std::string::npos);
  CheckedIndices distinct("ids", ids, 4, Device::cpu());
  EXPECT_NE(error_of([&] { distinct.refill(repeated); }).find("refill with repeated indices"),
            std::string::npos);
  EXPECT_NE(error_of([&] {
              embedding(randn({4, 3}, 4), CheckedIndices("ids", ids, 4, Device::cpu(), -100));
            }).find("ignored value"),
            std::string::npos);
  EXPECT_NE(error_of([&] {
              embedding(randn({3, 3}, 5), CheckedIndices("ids", ids, 4, Device::cpu()));
            }).find("checked against 4 rows"),
            std::string::npos);
}

// The device-target loss against the host-target one: the same value and hidden-state gradient up
// to roundings. It multiplies by 1 / count where the other divides (1e-6 relative: two fp32
// roundings), and scales the logit gradients after the head's GEMM instead of before: each
// gradient is a sum of V products rounded differently, so 1e-6 of the largest gradient (V = 11
// terms of at most a few ulps each).
TEST(LossTargets, LinearCrossEntropyIsTheHostTargetLossOnEveryDevice) {
  const int64_t n = 7, d = 8, vocab = 11;
  const Tensor hidden_host = randn({n, d}, 6), weight_host = randn({vocab, d}, 7, 0, 0.0f, 0.5f);
  const std::vector<std::vector<int64_t>> batches = {{3, -100, 10, 0, -100, 5, 5},
                                                     {1, 2, -100, 3, 9, 4, 0},
                                                     {-100, -100, -100, -100, -100, -100, -100}};
  for (Device device : available_devices()) {
    SCOPED_TRACE(device.str());
    const Tensor weight = weight_host.to(device);
    LossTargets targets(Tensor::from_ints(batches[0], {n}), vocab, -100, device);
    for (const std::vector<int64_t>& batch : batches) {
      const Tensor host_targets = Tensor::from_ints(batch, {n});
      const int64_t counted = targets.refill(host_targets);
      const auto run = [&](auto&& loss_of) {
        Tensor hidden = hidden_host.to(device).detach().set_requires_grad(true);
        CrossEntropyResult r = loss_of(hidden);
        r.loss.backward();
        return std::pair{r, hidden.grad().to_floats()};
      };
      const auto [want, want_grad] =
          run([&](const Tensor& h) { return linear_cross_entropy(h, weight, host_targets); });
      const auto [got, got_grad] =
          run([&](const Tensor& h) { return linear_cross_entropy(h, weight, targets); });
      EXPECT_EQ(got.counted_rows, counted);
      EXPECT_EQ(got.counted_rows, want.counted_rows);
      const float want_loss = want.loss.item();
      EXPECT_NEAR(got.loss.item(), want_loss, 1e-6f * std::abs(want_loss));
      ASSERT_EQ(got_grad.size(), want_grad.size());
      float largest = 0.0f;
      for (float g : want_grad) largest = std::max(largest, std::abs(g));
      for (size_t i = 0; i < got_grad.size(); ++i)
        EXPECT_NEAR(got_grad[i], want_grad[i], 1e-6f * largest) << i;
      if (counted == 0) {
        EXPECT_EQ(got.loss.item(), 0.0f);
        EXPECT_EQ(got_grad, std::vector<float>(got_grad.size(), 0.0f));
      }
    }
  }
}

TEST(LossTargets, MismatchesAndATrainableHeadAreOneClearError) {
  LossTargets targets(Tensor::from_ints({1, 2, 3}, {3}), 5, -100, Device::cpu());
  EXPECT_NE(error_of([&] {
              targets.refill(Tensor::from_ints({1, 5, -100}, {3}));
            }).find("loss targets: index 5 is outside [0, 5) and is not the ignored value -100"),
            std::string::npos);
  Tensor hidden = randn({3, 4}, 8);
  EXPECT_NE(error_of([&] {
              linear_cross_entropy(hidden, randn({6, 4}, 9), targets);
            }).find("targets checked against 5 classes, the head has 6"),
            std::string::npos);
  EXPECT_NE(error_of([&] {
              linear_cross_entropy(randn({2, 4}, 10), randn({5, 4}, 9), targets);
            }).find("must be [n, d], [V, d] and [n]"),
            std::string::npos);
  Tensor trainable = randn({5, 4}, 11).detach().set_requires_grad(true);
  EXPECT_NE(
      error_of([&] { linear_cross_entropy(hidden, trainable, targets); }).find("must be frozen"),
      std::string::npos);
}

}  // namespace
}  // namespace sp
