// Regular-file checks, bounded reads and depth-checked JSON parsing for every input file.
#include "engine/input_file.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>

#include "engine/error.h"

namespace sp {

namespace {

const char* file_kind(mode_t mode) {
  if (S_ISDIR(mode)) return "a directory";
  if (S_ISFIFO(mode)) return "a FIFO (named pipe)";
  if (S_ISCHR(mode)) return "a character device";
  if (S_ISBLK(mode)) return "a block device";
  if (S_ISSOCK(mode)) return "a socket";
  return "not a regular file";
}

// The deepest bracket nesting of a JSON text, counting only brackets outside strings. Stops
// counting once `limit` is exceeded.
int json_nesting_depth(std::string_view text, int limit) {
  int depth = 0, deepest = 0;
  bool in_string = false;
  for (size_t i = 0; i < text.size(); ++i) {
    const char c = text[i];
    if (in_string) {
      if (c == '\\')
        ++i;
      else if (c == '"')
        in_string = false;
    } else if (c == '"') {
      in_string = true;
    } else if (c == '[' || c == '{') {
      deepest = std::max(deepest, ++depth);
      if (deepest > limit) return deepest;
    } else if (c == ']' || c == '}') {
      --depth;
    }
  }
  return deepest;
}

}  // namespace

bool path_exists(const std::string& path) {
  struct stat st {};
  return ::lstat(path.c_str(), &st) == 0;
}

int open_regular_file(const std::string& path) {
  // O_NONBLOCK: opening a FIFO for reading would otherwise wait for a writer forever.
  int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC | O_NONBLOCK);
  if (fd < 0) {
    const int err = errno;
    if (err == ENOENT) fail(ErrorKind::kIo, path, ": cannot open: no such file");
    if (err == ELOOP)
      fail(ErrorKind::kIo, path, ": too many levels of symbolic links (a symlink loop?)");
    fail(ErrorKind::kIo, path, ": cannot open: ", std::strerror(err));
  }
  struct stat st {};
  if (::fstat(fd, &st) != 0) {
    const int err = errno;
    ::close(fd);
    fail(ErrorKind::kIo, path, ": cannot stat: ", std::strerror(err));
  }
  if (!S_ISREG(st.st_mode)) {
    ::close(fd);
    fail(ErrorKind::kIo, path, ": is ", file_kind(st.st_mode), ", expected a regular file");
  }
  // Regular files never block, but reads must not see EAGAIN semantics either.
  ::fcntl(fd, F_SETFL, ::fcntl(fd, F_GETFL) & ~O_NONBLOCK);
  return fd;
}

std::string read_file(const std::string& path, size_t max_bytes) {
  const int fd = open_regular_file(path);
  std::string contents;
  char buffer[1 << 16];
  for (;;) {
    const ssize_t n = ::read(fd, buffer, sizeof buffer);
    if (n < 0) {
      if (errno == EINTR) continue;
      const int err = errno;
      ::close(fd);
      fail(ErrorKind::kIo, path, ": read failed: ", std::strerror(err));
    }
    if (n == 0) break;
    if (contents.size() + size_t(n) > max_bytes) {
      ::close(fd);
      fail(ErrorKind::kFormat, path, ": larger than the ", max_bytes, "-byte limit for this file");
    }
    contents.append(buffer, size_t(n));
  }
  ::close(fd);
  return contents;
}

nlohmann::json parse_json(std::string_view text, const std::string& source) {
  if (json_nesting_depth(text, kMaxJsonDepth) > kMaxJsonDepth)
    fail(ErrorKind::kFormat, source, ": JSON nested more than ", kMaxJsonDepth,
         " levels deep (refused)");
  try {
    return nlohmann::json::parse(text);
  } catch (const nlohmann::json::exception& e) {
    fail(ErrorKind::kFormat, source, ": not valid JSON: ", e.what());
  }
}

nlohmann::json read_json_file(const std::string& path, size_t max_bytes) {
  return parse_json(read_file(path, max_bytes), path);
}

LineReader::LineReader(const std::string& path, size_t max_line_bytes)
    : path_(path), max_line_bytes_(max_line_bytes) {
  const int fd = open_regular_file(path);
  file_ = ::fdopen(fd, "rb");
  if (!file_) {
    const int err = errno;
    ::close(fd);
    fail(ErrorKind::kIo, path, ": cannot open: ", std::strerror(err));
  }
}

LineReader::~LineReader() {
  if (file_) std::fclose(file_);
}

std::optional<std::string> LineReader::next() {
  std::string line;
  int c;
  bool any = false;
  while ((c = getc_unlocked(file_)) != EOF) {
    any = true;
    if (c == '\n') break;
    if (line.size() >= max_line_bytes_)
      fail(ErrorKind::kFormat, path_, ":", line_number_ + 1, ": line longer than the ",
           max_line_bytes_, "-byte limit");
    line.push_back(char(c));
  }
  if (std::ferror(file_)) fail(ErrorKind::kIo, path_, ": read failed after line ", line_number_);
  if (!any) return std::nullopt;
  ++line_number_;
  return line;
}

}  // namespace sp
