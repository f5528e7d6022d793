#!/usr/bin/env bash
# What a person with a GPU runs first: builds softprompt with the real CUDA backend in build-gpu,
# checks the device with softprompt_cuda_probe, runs the whole test suite (the op table then
# compares every op on "cuda" with the CPU, in fp32 and bf16), runs the benchmarks, and prints a
# summary. Usage: scripts/gpu_check.sh [build-dir] (default build-gpu); JOBS=n sets parallelism.
set -uo pipefail
cd "$(dirname "$0")/.."
build=${1:-build-gpu}
jobs=${JOBS:-$(nproc)}
declare -a summary
step() {  # step NAME COMMAND...: runs it, records ok/FAILED and the time taken
  local name=$1; shift
  local start=$SECONDS
  echo "=== gpu_check: $name"
  if "$@"; then
    summary+=("ok      $(printf '%5d' $((SECONDS - start))) s  $name")
  else
    summary+=("FAILED  $(printf '%5d' $((SECONDS - start))) s  $name")
  fi
}

if ! command -v nvidia-smi >/dev/null || ! nvidia-smi -L; then
  echo "gpu_check: no GPU visible (nvidia-smi); the suite would only run on cpu and cuda-emu" >&2
fi
step "configure ($build, -DSOFTPROMPT_CUDA=ON)" \
  cmake -S . -B "$build" -DSOFTPROMPT_CUDA=ON -DCMAKE_BUILD_TYPE=Release
step "build" cmake --build "$build" -j "$jobs"
step "device probe" "$build/engine/cuda/softprompt_cuda_probe"
# The suite compares fp32 on the GPU with the CPU at fp32 tolerances: exact fp32 GEMMs, not TF32;
# and it synchronises after every launch, so that a faulting kernel is named.
step "test suite (cpu, cuda-emu, cuda)" env SOFTPROMPT_CUDA_TF32=0 SOFTPROMPT_CUDA_SYNC=1 ctest --test-dir "$build" -j "$jobs" --output-on-failure
step "micro-benchmarks (bench_ops)" "$build/bench/bench_ops" --benchmark_counters_tabular=true
step "softprompt bench --device cuda (TF32 GEMMs on sm_80+)" "$build/cli/softprompt" bench --device cuda
step "softprompt bench --device cuda, exact fp32 GEMMs" env SOFTPROMPT_CUDA_TF32=0 "$build/cli/softprompt" bench --device cuda
step "softprompt bench --device cuda --dtype bf16" "$build/cli/softprompt" bench --device cuda --dtype bf16
step "softprompt bench --device cpu (for comparison)" "$build/cli/softprompt" bench --device cpu --steps 2

echo
echo "=== gpu_check summary ($build)"
failed=0
for line in "${summary[@]}"; do
  echo "  $line"
  [[ $line == FAILED* ]] && failed=1
done
exit $failed
