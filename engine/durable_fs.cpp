// Hooked, error-checked file-system steps for the crash-safe writers.
#include "engine/durable_fs.h"

#include <dirent.h>
#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <atomic>
#include <cerrno>
#include <cstring>
#include <vector>

#include "engine/error.h"

namespace sp {

namespace {

std::atomic<FsHook> g_hook{nullptr};

// The directory holding `path` ("." for a bare name), whose entry a rename changes.
std::string parent_directory(const std::string& path) {
  const size_t slash = path.find_last_of('/');
  return slash == std::string::npos ? std::string(".") : path.substr(0, slash);
}

}  // namespace

void set_fs_hook(FsHook hook) {
  g_hook.store(hook);
}

void fs_hook_point(const char* op, const std::string& path) {
  if (FsHook hook = g_hook.load(std::memory_order_relaxed)) hook(op, path);
}

void make_directory(const std::string& path) {
  fs_hook_point("mkdir", path);
  if (::mkdir(path.c_str(), 0755) != 0 && errno != EEXIST)
    fail(ErrorKind::kIo, path, ": cannot create the directory: ", std::strerror(errno));
}

void rename_path(const std::string& from, const std::string& to) {
  fs_hook_point("rename", from);
  if (::rename(from.c_str(), to.c_str()) != 0)
    fail(ErrorKind::kIo, from, ": cannot rename to ", to, ": ", std::strerror(errno));
}

void remove_tree(const std::string& path) {
  struct stat st;
  if (::lstat(path.c_str(), &st) != 0) {
    if (errno == ENOENT) return;
    fail(ErrorKind::kIo, path, ": cannot inspect: ", std::strerror(errno));
  }
  if (S_ISDIR(st.st_mode)) {
    std::vector<std::string> names;
    if (DIR* dir = ::opendir(path.c_str())) {
      while (dirent* entry = ::readdir(dir)) {
        std::string name = entry->d_name;
        if (name != "." && name != "..") names.push_back(name);
      }
      ::closedir(dir);
    } else {
      fail(ErrorKind::kIo, path, ": cannot list the directory: ", std::strerror(errno));
    }
    for (const std::string& name : names) remove_tree(path + "/" + name);
    fs_hook_point("rmdir", path);
    if (::rmdir(path.c_str()) != 0 && errno != ENOENT)
      fail(ErrorKind::kIo, path, ": cannot remove the directory: ", std::strerror(errno));
  } else {
    fs_hook_point("unlink", path);
    if (::unlink(path.c_str()) != 0 && errno != ENOENT)
      fail(ErrorKind::kIo, path, ": cannot remove: ", std::strerror(errno));
  }
}

void fsync_directory(const std::string& path) {
  fs_hook_point("fsync", path);
  int fd = ::open(path.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  if (fd < 0)
    fail(ErrorKind::kIo, path, ": cannot open the directory to flush it: ", std::strerror(errno));
  // EINVAL: the file system does not support syncing directories (some FUSE mounts); nothing
  // more can be done there, and the data files themselves were flushed.
  if (::fsync(fd) != 0 && errno != EINVAL) {
    int err = errno;
    ::close(fd);
    fail(ErrorKind::kIo, path, ": cannot flush the directory: ", std::strerror(err));
  }
  ::close(fd);
}

void commit_directory(const std::string& final_dir,
                      const std::function<void(const std::string& staged_dir)>& fill) {
  const std::string staged = final_dir + ".staged", next = final_dir + ".next";
  const std::string parent = parent_directory(final_dir);
  recover_directory(final_dir);  // a leftover .next would otherwise be taken for this one
  make_directory(staged);
  fill(staged);
  fsync_directory(staged);
  rename_path(staged, next);
  fsync_directory(parent);
  recover_directory(final_dir);
}

void recover_directory(const std::string& final_dir) {
  const std::string staged = final_dir + ".staged", next = final_dir + ".next",
                    old = final_dir + ".old";
  const std::string parent = parent_directory(final_dir);
  remove_tree(staged);
  if (path_exists(next)) {
    // Two renames, because rename(2) cannot replace a non-empty directory. Between them only
    // .next and .old exist, and .next is the newer complete one.
    if (path_exists(final_dir)) {
      remove_tree(old);
      rename_path(final_dir, old);
    }
    rename_path(next, final_dir);
    fsync_directory(parent);
  } else if (!path_exists(final_dir) && path_exists(old)) {
    rename_path(old, final_dir);  // cannot happen through commit_directory; keep the data anyway
    fsync_directory(parent);
    return;
  }
  remove_tree(old);
}

void remove_stale_temporaries(const std::string& dir, const std::vector<std::string>& names) {
  DIR* handle = ::opendir(dir.c_str());
  if (!handle) return;
  std::vector<std::string> stale;
  while (dirent* entry = ::readdir(handle)) {
    const std::string name = entry->d_name;
    for (const std::string& base : names) {
      const std::string prefix = "." + base + ".tmp";
      if (name.size() == prefix.size() + 6 && name.compare(0, prefix.size(), prefix) == 0)
        stale.push_back(dir + "/" + name);
    }
  }
  ::closedir(handle);
  for (const std::string& path : stale) remove_tree(path);
}

}  // namespace sp
