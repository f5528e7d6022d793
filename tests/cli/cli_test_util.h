// Running the softprompt binary from a test: exit code and combined output, with a wall-clock
// limit so that a command that hangs fails its test instead of stalling the suite.
#pragma once

#include <sys/wait.h>
#include <unistd.h>

#include <array>
#include <cstdio>
#include <string>

#include <gtest/gtest.h>

#include "tests/test_util.h"

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

using TempDirTest = sp::testing::TempDirTest;

}  // namespace sp::cli_test
