// Shared command plumbing.
#include "cli/common.h"
#include "cli/validate.h"

#include <CLI/CLI.hpp>
#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <span>
#include <thread>

#include "engine/backend.h"
#include "engine/cpu/cpu_backend.h"
#include "engine/error.h"
#include "engine/log.h"
#include "engine/thread_pool.h"
#include "models/model_loader.h"

namespace sp::cli {

namespace {
SingleProcessCommunicator g_single_process;
Communicator* g_ranks = &g_single_process;
}  // namespace

Communicator& ranks() {
  return *g_ranks;
}
void set_ranks(Communicator* communicator) {
  g_ranks = communicator ? communicator : &g_single_process;
}

void add_common_options(CLI::App& command, CommonOptions& options) {
  command
      .add_option("--device", options.device,
                  "cpu, cuda-emu (CUDA kernels emulated on the CPU) or cuda[:N]")
      ->capture_default_str()
      ->check(choice("cpu|cuda-emu|cuda[:N]", [](const std::string& s) { Device::parse(s); }));
  command
      .add_option("--threads", options.threads,
                  "CPU threads (default: SOFTPROMPT_NUM_THREADS or all cores)")
      ->check(integer(1, 1024));
  command
      .add_option("--dtype", options.dtype,
                  "frozen weights: f32, bf16 (bf16 GEMM weights; on the CPU activations stay "
                  "f32) or auto (bf16 where the device has native bf16 GEMMs)")
      ->capture_default_str()
      ->check(CLI::IsMember({"f32", "bf16", "auto"}));
  command.add_flag("-q,--quiet", options.quiet, "only print results and errors");
}

DType model_dtype(const CommonOptions& options, Device device) {
  DType dtype = DType::F32;
  if (options.dtype == "bf16") dtype = DType::BF16;
  // GPUs of sm_80+; CPUs whose bf16 GEMMs measure faster than fp32; not the emulator.
  if (options.dtype == "auto") {
    dtype = backend_for(device).native_bf16_gemm() ? DType::BF16 : DType::F32;
    if (device.is_cpu() && CpuBackend::cpu_has_native_bf16() && dtype == DType::F32) {
      char ratio[32];
      std::snprintf(ratio, sizeof ratio, "%.2fx", CpuBackend::measured_bf16_speedup());
      note(options, std::string("dtype auto: f32, since this CPU's bf16 GEMMs run at ") + ratio +
                        " the speed of its fp32 ones (measured)");
    }
  }
  if (ranks().size() > 1) {
    // Measured choices may differ between ranks; every rank must run rank 0's.
    double choice = dtype == DType::BF16 ? 1.0 : 0.0;
    if (!ranks().is_root()) choice = 0.0;
    ranks().all_reduce_sum(std::span<double>(&choice, 1));
    dtype = choice > 0 ? DType::BF16 : DType::F32;
  }
  if (dtype == DType::BF16 && device.is_cpu())
    note(options, "dtype bf16: bf16 GEMM weights, f32 activations; GEMMs: " +
                      CpuBackend::bf16_gemm_description());
  else if (device.is_cpu())
    note(options, "dtype f32 on cpu; GEMMs: " + CpuBackend::gemm_description());
  else
    note(options,
         std::string("dtype ") + (dtype == DType::BF16 ? "bf16" : "f32") + " on " + device.str());
  return dtype;
}

Device apply_common_options(const CommonOptions& options) {
  set_quiet(options.quiet);
  if (options.threads > 0) {
    set_num_threads(options.threads);
  } else if (ranks().local_size() > 1 && std::getenv("SOFTPROMPT_NUM_THREADS") == nullptr) {
    // Ranks sharing a machine share its cores: oversubscribed GEMM threads run far slower.
    const int cores = int(std::max(1u, std::thread::hardware_concurrency()));
    set_num_threads(std::max(1, cores / ranks().local_size()));
  }
  std::string device_text = options.device;
  if (device_text == "cuda" && ranks().size() > 1)
    device_text = "cuda:" + std::to_string(ranks().local_rank());  // one GPU per local rank
  Device device = Device::parse(device_text);
  if (!backend_available(device))
    fail(ErrorKind::kUnsupported, "device ", device.str(),
         " is not available in this build or on this machine");
  return device;
}

LoadedModel load_model(const std::string& dir, Device device, DType dtype) {
  LoadedModel loaded;
  loaded.dir = dir;
  if (read_model_type(dir) == "t5")
    loaded.seq2seq = load_seq2seq_lm(dir, device, dtype);
  else
    loaded.causal = load_causal_lm(dir, device, dtype);
  loaded.tokenizer = load_tokenizer(dir);
  if (loaded.tokenizer->vocab_size() > loaded.info().vocab_size)
    fail(ErrorKind::kFormat, dir, ": the tokenizer has ", loaded.tokenizer->vocab_size(),
         " tokens but the model's vocab_size is ", loaded.info().vocab_size);
  return loaded;
}

std::unique_ptr<PeftModel> LoadedModel::peft() const {
  return causal ? std::make_unique<PeftModel>(causal, tokenizer)
                : std::make_unique<PeftModel>(seq2seq, tokenizer);
}

void note(const CommonOptions& options, const std::string& message) {
  if (!options.quiet && ranks().is_root())
    std::fprintf(stderr, "%s: %s\n", log_prefix().c_str(), message.c_str());
}

}  // namespace sp::cli
