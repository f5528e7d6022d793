// Crash safety of checkpoints and adapters: a short training run is killed (_exit in a forked
// child) just before each of its file-system calls, resumed, and must end bitwise identical to
// an uninterrupted run with no stray files.
#include <gtest/gtest.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <map>
#include <sstream>

#include "engine/durable_fs.h"
#include "engine/error.h"
#include "engine/thread_pool.h"
#include "peft/data.h"
#include "peft/trainer.h"
#include "tests/peft/peft_test_util.h"

namespace sp::testing {
namespace {

namespace fs = std::filesystem;

constexpr int kCrashExit = 86;
int64_t g_calls = 0;
int64_t g_crash_at = -1;  // kill the process before this file-system call (1-based); -1: count

void crash_hook(const char* /*op*/, const std::string& /*path*/) {
  if (++g_calls == g_crash_at) ::_exit(kCrashExit);  // dies like kill -9: no unwinding, no flush
}

std::string slurp(const fs::path& path) {
  std::ifstream in(path, std::ios::binary);
  std::stringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

// Every file under `dir` (relative path -> comparable contents). Timing fields of metrics and
// the byte length of metrics.jsonl recorded in the state legitimately differ between runs.
std::map<std::string, std::string> snapshot(const fs::path& dir) {
  std::map<std::string, std::string> files;
  for (auto& entry : fs::recursive_directory_iterator(dir)) {
    const std::string rel = fs::relative(entry.path(), dir).string();
    if (entry.is_directory()) {
      files[rel + "/"] = "";
      continue;
    }
    std::string text = slurp(entry.path());
    if (rel == "metrics.jsonl") {
      std::string normalized, line;
      std::istringstream lines(text);
      while (std::getline(lines, line)) {
        nlohmann::json record = nlohmann::json::parse(line);
        record.erase("elapsed");
        record.erase("tokens_per_second");
        normalized += record.dump() + "\n";
      }
      text = normalized;
    } else if (rel == "training_state/trainer_state.json") {
      nlohmann::json state = nlohmann::json::parse(text);
      state.erase("metrics_bytes");
      text = state.dump();
    }
    files[rel] = text;
  }
  return files;
}

class CrashSafety : public ::testing::Test {
 protected:
  void SetUp() override {
    // Memory-backed when available: ~10,000 fsyncs on a shared disk would dominate the run, and
    // a process kill (unlike a power cut) loses nothing the page cache already holds.
    const fs::path base =
        ::access("/dev/shm", W_OK) == 0 ? fs::path("/dev/shm") : fs::temp_directory_path();
    dir_ = base / ("sp_crash_" + std::to_string(::getpid()));
    fs::remove_all(dir_);
    fs::create_directories(dir_);
    tokenizer_ = load_tokenizer(kTinyA);
    std::string text;
    const char* pairs[][2] = {{"hot", "cold"},  {"up", "down"},   {"big", "small"},
                              {"day", "night"}, {"open", "shut"}, {"left", "right"}};
    for (auto& p : pairs)
      text += std::string("{\"input\": \"The opposite of ") + p[0] + " is\", \"output\": \" " +
              p[1] + "\"}\n";
    std::ofstream((dir_ / "train.jsonl").string()) << text;
    data_ = load_jsonl((dir_ / "train.jsonl").string());
    examples_ = tokenize_examples(data_, *tokenizer_, nullptr, {});
    // fork() keeps only the calling thread: with one thread the pool has no workers to lose.
    threads_ = num_threads();
    set_num_threads(1);
  }
  void TearDown() override {
    set_fs_hook(nullptr);
    set_num_threads(threads_);
    fs::remove_all(dir_);
  }

  // 4 steps, grad_accum 2, evaluation and keep-best every 2 steps and a checkpoint every 2:
  // every kind of write (state swap, best/ swap, top-level publication, metrics) happens.
  void train(const fs::path& out, bool resume) {
    auto model = tiny_peft_model();
    PromptTuningConfig prompt;
    prompt.task_type = TaskType::kCausalLm;
    prompt.num_virtual_tokens = 2;
    model->add_adapter("default", prompt, 1);
    TrainConfig c;
    c.output_dir = out.string();
    c.batch_size = 2;
    c.grad_accum = 2;
    c.max_steps = 4;
    c.optim.lr = 0.05f;
    c.metric = Metric::kLoss;
    c.eval_every = 2;
    c.save_every = 2;
    c.seed = 3;
    Trainer trainer(*model, *tokenizer_, c, data_, examples_, &data_, examples_);
    trainer.run(resume);
  }

  // Runs fn in a forked child; returns its exit status (or 128 + signal).
  int in_child(const std::function<void()>& fn) {
    pid_t pid = ::fork();
    if (pid == 0) {
      int code = 0;
      try {
        fn();
      } catch (const std::exception& e) {
        std::fprintf(stderr, "child: %s\n", e.what());
        code = 1;
      }
      ::_exit(code);
    }
    int status = 0;
    ::waitpid(pid, &status, 0);
    return WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
  }

  fs::path dir_;
  std::unique_ptr<Tokenizer> tokenizer_;
  Dataset data_;
  std::vector<TokenizedExample> examples_;
  int threads_ = 1;
};

TEST_F(CrashSafety, KilledBeforeAnyFileSystemCallResumesToTheSameBytes) {
  const auto started = std::chrono::steady_clock::now();
  g_calls = 0;
  g_crash_at = -1;
  set_fs_hook(crash_hook);
  train(dir_ / "reference", false);
  const int64_t calls = g_calls;
  set_fs_hook(nullptr);
  ASSERT_GT(calls, 50) << "the hook should see every file-system call of the run";
  const auto want = snapshot(dir_ / "reference");
  ASSERT_TRUE(want.count("adapter_model.safetensors") && want.count("best/adapter_config.json"));

  int failures = 0;
  // calls + 1: the run completes, and resuming a finished run must change nothing.
  for (int64_t crash_at = 1; crash_at <= calls + 1 && failures < 5; ++crash_at) {
    const fs::path out = dir_ / ("crash_" + std::to_string(crash_at));
    const int crashed = in_child([&] {
      g_calls = 0;
      g_crash_at = crash_at;
      set_fs_hook(crash_hook);
      train(out, false);
    });
    ASSERT_EQ(crashed, crash_at <= calls ? kCrashExit : 0) << "crash point " << crash_at;
    // What a user does after the kill: `train --resume`, or a fresh run when no checkpoint
    // was committed yet.
    const int resumed = in_child([&] {
      try {
        train(out, true);
      } catch (const Error& e) {
        if (std::string(e.what()).find("no checkpoint to resume from") == std::string::npos) throw;
        train(out, false);
      }
    });
    ASSERT_EQ(resumed, 0) << "resume after crash point " << crash_at;
    const auto got = snapshot(out);
    if (got != want) {
      ++failures;
      std::string diff;
      for (auto& [name, text] : want)
        if (!got.count(name))
          diff += " missing " + name + ";";
        else if (got.at(name) != text)
          diff += " differs " + name + ";";
      for (auto& [name, text] : got)
        if (!want.count(name)) diff += " stray " + name + ";";
      ADD_FAILURE() << "crash before file-system call " << crash_at << " of " << calls
                    << ", then resume:" << diff;
    }
    fs::remove_all(out);
  }
  const double seconds =
      std::chrono::duration<double>(std::chrono::steady_clock::now() - started).count();
  std::printf("crash points: %lld, %.1f s\n", static_cast<long long>(calls), seconds);
}

}  // namespace
}  // namespace sp::testing
