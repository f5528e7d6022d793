// softprompt serve: one frozen model and many soft prompts behind an OpenAI-compatible HTTP API
// (completions, streaming, models, health, adapter load/unload), with graceful shutdown.
#include <arpa/inet.h>
#include <httplib.h>
#include <netinet/in.h>
#include <signal.h>
#include <sys/socket.h>
#include <unistd.h>

#include <CLI/CLI.hpp>
#include <atomic>
#include <cerrno>
#include <chrono>
#include <cstdio>
#include <filesystem>
#include <thread>

#include "cli/commands.h"
#include "cli/common.h"
#include "cli/serve_api.h"
#include "cli/train_pipeline.h"
#include "cli/validate.h"
#include "engine/error.h"
#include "engine/safetensors.h"
#include "peft/generation_service.h"

namespace sp::cli {

namespace {

namespace fs = std::filesystem;
using Clock = std::chrono::steady_clock;

int g_signal_pipe[2] = {-1, -1};

void forward_signal(int signal_number) {
  const unsigned char byte = static_cast<unsigned char>(signal_number);
  const int saved = errno;
  if (write(g_signal_pipe[1], &byte, 1) < 0) {
  }  // nothing async-signal-safe to do about a full pipe
  errno = saved;
}

struct ServeOptions {
  CommonOptions common;
  std::string model, model_name, adapters_dir, host = "127.0.0.1", port_file;
  std::vector<std::string> adapters;
  int port = 8000;
  ServiceOptions service;
  int64_t max_body_bytes = 1 << 20;
  double request_timeout_s = 600, shutdown_timeout_s = 30;
  bool no_prefix_cache = false;
  int http_threads = 0;
};

void send_json(httplib::Response& res, int status, const nlohmann::json& body) {
  res.status = status;
  res.set_content(dump_json(body), "application/json");
}

void send_error(httplib::Response& res, const ServiceError& error) {
  if (error.status() == 429 || error.status() == 503) res.set_header("Retry-After", "1");
  send_json(res, error.status(), error_json(error));
}

std::string format_seconds(double seconds) {
  char text[32];
  std::snprintf(text, sizeof text, "%g s", seconds);
  return text;
}

int64_t unix_time() {
  return std::chrono::duration_cast<std::chrono::seconds>(
             std::chrono::system_clock::now().time_since_epoch())
      .count();
}

// A run-time adapter load names a directory under --adapters-dir; nothing outside it.
std::string adapter_path(const std::string& adapters_dir, const std::string& relative) {
  if (adapters_dir.empty())
    throw ServiceError(403, "forbidden",
                       "loading adapters at run time needs the server started with --adapters-dir");
  const fs::path root = fs::weakly_canonical(adapters_dir);
  const fs::path path = fs::weakly_canonical(root / relative);
  const std::string root_text = root.string() + "/", path_text = path.string();
  if (relative.empty() || fs::path(relative).is_absolute() || path_text.rfind(root_text, 0) != 0)
    throw ServiceError(
        400, "invalid_request_error",
        "adapter path '" + relative + "' must name a directory inside --adapters-dir");
  return path_text;
}

// Debian's cpp-httplib is built with a listen backlog of 5: a burst of clients connecting at
// once (64 is an ordinary load) overflows it and the kernel drops connections. listen() on the
// already listening socket raises its backlog; the socket is found by its port.
void widen_listen_backlog(int port) {
  for (const auto& entry : fs::directory_iterator("/proc/self/fd")) {
    const int fd = std::atoi(entry.path().filename().c_str());
    int listening = 0;
    socklen_t size = sizeof listening;
    sockaddr_storage address{};
    socklen_t address_size = sizeof address;
    if (getsockopt(fd, SOL_SOCKET, SO_ACCEPTCONN, &listening, &size) != 0 || !listening) continue;
    if (getsockname(fd, reinterpret_cast<sockaddr*>(&address), &address_size) != 0) continue;
    const int bound = address.ss_family == AF_INET6
                          ? ntohs(reinterpret_cast<sockaddr_in6*>(&address)->sin6_port)
                          : ntohs(reinterpret_cast<sockaddr_in*>(&address)->sin_port);
    if (bound == port) ::listen(fd, SOMAXCONN);
  }
}

class Server {
 public:
  Server(ServeOptions& options, GenerationService& service, std::string base_id)
      : options_(options), service_(service), base_id_(std::move(base_id)) {}

  void install_routes(httplib::Server& http) {
    http.Get("/health", [this](const httplib::Request&, httplib::Response& res) { health(res); });
    http.Get("/v1/models",
             [this](const httplib::Request&, httplib::Response& res) { models(res); });
    http.Post("/v1/completions", [this](const httplib::Request& req, httplib::Response& res) {
      handle(res, [&] { complete(req, res); });
    });
    http.Post("/v1/adapters", [this](const httplib::Request& req, httplib::Response& res) {
      handle(res, [&] { load_adapter(req, res); });
    });
    http.Delete(R"(/v1/adapters/([^/]+))",
                [this](const httplib::Request& req, httplib::Response& res) {
                  handle(res, [&] {
                    const std::string name = req.matches[1];
                    service_.unload_adapter(name);
                    send_json(res, 200, {{"id", name}, {"object", "model"}, {"deleted", true}});
                  });
                });
    // Errors httplib produces itself (404 route, 413 body too large, 400 bad request line) get
    // the same JSON error body as ours.
    http.set_error_handler(httplib::Server::HandlerWithResponse([](const httplib::Request& req,
                                                                   httplib::Response& res) {
      if (!res.body.empty()) return httplib::Server::HandlerResponse::Unhandled;
      std::string message = res.status == 404   ? "no route for " + req.method + " " + req.path
                            : res.status == 413 ? "the request body is larger than --max-body-bytes"
                                                : "HTTP error " + std::to_string(res.status);
      send_json(res, res.status,
                error_json(ServiceError(res.status, "invalid_request_error", message)));
      return httplib::Server::HandlerResponse::Handled;
    }));
    http.set_exception_handler(
        [](const httplib::Request&, httplib::Response& res, std::exception_ptr error) {
          std::string message = "unknown error";
          try {
            std::rethrow_exception(error);
          } catch (const std::exception& e) {
            message = e.what();
          } catch (...) {
          }
          send_json(res, 500, error_json(ServiceError(500, "internal_error", message)));
        });
  }

 private:
  template <class Body>
  void handle(httplib::Response& res, Body body) {
    try {
      body();
    } catch (const ServiceError& e) {
      send_error(res, e);
    } catch (const std::exception& e) {
      send_error(res, ServiceError(400, "invalid_request_error", e.what()));
    }
  }

  void health(httplib::Response& res) {
    const ServiceStats stats = service_.stats();
    const bool stopping = stopping_.load();
    send_json(res, stopping ? 503 : 200,
              {{"status", stopping ? "shutting_down" : "ok"},
               {"queued", stats.queued},
               {"active", stats.active},
               {"completed", stats.completed},
               {"failed", stats.failed},
               {"generated_tokens", stats.generated_tokens},
               {"prefix_cache",
                {{"hits", stats.prefix_cache_hits}, {"misses", stats.prefix_cache_misses}}},
               {"adapters", service_.adapters().size()}});
  }

  void models(httplib::Response& res) {
    nlohmann::json data = nlohmann::json::array();
    auto entry = [&](const std::string& id, const char* kind) {
      data.push_back({{"id", id},
                      {"object", "model"},
                      {"created", started_},
                      {"owned_by", "softprompt"},
                      {"kind", kind}});
    };
    entry(base_id_, "base");
    for (const std::string& name : service_.adapters()) entry(name, "adapter");
    send_json(res, 200, {{"object", "list"}, {"data", data}});
  }

  void load_adapter(const httplib::Request& req, httplib::Response& res) {
    nlohmann::json body = nlohmann::json::parse(req.body, nullptr, false);
    if (!body.is_object() || !body.contains("name") || !body["name"].is_string())
      throw ServiceError(
          400, "invalid_request_error",
          "the body must be {\"name\": ..., \"path\": optional directory inside --adapters-dir}");
    const std::string name = body["name"];
    if (name.empty() || name == base_id_ || name.find('/') != std::string::npos)
      throw ServiceError(400, "invalid_request_error",
                         "'name' must be a non-empty name without '/' other than the base model's");
    std::string relative = name;
    if (body.contains("path")) {
      if (!body["path"].is_string())
        throw ServiceError(400, "invalid_request_error", "'path' must be a string");
      relative = body["path"];
    }
    const std::string dir = adapter_path(options_.adapters_dir, relative);
    std::vector<std::string> tasks;
    try {
      tasks = read_task_names(dir);
    } catch (const std::exception& e) {
      throw ServiceError(400, "invalid_request_error", e.what());
    }
    service_.load_adapter(name, dir, tasks);
    send_json(
        res, 201,
        {{"id", name}, {"object", "model"}, {"created", unix_time()}, {"owned_by", "softprompt"}});
  }

  void complete(const httplib::Request& req, httplib::Response& res) {
    CompletionCall call = parse_completion_call(req.body, base_id_);
    std::shared_ptr<CompletionHandle> handle = service_.submit(call.request);
    const std::string id = "cmpl-" + std::to_string(next_id_++);
    const int64_t created = unix_time();
    if (!call.stream) {
      CompletionUpdate done = handle->wait();
      if (done.error) throw *done.error;
      send_json(res, 200, completion_json(id, created, call.model, done.text, &done));
      return;
    }
    res.set_header("Cache-Control", "no-cache");
    res.set_chunked_content_provider(
        "text/event-stream", [handle, id, created, model = call.model, last_write = Clock::now()](
                                 size_t, httplib::DataSink& sink) mutable {
          CompletionUpdate update = handle->next(Clock::now() + std::chrono::milliseconds(500));
          auto write = [&](const std::string& text) {
            last_write = Clock::now();
            return sink.write(text.data(), text.size());
          };
          if (!update.text.empty() &&
              !write(sse_event(completion_json(id, created, model, update.text, nullptr))))
            return false;  // the client went away: dropping the handle cancels the request
          if (!update.finished) {
            // A comment now and then finds clients that left while nothing was generated.
            if (Clock::now() - last_write > std::chrono::seconds(5))
              return write(": keep-alive\n\n");
            return true;
          }
          if (update.error)
            write(sse_event(error_json(*update.error)));
          else
            write(sse_event(completion_json(id, created, model, "", &update)));
          write("data: [DONE]\n\n");
          sink.done();
          return true;
        });
  }

 public:
  std::atomic<bool> stopping_{false};

 private:
  ServeOptions& options_;
  GenerationService& service_;
  std::string base_id_;
  std::atomic<int64_t> next_id_{1};
  int64_t started_ = unix_time();
};

}  // namespace

CommandRunner add_serve_command(CLI::App& app) {
  auto o = std::make_shared<ServeOptions>();
  CLI::App* cmd = app.add_subcommand(
      "serve", "Serve a model and its PEFT adapters over an OpenAI-compatible HTTP API");
  cmd->footer(kExitCodeHelp);
  add_common_options(*cmd, o->common);
  cmd->add_option("--model", o->model, "Hugging Face model directory (decoder-only)")->required();
  cmd->add_option("--model-name", o->model_name,
                  "the id that names the base model in requests (default: the directory's name)");
  cmd->add_option("--adapter", o->adapters, "NAME=DIR of a PEFT adapter; repeat for several");
  cmd->add_option("--adapters-dir", o->adapters_dir,
                  "load every adapter directory in DIR at start (named by its directory), and "
                  "allow POST /v1/adapters to load more from it");
  cmd->add_option("--host", o->host, "address to listen on")->capture_default_str();
  cmd->add_option("--port", o->port, "port; 0 picks a free one")
      ->capture_default_str()
      ->check(integer(0, 65535));
  cmd->add_option("--port-file", o->port_file, "write the port here once listening");
  cmd->add_option("--max-batch", o->service.max_batch, "requests decoded together")
      ->capture_default_str()
      ->check(integer(1, 4096));
  cmd->add_option("--max-queue", o->service.max_queue,
                  "requests waiting for a batch row before 429")
      ->capture_default_str()
      ->check(integer(0, 1 << 20));
  cmd->add_option("--max-context", o->service.max_context,
                  "positions per request (virtual + prompt + max_tokens); 0: the model's")
      ->capture_default_str()
      ->check(integer(0, kMaxTokens));
  cmd->add_option("--max-tokens-limit", o->service.max_tokens_limit,
                  "largest max_tokens a request may ask")
      ->capture_default_str()
      ->check(integer(1, kMaxTokens));
  cmd->add_option("--max-body-bytes", o->max_body_bytes, "larger request bodies get 413")
      ->capture_default_str()
      ->check(integer(64, int64_t(1) << 30));
  cmd->add_option("--request-timeout", o->request_timeout_s,
                  "seconds a request may wait and run (504 after)")
      ->capture_default_str()
      ->check(real(0, kNoLimit, Bound::kOpen));
  cmd->add_option(
         "--shutdown-timeout", o->shutdown_timeout_s,
         "on SIGTERM/SIGINT, seconds to let running requests finish before cancelling them")
      ->capture_default_str()
      ->check(real(0, kNoLimit));
  cmd->add_flag("--no-prefix-cache", o->no_prefix_cache,
                "recompute each request's soft prompt instead of reusing its keys/values");
  cmd->add_option(
         "--http-threads", o->http_threads,
         "connection threads (default: max-batch + max-queue + 8, so overload is answered at once)")
      ->check(integer(1, 1 << 16));

  return [o]() -> int {
    // SIGTERM/SIGINT write their number to a pipe that one thread watches (whichever thread the
    // signal lands on, including library threads started before this command ran).
    SP_CHECK(pipe(g_signal_pipe) == 0, "serve: cannot create a pipe for signals");
    struct sigaction action {};
    action.sa_handler = forward_signal;
    sigemptyset(&action.sa_mask);
    sigaction(SIGTERM, &action, nullptr);
    sigaction(SIGINT, &action, nullptr);
    signal(SIGPIPE, SIG_IGN);

    Device device = apply_common_options(o->common);
    LoadedModel loaded = load_model(o->model, device, model_dtype(o->common, device));
    if (!loaded.causal)
      fail(ErrorKind::kUnsupported, o->model,
           ": serve runs decoder-only models (gpt2, llama, mistral, qwen2); this is ",
           loaded.info().model_type);
    o->service.prefix_cache = !o->no_prefix_cache;
    o->service.request_timeout = std::chrono::milliseconds(int64_t(o->request_timeout_s * 1000.0));
    GenerationService service(loaded.peft(), loaded.tokenizer, o->service);
    std::vector<std::pair<std::string, std::string>> to_load;
    for (const std::string& spec : o->adapters) {
      const size_t eq = spec.find('=');
      if (eq == std::string::npos || eq == 0 || eq + 1 == spec.size())
        throw UsageError("--adapter takes NAME=DIR, got '" + spec + "'");
      to_load.emplace_back(spec.substr(0, eq), spec.substr(eq + 1));
    }
    if (!o->adapters_dir.empty()) {
      SP_CHECK(fs::is_directory(o->adapters_dir), "--adapters-dir ", o->adapters_dir,
               " is not a directory");
      std::vector<fs::path> dirs;
      for (const auto& entry : fs::directory_iterator(o->adapters_dir))
        if (entry.is_directory() && fs::exists(entry.path() / "adapter_config.json"))
          dirs.push_back(entry.path());
      std::sort(dirs.begin(), dirs.end());
      for (const fs::path& dir : dirs) to_load.emplace_back(dir.filename().string(), dir.string());
    }
    const std::string base_id = o->model_name.empty()
                                    ? fs::path(o->model).lexically_normal().filename().string()
                                    : o->model_name;
    for (const auto& [name, dir] : to_load) {
      SP_CHECK(name != base_id, "adapter name '", name,
               "' is the base model's id; rename it or pass --model-name");
      try {
        service.load_adapter(name, dir, read_task_names(dir));
      } catch (const ServiceError& e) {
        fail(ErrorKind::kFormat, "adapter '", name, "' (", dir, "): ", e.what());
      }
    }

    httplib::Server http;
    const int threads =
        o->http_threads > 0
            ? o->http_threads
            : int(std::min<int64_t>(o->service.max_batch + o->service.max_queue + 8, 1024));
    http.new_task_queue = [threads] { return new httplib::ThreadPool(size_t(threads)); };
    http.set_payload_max_length(size_t(o->max_body_bytes));
    http.set_keep_alive_timeout(2);
    http.set_read_timeout(30);
    http.set_write_timeout(30);
    Server server(*o, service, base_id);
    server.install_routes(http);
    int port = o->port;
    if (port == 0) {
      port = http.bind_to_any_port(o->host);
      if (port < 0) fail(ErrorKind::kUnsupported, "cannot listen on ", o->host, ": no free port");
    } else if (!http.bind_to_port(o->host, port)) {
      fail(ErrorKind::kUnsupported, "cannot listen on ", o->host, ":", port,
           " (in use, or not an address of this machine)");
    }
    widen_listen_backlog(port);
    if (!o->port_file.empty()) write_file_atomically(o->port_file, std::to_string(port) + "\n");
    const size_t adapter_count = service.adapters().size();
    note(o->common, "serving " + base_id + " with " + std::to_string(adapter_count) +
                        (adapter_count == 1 ? " adapter" : " adapters") + " on http://" + o->host +
                        ":" + std::to_string(port) + " (max batch " +
                        std::to_string(o->service.max_batch) + ", context " +
                        std::to_string(service.context_length()) + ")");

    std::atomic<bool> listening_done{false};
    std::thread signal_thread([&] {
      unsigned char received = 0;
      while (read(g_signal_pipe[0], &received, 1) < 0 && errno == EINTR) {
      }
      if (received == 0 || listening_done) return;  // the server ended on its own
      server.stopping_ = true;
      service.begin_shutdown();
      const ServiceStats stats = service.stats();
      note(o->common, std::string(received == SIGINT ? "SIGINT" : "SIGTERM") + ": finishing " +
                          std::to_string(stats.active + stats.queued) + " requests (up to " +
                          format_seconds(o->shutdown_timeout_s) + ")");
      const auto grace = std::chrono::milliseconds(int64_t(o->shutdown_timeout_s * 1000.0));
      if (!service.wait_idle(Clock::now() + grace))
        note(o->common, "shutdown: cancelling the requests still running");
      service.stop();
      // Handlers answering the cancelled requests finish before the listener closes.
      std::this_thread::sleep_for(std::chrono::milliseconds(200));
      http.stop();
    });
    const bool ok = http.listen_after_bind();
    listening_done = true;
    const unsigned char wake = 0;
    if (write(g_signal_pipe[1], &wake, 1) != 1) std::abort();
    signal_thread.join();
    service.stop();
    if (!ok && !server.stopping_)
      fail(ErrorKind::kUnsupported, "the HTTP listener on port ", port, " failed");
    note(o->common, "stopped");
    return kExitOk;
  };
}

}  // namespace sp::cli
