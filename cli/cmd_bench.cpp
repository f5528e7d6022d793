// softprompt bench: synthetic prompt-tuning train-step and generation throughput (tokens/s,
// ms/step, GEMM FLOP/s and % of this machine's measured sgemm peak, peak RSS).
#include <sys/resource.h>

#include <CLI/CLI.hpp>
#include <algorithm>
#include <chrono>
#include <cstdio>
#include <map>
#include <nlohmann/json.hpp>
#include <optional>

#include "cli/commands.h"
#include "cli/common.h"
#include "cli/validate.h"
#include "engine/backend.h"
#include "engine/cpu/cpu_backend.h"
#include "engine/error.h"
#include "engine/ops/ops.h"
#include "engine/optim/adamw.h"
#include "engine/thread_pool.h"
#include "models/gpt2.h"
#include "models/llama.h"
#include "peft/peft_model.h"
#include "peft/trainer.h"

namespace sp::cli {

namespace {

using Clock = std::chrono::steady_clock;

double seconds_since(Clock::time_point t) {
  return std::chrono::duration<double>(Clock::now() - t).count();
}

double peak_rss_mb() {
  rusage usage{};
  getrusage(RUSAGE_SELF, &usage);
  return double(usage.ru_maxrss) / 1024.0;
}

// This machine's fp32 GEMM peak as softprompt reaches it: the best of a few 2048^3 sgemms.
double measure_sgemm_gflops() {
  const int64_t n = 2048;
  std::vector<float> a(size_t(n * n), 0.5f), b(size_t(n * n), 0.25f), c(size_t(n * n));
  double best = 0;
  for (int i = 0; i < 3; ++i) {
    auto t = Clock::now();
    cpu_sgemm(false, false, n, n, n, 1.0f, a.data(), n, b.data(), n, 0.0f, c.data(), n, false);
    best = std::max(best, 2.0 * double(n * n * n) / seconds_since(t) / 1e9);
  }
  return best;
}

// Llama-family shapes with random weights: Llama 3.2 1B as published (GQA 32/8 heads, head_dim
// 64, tied embeddings, llama3 RoPE scaling), and a tiny one for tests.
std::optional<LlamaConfig> named_llama_config(const std::string& name) {
  LlamaConfig c;
  if (name == "llama-3.2-1b") {
    c.hidden_size = 2048, c.intermediate_size = 8192, c.num_layers = 16, c.num_heads = 32;
    c.num_kv_heads = 8, c.head_dim = 64, c.vocab_size = 128256, c.max_positions = 131072;
    c.rms_norm_eps = 1e-5, c.tie_word_embeddings = true, c.rope_theta = 500000.0;
    c.rope_type = "llama3", c.rope_factor = 32.0, c.low_freq_factor = 1.0;
    c.high_freq_factor = 4.0, c.original_max_positions = 8192;
  } else if (name == "llama-tiny") {
    c.hidden_size = 64, c.intermediate_size = 128, c.num_layers = 2, c.num_heads = 4;
    c.num_kv_heads = 2, c.head_dim = 16, c.vocab_size = 512, c.max_positions = 256;
  } else {
    return std::nullopt;
  }
  c.layer_window.assign(size_t(c.num_layers), 0);
  return c;
}

Gpt2Config named_config(const std::string& name) {
  Gpt2Config c;  // defaults are GPT-2 small (124M)
  if (name == "gpt2-small" || name == "gpt2") return c;
  if (name == "gpt2-medium") {
    c.n_embd = 1024, c.n_head = 16, c.n_layer = 24, c.n_inner = 4096;
    return c;
  }
  if (name == "gpt2-tiny") {
    c.n_embd = 64, c.n_head = 4, c.n_layer = 2, c.n_inner = 256, c.vocab_size = 512,
    c.n_positions = 256;
    return c;
  }
  fail(ErrorKind::kInvalidArgument, "unknown --config '", name,
       "': expected gpt2-small, gpt2-medium, gpt2-tiny, llama-3.2-1b or llama-tiny");
}

}  // namespace

CommandRunner add_bench_command(CLI::App& app) {
  struct Options {
    CommonOptions common;
    std::string config = "gpt2-small", model;
    int64_t batch = 8, seq = 128, virtual_tokens = 20, steps = 5, warmup = 1;
    int64_t gen_batch = 1, gen_prompt = 32, gen_tokens = 64;
    bool dropout = true, json = false, skip_generation = false;
    bool checkpoint_activations = false;
  };
  auto o = std::make_shared<Options>();
  CLI::App* cmd = app.add_subcommand(
      "bench", "Measure train-step and generation throughput on a synthetic batch");
  cmd->footer(kExitCodeHelp);
  add_common_options(*cmd, o->common);
  cmd->add_option("--config", o->config,
                  "random-weight architecture: gpt2-small, gpt2-medium, gpt2-tiny, "
                  "llama-3.2-1b, llama-tiny")
      ->capture_default_str()
      ->check(choice("gpt2-small|gpt2-medium|gpt2-tiny|llama-3.2-1b|llama-tiny",
                     [](const std::string& s) {
                       if (!named_llama_config(s)) named_config(s);
                     }));
  cmd->add_option("--model", o->model, "benchmark a real model directory instead");
  cmd->add_option("--batch-size", o->batch)
      ->capture_default_str()
      ->check(integer(1, kMaxBatchSize));
  cmd->add_option("--seq-len", o->seq, "text tokens per row (+ virtual tokens at most n_positions)")
      ->capture_default_str()
      ->check(integer(1, kMaxTokens));
  cmd->add_option("--virtual-tokens", o->virtual_tokens)
      ->capture_default_str()
      ->check(integer(1, kMaxVirtualTokens));
  cmd->add_option("--steps", o->steps, "timed train steps")
      ->capture_default_str()
      ->check(integer(1, kMaxSteps));
  cmd->add_option("--warmup", o->warmup, "untimed train steps first")
      ->capture_default_str()
      ->check(integer(0, kMaxSteps));
  cmd->add_option("--gen-batch", o->gen_batch)
      ->capture_default_str()
      ->check(integer(1, kMaxBatchSize));
  cmd->add_option("--gen-prompt", o->gen_prompt, "prompt tokens for the generation benchmark")
      ->capture_default_str()
      ->check(integer(1, kMaxTokens));
  cmd->add_option("--gen-tokens", o->gen_tokens, "new tokens to generate (0 = skip generation)")
      ->capture_default_str()
      ->check(integer(0, kMaxTokens));
  cmd->add_flag("!--no-dropout", o->dropout, "train-mode dropout off (PEFT trains with it on)");
  cmd->add_flag("--checkpoint-activations", o->checkpoint_activations);
  cmd->add_flag("--skip-generation", o->skip_generation);
  cmd->add_flag("--json", o->json, "print one JSON object");

  return [o]() -> int {
    if (o->batch * o->seq > kMaxBatchTokens)
      usage_error("--batch-size", std::to_string(o->batch) + " rows x --seq-len " +
                                      std::to_string(o->seq) + " tokens exceed the limit of " +
                                      std::to_string(kMaxBatchTokens) +
                                      " tokens per synthetic batch");
    Device device = apply_common_options(o->common);
    std::shared_ptr<CausalLM> base;
    const DType dtype = model_dtype(o->common, device);
    if (!o->model.empty()) {
      base = load_model(o->model, device, dtype).causal;
      SP_CHECK(base != nullptr,
               "bench: --model must be a causal LM (gpt2, llama, mistral, qwen2); ", o->model,
               " is not");
    } else if (auto llama = named_llama_config(o->config)) {
      base = LlamaModel::random(*llama, 1, device, dtype);
    } else {
      base = Gpt2Model::random(named_config(o->config), 1, device, dtype);
    }
    const ModelInfo& info = base->info();
    // Sizes against the context before the adapter and the batch are allocated.
    const int64_t room = text_positions(info, o->virtual_tokens, {"--virtual-tokens"});
    if (o->seq > room)
      usage_error("--seq-len", std::to_string(o->seq) + " exceeds the " + std::to_string(room) +
                                   " positions the model has after " +
                                   std::to_string(o->virtual_tokens) + " virtual tokens");
    if (!o->skip_generation && o->gen_tokens > 0 && o->gen_prompt > room - o->gen_tokens)
      usage_error("--gen-prompt", std::to_string(o->gen_prompt) + " prompt tokens + --gen-tokens " +
                                      std::to_string(o->gen_tokens) + " exceed the " +
                                      std::to_string(room) + " positions the model has after " +
                                      std::to_string(o->virtual_tokens) + " virtual tokens");
    const double peak = device.is_cpu() ? measure_sgemm_gflops() : 0.0;
    PeftModel model(base);
    PromptTuningConfig prompt;
    prompt.task_type = TaskType::kCausalLm;
    prompt.num_virtual_tokens = o->virtual_tokens;
    PromptAdapter& adapter = model.add_adapter("bench", prompt, 1);
    AdamW optimizer(adapter.parameters(), AdamWOptions{});
    // Under mpirun: data parallel, each rank on its own synthetic batch, gradients all-reduced.
    Communicator& comm = ranks();
    const bool parallel = comm.size() > 1;
    Generator gen(7 + uint64_t(comm.rank()));
    std::vector<int64_t> ids(size_t(o->batch * o->seq));
    for (auto& id : ids) id = gen.uniform_int(info.vocab_size);
    PeftBatch batch;
    batch.input_ids = Tensor::from_ints(ids, {o->batch, o->seq});
    batch.labels = batch.input_ids;
    ForwardOptions train;
    train.train = o->dropout;
    train.checkpoint_activations = o->checkpoint_activations;
    Backend& backend = backend_for(device);
    std::vector<double> times;
    double flops = 0;
    // Per timed step: what a GPU pays besides arithmetic (launches, host waits, allocations).
    uint64_t launches = 0, gemm_calls = 0, host_syncs = 0, device_allocations = 0;
    std::map<std::string, uint64_t, std::less<>> launches_by_kernel;
    std::map<std::string, KernelTraffic, std::less<>> traffic_by_kernel;
    double gemm_bytes = 0;
    std::vector<double> allreduce_times, wait_times;
    std::vector<Tensor> params = adapter.parameters();
    for (int64_t s = 0; s < o->warmup + o->steps; ++s) {
      backend.reset_stats();
      auto t = Clock::now();
      train.dropout_seed = uint64_t(s);
      PeftOutput out = model.forward(batch, train);
      out.loss.backward();
      if (parallel) {
        // The barrier separates waiting for the slowest rank from the all-reduce itself.
        backend.synchronize();
        auto c = Clock::now();
        comm.barrier();
        const double waited = seconds_since(c);
        c = Clock::now();
        std::vector<Tensor> grads;
        for (const Tensor& p : params) grads.push_back(p.grad());
        comm.all_reduce_sum(grads);
        if (s >= o->warmup) {
          allreduce_times.push_back(seconds_since(c));
          wait_times.push_back(waited);
        }
      }
      // The trainer's step: clipping and the non-finite skip decided on the device, then its one
      // host read, the loss with the gradient norm.
      const Tensor loss = out.loss.detach().reshape({1}).to(DType::F32);
      const Tensor norm = optimizer.step_if_finite(loss, TrainConfig{}.max_grad_norm);
      optimizer.zero_grad();
      (void)concat({loss, norm}, 0).to_floats();
      const BackendStats step_stats = backend.stats();  // before the timing sync, not counting it
      backend.synchronize();
      double elapsed = seconds_since(t);
      if (s >= o->warmup) {
        times.push_back(elapsed);
        flops += step_stats.gemm_flops;
        launches += step_stats.kernel_launches;
        gemm_calls += step_stats.gemm_calls;
        host_syncs += step_stats.host_syncs;
        device_allocations += step_stats.device_allocations;
        for (const auto& [kernel, count] : step_stats.launches_by_kernel)
          launches_by_kernel[kernel] += count;
        for (const auto& [kernel, traffic] : step_stats.traffic_by_kernel) {
          traffic_by_kernel[kernel].flops += traffic.flops;
          traffic_by_kernel[kernel].bytes += traffic.bytes;
        }
        gemm_bytes += step_stats.gemm_bytes;
      }
    }
    const double steps_timed = double(std::max<size_t>(times.size(), 1));
    nlohmann::json per_step = {
        {"kernel_launches", double(launches) / steps_timed},
        {"gemm_calls", double(gemm_calls) / steps_timed},
        {"launches_per_layer", double(launches + gemm_calls) / steps_timed /
                                   double(std::max<int64_t>(info.num_layers, 1))},
        {"host_syncs", double(host_syncs) / steps_timed},
        {"device_allocations", double(device_allocations) / steps_timed}};
    nlohmann::json per_kernel = nlohmann::json::object();
    for (const auto& [kernel, count] : launches_by_kernel)
      per_kernel[kernel] = double(count) / steps_timed;
    // Per kernel family and for the GEMMs: what a roofline estimate for a given GPU needs.
    nlohmann::json traffic = nlohmann::json::object();
    double kernel_flops = 0, kernel_bytes = 0;
    for (const auto& [kernel, t] : traffic_by_kernel) {
      traffic[kernel] = {{"flops", t.flops / steps_timed}, {"bytes", t.bytes / steps_timed}};
      kernel_flops += t.flops;
      kernel_bytes += t.bytes;
    }
    per_step["gemm_flops"] = flops / steps_timed;
    per_step["gemm_bytes"] = gemm_bytes / steps_timed;
    per_step["kernel_flops"] = kernel_flops / steps_timed;
    per_step["kernel_bytes"] = kernel_bytes / steps_timed;
    double total = 0;
    for (double t : times) total += t;
    const double mean = times.empty() ? 0 : total / double(times.size());
    const double best = times.empty() ? 0 : *std::min_element(times.begin(), times.end());
    const double tokens_per_s = mean > 0 ? double(o->batch * o->seq * comm.size()) / mean : 0;
    auto mean_ms = [](const std::vector<double>& values) {
      double sum = 0;
      for (double v : values) sum += v;
      return values.empty() ? 0.0 : sum / double(values.size()) * 1e3;
    };
    const double allreduce_ms = mean_ms(allreduce_times), wait_ms = mean_ms(wait_times);
    const double gemm_gflops = total > 0 ? flops / total / 1e9 : 0;

    double gen_tokens_per_s = 0, prefill_ms = 0, generation_warmup_ms = 0;
    if (!o->skip_generation && o->gen_tokens > 0 && !parallel) {
      std::vector<std::vector<int64_t>> prompts(size_t(o->gen_batch));
      for (auto& p : prompts)
        for (int64_t i = 0; i < o->gen_prompt; ++i) p.push_back(gen.uniform_int(info.vocab_size));
      GenerationConfig g;
      // One untimed call with a decode step first: like the train step's warm-up, it pays the
      // one-time costs (packing frozen bf16 weights, first allocations) that a long-lived model
      // pays once, so the figures are steady-state prefill and decode.
      g.max_new_tokens = 2;
      auto t = Clock::now();
      model.generate(prompts, g);
      generation_warmup_ms = seconds_since(t) * 1e3;
      g.max_new_tokens = 1;
      t = Clock::now();
      model.generate(prompts, g);
      prefill_ms = seconds_since(t) * 1e3;
      g.max_new_tokens = o->gen_tokens;
      t = Clock::now();
      model.generate(prompts, g);
      const double total = seconds_since(t), elapsed = total - prefill_ms / 1e3;
      // Decode time is the call's minus the prefill's, timed apart; where a few tiny decode steps
      // take less than the noise in that difference, the whole call's rate (prefill included) is
      // the honest lower bound, rather than 0 or a negative rate.
      gen_tokens_per_s = elapsed > 0.05 * total
                             ? double(o->gen_batch * (o->gen_tokens - 1)) / elapsed
                             : double(o->gen_batch * o->gen_tokens) / total;
    }
    const double rss = peak_rss_mb();
    nlohmann::json result = {{"model", o->model.empty() ? o->config : o->model},
                             {"device", device.str()},
                             {"dtype", dtype == DType::BF16 ? "bf16" : "f32"},
                             {"threads", num_threads()},
                             {"ranks", comm.size()},
                             {"allreduce_ms_per_step", allreduce_ms},
                             {"rank_wait_ms_per_step", wait_ms},
                             {"batch_size", o->batch},
                             {"seq_len", o->seq},
                             {"virtual_tokens", o->virtual_tokens},
                             {"dropout", o->dropout},
                             {"ms_per_step", mean * 1e3},
                             {"best_ms_per_step", best * 1e3},
                             {"tokens_per_s", tokens_per_s},
                             {"gemm_gflops", gemm_gflops},
                             {"machine_sgemm_gflops", peak},
                             {"gemm_peak_fraction", peak > 0 ? gemm_gflops / peak : 0.0},
                             {"generate_tokens_per_s", gen_tokens_per_s},
                             {"prefill_ms", prefill_ms},
                             {"generation_warmup_ms", generation_warmup_ms},
                             {"peak_rss_mb", rss},
                             {"per_step", per_step},
                             {"launches_by_kernel", per_kernel},
                             {"traffic_by_kernel", traffic}};
    if (!comm.is_root()) return kExitOk;
    if (o->json) {
      std::printf("%s\n", result.dump().c_str());
      return kExitOk;
    }
    std::printf(
        "model %s (%s), %lld threads, batch %lld x %lld tokens + %lld virtual tokens, dropout %s\n",
        result["model"].get<std::string>().c_str(), dtype == DType::BF16 ? "bf16" : "f32",
        (long long)num_threads(), (long long)o->batch, (long long)o->seq,
        (long long)o->virtual_tokens, o->dropout ? "on" : "off");
    std::printf("train step: %.1f ms (best %.1f ms), %.0f tokens/s\n", mean * 1e3, best * 1e3,
                tokens_per_s);
    if (parallel)
      std::printf(
          "data parallel: %d ranks x batch %lld; per step: gradient all-reduce %.3f ms, waiting "
          "for the slowest rank %.1f ms (%s)\n",
          comm.size(), (long long)o->batch, allreduce_ms, wait_ms, comm.description().c_str());
    if (!device.is_cpu())
      std::printf(
          "per step: %.0f kernel launches + %.0f GEMM calls (%.1f per layer), %.0f host syncs, "
          "%.0f device allocations\n",
          per_step["kernel_launches"].get<double>(), per_step["gemm_calls"].get<double>(),
          per_step["launches_per_layer"].get<double>(), per_step["host_syncs"].get<double>(),
          per_step["device_allocations"].get<double>());
    std::printf("GEMMs: %.1f GFLOP/s = %.0f%% of this machine's sgemm peak (%.1f GFLOP/s)\n",
                gemm_gflops, peak > 0 ? 100.0 * gemm_gflops / peak : 0.0, peak);
    if (gen_tokens_per_s > 0)
      std::printf("generation: prefill %.1f ms, %.1f tokens/s with the KV cache (batch %lld)\n",
                  prefill_ms, gen_tokens_per_s, (long long)o->gen_batch);
    std::printf("peak RSS: %.0f MB\n", rss);
    return kExitOk;
  };
}

}  // namespace sp::cli
