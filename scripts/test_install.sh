#!/usr/bin/env bash
# Checks softprompt the way an outside project sees it: installs an already-built BUILD_DIR into a
# temporary prefix and checks the layout, then builds examples/01_minimal_loop.cpp unchanged in a
# fresh project, once with find_package(softprompt) and once with add_subdirectory, and runs it on
# the fixture GPT-2. Prints each check; exits non-zero at the first failure.
#
# Usage: scripts/test_install.sh BUILD_DIR
# Environment: JOBS (parallel build jobs, default nproc), KEEP=1 keeps the temporary folder.
set -euo pipefail

if [ $# -ne 1 ]; then
  echo "usage: $0 BUILD_DIR (a configured and built softprompt build directory)" >&2
  exit 2
fi
repo=$(cd "$(dirname "$0")/.." && pwd)
build=$(cd "$1" && pwd)
jobs=${JOBS:-$(nproc)}
work=$(mktemp -d "${TMPDIR:-/tmp}/softprompt_install_test.XXXXXX")
prefix=$work/prefix
fixture_model=$repo/tests/fixtures/gpt2_tiny_a
example=$repo/examples/01_minimal_loop.cpp

finish() {
  local rc=$?
  if [ "$rc" -ne 0 ] || [ "${KEEP:-0}" = 1 ]; then
    echo "test_install: logs and projects kept in $work"
  else
    rm -rf "$work"
  fi
}
trap finish EXIT

ok() { echo "test_install: ok: $*"; }
fail() {
  echo "test_install: FAILED: $*" >&2
  exit 1
}
# run LOG COMMAND...: runs the command with its output in LOG, shown only when it fails.
run() {
  local log=$1
  shift
  if ! "$@" >"$log" 2>&1; then
    tail -n 60 "$log" >&2
    fail "$* (full log: $log)"
  fi
}

# ---- 1. install ----
run "$work/install.log" cmake --install "$build" --prefix "$prefix"
ok "cmake --install $build --prefix $prefix"

# ---- 2. layout ----
config=$(find "$prefix" -name softpromptConfig.cmake -path '*/cmake/softprompt/*' | head -n 1)
[ -n "$config" ] || fail "no softpromptConfig.cmake under $prefix"
config_dir=$(dirname "$config")
for file in softpromptConfigVersion.cmake softpromptTargets.cmake; do
  [ -f "$config_dir/$file" ] || fail "missing $config_dir/$file"
done
ok "package files in ${config_dir#"$prefix"/}"
for header in softprompt.h tensor.h models.h peft.h training.h version.h engine/tensor.h \
  engine/ops/ops.h engine/autograd.h engine/optim/adamw.h models/gpt2.h models/t5.h \
  models/tokenizer.h peft/config.h peft/peft_model.h peft/trainer.h; do
  [ -f "$prefix/include/softprompt/$header" ] || fail "missing include/softprompt/$header"
done
ok "public headers in include/softprompt (umbrella, grouped, and engine/ models/ peft/)"
libraries=$(find "$prefix" -name 'libsoftprompt_*.a' | wc -l)
[ "$libraries" -ge 3 ] || fail "expected the static libraries libsoftprompt_*.a, found $libraries"
ok "$libraries static libraries installed"
internals=$(find "$prefix/include" \( -name '*.cuh' -o -name '*.cu' -o -path '*/engine/cuda*' \
  -o -path '*/engine/cpu*' -o -path '*/kernels/emu*' \) -print)
[ -z "$internals" ] || fail "backend internals were installed: $internals"
if grep -rlE '#include *[<"](cuda[a-z_]*\.h|cublas[A-Za-z_]*\.h|cudnn[a-z_]*\.h|[^">]*\.cuh|engine/cuda/|kernels/emu/)' \
  "$prefix/include"; then
  fail "the installed headers above include CUDA headers or backend internals"
fi
ok "no CUDA headers or backend internals installed or included"

# Each public header compiles on its own with only the installed include root (no CUDA toolkit
# on the include path, no source tree).
for header in "$prefix"/include/softprompt/*.h; do
  name=$(basename "$header")
  echo "#include <softprompt/$name>" >"$work/header_$name.cpp"
  run "$work/header_$name.log" "${CXX:-c++}" -std=c++20 -fsyntax-only -I"$prefix/include" \
    -I"$prefix/include/softprompt" "$work/header_$name.cpp"
done
ok "every include/softprompt/*.h compiles standalone"

# ---- 3. find_package consumer ----
consumer=$work/find_package_consumer
mkdir -p "$consumer"
cp "$example" "$consumer/minimal_loop.cpp"
cat >"$consumer/version_check.cpp" <<'EOF'
// The SOFTPROMPT_VERSION macro agrees with the CMake package's softprompt_VERSION.
#include <softprompt/version.h>

#include <cstdio>
#include <string_view>

static_assert(std::string_view(SOFTPROMPT_VERSION) == EXPECTED_VERSION);
static_assert(SOFTPROMPT_VERSION_NUMBER == SOFTPROMPT_VERSION_MAJOR * 10000 +
                                               SOFTPROMPT_VERSION_MINOR * 100 +
                                               SOFTPROMPT_VERSION_PATCH);

int main() { std::printf("softprompt %s\n", SOFTPROMPT_VERSION); }
EOF
cat >"$consumer/CMakeLists.txt" <<'EOF'
cmake_minimum_required(VERSION 3.20)
project(softprompt_consumer LANGUAGES CXX)
find_package(softprompt 0.1 REQUIRED)
message(STATUS "consumer: softprompt ${softprompt_VERSION} from ${softprompt_DIR}")
add_executable(minimal_loop minimal_loop.cpp)
target_link_libraries(minimal_loop PRIVATE softprompt::softprompt)
add_executable(version_check version_check.cpp)
target_link_libraries(version_check PRIVATE softprompt::softprompt)
target_compile_definitions(version_check PRIVATE EXPECTED_VERSION="${softprompt_VERSION}")
EOF
run "$work/find_package_configure.log" cmake -S "$consumer" -B "$consumer/build" \
  -DCMAKE_BUILD_TYPE=Release -DCMAKE_PREFIX_PATH="$prefix" -DCMAKE_EXPORT_COMPILE_COMMANDS=ON
grep -q "consumer: softprompt" "$work/find_package_configure.log" || fail "find_package(softprompt) did not report"
ok "find_package(softprompt 0.1 REQUIRED): $(grep -o 'softprompt [0-9.]* from .*' "$work/find_package_configure.log")"
run "$work/find_package_build.log" cmake --build "$consumer/build" -j "$jobs"
if grep -q "$repo/" "$consumer/build/compile_commands.json"; then
  fail "the consumer compiled against the source tree instead of the installed prefix"
fi
ok "built examples/01_minimal_loop.cpp unchanged against the installed package only"
run "$work/version_check.log" "$consumer/build/version_check"
ok "SOFTPROMPT_VERSION matches softprompt_VERSION ($(cat "$work/version_check.log"))"
run "$work/find_package_run.log" "$consumer/build/minimal_loop" "$fixture_model" "$work/adapter_installed" 20
for file in adapter_config.json adapter_model.safetensors; do
  [ -f "$work/adapter_installed/$file" ] || fail "the example wrote no $file"
done
ok "ran it on tests/fixtures/gpt2_tiny_a: $(tail -n 1 "$work/find_package_run.log")"

# A different major version must not be accepted (SameMajorVersion).
probe=$work/version_probe
mkdir -p "$probe"
cat >"$probe/CMakeLists.txt" <<'EOF'
cmake_minimum_required(VERSION 3.20)
project(softprompt_version_probe LANGUAGES CXX)
find_package(softprompt 999 QUIET)
if(softprompt_FOUND)
  message(FATAL_ERROR "find_package(softprompt 999) accepted version ${softprompt_VERSION}")
endif()
EOF
run "$work/version_probe.log" cmake -S "$probe" -B "$probe/build" -DCMAKE_PREFIX_PATH="$prefix"
ok "find_package(softprompt 999) is refused"

# ---- 4. add_subdirectory consumer ----
subdir=$work/add_subdirectory_consumer
mkdir -p "$subdir"
cp "$example" "$subdir/minimal_loop.cpp"
cat >"$subdir/CMakeLists.txt" <<EOF
cmake_minimum_required(VERSION 3.20)
project(softprompt_subdirectory_consumer LANGUAGES C CXX)
# Only the library: no tests, benchmarks, examples or nvcc build of softprompt itself.
set(SOFTPROMPT_BUILD_TESTS OFF)
set(SOFTPROMPT_BUILD_BENCH OFF)
set(SOFTPROMPT_BUILD_EXAMPLES OFF)
set(SOFTPROMPT_CUDA OFF)
add_subdirectory("$repo" softprompt EXCLUDE_FROM_ALL)
add_executable(minimal_loop minimal_loop.cpp)
target_link_libraries(minimal_loop PRIVATE softprompt::softprompt)
EOF
run "$work/add_subdirectory_configure.log" cmake -S "$subdir" -B "$subdir/build" -DCMAKE_BUILD_TYPE=Release
run "$work/add_subdirectory_build.log" cmake --build "$subdir/build" -j "$jobs" --target minimal_loop
ok "built examples/01_minimal_loop.cpp unchanged with add_subdirectory(softprompt)"
run "$work/add_subdirectory_run.log" "$subdir/build/minimal_loop" "$fixture_model" "$work/adapter_subdir" 20
ok "ran it on tests/fixtures/gpt2_tiny_a: $(tail -n 1 "$work/add_subdirectory_run.log")"

echo "test_install: all checks passed"
