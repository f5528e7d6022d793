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
# Data parallel with NCCL needs two GPUs (NCCL refuses two ranks on one device): 2 ranks x batch 2
# must write the adapter of one process with --grad-accum 2, byte for byte, as on the CPU.
gpus=$(nvidia-smi -L 2>/dev/null | grep -c '^GPU' || true)
if [ "${gpus:-0}" -ge 2 ]; then
  dp_dir=$(mktemp -d)
  data_parallel_check() {
    local data="$dp_dir/train.jsonl" model=tests/fixtures/gpt2_tiny_a
    for w in hot up big day open left fast old wet; do
      echo "{\"input\": \"The opposite of $w is\", \"output\": \" x\"}"
    done >"$data"
    local args=(train --model "$model" --data "$data" --batch-size 2 --num-virtual-tokens 3 --max-steps 6 -q)
    mpiexec -n 2 "$build/cli/softprompt" "${args[@]}" --device cuda --output "$dp_dir/two" &&
      "$build/cli/softprompt" "${args[@]}" --device cuda:0 --grad-accum 2 --output "$dp_dir/one" &&
      cmp "$dp_dir/two/adapter_model.safetensors" "$dp_dir/one/adapter_model.safetensors"
  }
  step "data parallel: mpiexec -n 2 train --device cuda (NCCL) = 1 GPU with --grad-accum 2" data_parallel_check
  step "data parallel: mpiexec -n 2 bench --device cuda (NCCL)" mpiexec -n 2 "$build/cli/softprompt" bench --device cuda --batch-size 4
  rm -rf "$dp_dir"
else
  echo "gpu_check: fewer than 2 GPUs: the NCCL data-parallel checks are skipped"
fi
step "softprompt bench --device cpu (for comparison)" "$build/cli/softprompt" bench --device cpu --steps 2

echo
echo "=== gpu_check summary ($build)"
failed=0
for line in "${summary[@]}"; do
  echo "  $line"
  [[ $line == FAILED* ]] && failed=1
done
exit $failed
