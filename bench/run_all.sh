#!/usr/bin/env bash
# Runs every benchmark of a build directory: the engine micro-benchmarks, the tokenizer, and the
# end-to-end `softprompt bench` (GPT-2 small train step and generation).
set -euo pipefail
build=${1:-build}
"$build/bench/bench_ops" --benchmark_counters_tabular=true
[ -x "$build/bench/bench_tokenizer" ] && "$build/bench/bench_tokenizer"
"$build/cli/softprompt" bench
