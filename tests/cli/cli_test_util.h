// Running the softprompt binary from a test: exit code and combined output, with a wall-clock
// limit so that a command that hangs fails its test instead of stalling the suite.
#pragma once

#include <sys/wait.h>
#include <unistd.h>

#include <array>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <string>

#include <gtest/gtest.h>

namespace sp::cli_test {

inline const std::string kBinary = SOFTPROMPT_BINARY;
inline const std::string kFixtures = SOFTPROMPT_FIXTURES;

struct CommandResult {
  int code = -1;       ///< the exit code; 124 or 137 when the time limit killed it
  std::string output;  ///< stdout and stderr together
};

/// Runs `softprompt <args>` through the shell, killed after `limit_seconds`.
inline CommandResult run_limited(const std::string& args, int limit_seconds) {
  const std::string command = "timeout -s KILL " + std::to_string(limit_seconds) + " " + kBinary +
                              " " + args + " 2>&1 </dev/null";
  FILE* pipe = popen(command.c_str(), "r");
  CommandResult result;
  std::array<char, 4096> buffer;
  size_t n;
  while ((n = fread(buffer.data(), 1, buffer.size(), pipe)) > 0)
    result.output.append(buffer.data(), n);
  const int status = pclose(pipe);
  result.code = WIFEXITED(status) ? WEXITSTATUS(status) : -1;
  return result;
}

/// A per-test temporary directory, removed afterwards.
class TempDirTest : public ::testing::Test {
 protected:
  void SetUp() override {
    dir_ = std::filesystem::temp_directory_path() /
           ("sp_cli_" + std::to_string(::getpid()) + "_" +
            ::testing::UnitTest::GetInstance()->current_test_info()->name());
    std::filesystem::remove_all(dir_);
    std::filesystem::create_directories(dir_);
  }
  void TearDown() override { std::filesystem::remove_all(dir_); }
  std::string path(const std::string& name) const { return (dir_ / name).string(); }
  std::string write(const std::string& name, const std::string& text) {
    std::ofstream(path(name), std::ios::binary) << text;
    return path(name);
  }
  std::filesystem::path dir_;
};

}  // namespace sp::cli_test
