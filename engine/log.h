// Warnings and notes for the user: printed to stderr as "softprompt: warning: ...", silenced
// by set_quiet(), and capturable by tests through a sink.
#pragma once

#include <functional>
#include <string>

#include "engine/error.h"

namespace sp {

/// Data parallel: "softprompt[rank R]" instead of "softprompt" heads every message of this
/// process (warnings here, errors and notes in the CLI). Negative: no rank (one process).
void set_log_rank(int rank);
/// "softprompt" or "softprompt[rank R]".
std::string log_prefix();

/// Silences (or restores) warnings printed to stderr.
void set_quiet(bool quiet);
bool is_quiet();
/// Replaces the stderr printer (tests collect messages); pass nullptr to restore it.
void set_warning_sink(std::function<void(const std::string&)> sink);
/// Prints "<log_prefix()>: warning: <message>" unless quiet (or hands it to the sink).
void emit_warning(const std::string& message);

/// emit_warning() of the arguments streamed together.
template <class... Args>
void warn(Args&&... args) {
  emit_warning(str_cat(std::forward<Args>(args)...));
}

}  // namespace sp
