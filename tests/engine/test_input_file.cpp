// engine/input_file: non-regular files are refused without blocking, sizes and line lengths are
// capped, and JSON nesting is bounded before the (recursive) parser runs.
#include "engine/input_file.h"

#include <gtest/gtest.h>
#include <sys/stat.h>
#include <unistd.h>

#include <filesystem>
#include <fstream>

#include "engine/error.h"
#include "tests/test_util.h"

namespace sp {
namespace {

namespace fs = std::filesystem;

class InputFile : public testing::TempDirTest {};

// The message of the Error that `f` throws, or "" (the test then fails on the expectation).
template <class F>
std::string error_of(F f, ErrorKind expected_kind) {
  try {
    f();
  } catch (const Error& e) {
    EXPECT_EQ(int(e.kind()), int(expected_kind)) << e.what();
    return e.what();
  }
  ADD_FAILURE() << "no error thrown";
  return "";
}

TEST_F(InputFile, ReadsARegularFile) {
  EXPECT_EQ(read_file(write("a.txt", "hello\nworld")), "hello\nworld");
  EXPECT_EQ(read_json_file(write("a.json", R"({"a": [1, {"b": 2}]})"))["a"][1]["b"], 2);
}

TEST_F(InputFile, FifoIsRefusedWithoutBlocking) {
  // Before: std::ifstream on a FIFO waits in open() for a writer that never comes.
  ASSERT_EQ(::mkfifo(path("pipe").c_str(), 0600), 0);
  std::string message = error_of([&] { read_file(path("pipe")); }, ErrorKind::kIo);
  EXPECT_NE(message.find("FIFO"), std::string::npos) << message;
  EXPECT_NE(message.find(path("pipe")), std::string::npos) << message;
  EXPECT_THROW(LineReader reader(path("pipe")), Error);
}

TEST_F(InputFile, DirectoriesDevicesAndSymlinkLoopsAreRefused) {
  fs::create_directories(path("config.json"));
  EXPECT_NE(
      error_of([&] { read_json_file(path("config.json")); }, ErrorKind::kIo).find("a directory"),
      std::string::npos);
  EXPECT_NE(error_of([&] { read_file("/dev/zero"); }, ErrorKind::kIo).find("character device"),
            std::string::npos);
  fs::create_symlink(path("loop_b"), path("loop_a"));
  fs::create_symlink(path("loop_a"), path("loop_b"));
  EXPECT_NE(error_of([&] { read_file(path("loop_a")); }, ErrorKind::kIo).find("symbolic links"),
            std::string::npos);
  EXPECT_NE(error_of([&] { read_file(path("missing")); }, ErrorKind::kIo).find("no such file"),
            std::string::npos);
}

TEST_F(InputFile, SizeCapIsEnforced) {
  const std::string p = write("big.txt", std::string(1000, 'x'));
  EXPECT_EQ(read_file(p, 1000).size(), 1000u);
  EXPECT_NE(error_of([&] { read_file(p, 999); }, ErrorKind::kFormat).find("999-byte limit"),
            std::string::npos);
}

TEST_F(InputFile, DeepJsonIsRefusedBeforeParsing) {
  // A million levels crash nlohmann's recursive parser with a stack overflow (SIGSEGV).
  const std::string deep = std::string(1'000'000, '[') + std::string(1'000'000, ']');
  std::string message = error_of([&] { parse_json(deep, "config.json"); }, ErrorKind::kFormat);
  EXPECT_NE(message.find("config.json: JSON nested more than 128 levels"), std::string::npos)
      << message;
  // Exactly at the limit parses; brackets inside strings do not count.
  const std::string at_limit = std::string(kMaxJsonDepth, '[') + std::string(kMaxJsonDepth, ']');
  EXPECT_NO_THROW(parse_json(at_limit, "x"));
  EXPECT_THROW(parse_json("[" + at_limit + "]", "x"), Error);
  EXPECT_EQ(parse_json(R"({"s": ")" + std::string(500, '[') + R"(\"["})", "x")["s"]
                .get<std::string>()
                .size(),
            502u);
}

TEST_F(InputFile, InvalidJsonNamesTheSource) {
  std::string message =
      error_of([&] { parse_json("{\"a\": ", "dir/config.json"); }, ErrorKind::kFormat);
  EXPECT_NE(message.find("dir/config.json: not valid JSON"), std::string::npos) << message;
}

TEST_F(InputFile, LineReaderSplitsLinesAndCapsTheirLength) {
  LineReader reader(write("d.jsonl", "one\n\ntwo\r\nthree"));
  EXPECT_EQ(reader.next().value(), "one");
  EXPECT_EQ(reader.next().value(), "");
  EXPECT_EQ(reader.next().value(), "two\r");
  EXPECT_EQ(reader.next().value(), "three");
  EXPECT_EQ(reader.line_number(), 4);
  EXPECT_FALSE(reader.next().has_value());

  LineReader capped(write("long.jsonl", "short\n" + std::string(100, 'x') + "\n"), 64);
  EXPECT_EQ(capped.next().value(), "short");
  std::string message = error_of([&] { capped.next(); }, ErrorKind::kFormat);
  EXPECT_NE(message.find("long.jsonl:2: line longer than the 64-byte limit"), std::string::npos)
      << message;
}

}  // namespace
}  // namespace sp
