// Reading untrusted input files: regular files only (a FIFO or device never blocks or streams
// forever), bounded sizes and line lengths, and JSON with a bounded nesting depth.
#pragma once

#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <nlohmann/json.hpp>
#include <optional>
#include <string>
#include <string_view>

namespace sp {

/// Nesting deeper than this is refused before parsing: nlohmann's parser recurses per level and
/// a hostile file of a million '[' overflows the stack. Real configs nest fewer than 10 levels.
inline constexpr int kMaxJsonDepth = 128;
/// Default size cap for a whole file read into memory (configs, tokenizer files, states).
inline constexpr size_t kMaxInputFileBytes = size_t(1) << 30;

/// Whether anything is at `path`, without following a final symlink: a dangling link, a loop or
/// a FIFO counts, so that reading it names the problem instead of treating the file as absent.
bool path_exists(const std::string& path);

/// Opens `path` read-only, refusing anything but a regular file with an Error naming the path
/// and what it is (directory, FIFO, device, socket, symlink loop, missing). Never blocks in
/// open(): a FIFO is opened non-blocking, then refused. Returns the descriptor (caller closes).
int open_regular_file(const std::string& path);

/// The whole file, at most `max_bytes` (larger files are refused, naming the limit).
std::string read_file(const std::string& path, size_t max_bytes = kMaxInputFileBytes);

/// Parses `text` as JSON; errors (including nesting beyond kMaxJsonDepth) name `source`.
nlohmann::json parse_json(std::string_view text, const std::string& source);

/// read_file + parse_json.
nlohmann::json read_json_file(const std::string& path, size_t max_bytes = kMaxInputFileBytes);

/// Reads a text file line by line, refusing lines longer than a cap instead of buffering an
/// endless line (`--data /dev/zero`-style input) into memory.
class LineReader {
 public:
  static constexpr size_t kDefaultMaxLineBytes = size_t(64) << 20;
  explicit LineReader(const std::string& path, size_t max_line_bytes = kDefaultMaxLineBytes);
  ~LineReader();
  LineReader(const LineReader&) = delete;
  LineReader& operator=(const LineReader&) = delete;
  /// The next line without its '\n' (a trailing '\r' is kept), or nullopt at the end.
  std::optional<std::string> next();
  int64_t line_number() const { return line_number_; }  ///< of the line last returned

 private:
  std::string path_;
  size_t max_line_bytes_;
  std::FILE* file_ = nullptr;
  int64_t line_number_ = 0;
};

}  // namespace sp
