// The softprompt binary on hostile files: directories, FIFOs, devices, symlink loops, deep JSON
// and absurd sizes where files belong. Each must be one clear error with exit 1, promptly: never
// a hang, a signal, or exit 5 (which means a softprompt bug).
#include <gtest/gtest.h>
#include <sys/stat.h>

#include <filesystem>

#include "tests/cli/cli_test_util.h"

namespace sp::cli_test {
namespace {

namespace fs = std::filesystem;

// A hang is killed after this long; every case here fails within milliseconds when correct.
constexpr int kLimitSeconds = 20;

class CliHostileFiles : public TempDirTest {
 protected:
  // A copy of the tiny GPT-2 fixture that a test may damage.
  std::string model_copy() {
    fs::copy(kFixtures + "/gpt2_tiny_a", path("model"), fs::copy_options::recursive);
    return path("model");
  }
  std::string data() { return write("train.jsonl", "{\"input\": \"a b\", \"output\": \" c\"}\n"); }
  // Without --num-virtual-tokens, which --config excludes.
  std::string train_base(const std::string& model, const std::string& data_file) {
    return "train -q --model " + model + " --data " + data_file + " --output " + path("out") +
           " --max-steps 1 --batch-size 1 --metric loss";
  }
  std::string train_args(const std::string& model, const std::string& data_file) {
    return train_base(model, data_file) + " --num-virtual-tokens 2";
  }
  void expect_clear_error(const std::string& args, const std::string& fragment) {
    CommandResult r = run_limited(args, kLimitSeconds);
    EXPECT_EQ(r.code, 1) << args << "\n" << r.output;
    EXPECT_NE(r.output.find(fragment), std::string::npos) << r.output;
    EXPECT_EQ(r.output.find("internal error"), std::string::npos) << r.output;
  }
};

TEST_F(CliHostileFiles, ConfigJsonThatIsADirectory) {
  // Before: exit 5 "internal error" from the JSON parser reading a directory stream.
  const std::string model = model_copy();
  fs::remove(model + "/config.json");
  fs::create_directories(model + "/config.json");
  expect_clear_error("inspect " + model, "config.json: is a directory, expected a regular file");
}

TEST_F(CliHostileFiles, ConfigJsonThatIsASymlinkLoop) {
  const std::string model = model_copy();
  fs::remove(model + "/config.json");
  fs::create_symlink("config.json", model + "/config.json");
  expect_clear_error("inspect " + model, "config.json: too many levels of symbolic links");
}

TEST_F(CliHostileFiles, FifosWhereFilesBelongAreRefusedNotWaitedOn) {
  // Before: open() on a FIFO waited forever for a writer.
  for (const char* name : {"config.json", "model.safetensors", "tokenizer.json"}) {
    const std::string model = model_copy();
    fs::remove(model + "/" + name);
    ASSERT_EQ(::mkfifo((model + "/" + name).c_str(), 0600), 0);
    expect_clear_error("inspect " + model, std::string(name) + ": is a FIFO");
    fs::remove_all(model);
  }
  ASSERT_EQ(::mkfifo(path("data.jsonl").c_str(), 0600), 0);
  expect_clear_error(train_args(kFixtures + "/gpt2_tiny_a", path("data.jsonl")),
                     "data.jsonl: is a FIFO");
  EXPECT_FALSE(fs::exists(path("out")));
}

TEST_F(CliHostileFiles, DevZeroAsDataIsRefused) {
  // Before: read as one endless line until memory ran out.
  expect_clear_error(train_args(kFixtures + "/gpt2_tiny_a", "/dev/zero"),
                     "/dev/zero: is a character device");
}

TEST_F(CliHostileFiles, DeeplyNestedJsonIsAFormatErrorNotAStackOverflow) {
  // Before: SIGSEGV in the recursive parser for config.json, adapter_config.json and configs.
  const std::string deep = std::string(1'000'000, '[') + std::string(1'000'000, ']');
  const std::string model = model_copy();
  write("model/config.json", deep);
  expect_clear_error("inspect " + model, "config.json: JSON nested more than 128 levels");
  write("deep_config.json", deep);
  expect_clear_error(
      train_base(kFixtures + "/gpt2_tiny_a", data()) + " --config " + path("deep_config.json"),
      "deep_config.json: JSON nested more than 128 levels");
  fs::copy(kFixtures + "/peft/gpt2_tiny_a/pt_random", path("adapter"), fs::copy_options::recursive);
  write("adapter/adapter_config.json", deep);
  expect_clear_error("inspect " + path("adapter") + " --model " + kFixtures + "/gpt2_tiny_a",
                     "adapter_config.json: JSON nested more than 128 levels");
}

TEST_F(CliHostileFiles, AbsurdSizesInAConfigFileAreRefusedBeforeAllocating) {
  // Before: num_virtual_tokens near 2^62 overflowed shape products or allocated terabytes.
  write(
      "cfg.json",
      R"({"task_type": "CAUSAL_LM", "peft_type": "PROMPT_TUNING", "num_virtual_tokens": 4611686018427387904})");
  expect_clear_error(
      train_base(kFixtures + "/gpt2_tiny_a", data()) + " --config " + path("cfg.json"),
      "num_virtual_tokens = 4611686018427387904 is absurdly large");
  write("cfg.json",
        R"({"task_type": "CAUSAL_LM", "peft_type": "PROMPT_TUNING", "num_virtual_tokens": 60000})");
  expect_clear_error(
      train_base(kFixtures + "/gpt2_tiny_a", data()) + " --config " + path("cfg.json"),
      "virtual tokens leave no room for text in the model's 128 positions");
  EXPECT_FALSE(fs::exists(path("out/adapter_model.safetensors")));
}

TEST_F(CliHostileFiles, HugeTaskIdInTheDataIsRefusedWithItsLine) {
  // Before: one line with "task": 100000000 sized the factor tables for 1e8 tasks.
  const std::string tasks = write("tasks.jsonl",
                                  "{\"input\": \"a\", \"output\": \" b\", \"task\": 0}\n"
                                  "{\"input\": \"a\", \"output\": \" b\", \"task\": 100000000}\n");
  expect_clear_error(train_args(kFixtures + "/gpt2_tiny_a", tasks) + " --multitask",
                     "tasks.jsonl:2: field 'task' must be a name or an integer id from 0 to 65535");
}

TEST_F(CliHostileFiles, DamagedTrainerStateIsABadInputError) {
  // Before: exit 5 ("internal error") for a missing key or an array, a heap overflow for
  // batch_in_epoch = -5.
  const std::string args = train_args(kFixtures + "/gpt2_tiny_a", data()) + " --save-every 1";
  ASSERT_EQ(run_limited(args, kLimitSeconds).code, 0);
  write("out/training_state/trainer_state.json", "[]");
  expect_clear_error(args + " --resume", "trainer_state.json: expected a JSON object");
  write("out/training_state/trainer_state.json", "{\"version\": 2}");
  expect_clear_error(args + " --resume", "trainer_state.json: missing field");
}

TEST_F(CliHostileFiles, FileSystemRefusalsAreBadInputNotInternalErrors) {
  // Before: exit 5 "internal error: filesystem error: ..." for an output path under a regular
  // file and for an adapter path that is a symlink loop.
  write("afile", "");
  expect_clear_error("train -q --max-steps 1 --num-virtual-tokens 2 --metric loss --model " +
                         kFixtures + "/gpt2_tiny_a --data " + data() + " --output " +
                         path("afile/sub"),
                     "Not a directory");
  fs::create_symlink(path("loop_b"), path("loop_a"));
  fs::create_symlink(path("loop_a"), path("loop_b"));
  expect_clear_error("inspect " + path("loop_a") + " --model " + kFixtures + "/gpt2_tiny_a",
                     "Too many levels of symbolic links");
}

}  // namespace
}  // namespace sp::cli_test
