// softprompt_serve_load: a closed-loop load generator for `softprompt serve` that sends N greedy
// completions round-robin over adapters and reports requests/s, tokens/s and latency percentiles.
//
//   softprompt_serve_load --port-file PORT_FILE --adapters a,b,c --requests 64 --concurrency 64
//       [--max-tokens 32] [--prompt-file prompts.jsonl] [--responses out.jsonl] [--json]
//
// Request i goes to adapter i % len(adapters) with prompt i % len(prompts), so a reference
// implementation can rebuild the same work from the same arguments. Each worker thread holds one
// keep-alive connection, opened before the clock starts (--no-preconnect: on its first request).
#include <httplib.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <iostream>
#include <latch>
#include <mutex>
#include <nlohmann/json.hpp>
#include <sstream>
#include <stdexcept>
#include <string>
#include <thread>
#include <vector>

namespace {

using Clock = std::chrono::steady_clock;

struct Options {
  std::string url, host = "127.0.0.1", port_file, prompt_file, responses_file;
  int port = 8000;
  int64_t requests = 64, concurrency = 64, max_tokens = 32;
  std::vector<std::string> adapters;
  double timeout_s = 600;
  bool json = false, preconnect = true;
};

// Varied lengths, so prefills differ as they would in real traffic.
const std::vector<std::string> kBuiltinPrompts = {
    "The quick brown fox jumps over the lazy dog.",
    "Once upon a time, in a small village by the sea, there lived an old fisherman who",
    "Translate to French: The weather is nice today.",
    "Summarize: Prompt tuning learns a few virtual token embeddings and keeps the model frozen, so "
    "one base model can serve many tasks at once.",
    "Question: What is the capital of Italy? Answer:",
    "Write a short poem about autumn leaves.",
    "def fibonacci(n):",
    "Review: The film was long but the acting was superb. Sentiment:",
};

[[noreturn]] void usage_error(const std::string& message) {
  std::cerr
      << "softprompt_serve_load: " << message << "\n"
      << "usage: softprompt_serve_load [--url URL | --host HOST --port PORT | --port-file F]\n"
         "         --adapters A,B,... [--requests 64] [--concurrency 64] [--max-tokens 32]\n"
         "         [--prompt-file JSONL] [--responses JSONL] [--timeout S] [--json]\n"
         "         [--no-preconnect]\n";
  std::exit(2);
}

std::vector<std::string> split_commas(const std::string& text) {
  std::vector<std::string> parts;
  std::stringstream stream(text);
  for (std::string part; std::getline(stream, part, ',');)
    if (!part.empty()) parts.push_back(part);
  return parts;
}

int64_t positive(const std::string& flag, const std::string& text) {
  try {
    size_t used = 0;
    const long long value = std::stoll(text, &used);
    if (used == text.size() && value > 0) return value;
  } catch (const std::exception&) {
  }
  usage_error(flag + " takes a positive integer, got '" + text + "'");
}

Options parse_options(int argc, char** argv) {
  Options o;
  for (int i = 1; i < argc; ++i) {
    const std::string flag = argv[i];
    if (flag == "--json") {
      o.json = true;
      continue;
    }
    if (flag == "--no-preconnect") {
      o.preconnect = false;
      continue;
    }
    if (flag == "-h" || flag == "--help") usage_error("a load generator for softprompt serve");
    if (i + 1 >= argc) usage_error(flag + " needs a value");
    const std::string value = argv[++i];
    if (flag == "--url")
      o.url = value;
    else if (flag == "--host")
      o.host = value;
    else if (flag == "--port")
      o.port = int(positive(flag, value));
    else if (flag == "--port-file")
      o.port_file = value;
    else if (flag == "--adapters")
      o.adapters = split_commas(value);
    else if (flag == "--requests")
      o.requests = positive(flag, value);
    else if (flag == "--concurrency")
      o.concurrency = positive(flag, value);
    else if (flag == "--max-tokens")
      o.max_tokens = positive(flag, value);
    else if (flag == "--prompt-file")
      o.prompt_file = value;
    else if (flag == "--responses")
      o.responses_file = value;
    else if (flag == "--timeout")
      o.timeout_s = double(positive(flag, value));
    else
      usage_error("unknown option " + flag);
  }
  if (o.adapters.empty()) usage_error("--adapters needs at least one adapter (or base model) id");
  return o;
}

// JSONL, one {"input": "..."} per line (the format of softprompt's datasets); blank lines skipped.
std::vector<std::string> read_prompts(const std::string& path) {
  std::ifstream file(path);
  if (!file) throw std::runtime_error("cannot open " + path);
  std::vector<std::string> prompts;
  int line_number = 0;
  for (std::string line; std::getline(file, line);) {
    ++line_number;
    if (line.find_first_not_of(" \t\r") == std::string::npos) continue;
    const nlohmann::json row = nlohmann::json::parse(line, nullptr, false);
    if (!row.is_object() || !row.contains("input") || !row["input"].is_string())
      throw std::runtime_error(path + ":" + std::to_string(line_number) +
                               ": expected {\"input\": \"...\"}");
    prompts.push_back(row["input"].get<std::string>());
  }
  if (prompts.empty()) throw std::runtime_error(path + " holds no prompts");
  return prompts;
}

// The server's base URL; a port file is read after the server wrote it, hence at run time.
std::string base_url(const Options& o) {
  if (!o.url.empty()) return o.url;
  int port = o.port;
  if (!o.port_file.empty()) {
    std::ifstream file(o.port_file);
    if (!(file >> port)) throw std::runtime_error("no port in " + o.port_file);
  }
  return "http://" + o.host + ":" + std::to_string(port);
}

struct Result {
  int status = 0;  // HTTP status; 0 when the connection failed
  double latency_s = 0;
  int64_t prompt_tokens = 0, completion_tokens = 0;
  std::string text, finish_reason, error;
};

Result send_one(httplib::Client& client, const nlohmann::json& body) {
  Result result;
  const auto start = Clock::now();
  const httplib::Result response = client.Post("/v1/completions", body.dump(), "application/json");
  result.latency_s = std::chrono::duration<double>(Clock::now() - start).count();
  if (!response) {
    result.error = "connection failed: " + httplib::to_string(response.error());
    return result;
  }
  result.status = response->status;
  const nlohmann::json reply = nlohmann::json::parse(response->body, nullptr, false);
  if (result.status != 200 || !reply.is_object() || !reply.contains("choices")) {
    result.error = response->body.substr(0, 300);
    return result;
  }
  const nlohmann::json& choice = reply["choices"].at(0);
  result.text = choice.value("text", "");
  result.finish_reason = choice.value("finish_reason", "");
  const nlohmann::json usage = reply.value("usage", nlohmann::json::object());
  result.prompt_tokens = usage.value("prompt_tokens", int64_t(0));
  result.completion_tokens = usage.value("completion_tokens", int64_t(0));
  return result;
}

// Nearest-rank percentile of sorted values.
double percentile(const std::vector<double>& sorted, double p) {
  if (sorted.empty()) return 0;
  const size_t rank = size_t(std::ceil(p / 100.0 * double(sorted.size())));
  return sorted[std::clamp<size_t>(rank, 1, sorted.size()) - 1];
}

int run(const Options& o) {
  const std::vector<std::string> prompts =
      o.prompt_file.empty() ? kBuiltinPrompts : read_prompts(o.prompt_file);
  const std::string url = base_url(o);
  std::vector<nlohmann::json> bodies;
  for (int64_t i = 0; i < o.requests; ++i) {
    // Greedy, a fixed length and no stop strings: every request decodes max_tokens tokens unless
    // the model emits EOS, so both sides of a comparison do the same work.
    bodies.push_back({{"model", o.adapters[size_t(i) % o.adapters.size()]},
                      {"prompt", prompts[size_t(i) % prompts.size()]},
                      {"max_tokens", o.max_tokens},
                      {"temperature", 0},
                      {"seed", 0},
                      {"stream", false}});
  }

  std::vector<Result> results(size_t(o.requests));
  std::atomic<int64_t> next{0};
  const int64_t workers = std::min(o.concurrency, o.requests);
  const auto timeout = std::chrono::duration<double>(o.timeout_s);
  std::latch connected(workers), go(1);
  std::mutex connect_mutex;
  std::vector<std::thread> threads;
  for (int64_t w = 0; w < workers; ++w) {
    threads.emplace_back([&] {
      httplib::Client client(url);  // one keep-alive connection per worker
      client.set_keep_alive(true);
      client.set_connection_timeout(std::chrono::seconds(10));
      client.set_read_timeout(timeout);
      client.set_write_timeout(timeout);
      if (o.preconnect) {
        // Connections open one at a time before the clock starts: a burst of connects overflows
        // a small listen backlog (cpp-httplib's default is 5), and the timing is about serving.
        const std::lock_guard<std::mutex> lock(connect_mutex);
        for (int attempt = 0; attempt < 5 && !client.Get("/health"); ++attempt)
          std::this_thread::sleep_for(std::chrono::milliseconds(200));
      }
      connected.count_down();
      go.wait();
      for (int64_t i; (i = next.fetch_add(1)) < o.requests;) {
        try {
          results[size_t(i)] = send_one(client, bodies[size_t(i)]);
        } catch (const std::exception& e) {  // a 200 whose body is not a completion
          results[size_t(i)].status = 0;
          results[size_t(i)].error = std::string("bad response: ") + e.what();
        }
      }
    });
  }
  connected.wait();
  const auto start = Clock::now();
  go.count_down();
  for (std::thread& thread : threads) thread.join();
  const double wall_s = std::chrono::duration<double>(Clock::now() - start).count();

  int64_t ok = 0, prompt_tokens = 0, completion_tokens = 0;
  std::vector<double> latencies;
  for (size_t i = 0; i < results.size(); ++i) {
    const Result& r = results[i];
    if (r.status == 200) {
      ++ok;
      prompt_tokens += r.prompt_tokens;
      completion_tokens += r.completion_tokens;
      latencies.push_back(r.latency_s);
    } else {
      std::cerr << "request " << i << " (" << bodies[i]["model"].get<std::string>() << "): status "
                << r.status << ": " << r.error << "\n";
    }
  }
  std::sort(latencies.begin(), latencies.end());

  if (!o.responses_file.empty()) {
    std::ofstream out(o.responses_file);
    for (size_t i = 0; i < results.size(); ++i)
      out << nlohmann::json{{"index", i},
                            {"model", bodies[i]["model"]},
                            {"prompt", bodies[i]["prompt"]},
                            {"status", results[i].status},
                            {"text", results[i].text},
                            {"finish_reason", results[i].finish_reason},
                            {"prompt_tokens", results[i].prompt_tokens},
                            {"completion_tokens", results[i].completion_tokens},
                            {"latency_s", results[i].latency_s}}
                 .dump(-1, ' ', false, nlohmann::json::error_handler_t::replace)
          << "\n";
    if (!out) throw std::runtime_error("cannot write " + o.responses_file);
  }

  const nlohmann::json summary = {{"requests", o.requests},
                                  {"ok", ok},
                                  {"failed", o.requests - ok},
                                  {"concurrency", workers},
                                  {"adapters", o.adapters.size()},
                                  {"max_tokens", o.max_tokens},
                                  {"wall_s", wall_s},
                                  {"requests_per_s", double(ok) / wall_s},
                                  {"completion_tokens", completion_tokens},
                                  {"prompt_tokens", prompt_tokens},
                                  {"tokens_per_s", double(completion_tokens) / wall_s},
                                  {"latency_p50_s", percentile(latencies, 50)},
                                  {"latency_p95_s", percentile(latencies, 95)},
                                  {"latency_max_s", latencies.empty() ? 0.0 : latencies.back()}};
  if (o.json) {
    std::cout << summary.dump() << "\n";
  } else {
    std::printf(
        "%lld/%lld requests ok in %.3f s (concurrency %lld, %zu adapters)\n"
        "  %.2f requests/s, %.1f completion tokens/s (%lld tokens)\n"
        "  latency p50 %.3f s, p95 %.3f s, max %.3f s\n",
        static_cast<long long>(ok), static_cast<long long>(o.requests), wall_s,
        static_cast<long long>(workers), o.adapters.size(), double(ok) / wall_s,
        double(completion_tokens) / wall_s, static_cast<long long>(completion_tokens),
        percentile(latencies, 50), percentile(latencies, 95),
        latencies.empty() ? 0.0 : latencies.back());
  }
  return ok == o.requests ? 0 : 1;
}

}  // namespace

int main(int argc, char** argv) {
  try {
    return run(parse_options(argc, argv));
  } catch (const std::exception& e) {
    std::cerr << "softprompt_serve_load: " << e.what() << "\n";
    return 1;
  }
}
