// safetensors IO: a validating reader (tensors copied out with pread, BF16/F16 converted on
// request), sharded checkpoints via model.safetensors.index.json, and an atomic writer.
#pragma once

#include <cstdint>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "engine/tensor.h"

namespace sp {

/// One tensor's header entry in a safetensors file.
struct SafetensorsEntry {
  std::string name;
  std::string dtype;  ///< as in the file: "F32", "BF16", ...
  Shape shape;
  uint64_t begin = 0;  ///< byte offsets relative to the data buffer
  uint64_t end = 0;
};

/// A validated .safetensors file, kept open; each get() copies one tensor out of it. Not a memory
/// mapping: a file truncated or rewritten while in use is a clear Error, never SIGBUS.
class SafetensorsFile {
 public:
  /// Maps and validates the whole header; throws an Error naming the file and the defect.
  static std::shared_ptr<SafetensorsFile> open(const std::string& path);

  const std::string& path() const { return path_; }
  const std::map<std::string, std::string>& metadata() const { return metadata_; }
  std::vector<std::string> names() const;  ///< in file order of their data
  bool contains(const std::string& name) const { return entries_.count(name) != 0; }
  const SafetensorsEntry& entry(const std::string& name) const;

  /// The tensor on the CPU, in memory of its own. F32/BF16/F16/I32/I64 are returned as stored;
  /// with `as` set, float tensors are converted (F64 needs as = F32).
  Tensor get(const std::string& name, std::optional<DType> as = std::nullopt) const;

  ~SafetensorsFile();

 private:
  SafetensorsFile() = default;
  std::string path_;
  std::map<std::string, std::string> metadata_;
  std::map<std::string, SafetensorsEntry> entries_;
  // Reads exactly nbytes at offset; an Error if the file changed since open or ends early.
  void read_at(uint64_t offset, void* out, size_t nbytes) const;
  int fd_ = -1;
  uint64_t size_ = 0;         ///< at open; a different size later means a concurrent rewrite
  int64_t mtime_ns_ = 0;      ///< likewise
  uint64_t data_offset_ = 0;  ///< where the data buffer starts in the file
};

/// A Hugging Face checkpoint directory: model.safetensors, or model.safetensors.index.json with
/// its shards (or an explicit single file path).
class Checkpoint {
 public:
  static Checkpoint open(const std::string& directory_or_file);
  bool contains(const std::string& name) const;
  std::vector<std::string> names() const;
  const SafetensorsEntry& entry(const std::string& name) const;
  Tensor get(const std::string& name, std::optional<DType> as = std::nullopt) const;
  const std::string& source() const { return source_; }

 private:
  std::string source_;
  std::vector<std::shared_ptr<SafetensorsFile>> files_;
  std::map<std::string, size_t> file_of_;
};

/// Writes tensors (any device; copied to host) with optional metadata. The file is written to
/// a temporary name in the same directory, flushed, then renamed: never half-written.
void save_safetensors(const std::string& path,
                      const std::vector<std::pair<std::string, Tensor>>& tensors,
                      const std::map<std::string, std::string>& metadata = {});

/// Writes `contents` to `path` atomically (temporary file + fsync + rename).
void write_file_atomically(const std::string& path, const std::string& contents);

}  // namespace sp
