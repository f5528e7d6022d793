// The softprompt binary end to end: --help on every command, exit codes, errors on bad
// arguments and inputs, and train -> eval -> generate -> forward -> inspect on the tiny model.
#include <gtest/gtest.h>
#include <signal.h>
#include <spawn.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <thread>

#include <array>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <regex>
#include <sstream>

#include "engine/safetensors.h"
#include "tests/cli/cli_test_util.h"

namespace sp {
namespace {

namespace fs = std::filesystem;
using cli_test::CommandResult;
using cli_test::kBinary;
using cli_test::kFixtures;

// Generous: the slowest command here trains for a few seconds; a hang fails instead of stalling.
CommandResult run(const std::string& args) {
  return cli_test::run_limited(args, 240);
}

class Cli : public cli_test::TempDirTest {
 protected:
  std::string data_file() {
    std::string text;
    for (const char* w : {"hot", "up", "big", "day", "open", "left", "fast", "old"})
      text += std::string("{\"input\": \"The opposite of ") + w + " is\", \"output\": \" x\"}\n";
    return write("train.jsonl", text);
  }
};

TEST_F(Cli, EveryCommandHasHelp) {
  for (const char* command :
       {"train", "eval", "generate", "forward", "inspect", "bench", "demo", "serve"}) {
    CommandResult r = run(std::string(command) + " --help");
    EXPECT_EQ(r.code, 0) << command;
    EXPECT_NE(r.output.find("Usage:"), std::string::npos) << command;
    EXPECT_NE(r.output.find("Exit codes:"), std::string::npos) << command;
  }
  EXPECT_EQ(run("--help").code, 0);
}

TEST_F(Cli, BadArgumentsExitWithUsageCode) {
  EXPECT_EQ(run("").code, 2);
  EXPECT_EQ(run("train").code, 2);  // required options missing
  CommandResult r = run("train --model x --data y --output z --lr notanumber");
  EXPECT_EQ(r.code, 2);
  EXPECT_NE(r.output.find("--lr"), std::string::npos) << r.output;
}

// Every numeric and enum flag is checked when parsed (or, for limits set by the model, right
// after loading it): a bad value exits 2 naming the flag and the expected range, and nothing is
// trained or written. A row is (arguments after the command's base, exit code, message part).
struct UsageCase {
  std::string args;
  int code;
  std::string message;
};

TEST_F(Cli, BadFlagValuesAreUsageErrorsNamingTheFlag) {
  const std::string model = kFixtures + "/gpt2_tiny_a";
  const std::string train =
      "train -q --model " + model + " --data " + data_file() + " --output " + path("out") + " ";
  const std::string with_eval = train + "--eval-data " + data_file() + " --max-steps 1 ";
  std::string source;
  for (int i = 0; i < 4; ++i)
    source += "{\"input\": \"w\", \"output\": \" x\", \"task\": \"t" + std::to_string(i) + "\"}\n";
  const std::string multitask = "train -q --model " + model + " --data " +
                                write("mt.jsonl", source) + " --output " + path("out") +
                                " --multitask ";
  const std::string eval = "eval -q --model " + model + " --data " + data_file() + " ";
  const std::string generate = "generate -q --model " + model + " --prompt hi ";
  const std::string bench = "bench --config gpt2-tiny --skip-generation ";
  const std::vector<UsageCase> cases = {
      // 16.10: values that used to reach the trainer and exit 1.
      {train + "--batch-size 0", 2, "--batch-size: expected an integer in [1, 1048576], got '0'"},
      {train + "--lr nan", 2, "--lr: expected a finite number >= 0, got 'nan'"},
      {train + "--schedule foo", 2, "--schedule: unknown schedule 'foo'"},
      {train + "--metric foo", 2, "--metric: unknown metric 'foo'"},
      {train + "--init foo", 2, "--init: prompt_tuning_init 'foo' is not valid"},
      {train + "--init AVERAGE_SOURCE_TASKS", 2,
       "--init: prompt_tuning_init 'AVERAGE_SOURCE_TASKS'"},
      {train + "--init TEXT", 2, "prompt_tuning_init_text can't be None"},
      {train + "--device foo", 2, "--device: unknown device 'foo'"},
      {train + "--task-type FOO", 2, "--task-type: Invalid task type: 'FOO'"},
      {train + "--task-type SEQ_CLS", 4, "not support"},  // valid in PEFT, unsupported here
      {train + "--threads 0", 2, "--threads: expected an integer in [1, 1024]"},
      {train + "--grad-accum 0", 2, "--grad-accum: expected an integer in [1, 1048576]"},
      {train + "--epochs 0", 2, "--epochs: 0 needs --max-steps > 0"},
      {train + "--beta1 1", 2, "--beta1: expected a finite number in [0, 1)"},
      {train + "--eps 0", 2, "--eps: expected a finite number > 0"},
      {train + "--max-length 0", 2, "--max-length: expected an integer in [1, 1048576]"},
      // 17.7: values that used to exit 0.
      {train + "--max-grad-norm nan", 2,
       "--max-grad-norm: expected a finite number >= 0, got 'nan'"},
      {train + "--max-grad-norm -1", 2, "--max-grad-norm: expected a finite number >= 0, got '-1'"},
      {train + "--max-steps -5", 2,
       "--max-steps: expected an integer in [0, 1000000000000], got '-5'"},
      {train + "--save-every -1", 2, "--save-every: expected an integer in [0, 1000000000000]"},
      {train + "--eval-every -1", 2, "--eval-every: expected an integer in [0, 1000000000000]"},
      {train + "--log-every -1", 2, "--log-every: expected an integer in [1, 1000000000000]"},
      {train + "--warmup-steps -5", 2, "--warmup-steps: expected an integer in [0, 1000000000000]"},
      {train + "--seed -1", 2,
       "--seed: expected an integer in [0, 18446744073709551615], got '-1'"},
      {train + "--lr inf", 2, "--lr: expected a finite number >= 0, got 'inf'"},
      {train + "--lr 1e39", 2,
       "--lr: expected a finite number >= 0, got '1e39' (not finite as a 32-bit float)"},
      {train + "--bucket -1", 2, "--bucket: expected an integer in [0, 1048576]"},
      {generate + "--top-p 0", 2, "--top-p: expected a finite number in (0, 1], got '0'"},
      {generate + "--top-p 1.5", 2, "--top-p: expected a finite number in (0, 1], got '1.5'"},
      {generate + "--top-p nan", 2, "--top-p: expected a finite number in (0, 1], got 'nan'"},
      {generate + "--top-k -1", 2, "--top-k: expected an integer >= 0, got '-1'"},
      {generate + "--temperature 0", 2, "--temperature: expected a finite number > 0"},
      {generate + "--seed -1", 2, "--seed: expected an integer in [0, 18446744073709551615]"},
      {generate + "--max-new-tokens -1", 2,
       "--max-new-tokens: expected an integer in [1, 1048576]"},
      {generate + "--max-new-tokens 128", 2,
       "--max-new-tokens: 128 new tokens plus at least one prompt token exceed the 128 positions"},
      {bench + "--seq-len 0", 2, "--seq-len: expected an integer in [1, 1048576], got '0'"},
      {bench + "--steps -1", 2, "--steps: expected an integer in [1, 1000000000000], got '-1'"},
      {bench + "--warmup -1", 2, "--warmup: expected an integer in [0, 1000000000000]"},
      {bench + "--config foo", 2, "--config: unknown --config 'foo'"},
      {bench + "--seq-len 250 --virtual-tokens 20", 2, "--seq-len: 250 exceeds the 236 positions"},
      {bench + "--batch-size 1048576 --seq-len 64", 2,
       "--batch-size: 1048576 rows x --seq-len 64 tokens exceed the limit of 16777216"},
      {"bench --config gpt2-tiny --gen-prompt 200 --gen-tokens 64", 2,
       "--gen-prompt: 200 prompt tokens + --gen-tokens 64 exceed the 236 positions"},
      {"forward -q --model " + model + " --text hi --output " + path("f.safetensors") +
           " --task -1",
       2, "--task: expected an integer in [0, 65535]"},
      {"demo --output " + path("demo") + " --max-steps -5", 2,
       "--max-steps: expected an integer in [1, 1000000000000]"},
      // 17.3: no saturation, and upper bounds named in the message.
      {train + "--batch-size 9223372036854775807", 2,
       "--batch-size: expected an integer in [1, 1048576], got '9223372036854775807' (out of "
       "range)"},
      {train + "--max-steps 99999999999999999999", 2,
       "--max-steps: expected an integer in [0, 1000000000000], got '99999999999999999999' (out of "
       "range)"},
      {train + "--max-steps 1x", 2,
       "--max-steps: expected an integer in [0, 1000000000000], got '1x' (not an integer)"},
      // 16.7 / 17.4: sizes refused before anything is allocated.
      {train + "--num-virtual-tokens 10000000", 2,
       "--num-virtual-tokens: expected an integer in [1, 65536]"},
      {train + "--num-virtual-tokens 4611686018427387904", 2,
       "--num-virtual-tokens: expected an integer in [1, 65536]"},
      {train + "--num-virtual-tokens 128", 2,
       "--num-virtual-tokens: 128 virtual tokens leave no room for text in the model's 128 "
       "positions"},
      {multitask + "--num-tasks 4611686018427387904", 2,
       "--num-tasks: expected an integer in [1, 65536]"},
      {multitask + "--num-ranks 4611686018427387904", 2,
       "--num-ranks: expected an integer in [1, 4096]"},
      {multitask + "--num-tasks 60000 --num-ranks 4000 --num-virtual-tokens 100", 2,
       "--num-virtual-tokens: the soft prompt would have"},
      {train + "--max-length 200", 2,
       "--max-length: 200 exceeds the 108 positions the model has for text after the soft prompt"},
      // 17.5 / 16.9: what used to fail only at the final evaluation, after training.
      {with_eval + "--eval-batch-size 0", 2,
       "--eval-batch-size: expected an integer in [1, 1048576]"},
      {with_eval + "--max-new-tokens -1", 2,
       "--max-new-tokens: expected an integer in [1, 1048576]"},
      {with_eval + "--max-new-tokens 1000000000", 2,
       "--max-new-tokens: expected an integer in [1, 1048576]"},
      {with_eval + "--max-new-tokens 108", 2,
       "--max-new-tokens: 108 new tokens plus at least one prompt token exceed the 108 positions"},
      {eval + "--batch-size 0", 2, "--batch-size: expected an integer in [1, 1048576]"},
      {eval + "--max-new-tokens -1", 2, "--max-new-tokens: expected an integer in [1, 1048576]"},
      {eval + "--max-length 129", 2, "--max-length: 129 exceeds the 128 positions"},
  };
  for (const UsageCase& c : cases) {
    CommandResult r = run(c.args);
    EXPECT_EQ(r.code, c.code) << c.args << "\n" << r.output;
    EXPECT_NE(r.output.find(c.message), std::string::npos) << c.args << "\n" << r.output;
    EXPECT_FALSE(fs::exists(path("out"))) << c.args;
    EXPECT_FALSE(fs::exists(path("demo"))) << c.args;
  }
}

// 17.5 / 16.9: an evaluation row that cannot be generated from within the context is refused at
// start-up, naming its file and line, before a step is trained or an output directory made.
TEST_F(Cli, EvalRowsThatExceedTheContextFailBeforeTraining) {
  std::string words;
  for (int i = 0; i < 100; ++i) words += " hello";
  std::string eval =
      write("eval.jsonl", "{\"input\": \"short\", \"output\": \" x\"}\n{\"input\": \"" + words +
                              "\", \"output\": \" x\"}\n");
  const std::string base =
      "train -q --model " + kFixtures + "/gpt2_tiny_a --data " + data_file() + " --output " +
      path("out") + " --max-steps 1 --batch-size 1 --num-virtual-tokens 4 --eval-data " + eval;
  CommandResult r = run(base + " --max-new-tokens 30");
  EXPECT_EQ(r.code, 1) << r.output;
  EXPECT_NE(r.output.find("eval.jsonl:2: the input is"), std::string::npos) << r.output;
  EXPECT_FALSE(fs::exists(path("out")));
  CommandResult e =
      run("eval -q --model " + kFixtures + "/gpt2_tiny_a --data " + eval + " --max-new-tokens 30");
  EXPECT_EQ(e.code, 1) << e.output;
  EXPECT_NE(e.output.find("eval.jsonl:2: the input is"), std::string::npos) << e.output;
  // Truncated to --max-length, the same row leaves room for the new tokens.
  CommandResult fits = run(base + " --max-new-tokens 30 --max-length 80");
  EXPECT_EQ(fits.code, 0) << fits.output;
}

// The default --max-length (512) is ours, not the user's: on a shorter model it is lowered to the
// context with a note, so long rows are truncated as documented instead of failing mid-run.
TEST_F(Cli, DefaultMaxLengthIsLoweredToTheContext) {
  std::string words;
  for (int i = 0; i < 200; ++i) words += " hello";
  std::string data = write("long.jsonl", "{\"input\": \"" + words + "\", \"output\": \" x\"}\n");
  CommandResult r =
      run("train --model " + kFixtures + "/gpt2_tiny_a --data " + data + " --output " +
          path("out") + " --max-steps 1 --batch-size 1 --num-virtual-tokens 8 --metric loss");
  EXPECT_EQ(r.code, 0) << r.output;
  EXPECT_NE(r.output.find("--max-length 512 is longer than the model's context; using 120"),
            std::string::npos)
      << r.output;
}

TEST_F(Cli, MissingModelDirectoryIsAClearError) {
  CommandResult r =
      run("train --model " + path("nope") + " --data " + data_file() + " --output " + path("out"));
  EXPECT_EQ(r.code, 1);
  EXPECT_NE(r.output.find("nope: not a directory"), std::string::npos) << r.output;
  EXPECT_FALSE(fs::exists(path("out")));
}

TEST_F(Cli, MalformedJsonlRefusesToStartAndSkipBadLinesCounts) {
  std::string data =
      write("bad.jsonl", "{\"input\": \"a\", \"output\": \"b\"}\n{\"input\": \"a\"}\n");
  std::string base = "train -q --model " + kFixtures + "/gpt2_tiny_a --output " + path("out") +
                     " --max-steps 1 --batch-size 1 --num-virtual-tokens 2 --metric loss --data " +
                     data;
  CommandResult r = run(base);
  EXPECT_EQ(r.code, 1);
  EXPECT_NE(r.output.find("bad.jsonl:2: missing field 'output'"), std::string::npos) << r.output;
  CommandResult skipped = run(base + " --skip-bad-lines");
  EXPECT_EQ(skipped.code, 0) << skipped.output;
  EXPECT_TRUE(fs::exists(path("out/adapter_model.safetensors")));
}

TEST_F(Cli, AdapterForAnotherModelIsRefused) {
  CommandResult r = run("eval --model " + kFixtures + "/gpt2_tiny_b --adapter " + kFixtures +
                        "/peft/gpt2_tiny_a/pt_random --data " + data_file());
  EXPECT_EQ(r.code, 1);
  EXPECT_NE(r.output.find("token_dim = 64 does not match the model's hidden size = 48"),
            std::string::npos)
      << r.output;
}

TEST_F(Cli, UnavailableDeviceIsUnsupported) {
  CommandResult r = run("inspect " + kFixtures + "/gpt2_tiny_a --device cuda:3");
  EXPECT_EQ(r.code, 4) << r.output;
}

TEST_F(Cli, TrainEvalGenerateForwardInspect) {
  const std::string model = kFixtures + "/gpt2_tiny_a";
  CommandResult train = run("train -q --model " + model + " --data " + data_file() +
                            " --eval-data " + data_file() + " --output " + path("adapter") +
                            " --max-steps 6 --batch-size 4 --num-virtual-tokens 3 --init TEXT "
                            "--init-text 'Answer:' --lr 0.1 --metric token_accuracy");
  ASSERT_EQ(train.code, 0) << train.output;
  EXPECT_NE(train.output.find("trained 6 steps"), std::string::npos) << train.output;
  nlohmann::json config;
  std::ifstream(path("adapter/adapter_config.json")) >> config;
  EXPECT_EQ(config["peft_type"], "PROMPT_TUNING");
  EXPECT_EQ(config["prompt_tuning_init"], "TEXT");
  EXPECT_EQ(config["inference_mode"], true);
  EXPECT_EQ(config["token_dim"], 64);
  int lines = 0;
  std::ifstream metrics(path("adapter/metrics.jsonl"));
  for (std::string line; std::getline(metrics, line);) ++lines;
  EXPECT_EQ(lines, 7);  // 6 train steps + the final evaluation

  CommandResult eval = run("eval -q --model " + model + " --adapter " + path("adapter") +
                           " --data " + data_file() + " --metric token_accuracy --json");
  ASSERT_EQ(eval.code, 0) << eval.output;
  nlohmann::json result = nlohmann::json::parse(eval.output);
  EXPECT_EQ(result["examples"], 8);

  CommandResult gen = run("generate -q --model " + model + " --adapter a=" + path("adapter") +
                          " --adapter b=" + kFixtures +
                          "/peft/gpt2_tiny_a/pt_random --prompt 'The opposite of up is' --prompt "
                          "'hello' --use a --use b "
                          "--max-new-tokens 3 --json");
  ASSERT_EQ(gen.code, 0) << gen.output;
  EXPECT_EQ(std::count(gen.output.begin(), gen.output.end(), '\n'), 2);

  CommandResult fwd = run("forward -q --model " + model + " --text 'hello world' --output " +
                          path("fwd.safetensors"));
  ASSERT_EQ(fwd.code, 0) << fwd.output;
  auto dump = SafetensorsFile::open(path("fwd.safetensors"));
  for (const char* key : {"input_ids", "logits", "loss", "grad_inputs_embeds"})
    EXPECT_TRUE(dump->contains(key)) << key;

  CommandResult inspect = run("inspect " + path("adapter") + " --model " + model);
  ASSERT_EQ(inspect.code, 0) << inspect.output;
  EXPECT_NE(inspect.output.find("trainable params: 192 || all params: 141,248"), std::string::npos)
      << inspect.output;
  CommandResult inspect_model = run("inspect " + model);
  EXPECT_NE(inspect_model.output.find("hidden size 64, layers 2, heads 4"), std::string::npos)
      << inspect_model.output;
}

TEST_F(Cli, GenerateInputRowsPickTheirAdapterAndNeedNoOutput) {
  // Issue 16.5: each --input row runs with its "adapter" field (default: the first adapter), and
  // rows need no "output". The two fixture adapters continue "hello there" differently, so a row
  // that ignored its adapter would give adapter a's text.
  const std::string model = kFixtures + "/gpt2_tiny_a";
  const std::string adapters = " --adapter a=" + kFixtures + "/peft/gpt2_tiny_a/pt_random" +
                               " --adapter b=" + kFixtures + "/peft/gpt2_tiny_a/pt_sample_vocab";
  const auto output_of = [](const CommandResult& result, size_t line) {
    std::istringstream lines(result.output);
    std::string text;
    for (size_t i = 0; i <= line; ++i) std::getline(lines, text);
    return nlohmann::json::parse(text)["output"].get<std::string>();
  };
  const std::string flags = " --max-new-tokens 4 --json";
  CommandResult with_a =
      run("generate -q --model " + model + adapters + " --prompt 'hello there' --use a" + flags);
  CommandResult with_b =
      run("generate -q --model " + model + adapters + " --prompt 'hello there' --use b" + flags);
  ASSERT_EQ(with_a.code, 0) << with_a.output;
  ASSERT_EQ(with_b.code, 0) << with_b.output;
  ASSERT_NE(output_of(with_a, 0), output_of(with_b, 0));  // else the test could not fail

  const std::string input = write("prompts.jsonl",
                                  "{\"input\": \"hello there\", \"adapter\": \"b\"}\n"
                                  "{\"input\": \"hello there\"}\n"
                                  "{\"input\": \"hello there\", \"adapter\": \"a\"}\n");
  CommandResult rows = run("generate -q --model " + model + adapters + " --input " + input + flags);
  ASSERT_EQ(rows.code, 0) << rows.output;
  EXPECT_EQ(output_of(rows, 0), output_of(with_b, 0));
  EXPECT_EQ(output_of(rows, 1), output_of(with_a, 0));
  EXPECT_EQ(output_of(rows, 2), output_of(with_a, 0));

  // --prompt rows keep --use; --input rows follow after them with their own adapters.
  CommandResult mixed = run("generate -q --model " + model + adapters +
                            " --prompt 'hello there' --use b --input " + input + flags);
  ASSERT_EQ(mixed.code, 0) << mixed.output;
  EXPECT_EQ(output_of(mixed, 0), output_of(with_b, 0));
  EXPECT_EQ(output_of(mixed, 1), output_of(with_b, 0));
  EXPECT_EQ(output_of(mixed, 2), output_of(with_a, 0));

  const std::string unknown = write("unknown.jsonl", "{\"input\": \"x\", \"adapter\": \"zz\"}\n");
  CommandResult bad = run("generate -q --model " + model + adapters + " --input " + unknown);
  EXPECT_NE(bad.code, 0);
  EXPECT_NE(bad.output.find("unknown.jsonl:1: field 'adapter' names 'zz', which is not loaded "
                            "(loaded: a, b)"),
            std::string::npos)
      << bad.output;
  const std::string no_input = write("no_input.jsonl", "{\"prompt\": \"x\"}\n");
  bad = run("generate -q --model " + model + " --input " + no_input);
  EXPECT_NE(bad.code, 0);
  EXPECT_NE(bad.output.find("no_input.jsonl:1: field 'input' must be a string, found nothing"),
            std::string::npos)
      << bad.output;
}

TEST_F(Cli, TwoStageMultitaskRecipe) {
  // Stage 1: multitask prompt tuning over two source tasks.
  std::string source;
  for (int i = 0; i < 8; ++i)
    source += std::string("{\"input\": \"word ") + std::to_string(i) + "\", \"output\": \" " +
              (i % 2 ? "odd" : "even") + "\", \"task\": \"" + (i < 4 ? "parity" : "copy") + "\"}\n";
  write("source.jsonl", source);
  const std::string model = kFixtures + "/gpt2_tiny_a";
  CommandResult stage1 = run("train -q --model " + model + " --data " + path("source.jsonl") +
                             " --output " + path("source") +
                             " --multitask --num-ranks 2 --num-virtual-tokens 3 --max-steps 3 "
                             "--batch-size 4 --metric loss");
  ASSERT_EQ(stage1.code, 0) << stage1.output;
  nlohmann::json tasks;
  std::ifstream(path("source/tasks.json")) >> tasks;
  EXPECT_EQ(tasks, nlohmann::json({"copy", "parity"}));
  // Stage 2: one target task initialised from source task 1 ("parity").
  write("target.jsonl", "{\"input\": \"word 9\", \"output\": \" odd\", \"task\": 0}\n");
  CommandResult stage2 = run("train -q --model " + model + " --data " + path("target.jsonl") +
                             " --output " + path("target") +
                             " --multitask --num-tasks 1 --num-ranks 2 --num-virtual-tokens 3 "
                             "--init EXACT_SOURCE_TASK --init-from " +
                             path("source/adapter_model.safetensors") +
                             " --init-task 1 --max-steps 1 --batch-size 1 --metric loss --lr 0");
  ASSERT_EQ(stage2.code, 0) << stage2.output;
  auto src = SafetensorsFile::open(path("source/adapter_model.safetensors"));
  auto dst = SafetensorsFile::open(path("target/adapter_model.safetensors"));
  // lr 0 leaves every parameter as initialised (the decay factor 1 - lr * wd is 1 too).
  EXPECT_EQ(dst->get("prefix_task_cols").to_floats(),
            src->get("prefix_task_cols").select(0, 1).contiguous().to_floats());
  EXPECT_EQ(dst->get("prompt_embeddings").to_floats(), src->get("prompt_embeddings").to_floats());
}

TEST_F(Cli, SigintDuringTrainingCheckpointsAndExits130) {
  std::string text;
  for (int i = 0; i < 64; ++i) text += "{\"input\": \"a b c\", \"output\": \" d\"}\n";
  write("long.jsonl", text);
  std::vector<std::string> args = {kBinary,
                                   "train",
                                   "-q",
                                   "--model",
                                   kFixtures + "/gpt2_tiny_a",
                                   "--data",
                                   path("long.jsonl"),
                                   "--output",
                                   path("run"),
                                   "--max-steps",
                                   "100000",
                                   "--batch-size",
                                   "2",
                                   "--metric",
                                   "loss"};
  std::vector<char*> argv;
  for (auto& a : args) argv.push_back(a.data());
  argv.push_back(nullptr);
  pid_t pid;
  ASSERT_EQ(posix_spawn(&pid, kBinary.c_str(), nullptr, nullptr, argv.data(), environ), 0);
  // Wait until training is under way (metrics are being written), then interrupt.
  for (int i = 0; i < 600 && !(fs::exists(path("run/metrics.jsonl")) &&
                               fs::file_size(path("run/metrics.jsonl")) > 0);
       ++i)
    std::this_thread::sleep_for(std::chrono::milliseconds(50));
  kill(pid, SIGINT);
  int status = 0;
  bool exited = false;
  for (int i = 0; i < 2400 && !exited; ++i) {
    exited = waitpid(pid, &status, WNOHANG) == pid;
    if (!exited) std::this_thread::sleep_for(std::chrono::milliseconds(50));
  }
  if (!exited) {
    // Seen once in CI (a 300 s ctest timeout, not reproduced): show where it is stuck.
    const std::string stacks =
        "gdb -p " + std::to_string(pid) + " -batch -ex 'thread apply all bt' 2>&1 | tail -n 200";
    std::system(stacks.c_str());
    kill(pid, SIGKILL);
    waitpid(pid, &status, 0);
  }
  ASSERT_TRUE(exited) << "train did not exit within 120 s of SIGINT (stacks above)";
  ASSERT_TRUE(WIFEXITED(status));
  EXPECT_EQ(WEXITSTATUS(status), 130);
  EXPECT_TRUE(fs::exists(path("run/training_state/trainer_state.json")));
  EXPECT_TRUE(fs::exists(path("run/adapter_model.safetensors")));
}

TEST_F(Cli, BenchRunsOnATinyConfig) {
  for (const char* config : {"gpt2-tiny", "llama-tiny"}) {
    CommandResult r = run(std::string("bench --config ") + config +
                          " --batch-size 2 --seq-len 8 --virtual-tokens 2 --steps 1 --warmup 0 "
                          "--gen-tokens 4 --json");
    ASSERT_EQ(r.code, 0) << r.output;
    nlohmann::json j = nlohmann::json::parse(r.output.substr(r.output.find('{')));
    EXPECT_EQ(j["model"], config);
    EXPECT_GT(j["tokens_per_s"].get<double>(), 0);
    EXPECT_GT(j["generate_tokens_per_s"].get<double>(), 0);
    EXPECT_GT(j["peak_rss_mb"].get<double>(), 0);
  }
}

// On a device, bench --json says what a steady-state step costs besides arithmetic (issue: the
// CUDA step's launch, sync and allocation budget): per-step counts and launches per kernel.
TEST_F(Cli, BenchOnCudaEmuReportsLaunchesSyncsAndAllocationsPerStep) {
  CommandResult r = run(
      "bench --device cuda-emu --config gpt2-tiny --batch-size 2 --seq-len 8 --virtual-tokens 2 "
      "--steps 2 --warmup 1 --skip-generation --json");
  ASSERT_EQ(r.code, 0) << r.output;
  nlohmann::json j = nlohmann::json::parse(r.output.substr(r.output.find('{')));
  const nlohmann::json& step = j["per_step"];
  EXPECT_GT(step["kernel_launches"].get<double>(), 0) << r.output;
  EXPECT_GT(step["gemm_calls"].get<double>(), 0) << r.output;
  // The trainer's one read a step: the loss with the gradient norm.
  EXPECT_EQ(step["host_syncs"].get<double>(), 1) << r.output;
  EXPECT_EQ(step["device_allocations"].get<double>(), 0) << r.output;
  double listed = 0;
  for (const auto& [kernel, count] : j["launches_by_kernel"].items()) listed += count.get<double>();
  EXPECT_EQ(listed, step["kernel_launches"].get<double>()) << r.output;
  EXPECT_TRUE(j["launches_by_kernel"].contains("layernorm_forward_kernel")) << r.output;
  // Every kernel family launched says what it moved, and the GEMMs what they computed and moved:
  // the inputs of a roofline estimate.
  for (const auto& [kernel, count] : j["launches_by_kernel"].items())
    EXPECT_GT(j["traffic_by_kernel"][kernel]["bytes"].get<double>(), 0) << kernel;
  EXPECT_GT(j["traffic_by_kernel"]["attention_forward_kernel"]["flops"].get<double>(), 0);
  EXPECT_GT(step["gemm_flops"].get<double>(), 0) << r.output;
  EXPECT_GT(step["gemm_bytes"].get<double>(), 0) << r.output;
  EXPECT_GT(step["kernel_bytes"].get<double>(), 0) << r.output;
  // gpt2-tiny has 2 layers: launches per layer are the step's launches and GEMMs over them.
  EXPECT_DOUBLE_EQ(step["launches_per_layer"].get<double>(),
                   (step["kernel_launches"].get<double>() + step["gemm_calls"].get<double>()) / 2);
}

// The demo on the committed assets (examples/demo): the frozen model never answers without a cue,
// the 150-step recipe teaches the soft prompt to. examples/demo/README.md has the reference
// numbers: 78.9% here, 77.8% with PEFT on the same recipe; the bound of 60% leaves room for other
// CPUs' summation orders changing a few of the 180 greedy answers, and still fails a demo that
// did not learn (0%).
TEST_F(Cli, DemoTunesTheEmbeddedModelFromZeroAccuracy) {
  CommandResult r = run("demo --output " + path("demo"));
  ASSERT_EQ(r.code, 0) << r.output;
  std::smatch untuned, tuned;
  ASSERT_TRUE(
      std::regex_search(r.output, untuned,
                        std::regex(R"(untuned accuracy \(frozen model, no prompt\): +([0-9.]+)%)")))
      << r.output;
  ASSERT_TRUE(std::regex_search(
      r.output, tuned, std::regex(R"(tuned accuracy +\(10 soft-prompt tokens\): +([0-9.]+)%)")))
      << r.output;
  EXPECT_EQ(std::stod(untuned[1]), 0.0) << r.output;
  EXPECT_GE(std::stod(tuned[1]), 60.0) << r.output;
  EXPECT_TRUE(fs::exists(path("demo/adapter_model.safetensors")));
  std::ifstream config_file(path("demo/adapter_config.json"));
  nlohmann::json config = nlohmann::json::parse(config_file);
  EXPECT_EQ(config["peft_type"], "PROMPT_TUNING");
  EXPECT_EQ(config["num_virtual_tokens"], 10);
}

// The issue's acceptance bar for --dtype bf16: the demo trained with bf16 weights ends within 3
// accuracy points of the fp32 run (measured: both 78.9%), its adapter is F32 like PEFT's, and
// the chosen dtype and GEMM path are printed.
TEST_F(Cli, DemoInBf16EndsWithinThreePointsOfFp32) {
  auto tuned_accuracy = [&](const std::string& dtype, std::string& output) {
    CommandResult r = run("demo --dtype " + dtype + " --output " + path("demo_" + dtype));
    output = r.output;
    EXPECT_EQ(r.code, 0) << r.output;
    std::smatch tuned;
    if (!std::regex_search(r.output, tuned,
                           std::regex(R"(tuned accuracy +\(10 soft-prompt tokens\): +([0-9.]+)%)")))
      return -100.0;
    return std::stod(tuned[1]);
  };
  std::string f32_output, bf16_output;
  const double f32 = tuned_accuracy("f32", f32_output), bf16 = tuned_accuracy("bf16", bf16_output);
  EXPECT_NEAR(bf16, f32, 3.0) << bf16_output;
  EXPECT_NE(bf16_output.find("dtype bf16: bf16 GEMM weights, f32 activations; GEMMs: "),
            std::string::npos)
      << bf16_output;
  auto adapter = SafetensorsFile::open(path("demo_bf16/adapter_model.safetensors"));
  EXPECT_EQ(adapter->entry("prompt_embeddings").dtype, "F32");
}

TEST_F(Cli, DemoWithoutAssetsIsAClearError) {
  CommandResult r = run("demo --assets " + path("nope") + " --output " + path("demo"));
  EXPECT_EQ(r.code, 1) << r.output;
  EXPECT_NE(r.output.find("nope: no demo_config.json"), std::string::npos) << r.output;
  EXPECT_FALSE(fs::exists(path("demo")));
}

}  // namespace
}  // namespace sp
