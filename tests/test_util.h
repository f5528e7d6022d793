// Helpers every test suite shares: closeness checks that report the measured worst difference,
// AdamW hyper-parameters read from a golden file's metadata, unpadding of id batches, and a
// fixture with a per-test temporary directory.
#pragma once

#include <gtest/gtest.h>

#include <unistd.h>
#include <cmath>

#include <atomic>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <map>
#include <random>
#include <string>
#include <vector>

#include "engine/optim/adamw.h"
#include "engine/tensor.h"

namespace sp::testing {

// Asserts max |want - got| <= atol and prints the measured maximum (the figures quoted in
// tolerance comments come from these lines).
inline void expect_all_close(const std::vector<float>& want, const std::vector<float>& got,
                             float atol, const std::string& what) {
  ASSERT_EQ(want.size(), got.size()) << what;
  float worst = 0;
  size_t at = 0;
  for (size_t i = 0; i < want.size(); ++i) {
    const float diff = std::abs(want[i] - got[i]);
    if (diff > worst || std::isnan(diff)) worst = diff, at = i;
  }
  std::printf("[ measured ] %s: max |diff| = %.3g\n", what.c_str(), double(worst));
  EXPECT_LE(worst, atol) << what << ": max |diff| at " << at << ": want " << want[at] << " got "
                         << got[at];
}

// torch.optim.AdamW's hyper-parameters as the fixture scripts record them in __metadata__.
inline AdamWOptions adamw_options_from(const std::map<std::string, std::string>& meta) {
  AdamWOptions options;
  options.lr = std::stof(meta.at("lr"));
  options.beta1 = std::stof(meta.at("beta1"));
  options.beta2 = std::stof(meta.at("beta2"));
  options.eps = std::stof(meta.at("eps"));
  options.weight_decay = std::stof(meta.at("weight_decay"));
  return options;
}

// The rows of an I64 [B, T] batch, keeping the positions where mask == 1.
inline std::vector<std::vector<int64_t>> unpadded_rows(const Tensor& ids, const Tensor& mask) {
  std::vector<int64_t> flat = ids.to_ints(), keep = mask.to_ints();
  const int64_t B = ids.size(0), T = ids.size(1);
  std::vector<std::vector<int64_t>> rows(static_cast<size_t>(B));
  for (int64_t b = 0; b < B; ++b)
    for (int64_t t = 0; t < T; ++t)
      if (keep[size_t(b * T + t)]) rows[size_t(b)].push_back(flat[size_t(b * T + t)]);
  return rows;
}

// A fixture with an empty directory of its own per test (named after the test and the process,
// so parallel ctest runs never share one), removed afterwards.
class TempDirTest : public ::testing::Test {
 protected:
  void SetUp() override {
    dir_ = std::filesystem::temp_directory_path() /
           ("sp_test_" + std::to_string(::getpid()) + "_" +
            ::testing::UnitTest::GetInstance()->current_test_info()->test_suite_name() + "_" +
            ::testing::UnitTest::GetInstance()->current_test_info()->name());
    std::filesystem::remove_all(dir_);
    std::filesystem::create_directories(dir_);
  }
  void TearDown() override { std::filesystem::remove_all(dir_); }
  std::string path(const std::string& name) const { return (dir_ / name).string(); }
  // Writes `text` to `name` in the directory; returns its path.
  std::string write(const std::string& name, const std::string& text) {
    std::ofstream(path(name), std::ios::binary) << text;
    return path(name);
  }
  std::filesystem::path dir_;
};

// A fresh directory for the lifetime of the object (several per test), removed with everything in
// it at the end.
class ScopedTempDir {
 public:
  ScopedTempDir() {
    static std::atomic<int> counter{0};
    std::random_device random;
    path_ = std::filesystem::temp_directory_path() /
            ("sp_tmp_" + std::to_string(::getpid()) + "_" + std::to_string(random()) + "_" +
             std::to_string(counter++));
    std::filesystem::create_directories(path_);
  }
  ~ScopedTempDir() {
    std::error_code ec;
    std::filesystem::remove_all(path_, ec);
  }
  ScopedTempDir(const ScopedTempDir&) = delete;
  ScopedTempDir& operator=(const ScopedTempDir&) = delete;

  const std::filesystem::path& path() const { return path_; }
  std::string str() const { return path_.string(); }
  void copy_from(const std::filesystem::path& file) const {
    std::filesystem::copy_file(file, path_ / file.filename());
  }
  void write(const std::string& name, const std::string& content) const {
    std::ofstream(path_ / name, std::ios::binary) << content;
  }

 private:
  std::filesystem::path path_;
};

}  // namespace sp::testing
