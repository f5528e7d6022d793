// Crash-safe file-system steps (mkdir, rename, unlink, fsync of files and directories) and the
// fault-injection hook that tests use to kill the process before any one of them.
#pragma once

#include <functional>
#include <string>
#include <vector>

#include "engine/input_file.h"  // path_exists

namespace sp {

/// Called with the operation ("open", "write", "fsync", "rename", "mkdir", "unlink", "rmdir",
/// "ftruncate") and the path just before softprompt's checkpoint and adapter writers perform it.
/// Null (the default) costs one load per call. Tests install a hook that _exit()s at the Nth
/// call to check that a crash at any point leaves a resumable output directory.
using FsHook = void (*)(const char* op, const std::string& path);
void set_fs_hook(FsHook hook);
/// Runs the hook, if any, for one operation about to happen.
void fs_hook_point(const char* op, const std::string& path);

/// mkdir (one level; an existing directory is fine). Errors name the path.
void make_directory(const std::string& path);
/// rename(2) with the hook; errors name both paths.
void rename_path(const std::string& from, const std::string& to);
/// Removes a file or a whole directory tree (one hooked unlink/rmdir per entry); absent is fine.
void remove_tree(const std::string& path);
/// fsync of a directory, so that the renames and creations inside it survive a power loss.
void fsync_directory(const std::string& path);

/// Replaces the directory `final_dir` as a whole: `fill` writes the new contents into
/// `<final_dir>.staged` (flushed), which is renamed to `<final_dir>.next` (the commit point: a
/// `.next` directory is complete by construction), then `<final_dir>` moves aside to
/// `<final_dir>.old`, `.next` takes its place and `.old` is removed. A crash at any step leaves
/// either the old or the new directory recoverable by recover_directory, never a mix.
void commit_directory(const std::string& final_dir,
                      const std::function<void(const std::string& staged_dir)>& fill);
/// Finishes or rolls back an interrupted commit_directory: removes `.staged` (incomplete),
/// completes a pending `.next` swap, removes `.old`. Idempotent; a no-op after a clean run.
void recover_directory(const std::string& final_dir);
/// Removes the temporary files write_file_atomically leaves behind when killed
/// (".<name>.tmpXXXXXX" in `dir`) for each of the given file names.
void remove_stale_temporaries(const std::string& dir, const std::vector<std::string>& names);

}  // namespace sp
