// safetensors: round trip of every dtype, metadata, atomic writes, and one specific error for
// each kind of malformed file.
#include <gtest/gtest.h>

#include <sys/stat.h>

#include <cstring>
#include <filesystem>
#include <fstream>

#include "engine/error.h"
#include "engine/safetensors.h"

namespace sp {
namespace {

namespace fs = std::filesystem;

class Safetensors : public ::testing::Test {
 protected:
  void SetUp() override {
    dir_ = fs::temp_directory_path() /
           ("sp_st_" + std::to_string(::getpid()) + "_" +
            ::testing::UnitTest::GetInstance()->current_test_info()->name());
    fs::create_directories(dir_);
  }
  void TearDown() override { fs::remove_all(dir_); }

  std::string path(const std::string& name) const { return (dir_ / name).string(); }

  // Writes an 8-byte length, the header text and `data_bytes` zero bytes.
  std::string write_raw(const std::string& header, size_t data_bytes, uint64_t declared_len = 0) {
    std::string p = path("raw.safetensors");
    std::ofstream out(p, std::ios::binary);
    uint64_t len = declared_len ? declared_len : header.size();
    out.write(reinterpret_cast<const char*>(&len), 8);
    out << header;
    out << std::string(data_bytes, '\0');
    return p;
  }

  // Expects open() to fail with a message containing `fragment`.
  void expect_error(const std::string& file, const std::string& fragment) {
    try {
      SafetensorsFile::open(file);
      FAIL() << "expected an error containing '" << fragment << "'";
    } catch (const Error& e) {
      EXPECT_NE(std::string(e.what()).find(fragment), std::string::npos) << e.what();
      EXPECT_NE(std::string(e.what()).find(file), std::string::npos) << "message names the file";
    }
  }

  fs::path dir_;
};

TEST_F(Safetensors, RoundTripsEveryDtypeWithMetadata) {
  Tensor f32 = Tensor::from_floats(std::vector<float>{1.5f, -2.0f, 3.25f, 0.0f}, {2, 2});
  Tensor bf16 = f32.to(DType::BF16);
  Tensor f16 = f32.to(DType::F16);
  Tensor i32 = Tensor::from_ints({1, -2, 3}, {3}, DType::I32);
  Tensor i64 = Tensor::from_ints({int64_t(1) << 40, -5}, {2}, DType::I64);
  Tensor scalar = Tensor::full({}, 7.0f);
  Tensor empty = Tensor::zeros({0, 3});
  std::string p = path("all.safetensors");
  save_safetensors(p,
                   {{"f32", f32},
                    {"bf16", bf16},
                    {"f16", f16},
                    {"i32", i32},
                    {"i64", i64},
                    {"scalar", scalar},
                    {"empty", empty}},
                   {{"format", "pt"}});
  auto file = SafetensorsFile::open(p);
  EXPECT_EQ(file->metadata().at("format"), "pt");
  EXPECT_EQ(file->get("f32").to_floats(), f32.to_floats());
  EXPECT_EQ(file->get("bf16").dtype(), DType::BF16);
  EXPECT_EQ(file->get("bf16", DType::F32).to_floats(), f32.to_floats());
  EXPECT_EQ(file->get("f16", DType::F32).to_floats(), f32.to_floats());
  EXPECT_EQ(file->get("i32").to_ints(), std::vector<int64_t>({1, -2, 3}));
  EXPECT_EQ(file->get("i64").to_ints(), i64.to_ints());
  EXPECT_EQ(file->get("scalar").shape(), Shape{});
  EXPECT_EQ(file->get("scalar").item(), 7.0f);
  EXPECT_EQ(file->get("empty").shape(), Shape({0, 3}));
  EXPECT_EQ(file->entry("bf16").dtype, "BF16");
}

TEST_F(Safetensors, TensorsOwnTheirMemoryAndOutliveTheFile) {
  std::string p = path("z.safetensors");
  save_safetensors(p, {{"w", Tensor::full({16}, 2.0f)}});
  Tensor a, b;
  {
    auto file = SafetensorsFile::open(p);
    a = file->get("w");
    b = file->get("w");
  }
  fs::remove(p);
  EXPECT_NE(a.raw_data(), b.raw_data());
  EXPECT_EQ(a.to_floats()[15], 2.0f);
}

TEST_F(Safetensors, WriterLeavesNoTemporaryFilesAndReplacesAtomically) {
  std::string p = path("w.safetensors");
  save_safetensors(p, {{"a", Tensor::full({4}, 1.0f)}});
  save_safetensors(p, {{"a", Tensor::full({4}, 2.0f)}});
  EXPECT_EQ(SafetensorsFile::open(p)->get("a").to_floats()[0], 2.0f);
  int files = 0;
  for (auto& entry : fs::directory_iterator(dir_)) {
    (void)entry;
    ++files;
  }
  EXPECT_EQ(files, 1);
  EXPECT_THROW(save_safetensors(path("missing_dir/x.safetensors"), {{"a", Tensor::zeros({1})}}),
               Error);
}

TEST_F(Safetensors, TruncatedFile) {
  std::string p = path("good.safetensors");
  save_safetensors(p, {{"a", Tensor::full({64}, 1.0f)}});
  fs::resize_file(p, fs::file_size(p) - 10);
  expect_error(p, "beyond the end");
}

TEST_F(Safetensors, ShorterThanLengthPrefix) {
  std::string p = path("tiny.safetensors");
  std::ofstream(p) << "abc";
  expect_error(p, "shorter than the 8-byte header length");
}

TEST_F(Safetensors, HeaderLengthLargerThanFile) {
  expect_error(write_raw("{}", 0, 4096), "exceeds the 2 bytes after the length prefix");
}

TEST_F(Safetensors, HeaderLengthOver100MB) {
  expect_error(write_raw("{}", 0, 200'000'000), "exceeds the 100,000,000-byte limit");
}

TEST_F(Safetensors, InvalidJson) {
  expect_error(write_raw("{\"a\": [1, 2", 0), "not valid JSON");
}

TEST_F(Safetensors, NonObjectHeader) {
  expect_error(write_raw("[1, 2, 3]", 0), "not an object");
}

TEST_F(Safetensors, OverlappingOffsets) {
  expect_error(write_raw(R"({"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},)"
                         R"("b":{"dtype":"F32","shape":[2],"data_offsets":[4,12]}})",
                         12),
               "overlaps");
}

TEST_F(Safetensors, GapBetweenTensors) {
  expect_error(write_raw(R"({"a":{"dtype":"F32","shape":[1],"data_offsets":[0,4]},)"
                         R"("b":{"dtype":"F32","shape":[1],"data_offsets":[8,12]}})",
                         12),
               "gap in the data buffer");
}

TEST_F(Safetensors, TrailingBytes) {
  expect_error(write_raw(R"({"a":{"dtype":"F32","shape":[1],"data_offsets":[0,4]}})", 8),
               "trailing bytes");
}

TEST_F(Safetensors, WrongByteSize) {
  expect_error(write_raw(R"({"a":{"dtype":"F32","shape":[3],"data_offsets":[0,8]}})", 8),
               "does not match shape [3] of F32 (12 bytes expected)");
}

TEST_F(Safetensors, UnknownDtype) {
  expect_error(write_raw(R"({"a":{"dtype":"F128","shape":[1],"data_offsets":[0,16]}})", 16),
               "unknown dtype 'F128'");
}

TEST_F(Safetensors, BadFields) {
  expect_error(write_raw(R"({"a":{"shape":[1],"data_offsets":[0,4]}})", 4),
               "missing string field 'dtype'");
  expect_error(write_raw(R"({"a":{"dtype":"F32","shape":[-1],"data_offsets":[0,4]}})", 4),
               "non-negative integers");
  expect_error(write_raw(R"({"a":{"dtype":"F32","shape":[1],"data_offsets":[4]}})", 4),
               "[begin, end]");
  expect_error(write_raw(R"({"__metadata__":{"format":1}})", 0), "is not a string");
}

TEST_F(Safetensors, HeaderPaddedWithSpacesIsAccepted) {
  std::string p = write_raw(R"({"a":{"dtype":"F32","shape":[1],"data_offsets":[0,4]}}     )", 4);
  EXPECT_EQ(SafetensorsFile::open(p)->get("a").to_floats()[0], 0.0f);
}

TEST_F(Safetensors, MissingFileAndMissingTensor) {
  try {
    SafetensorsFile::open(path("nope.safetensors"));
    FAIL();
  } catch (const Error& e) {
    EXPECT_EQ(e.kind(), ErrorKind::kIo);
  }
  std::string p = path("one.safetensors");
  save_safetensors(p, {{"a", Tensor::zeros({1})}});
  EXPECT_THROW(SafetensorsFile::open(p)->get("b"), Error);
}

TEST_F(Safetensors, ShardedCheckpointThroughIndex) {
  save_safetensors(path("model-00001-of-00002.safetensors"), {{"a", Tensor::full({2}, 1.0f)}});
  save_safetensors(path("model-00002-of-00002.safetensors"), {{"b", Tensor::full({3}, 2.0f)}});
  std::ofstream(path("model.safetensors.index.json"))
      << R"({"metadata":{"total_size":20},"weight_map":{"a":"model-00001-of-00002.safetensors",)"
         R"("b":"model-00002-of-00002.safetensors"}})";
  Checkpoint ckpt = Checkpoint::open(dir_.string());
  EXPECT_TRUE(ckpt.contains("a"));
  EXPECT_EQ(ckpt.get("b").to_floats(), std::vector<float>({2, 2, 2}));
  EXPECT_THROW(ckpt.get("c"), Error);
}

TEST_F(Safetensors, IndexPointingAtAMissingTensorIsAnError) {
  save_safetensors(path("shard.safetensors"), {{"a", Tensor::full({2}, 1.0f)}});
  std::ofstream(path("model.safetensors.index.json"))
      << R"({"weight_map":{"zzz":"shard.safetensors"}})";
  EXPECT_THROW(Checkpoint::open(dir_.string()), Error);
}

TEST_F(Safetensors, NullMetadataIsAcceptedAsNone) {
  // The reference Python reader treats "__metadata__": null as no metadata.
  std::string p =
      write_raw(R"({"__metadata__":null,"a":{"dtype":"F32","shape":[1],"data_offsets":[0,4]}})", 4);
  auto file = SafetensorsFile::open(p);
  EXPECT_TRUE(file->metadata().empty());
  EXPECT_EQ(file->get("a").to_floats()[0], 0.0f);
}

TEST_F(Safetensors, TruncatedWhileOpenIsAnErrorNotSigbus) {
  // Before: tensors borrowed a MAP_PRIVATE mapping; touching a page past the new end of a file
  // truncated after open raised SIGBUS and killed the process.
  std::string p = path("model.safetensors");
  save_safetensors(p, {{"a", Tensor::full({4096}, 1.0f)}, {"b", Tensor::full({4096}, 2.0f)}});
  auto file = SafetensorsFile::open(p);
  Tensor a = file->get("a");
  fs::resize_file(p, 100);
  try {
    file->get("b");
    FAIL() << "expected an error";
  } catch (const Error& e) {
    EXPECT_EQ(e.kind(), ErrorKind::kIo);
    EXPECT_NE(std::string(e.what()).find("changed on disk"), std::string::npos) << e.what();
  }
  // What was read before stays valid: it no longer aliases the file.
  EXPECT_EQ(a.to_floats()[4095], 1.0f);
}

TEST_F(Safetensors, RewrittenInPlaceWhileOpenIsAnError) {
  std::string p = path("model.safetensors");
  save_safetensors(p, {{"a", Tensor::full({16}, 1.0f)}});
  auto file = SafetensorsFile::open(p);
  Tensor a = file->get("a");
  // `cp other model.safetensors`: the same inode, truncated and written again.
  std::string other = path("other.safetensors");
  save_safetensors(other, {{"a", Tensor::full({16}, 3.0f)}, {"z", Tensor::full({8}, 0.0f)}});
  fs::copy_file(other, p, fs::copy_options::overwrite_existing);
  EXPECT_THROW(file->get("a"), Error);
  EXPECT_EQ(a.to_floats()[0], 1.0f);
}

TEST_F(Safetensors, NonRegularFilesAreRefusedWithoutBlocking) {
  ASSERT_EQ(::mkfifo(path("fifo.safetensors").c_str(), 0600), 0);
  expect_error(path("fifo.safetensors"), "FIFO");
  fs::create_directories(path("dir.safetensors"));
  expect_error(path("dir.safetensors"), "a directory");
  // A model directory whose model.safetensors is a symlink loop names the loop.
  fs::create_directories(path("model"));
  fs::create_symlink("model.safetensors", path("model/model.safetensors"));
  try {
    Checkpoint::open(path("model"));
    FAIL() << "expected an error";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("symbolic links"), std::string::npos) << e.what();
  }
}

TEST_F(Safetensors, DeeplyNestedHeaderIsAFormatError) {
  const std::string deep = std::string(100000, '[') + std::string(100000, ']');
  expect_error(write_raw(deep, 0), "nested more than");
}

}  // namespace
}  // namespace sp
