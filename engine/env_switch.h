// env_switch: reads an on/off environment setting, "1"/"true" or "0"/"false". Anything else,
// or unset, is no opinion (nullopt), so the caller's default applies.
#pragma once

#include <cstring>
#include <optional>

namespace sp {

inline std::optional<bool> env_switch(const char* value) {
  if (value == nullptr) return std::nullopt;
  if (std::strcmp(value, "1") == 0 || std::strcmp(value, "true") == 0) return true;
  if (std::strcmp(value, "0") == 0 || std::strcmp(value, "false") == 0) return false;
  return std::nullopt;
}

}  // namespace sp
