// safetensors reader (pread + validation), sharded checkpoints, atomic writer.
#include "engine/safetensors.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <filesystem>
#include <nlohmann/json.hpp>

#include "engine/backend.h"
#include "engine/durable_fs.h"
#include "engine/error.h"
#include "engine/input_file.h"

namespace sp {

namespace {

using json = nlohmann::json;
constexpr uint64_t kMaxHeaderBytes = 100'000'000;

// Byte size of every dtype the format defines; 0 for unknown names.
size_t safetensors_dtype_size(const std::string& dtype) {
  static const std::map<std::string, size_t> sizes = {
      {"BOOL", 1}, {"U8", 1},  {"I8", 1},  {"F8_E5M2", 1}, {"F8_E4M3", 1},
      {"I16", 2},  {"U16", 2}, {"F16", 2}, {"BF16", 2},    {"I32", 4},
      {"U32", 4},  {"F32", 4}, {"F64", 8}, {"I64", 8},     {"U64", 8}};
  auto it = sizes.find(dtype);
  return it == sizes.end() ? 0 : it->second;
}

std::optional<DType> engine_dtype(const std::string& dtype) {
  if (dtype == "F32") return DType::F32;
  if (dtype == "BF16") return DType::BF16;
  if (dtype == "F16") return DType::F16;
  if (dtype == "I32") return DType::I32;
  if (dtype == "I64") return DType::I64;
  return std::nullopt;
}

[[noreturn]] void format_error(const std::string& path, const std::string& what) {
  fail(ErrorKind::kFormat, path, ": invalid safetensors file: ", what);
}

}  // namespace

std::shared_ptr<SafetensorsFile> SafetensorsFile::open(const std::string& path) {
  std::shared_ptr<SafetensorsFile> file(new SafetensorsFile());
  file->path_ = path;
  file->fd_ = open_regular_file(path);
  struct stat st {};
  if (fstat(file->fd_, &st) != 0)
    fail(ErrorKind::kIo, path, ": cannot stat: ", std::strerror(errno));
  file->size_ = uint64_t(st.st_size);
  file->mtime_ns_ = int64_t(st.st_mtim.tv_sec) * 1'000'000'000 + st.st_mtim.tv_nsec;
  const uint64_t file_size = file->size_;

  if (file_size < 8)
    format_error(path, "file is " + std::to_string(file_size) +
                           " bytes, shorter than the 8-byte header length");
  uint64_t header_len = 0;
  file->read_at(0, &header_len, 8);  // little-endian on every supported host
  if (header_len > kMaxHeaderBytes)
    format_error(path, "header length " + std::to_string(header_len) +
                           " exceeds the 100,000,000-byte limit");
  if (header_len > file_size - 8)
    format_error(path, "header length " + std::to_string(header_len) + " exceeds the " +
                           std::to_string(file_size - 8) + " bytes after the length prefix");
  std::string header(size_t(header_len), '\0');
  file->read_at(8, header.data(), header.size());
  json doc;
  try {
    doc = parse_json(header, path);
  } catch (const Error& e) {
    format_error(path, std::string("header: ") + e.what());
  }
  if (!doc.is_object()) format_error(path, "header JSON is not an object");

  const uint64_t buffer_size = file_size - 8 - header_len;
  file->data_offset_ = 8 + header_len;
  std::vector<SafetensorsEntry> ordered;
  for (auto& [name, value] : doc.items()) {
    if (name == "__metadata__") {
      if (value.is_null()) continue;  // the reference reader accepts null: no metadata
      if (!value.is_object()) format_error(path, "__metadata__ is not an object");
      for (auto& [key, v] : value.items()) {
        if (!v.is_string())
          format_error(path, "__metadata__ value for '" + key + "' is not a string");
        file->metadata_[key] = v.get<std::string>();
      }
      continue;
    }
    const std::string where = "tensor '" + name + "': ";
    if (!value.is_object()) format_error(path, where + "entry is not an object");
    if (!value.contains("dtype") || !value["dtype"].is_string())
      format_error(path, where + "missing string field 'dtype'");
    if (!value.contains("shape") || !value["shape"].is_array())
      format_error(path, where + "missing array field 'shape'");
    if (!value.contains("data_offsets") || !value["data_offsets"].is_array() ||
        value["data_offsets"].size() != 2)
      format_error(path, where + "'data_offsets' must be an array [begin, end]");
    SafetensorsEntry entry;
    entry.name = name;
    entry.dtype = value["dtype"].get<std::string>();
    size_t element_size = safetensors_dtype_size(entry.dtype);
    if (element_size == 0) format_error(path, where + "unknown dtype '" + entry.dtype + "'");
    uint64_t numel = 1;
    for (auto& d : value["shape"]) {
      if (!d.is_number_unsigned())
        format_error(path, where + "shape entries must be non-negative integers");
      uint64_t dim = d.get<uint64_t>();
      if (dim != 0 && numel > UINT64_MAX / dim) format_error(path, where + "shape overflows");
      numel *= dim;
      entry.shape.push_back(int64_t(dim));
    }
    for (auto& o : value["data_offsets"])
      if (!o.is_number_unsigned())
        format_error(path, where + "data_offsets must be non-negative integers");
    entry.begin = value["data_offsets"][0].get<uint64_t>();
    entry.end = value["data_offsets"][1].get<uint64_t>();
    if (entry.end < entry.begin)
      format_error(path, where + "data_offsets end " + std::to_string(entry.end) +
                             " is before begin " + std::to_string(entry.begin));
    if (entry.end > buffer_size)
      format_error(path, where + "data ends at byte " + std::to_string(entry.end) +
                             " beyond the end of the file's " + std::to_string(buffer_size) +
                             "-byte data buffer (truncated file?)");
    if (numel > UINT64_MAX / element_size || entry.end - entry.begin != numel * element_size)
      format_error(path, where + "byte size " + std::to_string(entry.end - entry.begin) +
                             " does not match shape " + shape_str(entry.shape) + " of " +
                             entry.dtype + " (" + std::to_string(numel * element_size) +
                             " bytes expected)");
    ordered.push_back(entry);
  }
  // The tensors must tile the data buffer exactly: no overlap, no gap, nothing after.
  std::stable_sort(ordered.begin(), ordered.end(), [](const auto& a, const auto& b) {
    return a.begin != b.begin ? a.begin < b.begin : a.end < b.end;
  });
  uint64_t cursor = 0;
  for (const auto& entry : ordered) {
    if (entry.begin < cursor)
      format_error(path, "tensor '" + entry.name + "' overlaps the previous tensor (starts at " +
                             std::to_string(entry.begin) + ", previous ends at " +
                             std::to_string(cursor) + ")");
    if (entry.begin > cursor)
      format_error(path, "gap in the data buffer before tensor '" + entry.name + "' (bytes " +
                             std::to_string(cursor) + ".." + std::to_string(entry.begin) +
                             " belong to no tensor)");
    cursor = entry.end;
    file->entries_[entry.name] = entry;
  }
  if (cursor != buffer_size)
    format_error(path, "data buffer has " + std::to_string(buffer_size - cursor) +
                           " trailing bytes that belong to no tensor");
  return file;
}

SafetensorsFile::~SafetensorsFile() {
  if (fd_ >= 0) ::close(fd_);
}

void SafetensorsFile::read_at(uint64_t offset, void* out, size_t nbytes) const {
  // A rewrite or truncation after open would make a memory mapping raise SIGBUS; reading with
  // pread turns it into a short read, and the size/mtime check catches an in-place rewrite.
  struct stat st {};
  if (fstat(fd_, &st) != 0) fail(ErrorKind::kIo, path_, ": cannot stat: ", std::strerror(errno));
  const int64_t mtime_ns = int64_t(st.st_mtim.tv_sec) * 1'000'000'000 + st.st_mtim.tv_nsec;
  if (uint64_t(st.st_size) != size_ || mtime_ns != mtime_ns_)
    fail(ErrorKind::kIo, path_, ": the file changed on disk while softprompt was reading it (",
         size_, " bytes when opened, ", uint64_t(st.st_size),
         " now); do not overwrite a model while it is in use");
  auto* dst = static_cast<uint8_t*>(out);
  while (nbytes > 0) {
    const ssize_t n = ::pread(fd_, dst, nbytes, off_t(offset));
    if (n < 0 && errno == EINTR) continue;
    if (n < 0)
      fail(ErrorKind::kIo, path_, ": read failed at byte ", offset, ": ", std::strerror(errno));
    if (n == 0)
      fail(ErrorKind::kIo, path_, ": the file ends at byte ", offset, " while ", nbytes,
           " more bytes were expected (truncated while in use?)");
    dst += n;
    offset += uint64_t(n);
    nbytes -= size_t(n);
  }
}

std::vector<std::string> SafetensorsFile::names() const {
  std::vector<const SafetensorsEntry*> sorted;
  for (const auto& [name, entry] : entries_) sorted.push_back(&entry);
  std::sort(sorted.begin(), sorted.end(), [](auto* a, auto* b) {
    return a->begin != b->begin ? a->begin < b->begin : a->name < b->name;
  });
  std::vector<std::string> out;
  for (auto* e : sorted) out.push_back(e->name);
  return out;
}

const SafetensorsEntry& SafetensorsFile::entry(const std::string& name) const {
  auto it = entries_.find(name);
  if (it == entries_.end()) fail(ErrorKind::kFormat, path_, ": no tensor named '", name, "'");
  return it->second;
}

Tensor SafetensorsFile::get(const std::string& name, std::optional<DType> as) const {
  const SafetensorsEntry& e = entry(name);
  const uint64_t offset = data_offset_ + e.begin;
  const size_t nbytes = size_t(e.end - e.begin);
  std::optional<DType> stored = engine_dtype(e.dtype);
  if (!stored && e.dtype == "F64" && as && dtype_is_float(*as)) {
    std::vector<double> values(nbytes / 8);
    read_at(offset, values.data(), nbytes);
    Tensor f32 = Tensor::empty(e.shape, DType::F32);
    std::copy(values.begin(), values.end(), f32.data<float>());
    return *as == DType::F32 ? f32 : f32.to(*as);
  }
  if (!stored)
    fail(ErrorKind::kUnsupported, path_, ": tensor '", name, "' has dtype ", e.dtype,
         ", which softprompt does not load (supported: F32, BF16, F16, I32, I64; F64 converted)");
  DType target = as.value_or(*stored);
  SP_CHECK(dtype_is_float(target) == dtype_is_float(*stored) || target == *stored, path_,
           ": tensor '", name, "' is ", e.dtype, " and cannot be converted to ",
           dtype_name(target));
  Tensor raw = Tensor::empty(e.shape, *stored);
  if (nbytes) read_at(offset, raw.raw_data(), nbytes);
  return target == *stored ? raw : raw.to(target);
}

// ---------------------------------------------------------------------------------------------
Checkpoint Checkpoint::open(const std::string& source) {
  namespace fs = std::filesystem;
  Checkpoint ckpt;
  ckpt.source_ = source;
  std::error_code ec;
  if (!fs::is_directory(source, ec)) {
    ckpt.files_.push_back(SafetensorsFile::open(source));
  } else {
    fs::path dir(source);
    fs::path single = dir / "model.safetensors";
    fs::path index = dir / "model.safetensors.index.json";
    // symlink_status: a dangling link or a symlink loop is "present", and opening it then
    // names the real problem instead of claiming the file is missing.
    if (fs::exists(fs::symlink_status(single, ec))) {
      ckpt.files_.push_back(SafetensorsFile::open(single.string()));
    } else if (fs::exists(fs::symlink_status(index, ec))) {
      json doc = read_json_file(index.string());
      if (!doc.is_object() || !doc.contains("weight_map") || !doc["weight_map"].is_object())
        fail(ErrorKind::kFormat, index.string(), ": expected an object with a 'weight_map' object");
      std::map<std::string, size_t> file_index;
      for (auto& [name, file] : doc["weight_map"].items()) {
        if (!file.is_string())
          fail(ErrorKind::kFormat, index.string(), ": weight_map['", name, "'] is not a string");
        std::string shard = file.get<std::string>();
        if (shard.find("..") != std::string::npos || shard.starts_with("/"))
          fail(ErrorKind::kFormat, index.string(), ": weight_map['", name, "'] = '", shard,
               "' points outside the checkpoint directory");
        auto [it, inserted] = file_index.try_emplace(shard, ckpt.files_.size());
        if (inserted) ckpt.files_.push_back(SafetensorsFile::open((dir / shard).string()));
        if (!ckpt.files_[it->second]->contains(name))
          fail(ErrorKind::kFormat, index.string(), ": weight_map says '", name, "' is in ", shard,
               " but that file has no such tensor");
        ckpt.file_of_[name] = it->second;
      }
      return ckpt;
    } else {
      fail(ErrorKind::kIo, source, ": no model.safetensors or model.safetensors.index.json (",
           "softprompt reads safetensors checkpoints only; convert pytorch_model.bin with ",
           "transformers' save_pretrained(safe_serialization=True))");
    }
  }
  for (const std::string& name : ckpt.files_[0]->names()) ckpt.file_of_[name] = 0;
  return ckpt;
}

bool Checkpoint::contains(const std::string& name) const {
  return file_of_.count(name) != 0;
}

std::vector<std::string> Checkpoint::names() const {
  std::vector<std::string> out;
  for (const auto& [name, file] : file_of_) out.push_back(name);
  return out;
}

const SafetensorsEntry& Checkpoint::entry(const std::string& name) const {
  auto it = file_of_.find(name);
  if (it == file_of_.end()) fail(ErrorKind::kFormat, source_, ": missing tensor '", name, "'");
  return files_[it->second]->entry(name);
}

Tensor Checkpoint::get(const std::string& name, std::optional<DType> as) const {
  auto it = file_of_.find(name);
  if (it == file_of_.end()) fail(ErrorKind::kFormat, source_, ": missing tensor '", name, "'");
  return files_[it->second]->get(name, as);
}

// ---------------------------------------------------------------------------------------------
void write_file_atomically(const std::string& path, const std::string& contents) {
  namespace fs = std::filesystem;
  fs::path target(path);
  fs::path dir = target.has_parent_path() ? target.parent_path() : fs::path(".");
  // Built by appends: GCC 12 misreports `"." + name` as an overlapping memcpy (-Wrestrict).
  // The name pattern ".<name>.tmpXXXXXX" is what stale-staging cleanup looks for after a crash.
  std::string hidden_name = ".";
  hidden_name += target.filename().string();
  hidden_name += ".tmpXXXXXX";
  std::string tmp_template = (dir / hidden_name).string();
  std::vector<char> tmp_name(tmp_template.begin(), tmp_template.end());
  tmp_name.push_back('\0');
  fs_hook_point("open", tmp_template);
  int fd = mkstemp(tmp_name.data());
  if (fd < 0)
    fail(ErrorKind::kIo, path, ": cannot create a temporary file in ", dir.string(), ": ",
         std::strerror(errno));
  auto give_up = [&](const char* what, int err) {
    ::close(fd);
    ::unlink(tmp_name.data());
    fail(ErrorKind::kIo, path, ": ", what, ": ", std::strerror(err));
  };
  const char* p = contents.data();
  size_t left = contents.size();
  fs_hook_point("write", tmp_name.data());
  while (left > 0) {
    ssize_t written = ::write(fd, p, left);
    if (written < 0) {
      if (errno == EINTR) continue;
      give_up("write failed", errno);
    }
    p += written;
    left -= size_t(written);
  }
  fs_hook_point("fsync", tmp_name.data());
  if (::fsync(fd) != 0 || ::fchmod(fd, 0644) != 0) give_up("cannot flush", errno);
  ::close(fd);
  fs_hook_point("rename", tmp_name.data());
  if (std::rename(tmp_name.data(), path.c_str()) != 0) {
    int err = errno;
    ::unlink(tmp_name.data());
    fail(ErrorKind::kIo, path,
         ": cannot rename the temporary file into place: ", std::strerror(err));
  }
  // The rename itself is durable only once the directory entry is flushed.
  fsync_directory(dir.string());
}

void save_safetensors(const std::string& path,
                      const std::vector<std::pair<std::string, Tensor>>& tensors,
                      const std::map<std::string, std::string>& metadata) {
  json header = json::object();
  if (!metadata.empty()) header["__metadata__"] = metadata;
  std::vector<Tensor> host;
  uint64_t offset = 0;
  for (const auto& [name, tensor] : tensors) {
    SP_CHECK(tensor.defined(), "save_safetensors: tensor '", name, "' is undefined");
    SP_CHECK(name != "__metadata__" && !header.contains(name),
             "save_safetensors: duplicate or reserved name '", name, "'");
    Tensor h = tensor.detach().to(Device::cpu()).contiguous();
    header[name] = {{"dtype", dtype_name(h.dtype())},
                    {"shape", h.shape()},
                    {"data_offsets", {offset, offset + h.nbytes()}}};
    offset += h.nbytes();
    host.push_back(h);
  }
  std::string header_text = header.dump();
  // Pad with spaces so the data buffer starts 8-byte aligned, as the reference writer does.
  header_text.append((8 - header_text.size() % 8) % 8, ' ');
  std::string contents;
  contents.reserve(8 + header_text.size() + offset);
  uint64_t header_len = header_text.size();
  contents.append(reinterpret_cast<const char*>(&header_len), 8);
  contents += header_text;
  for (const Tensor& h : host) contents.append(static_cast<const char*>(h.raw_data()), h.nbytes());
  write_file_atomically(path, contents);
}

}  // namespace sp
