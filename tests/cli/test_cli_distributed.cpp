// `mpiexec -n 2 softprompt train`: the same adapter as one process with the same global batch,
// rank 0 alone reports and writes, and a failed or killed rank ends the whole job quickly.
#include <chrono>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>

#include "tests/cli/cli_test_util.h"

namespace sp::cli_test {
namespace {

namespace fs = std::filesystem;

const std::string kMpiexec = SOFTPROMPT_MPIEXEC;

// Runs a shell command line (stdout and stderr together), killed after 120 s.
CommandResult shell(const std::string& command) {
  FILE* pipe = popen(("timeout -s KILL 120 " + command + " 2>&1 </dev/null").c_str(), "r");
  CommandResult result;
  std::array<char, 4096> buffer;
  size_t n;
  while ((n = fread(buffer.data(), 1, buffer.size(), pipe)) > 0)
    result.output.append(buffer.data(), n);
  const int status = pclose(pipe);
  result.code = WIFEXITED(status) ? WEXITSTATUS(status) : -1;
  return result;
}

size_t count(const std::string& text, const std::string& part) {
  size_t n = 0;
  for (size_t at = text.find(part); at != std::string::npos; at = text.find(part, at + 1)) ++n;
  return n;
}

class CliDataParallel : public TempDirTest {
 protected:
  void SetUp() override {
    TempDirTest::SetUp();
    if (kMpiexec.empty()) GTEST_SKIP() << "built without MPI (-DSOFTPROMPT_MPI=OFF)";
  }
  std::string data_file() {
    std::string text;
    for (const char* w : {"hot", "up", "big", "day", "open", "left", "fast", "old", "wet"})
      text += std::string("{\"input\": \"The opposite of ") + w + " is\", \"output\": \" x\"}\n";
    return write("train.jsonl", text);
  }
  std::string train_args(const std::string& out) {
    return "train --model " + kFixtures + "/gpt2_tiny_a --data " + data_file() + " --eval-data " +
           data_file() + " --output " + path(out) +
           " --batch-size 2 --num-virtual-tokens 3 --lr 0.1 --metric token_accuracy --threads 1";
  }
  std::string mpirun(int ranks, const std::string& args) {
    return kMpiexec + " -n " + std::to_string(ranks) + " " + kBinary + " " + args;
  }
};

TEST_F(CliDataParallel, TwoRanksWriteTheAdapterOfOneProcessWithTheSameGlobalBatch) {
  CommandResult two = shell(mpirun(2, train_args("two") + " --max-steps 4"));
  ASSERT_EQ(two.code, 0) << two.output;
  EXPECT_NE(two.output.find("softprompt[rank 0]: data parallel: MPI, 2 ranks"), std::string::npos)
      << two.output;
  EXPECT_NE(two.output.find("4 examples per step (batch size 2 x 2 ranks x grad-accum 1)"),
            std::string::npos)
      << two.output;
  EXPECT_EQ(count(two.output, "trained 4 steps"), 1u) << "rank 0 alone reports\n" << two.output;
  EXPECT_EQ(count(two.output, "trainable params"), 1u) << two.output;
  CommandResult one = shell(kBinary + " " + train_args("one") + " --max-steps 4 --grad-accum 2");
  ASSERT_EQ(one.code, 0) << one.output;
  std::ifstream a(path("two/adapter_model.safetensors"), std::ios::binary),
      b(path("one/adapter_model.safetensors"), std::ios::binary);
  const std::string bytes_two{std::istreambuf_iterator<char>(a), {}},
      bytes_one{std::istreambuf_iterator<char>(b), {}};
  EXPECT_FALSE(bytes_two.empty());
  EXPECT_EQ(bytes_two, bytes_one) << "the 2-rank adapter differs from the 1-process one";
  // The final evaluation (sharded over the ranks) reports what one process reports.
  const size_t at_two = two.output.find("eval loss"), at_one = one.output.find("eval loss");
  ASSERT_NE(at_two, std::string::npos);
  ASSERT_NE(at_one, std::string::npos);
  EXPECT_EQ(two.output.substr(at_two, 40), one.output.substr(at_one, 40));
}

TEST_F(CliDataParallel, AFailingRankEndsEveryRankWithItsError) {
  write("file", "not a directory");
  const auto start = std::chrono::steady_clock::now();
  CommandResult r = shell(mpirun(2, train_args("file/out") + " --max-steps 4"));
  const double seconds =
      std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  EXPECT_EQ(r.code, 1) << r.output;
  EXPECT_NE(r.output.find("softprompt[rank 0]: error:"), std::string::npos) << r.output;
  EXPECT_NE(r.output.find("Not a directory"), std::string::npos) << r.output;
  EXPECT_LT(seconds, 30.0) << r.output;
}

// kill -9 of rank 1 mid-training: the launcher ends rank 0 too, and the job exits non-zero.
TEST_F(CliDataParallel, AKilledRankEndsTheJobWithinSeconds) {
  const std::string script = write(
      "kill_rank_1.sh",
      "if [ \"${PMI_RANK:-${OMPI_COMM_WORLD_RANK:-0}}\" = 1 ]; then (sleep 2; kill -9 $$) & fi\n"
      "exec \"$@\"\n");
  const auto start = std::chrono::steady_clock::now();
  CommandResult r = shell(kMpiexec + " -n 2 bash " + script + " " + kBinary + " " +
                          train_args("killed") + " --max-steps 100000000 --save-every 0 -q");
  const double seconds =
      std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  EXPECT_NE(r.code, 0) << r.output;
  EXPECT_GT(seconds, 1.5) << "training ended before the kill\n" << r.output;
  EXPECT_LT(seconds, 30.0) << r.output;
  // "[s]" keeps the pattern from matching the shell that runs pgrep.
  EXPECT_EQ(shell("pgrep -f '[s]oftprompt train .*" + path("killed") + "'").code, 1)
      << "a rank outlived the job";
}

TEST_F(CliDataParallel, OnlyTrainRunsOnSeveralRanks) {
  CommandResult r = shell(mpirun(2, "inspect " + kFixtures + "/gpt2_tiny_a"));
  EXPECT_EQ(r.code, 2) << r.output;
  EXPECT_NE(r.output.find("only 'softprompt train' and 'softprompt bench' run on several ranks"),
            std::string::npos)
      << r.output;
}

}  // namespace
}  // namespace sp::cli_test
