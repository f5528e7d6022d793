#!/usr/bin/env bash
# The CI step for the real CUDA backend: no GPU here, so it configures build-cuda with
# -DSOFTPROMPT_CUDA=ON and compiles + links only what contains the nvcc-built backend (the engine
# with its sm_80/sm_90 objects and softprompt_cuda_probe, the smallest program linking them), not
# the test suite. Prints how long configure and build took.
set -euo pipefail
cd "$(dirname "$0")/.."
build=${1:-build-cuda}
jobs=${JOBS:-2}
start=$SECONDS
mkdir -p "$build"
log="$build/ci_cuda_configure.log"
# shellcheck disable=SC2086  # CMAKE_FLAGS is a list of flags
cmake -S . -B "$build" -DSOFTPROMPT_CUDA=ON -DSOFTPROMPT_BUILD_TESTS=OFF -DSOFTPROMPT_BUILD_BENCH=OFF \
  -DCMAKE_BUILD_TYPE=Release ${CMAKE_FLAGS:-} >"$log" 2>&1 || { cat "$log"; exit 1; }
grep -q "real CUDA backend: ON" "$log" || { cat "$log"; echo "ci_cuda: nvcc not enabled" >&2; exit 1; }
configured=$SECONDS
echo "ci_cuda: configure took $((configured - start)) s"
cmake --build "$build" -j "$jobs" --target softprompt_cuda_probe
echo "ci_cuda: compile + link of the real CUDA backend (sm_80, sm_90) took $((SECONDS - configured)) s"
# Without a GPU the probe must still start and list the devices it can use (cpu, cuda-emu).
"$build/engine/cuda/softprompt_cuda_probe"
echo "ci_cuda: total $((SECONDS - start)) s"
