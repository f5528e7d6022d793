// softprompt serve end to end: the real binary on 127.0.0.1 with a free port, driven by curl.
// Completions equal `softprompt generate`; streaming; 64 concurrent requests over 8 adapters;
// bad requests, overload, adapter load/unload, SIGTERM.
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <filesystem>
#include <fstream>
#include <map>
#include <nlohmann/json.hpp>
#include <optional>
#include <sstream>
#include <thread>

#include "tests/cli/cli_test_util.h"

namespace sp {
namespace {

namespace fs = std::filesystem;
using cli_test::CommandResult;
using cli_test::kBinary;
using cli_test::kFixtures;
using namespace std::chrono_literals;

const std::string kModel = kFixtures + "/gpt2_tiny_a";
const std::string kAdapters = kFixtures + "/peft/gpt2_tiny_a";

std::string read_text(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  return std::string(std::istreambuf_iterator<char>(in), {});
}

// A `softprompt serve` child process on a free port; killed at the end if still running.
class ServeProcess {
 public:
  ServeProcess(const std::string& args, const fs::path& dir) : log_((dir / "serve.log").string()) {
    const std::string port_file = (dir / "port").string();
    fs::remove(port_file);
    const std::string command = "exec " + kBinary + " serve --model " + kModel + " " + args +
                                " --port 0 --port-file " + port_file + " >" + log_ + " 2>&1";
    pid_ = fork();
    if (pid_ == 0) {
      execl("/bin/sh", "sh", "-c", command.c_str(), static_cast<char*>(nullptr));
      _exit(127);
    }
    for (auto until = std::chrono::steady_clock::now() + 60s;
         std::chrono::steady_clock::now() < until;) {
      if (fs::exists(port_file)) {
        port_ = std::stoi(read_text(port_file));
        return;
      }
      if (waitpid(pid_, &status_, WNOHANG) == pid_) {
        exited_ = true;
        return;
      }
      std::this_thread::sleep_for(20ms);
    }
  }
  ~ServeProcess() {
    if (!exited_) {
      kill(pid_, SIGKILL);
      waitpid(pid_, &status_, 0);
    }
  }
  int port() const { return port_; }
  std::string url(const std::string& path) const {
    return "http://127.0.0.1:" + std::to_string(port_) + path;
  }
  std::string log() const { return read_text(log_); }
  /// Sends `signal` and waits (up to 60 s) for the exit code; -1 if it did not exit.
  int stop(int signal = SIGTERM) {
    if (!exited_) kill(pid_, signal);
    return wait_exit();
  }
  int wait_exit() {
    for (auto until = std::chrono::steady_clock::now() + 60s;
         !exited_ && std::chrono::steady_clock::now() < until;) {
      if (waitpid(pid_, &status_, WNOHANG) == pid_) exited_ = true;
      std::this_thread::sleep_for(20ms);
    }
    return exited_ && WIFEXITED(status_) ? WEXITSTATUS(status_) : -1;
  }

 private:
  std::string log_;
  pid_t pid_ = -1;
  int port_ = 0, status_ = 0;
  bool exited_ = false;
};

struct HttpResult {
  int status = 0;
  std::string body;
  nlohmann::json json() const { return nlohmann::json::parse(body, nullptr, false); }
};

// Runs curl with `args`; the status code comes from curl's -w.
HttpResult curl(const std::string& args) {
  const std::string command = "curl -s -S -m 60 -w '\\n%{http_code}' " + args + " 2>&1";
  FILE* pipe = popen(command.c_str(), "r");
  std::string out;
  char buffer[4096];
  size_t n;
  while ((n = fread(buffer, 1, sizeof buffer, pipe)) > 0) out.append(buffer, n);
  pclose(pipe);
  HttpResult result;
  const size_t newline = out.rfind('\n');
  result.status = std::atoi(out.c_str() + newline + 1);
  result.body = out.substr(0, newline);
  return result;
}

class ServeCli : public cli_test::TempDirTest {
 protected:
  HttpResult post(const ServeProcess& server, const std::string& route, const nlohmann::json& body,
                  const std::string& extra = "") {
    const std::string file = write("body" + std::to_string(counter_++) + ".json", body.dump());
    return curl(extra + " -H 'Content-Type: application/json' --data-binary @" + file + " " +
                server.url(route));
  }
  // What `softprompt generate` prints for one prompt (greedy), as --json's "output".
  std::string generated(const std::string& adapter_args, const std::string& prompt, int tokens,
                        const std::string& extra = "") {
    const std::string input = write("prompt" + std::to_string(counter_++) + ".jsonl",
                                    nlohmann::json{{"input", prompt}}.dump() + "\n");
    CommandResult r = cli_test::run_limited("generate -q --model " + kModel + " " + adapter_args +
                                                " --input " + input + " --max-new-tokens " +
                                                std::to_string(tokens) + " --json " + extra,
                                            120);
    EXPECT_EQ(r.code, 0) << r.output;
    return nlohmann::json::parse(r.output.substr(0, r.output.find('\n')))["output"];
  }
  int counter_ = 0;
};

TEST_F(ServeCli, CompletionsEqualGenerateAndStreamTheSameText) {
  ServeProcess server("-q --adapter a=" + kAdapters + "/pt_random --adapter t=" + kAdapters +
                          "/train_pt --adapter m=" + kAdapters + "/mpt",
                      dir_);
  ASSERT_GT(server.port(), 0) << server.log();
  EXPECT_EQ(curl(server.url("/health")).json()["status"], "ok");
  nlohmann::json models = curl(server.url("/v1/models")).json();
  std::vector<std::string> ids;
  for (const auto& m : models["data"]) ids.push_back(m["id"]);
  EXPECT_EQ(ids, (std::vector<std::string>{"gpt2_tiny_a", "a", "m", "t"}));

  struct Case {
    std::string model, generate_args, prompt;
    std::optional<int> task;
  };
  const std::vector<Case> cases = {
      {"a", "--adapter a=" + kAdapters + "/pt_random", "The river", {}},
      {"t", "--adapter t=" + kAdapters + "/train_pt", "hello world", {}},
      {"m", "--adapter m=" + kAdapters + "/mpt", "one two", 2},
      {"gpt2_tiny_a", "", "The river", {}},
  };
  for (const Case& c : cases) {
    nlohmann::json body = {
        {"model", c.model}, {"prompt", c.prompt}, {"max_tokens", 12}, {"temperature", 0}};
    if (c.task) body["task"] = *c.task;
    HttpResult r = post(server, "/v1/completions", body);
    ASSERT_EQ(r.status, 200) << r.body;
    nlohmann::json j = r.json();
    const std::string want =
        generated(c.generate_args, c.prompt, 12, c.task ? "--task " + std::to_string(*c.task) : "");
    EXPECT_EQ(j["choices"][0]["text"], want) << c.model;
    EXPECT_EQ(j["object"], "text_completion");
    EXPECT_EQ(j["model"], c.model);
    EXPECT_EQ(j["usage"]["total_tokens"].get<int>(),
              j["usage"]["prompt_tokens"].get<int>() + j["usage"]["completion_tokens"].get<int>());

    // The same request streamed: server-sent events that add up to the same text, then [DONE].
    body["stream"] = true;
    HttpResult s = post(server, "/v1/completions", body, "-N");
    ASSERT_EQ(s.status, 200) << s.body;
    std::string text, finish;
    std::vector<std::string> events;
    for (size_t at = 0; (at = s.body.find("data: ", at)) != std::string::npos;) {
      const size_t end = s.body.find("\n\n", at);
      events.push_back(s.body.substr(at + 6, end - at - 6));
      at = end;
    }
    ASSERT_GE(events.size(), 2u) << s.body;
    EXPECT_EQ(events.back(), "[DONE]");
    for (size_t i = 0; i + 1 < events.size(); ++i) {
      nlohmann::json e = nlohmann::json::parse(events[i]);
      text += e["choices"][0]["text"].get<std::string>();
      if (!e["choices"][0]["finish_reason"].is_null()) finish = e["choices"][0]["finish_reason"];
    }
    EXPECT_EQ(text, want) << c.model;
    EXPECT_EQ(finish, j["choices"][0]["finish_reason"]) << c.model;
  }
  EXPECT_EQ(server.stop(), 0) << server.log();
}

TEST_F(ServeCli, SixtyFourConcurrentRequestsOverEightAdaptersAreAllCorrect) {
  // Eight adapter directories (five PEFT fixtures, a multitask one, two renamed copies).
  const fs::path adapters = dir_ / "adapters";
  const std::vector<std::pair<std::string, std::string>> dirs = {
      {"random", "pt_random"},          {"vocab", "pt_sample_vocab"}, {"repeat", "pt_text_repeat"},
      {"truncate", "pt_text_truncate"}, {"trained", "train_pt"},      {"multi", "mpt"},
      {"copy1", "pt_random"},           {"copy2", "train_pt"}};
  std::string generate_adapters;
  for (const auto& [name, source] : dirs) {
    fs::create_directories(adapters / name);
    fs::copy(kAdapters + "/" + source, adapters / name, fs::copy_options::recursive);
    generate_adapters += " --adapter " + name + "=" + (adapters / name).string();
  }
  ServeProcess server("-q --max-batch 16 --adapters-dir " + adapters.string(), dir_);
  ASSERT_GT(server.port(), 0) << server.log();

  // 64 requests at once from 64 curl processes; generate's --input runs the same rows.
  std::string script, input;
  for (int i = 0; i < 64; ++i) {
    const std::string& name = dirs[size_t(i) % dirs.size()].first;
    nlohmann::json body = {{"model", name},
                           {"prompt", "request " + std::to_string(i) + " says"},
                           {"max_tokens", 4 + i % 9},
                           {"temperature", 0}};
    // Every row names a task (plain prompt tuning ignores it), as generate wants all or none.
    const int task = name == "multi" ? i % 3 : 0;
    nlohmann::json row = {{"input", body["prompt"]}, {"adapter", name}, {"task", task}};
    if (name == "multi") body["task"] = task;
    write("req" + std::to_string(i) + ".json", body.dump());
    input += row.dump() + "\n";
    script += "curl -s -m 120 -o " + path("res" + std::to_string(i) + ".json") +
              " -w '%{http_code}' --data-binary @" + path("req" + std::to_string(i) + ".json") +
              " " + server.url("/v1/completions") + " > " + path("code" + std::to_string(i)) +
              " &\n";
  }
  script += "wait\n";
  write("burst.sh", script);
  ASSERT_EQ(std::system(("bash " + path("burst.sh")).c_str()), 0);

  // The reference: generate with each row's own max_tokens (one call per length).
  std::map<int, std::vector<int>> by_length;
  for (int i = 0; i < 64; ++i) by_length[4 + i % 9].push_back(i);
  const std::vector<std::string> lines = [&] {
    std::vector<std::string> out;
    std::istringstream in(input);
    for (std::string line; std::getline(in, line);) out.push_back(line);
    return out;
  }();
  for (const auto& [length, rows] : by_length) {
    std::string subset;
    for (int i : rows) subset += lines[size_t(i)] + "\n";
    const std::string file = write("subset" + std::to_string(length) + ".jsonl", subset);
    CommandResult r =
        cli_test::run_limited("generate -q --model " + kModel + generate_adapters + " --input " +
                                  file + " --max-new-tokens " + std::to_string(length) + " --json",
                              120);
    ASSERT_EQ(r.code, 0) << r.output;
    std::istringstream out(r.output);
    std::string line;
    for (int i : rows) {
      ASSERT_TRUE(std::getline(out, line));
      EXPECT_EQ(read_text(path("code" + std::to_string(i))), "200") << "request " << i;
      nlohmann::json got = nlohmann::json::parse(
          read_text(path("res" + std::to_string(i) + ".json")), nullptr, false);
      ASSERT_TRUE(got.is_object()) << "request " << i;
      EXPECT_EQ(got["choices"][0]["text"], nlohmann::json::parse(line)["output"])
          << "request " << i;
    }
  }
  nlohmann::json health = curl(server.url("/health")).json();
  EXPECT_EQ(health["completed"], 64);
  EXPECT_EQ(health["prefix_cache"]["misses"], 10);  // 7 adapters + 3 tasks of the multitask one
  EXPECT_EQ(server.stop(), 0) << server.log();
}

TEST_F(ServeCli, BadRequestsGetOneJsonErrorAndTheServerGoesOn) {
  ServeProcess server("-q --max-body-bytes 300 --adapter a=" + kAdapters + "/pt_random", dir_);
  ASSERT_GT(server.port(), 0) << server.log();
  auto error_of = [](const HttpResult& r) {
    nlohmann::json j = r.json();
    return j.is_object() && j.contains("error") ? j["error"]["message"].get<std::string>()
                                                : "no JSON error: " + r.body;
  };
  struct Bad {
    std::string body;
    int status;
    std::string words;
  };
  const std::vector<Bad> bad = {
      {"{\"model\": \"a\", \"prompt\": ", 400, "not valid JSON"},
      {"[1, 2]", 400, "must be a JSON object"},
      {"{\"prompt\": \"x\"}", 400, "'model' is required"},
      {"{\"model\": \"zz\", \"prompt\": \"x\"}", 404, "model 'zz' is not loaded"},
      {"{\"model\": \"a\", \"prompt\": \"x\", \"max_tokens\": \"5\"}", 400,
       "'max_tokens' must be an integer"},
      {"{\"model\": \"a\", \"prompt\": \"x\", \"max_tokens\": 100000}", 400,
       "'max_tokens' must be in"},
      {"{\"model\": \"a\", \"prompt\": [\"x\", \"y\"]}", 400, "one prompt per request"},
      {"{\"model\": \"a\", \"prompt\": \"x\", \"n\": 2}", 400, "'n' and 'best_of' must be 1"},
      {"{\"model\": \"a\", \"prompt\": \"" + std::string(400, 'x') + "\"}", 413,
       "--max-body-bytes"},
  };
  for (const Bad& b : bad) {
    const std::string file = write("bad" + std::to_string(counter_++) + ".json", b.body);
    HttpResult r = curl("--data-binary @" + file + " " + server.url("/v1/completions"));
    EXPECT_EQ(r.status, b.status) << b.body << " -> " << r.body;
    EXPECT_NE(error_of(r).find(b.words), std::string::npos) << b.body << " -> " << r.body;
  }
  EXPECT_EQ(curl(server.url("/v1/nothing")).status, 404);
  HttpResult forbidden = post(server, "/v1/adapters", {{"name", "x"}});
  EXPECT_EQ(forbidden.status, 403) << forbidden.body;
  EXPECT_EQ(curl("-X DELETE " + server.url("/v1/adapters/nope")).status, 404);
  HttpResult fine =
      post(server, "/v1/completions", {{"model", "a"}, {"prompt", "x"}, {"max_tokens", 3}});
  EXPECT_EQ(fine.status, 200) << fine.body;
  EXPECT_EQ(server.stop(), 0) << server.log();
}

TEST_F(ServeCli, AdaptersLoadAndUnloadAtRunTimeOnlyFromTheAdaptersDir) {
  const fs::path adapters = dir_ / "adapters";
  fs::create_directories(adapters / "first");
  fs::copy(kAdapters + "/pt_random", adapters / "first", fs::copy_options::recursive);
  fs::create_directories(adapters / "later" / "inner");
  fs::copy(kAdapters + "/train_pt", adapters / "later" / "inner", fs::copy_options::recursive);
  ServeProcess server("-q --adapters-dir " + adapters.string(), dir_);
  ASSERT_GT(server.port(), 0) << server.log();
  nlohmann::json request = {
      {"model", "late"}, {"prompt", "hello world"}, {"max_tokens", 8}, {"temperature", 0}};
  EXPECT_EQ(post(server, "/v1/completions", request).status, 404);
  HttpResult loaded = post(server, "/v1/adapters", {{"name", "late"}, {"path", "later/inner"}});
  ASSERT_EQ(loaded.status, 201) << loaded.body;
  HttpResult r = post(server, "/v1/completions", request);
  ASSERT_EQ(r.status, 200) << r.body;
  EXPECT_EQ(r.json()["choices"][0]["text"],
            generated("--adapter late=" + kAdapters + "/train_pt", "hello world", 8));
  EXPECT_EQ(post(server, "/v1/adapters", {{"name", "late"}, {"path", "later/inner"}}).status, 409);
  EXPECT_EQ(post(server, "/v1/adapters", {{"name", "evil"}, {"path", "../../etc"}}).status, 400);
  EXPECT_EQ(post(server, "/v1/adapters", {{"name", "evil"}, {"path", "/etc"}}).status, 400);
  EXPECT_EQ(post(server, "/v1/adapters", {{"name", "missing"}}).status, 400);
  EXPECT_EQ(curl("-X DELETE " + server.url("/v1/adapters/late")).status, 200);
  EXPECT_EQ(post(server, "/v1/completions", request).status, 404);
  EXPECT_EQ(server.stop(), 0) << server.log();
}

TEST_F(ServeCli, OverloadIsAnswered429WithRetryAfter) {
  // One row and no queue: of 24 long requests sent at once, those that find the row taken are
  // refused at once; every other one completes.
  ServeProcess server("-q --max-batch 1 --max-queue 0 --adapter a=" + kAdapters + "/pt_random",
                      dir_);
  ASSERT_GT(server.port(), 0) << server.log();
  write("long.json", nlohmann::json{{"model", "a"}, {"prompt", "x"}, {"max_tokens", 100}}.dump());
  std::string script;
  for (int i = 0; i < 24; ++i)
    script += "curl -s -m 120 -D " + path("head" + std::to_string(i)) + " -o " +
              path("res" + std::to_string(i)) + " --data-binary @" + path("long.json") + " " +
              server.url("/v1/completions") + " &\n";
  write("burst.sh", script + "wait\n");
  ASSERT_EQ(std::system(("bash " + path("burst.sh")).c_str()), 0);
  int ok = 0, refused = 0;
  for (int i = 0; i < 24; ++i) {
    const std::string head = read_text(path("head" + std::to_string(i)));
    nlohmann::json body =
        nlohmann::json::parse(read_text(path("res" + std::to_string(i))), nullptr, false);
    if (head.rfind("HTTP/1.1 200", 0) == 0) {
      ++ok;
      EXPECT_EQ(body["usage"]["completion_tokens"].get<int>() > 0, true);
    } else {
      ++refused;
      EXPECT_EQ(head.rfind("HTTP/1.1 429", 0), 0u) << head;
      EXPECT_NE(head.find("Retry-After: 1"), std::string::npos) << head;
      EXPECT_EQ(body["error"]["type"], "overloaded") << body;
    }
  }
  EXPECT_GE(ok, 1);
  EXPECT_GE(refused, 1) << "24 requests at once should overflow one row without a queue";
  EXPECT_EQ(server.stop(), 0) << server.log();
}

TEST_F(ServeCli, SigtermLetsRunningRequestsFinishThenExitsZero) {
  ServeProcess server("--adapter a=" + kAdapters + "/pt_random", dir_);
  ASSERT_GT(server.port(), 0) << server.log();
  write("stream.json",
        nlohmann::json{{"model", "a"}, {"prompt", "x"}, {"max_tokens", 100}, {"stream", true}}
            .dump());
  // A streaming client in the background; SIGTERM once its first event has arrived.
  const std::string out = path("stream.out");
  const std::string command = "curl -s -N -m 120 --data-binary @" + path("stream.json") + " " +
                              server.url("/v1/completions") + " > " + out + " &";
  ASSERT_EQ(std::system(command.c_str()), 0);
  for (auto until = std::chrono::steady_clock::now() + 30s;
       read_text(out).empty() && std::chrono::steady_clock::now() < until;)
    std::this_thread::sleep_for(5ms);
  EXPECT_EQ(server.stop(SIGTERM), 0) << server.log();
  std::this_thread::sleep_for(200ms);
  const std::string stream = read_text(out);
  EXPECT_NE(stream.find("data: [DONE]"), std::string::npos) << stream;
  EXPECT_NE(server.log().find("SIGTERM: finishing"), std::string::npos) << server.log();
  EXPECT_NE(curl(server.url("/health")).status, 200);  // nothing listens any more
}

TEST_F(ServeCli, EncoderDecoderModelsAreRefusedAtStart) {
  CommandResult r =
      cli_test::run_limited("serve -q --model " + kFixtures + "/t5_tiny_v10 --port 0", 60);
  EXPECT_EQ(r.code, 4) << r.output;
  EXPECT_NE(r.output.find("decoder-only"), std::string::npos) << r.output;
}

}  // namespace
}  // namespace sp
