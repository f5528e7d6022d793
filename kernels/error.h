// sp::Error, the single exception type softprompt throws, and the SP_CHECK family of macros.
// It lives in the lowest layer (kernels/) because the CUDA emulator reports through it too.
#pragma once

#include <sstream>
#include <stdexcept>
#include <string>
#include <utility>

namespace sp {

/// What kind of failure this is; the CLI maps kinds to documented exit codes.
enum class ErrorKind {
  kInvalidArgument,  ///< bad user input: flags, config fields, shapes
  kIo,               ///< files that cannot be opened, read or written
  kFormat,           ///< malformed files: safetensors, JSON, tokenizer, JSONL
  kNumerical,        ///< NaN/inf where a finite value is required
  kUnsupported,      ///< a valid value this build cannot handle (e.g. CUDA without a GPU)
  kInternal,         ///< a bug in softprompt
};

/// The one exception type softprompt throws. what() is a complete message naming the
/// file / field / op and what was expected; kind() classifies the failure.
class Error : public std::runtime_error {
 public:
  Error(ErrorKind kind, const std::string& message) : std::runtime_error(message), kind_(kind) {}
  ErrorKind kind() const { return kind_; }

 private:
  ErrorKind kind_;
};

/// Streams the arguments into one string.
template <class... Args>
std::string str_cat(Args&&... args) {
  std::ostringstream out;
  (out << ... << std::forward<Args>(args));
  return out.str();
}

/// Throws Error(kind, str_cat(args...)).
template <class... Args>
[[noreturn]] void fail(ErrorKind kind, Args&&... args) {
  throw Error(kind, str_cat(std::forward<Args>(args)...));
}

}  // namespace sp

/// SP_CHECK(cond, parts...) throws an invalid-argument Error built from parts when cond is false.
#define SP_CHECK(cond, ...)                                                  \
  do {                                                                       \
    if (!(cond)) ::sp::fail(::sp::ErrorKind::kInvalidArgument, __VA_ARGS__); \
  } while (0)

/// SP_CHECK_KIND(kind, cond, parts...) is SP_CHECK with an explicit ErrorKind.
#define SP_CHECK_KIND(kind, cond, ...)                           \
  do {                                                           \
    if (!(cond)) ::sp::fail(::sp::ErrorKind::kind, __VA_ARGS__); \
  } while (0)

/// SP_ASSERT guards internal invariants: failing one is a softprompt bug, never a user error.
#define SP_ASSERT(cond)                                                                          \
  do {                                                                                           \
    if (!(cond))                                                                                 \
      ::sp::fail(::sp::ErrorKind::kInternal, "internal error: ", #cond, " failed at ", __FILE__, \
                 ":", __LINE__);                                                                 \
  } while (0)
