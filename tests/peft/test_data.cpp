// JSONL data under hostile input: endless lines, non-regular files, deep nesting and task ids
// that would size the multitask tables are refused with file:line, never a crash or a hang.
#include <gtest/gtest.h>
#include <sys/stat.h>
#include <unistd.h>

#include <filesystem>
#include <fstream>

#include "engine/error.h"
#include "engine/input_file.h"
#include "peft/config.h"
#include "peft/data.h"
#include "tests/test_util.h"

namespace sp {
namespace {

namespace fs = std::filesystem;

class DataHostile : public testing::TempDirTest {
 protected:
  // The message of load_jsonl's error.
  static std::string error_of(const std::string& path) {
    try {
      load_jsonl(path);
    } catch (const Error& e) {
      return e.what();
    }
    ADD_FAILURE() << "no error for " << path;
    return "";
  }
};

constexpr const char* kGoodLine = R"({"input": "a", "output": "b"})";

TEST_F(DataHostile, DevZeroAndFifosAreRefusedNotReadForever) {
  // Before: /dev/zero was read as one endless line until memory ran out; a FIFO blocked open().
  EXPECT_NE(error_of("/dev/zero").find("/dev/zero: is a character device"), std::string::npos);
  const std::string fifo = (dir_ / "data.jsonl").string();
  ASSERT_EQ(::mkfifo(fifo.c_str(), 0600), 0);
  EXPECT_NE(error_of(fifo).find("FIFO"), std::string::npos);
}

TEST_F(DataHostile, OverlongLineNamesFileAndLine) {
  const std::string p =
      write("d.jsonl",
            std::string(kGoodLine) + "\n" + std::string(LineReader::kDefaultMaxLineBytes + 1, ' '));
  EXPECT_NE(error_of(p).find("d.jsonl:2: line longer than the 67108864-byte limit"),
            std::string::npos);
}

TEST_F(DataHostile, DeeplyNestedLineIsAMalformedLine) {
  // Before: a stack overflow (SIGSEGV) in the recursive JSON parser.
  const std::string p =
      write("d.jsonl", std::string(kGoodLine) + "\n" + std::string(200000, '[') + "\n");
  const std::string message = error_of(p);
  EXPECT_NE(message.find("d.jsonl:2: JSON nested more than 128 levels"), std::string::npos)
      << message;
  Dataset skipped = load_jsonl(p, /*skip_bad_lines=*/true);
  EXPECT_EQ(skipped.examples.size(), 1u);
  EXPECT_EQ(skipped.skipped_lines, 1);
}

TEST_F(DataHostile, TaskIdsBeyondTheTaskLimitAreRefused) {
  // Before: "task": 100000000 sized the multitask factor tables for 1e8 tasks; a digit string
  // beyond int64 threw std::out_of_range (exit 5).
  const std::string ok =
      R"({"input": "a", "output": "b", "task": )" + std::to_string(kMaxTasks - 1) + "}\n";
  EXPECT_EQ(load_jsonl(write("ok.jsonl", ok)).examples.size(), 1u);
  std::string message =
      error_of(write("big.jsonl", std::string(kGoodLine) + "\n" +
                                      R"({"input": "a", "output": "b", "task": 100000000})"));
  EXPECT_NE(message.find("big.jsonl:2: field 'task' must be a name or an integer id from 0 to "
                         "65535, found 100000000"),
            std::string::npos)
      << message;
  message = error_of(
      write("digits.jsonl", R"({"input": "a", "output": "b", "task": "99999999999999999999999"})"));
  EXPECT_NE(message.find("digits.jsonl:1: field 'task' must be a name or an integer id"),
            std::string::npos)
      << message;
  message = error_of(write("neg.jsonl", R"({"input": "a", "output": "b", "task": -3})"));
  EXPECT_NE(message.find("neg.jsonl:1: field 'task'"), std::string::npos) << message;
}

}  // namespace
}  // namespace sp
