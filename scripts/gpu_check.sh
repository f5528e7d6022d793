#!/usr/bin/env bash
# What a machine with a GPU runs (about 5 minutes on 16 cores and an H100): builds softprompt with
# the real CUDA backend, runs the suite (the op table then compares every op on cuda with the CPU)
# and the kernel suites on cuda:0, compute-sanitizer on the attention and cross-entropy kernels,
# and the train-step bench at GPT-2 small B=8 T=1024 (fp32 and bf16, dropout on and off); every
# figure lands in one JSON file.
#
# Usage: scripts/gpu_check.sh [--deps DIR] [--out DIR] [--build DIR]
#   --deps DIR   Debian packages from scripts/gpu_deps.sh, for a machine that has only the NVIDIA
#                driver, the CUDA toolkit, a C++ compiler and CMake; unpacked into /tmp and used
#                from there (softprompt is then built without MPI).
#   --out DIR    where gpu_check.json and the logs go (default: gpu-check-out)
#   --build DIR  build directory (default: build-gpu)
# With the device tool: run scripts/gpu_deps.sh here, then on the GPU machine, carrying .gpu-deps:
#   bash scripts/gpu_check.sh --deps .gpu-deps --out "$OUT"
set -uo pipefail
cd "$(dirname "$0")/.."
deps="" out="gpu-check-out" build="build-gpu"
while [ $# -gt 0 ]; do
  case $1 in
    --deps) deps=$2; shift 2 ;;
    --out) out=$2; shift 2 ;;
    --build) build=$2; shift 2 ;;
    *) echo "gpu_check: unknown argument '$1' (see the usage at the top of $0)" >&2; exit 2 ;;
  esac
done
mkdir -p "$out"
out=$(cd "$out" && pwd)
jobs=$(nproc)
started=$SECONDS
steps_json=""

# step NAME TIMEOUT COMMAND...: runs it with its output in $out/NAME.log, records status and time.
step() {
  local name=$1 limit=$2
  shift 2
  local start=$SECONDS status
  echo "=== gpu_check: $name"
  if declare -F "$1" >/dev/null; then  # a shell function: no timeout(1) for it
    "$@" >"$out/$name.log" 2>&1
  else
    timeout "$limit" "$@" >"$out/$name.log" 2>&1
  fi
  status=$?
  local verdict=ok
  [ $status -eq 124 ] && verdict=timeout
  [ $status -ne 0 ] && [ $status -ne 124 ] && verdict=failed
  echo "=== gpu_check: $name: $verdict ($((SECONDS - start)) s)"
  [ $verdict = ok ] || tail -n 25 "$out/$name.log"
  steps_json+="${steps_json:+,}{\"step\":\"$name\",\"result\":\"$verdict\",\"exit\":$status,\"seconds\":$((SECONDS - start))}"
  return $status
}

# ---- dependencies carried as Debian packages ----
cmake_args=(-DSOFTPROMPT_CUDA=ON -DCMAKE_BUILD_TYPE=Release -DSOFTPROMPT_BUILD_BENCH=OFF)
if [ -n "$deps" ]; then
  root=/tmp/softprompt-deps
  rm -rf "$root" && mkdir -p "$root"
  for deb in "$deps"/*.deb; do
    if command -v dpkg-deb >/dev/null; then
      dpkg-deb -x "$deb" "$root"
    else  # a .deb is an ar archive holding data.tar.xz (Debian 12's compression)
      ar p "$deb" data.tar.xz | tar -xJ -C "$root"
    fi
  done
  lib=$root/usr/lib/x86_64-linux-gnu
  # pkg-config files name /usr; point them at the unpacked tree.
  find "$root" -name '*.pc' -exec sed -i -E "s#(=[[:space:]]*)/usr#\1$root/usr#g" {} +
  export PKG_CONFIG_PATH="$lib/pkgconfig:$root/usr/share/pkgconfig:$lib/openblas-pthread/pkgconfig"
  export LD_LIBRARY_PATH="$lib:$lib/openblas-pthread${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
  export CPATH="$root/usr/include${CPATH:+:$CPATH}"
  command -v pkg-config >/dev/null || cmake_args+=(-DPKG_CONFIG_EXECUTABLE="$root/usr/bin/pkgconf")
  cmake_args+=(-DCMAKE_PREFIX_PATH="$root/usr" -DSOFTPROMPT_MPI=OFF)
fi
# Only this machine's GPU architecture: a third of the device-code compile time.
arch=$(nvidia-smi --query-gpu=compute_cap --format=csv,noheader 2>/dev/null | head -n 1 | tr -d '.')
[ -n "$arch" ] && cmake_args+=(-DSOFTPROMPT_CUDA_ARCHITECTURES="$arch")
command -v ninja >/dev/null && cmake_args+=(-G Ninja)
nvidia-smi >"$out/nvidia-smi.log" 2>&1

step configure 300 cmake -S . -B "$build" "${cmake_args[@]}"
step build 900 cmake --build "$build" -j "$jobs"
step probe 60 "$build/engine/cuda/softprompt_cuda_probe"

# The whole suite with cuda:0 present: exact fp32 GEMMs (not TF32) for the fp32 tolerances, and a
# synchronisation after every launch, so that a faulting kernel is named.
step suite 600 env SOFTPROMPT_CUDA_TF32=0 SOFTPROMPT_CUDA_SYNC=1 \
  ctest --test-dir "$build" -j "$jobs" --output-on-failure --timeout 300
# The kernel suites on cuda:0 (they default to the emulator), large shapes included.
kernel_suites='CudaKernels*:*CudaAttention*:CudaLargeShapes*:CudaGemmEpilogues.FeedForward*:CudaGemmEpilogues.Other*'
step kernels-on-cuda 600 env SOFTPROMPT_CUDA_TEST_DEVICE=cuda:0 SOFTPROMPT_CUDA_TF32=0 \
  SOFTPROMPT_CUDA_SYNC=1 "$build/tests/cuda/test_cuda" --gtest_filter="$kernel_suites" \
  --gtest_output="json:$out/kernels-on-cuda.json"
# A prompt-tuning forward and backward captured into a CUDA graph and replayed (no
# SOFTPROMPT_CUDA_SYNC: a capture cannot synchronise).
step graphs-on-cuda 300 env SOFTPROMPT_CUDA_TEST_DEVICE=cuda:0 SOFTPROMPT_CUDA_TF32=0 \
  "$build/tests/cuda/test_cuda" --gtest_filter='CudaGraphs.OnTheKernelDevice*' \
  --gtest_output="json:$out/graphs-on-cuda.json"
# compute-sanitizer on small attention and cross-entropy cases: out-of-bounds and misaligned
# accesses (memcheck), shared-memory races (racecheck), missing barriers (synccheck).
sanitized='*CudaAttention.TensorCore*/causal_two_query_tiles*:*CudaAttention.TensorCore*/head_dim_64'
sanitized+=':*CudaAttention.FusedDropoutMatchesCpu/causal_two_query_tiles*'
sanitized+=':*CudaKernels.CrossEntropy*F32_3x769'
for tool in memcheck racecheck synccheck; do
  step "sanitizer-$tool" 300 env SOFTPROMPT_CUDA_TEST_DEVICE=cuda:0 \
    compute-sanitizer --tool "$tool" --error-exitcode 1 \
    "$build/tests/cuda/test_cuda" --gtest_filter="$sanitized"
done
# The train step at GPT-2 small's full context: 20 virtual + 1004 text tokens.
bench_json=""
for dtype in f32 bf16; do
  for dropout in on off; do
    flag=""
    [ $dropout = off ] && flag=--no-dropout
    name="bench-$dtype-dropout-$dropout"
    if step "$name" 300 "$build/cli/softprompt" bench --device cuda --dtype $dtype \
      --batch-size 8 --seq-len 1004 --virtual-tokens 20 --steps 5 --warmup 2 \
      --skip-generation --json -q $flag; then
      bench_json+="${bench_json:+,}\"$name\":$(sed -n '/^{/,$p' "$out/$name.log")"
    fi
  done
done
# Decode speed, for the record.
step bench-generate-bf16 300 "$build/cli/softprompt" bench --device cuda --dtype bf16 \
  --steps 1 --gen-batch 16 --gen-tokens 128 --json -q &&
  bench_json+="${bench_json:+,}\"bench-generate-bf16\":$(sed -n '/^{/,$p' "$out/bench-generate-bf16.log")"

# Data parallel with NCCL needs two GPUs and an MPI build: 2 ranks x batch 2 must write the
# adapter of one process with --grad-accum 2, byte for byte, as on the CPU.
gpus=$(nvidia-smi -L 2>/dev/null | grep -c '^GPU' || true)
if [ "${gpus:-0}" -ge 2 ] && [ -z "$deps" ] && command -v mpiexec >/dev/null; then
  data_parallel_check() {
    local data="$out/dp-train.jsonl" model=tests/fixtures/gpt2_tiny_a
    for w in hot up big day open left fast old wet; do
      echo "{\"input\": \"The opposite of $w is\", \"output\": \" x\"}"
    done >"$data"
    local args=(train --model "$model" --data "$data" --batch-size 2 --num-virtual-tokens 3 --max-steps 6 -q)
    mpiexec -n 2 "$build/cli/softprompt" "${args[@]}" --device cuda --output "$out/dp-two" &&
      "$build/cli/softprompt" "${args[@]}" --device cuda:0 --grad-accum 2 --output "$out/dp-one" &&
      cmp "$out/dp-two/adapter_model.safetensors" "$out/dp-one/adapter_model.safetensors"
  }
  step data-parallel-nccl 300 data_parallel_check
fi

gpu=$(nvidia-smi --query-gpu=name,driver_version --format=csv,noheader 2>/dev/null | head -n 1)
cat >"$out/gpu_check.json" <<EOF
{"gpu":"$gpu","commit":"$(git rev-parse HEAD 2>/dev/null)","seconds":$((SECONDS - started)),
"steps":[$steps_json],
"bench":{$bench_json}}
EOF
echo "=== gpu_check: $((SECONDS - started)) s; figures in $out/gpu_check.json"
grep -q '"result":"\(failed\|timeout\)"' "$out/gpu_check.json" && exit 1
exit 0
