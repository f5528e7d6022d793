#!/usr/bin/env bash
# Fails when a layer includes a layer above it (cli > peft > models > engine > kernels), or when
# a public header under include/ pulls in CUDA headers. Run by ctest as test "layering".
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
status=0
check() {
  local layer=$1 forbidden=$2
  local hits
  hits=$(grep -rnE "#include [\"<](${forbidden})/" "$root/$layer" --include='*.h' --include='*.cpp' \
           --include='*.cu' --include='*.cuh' 2>/dev/null || true)
  if [ -n "$hits" ]; then
    echo "layering: $layer/ must not include $forbidden/:"
    echo "$hits"
    status=1
  fi
}
check kernels "engine|models|peft|cli"
check engine "models|peft|cli"
check models "peft|cli"
check peft "cli"
if [ -d "$root/include" ]; then
  hits=$(grep -rnE "#include [\"<](cuda|cublas|cudnn|kernels/cuda_compat)" "$root/include" "$root/engine"/*.h \
           "$root/models"/*.h "$root/peft"/*.h 2>/dev/null || true)
  if [ -n "$hits" ]; then
    echo "layering: public headers must not depend on CUDA headers:"
    echo "$hits"
    status=1
  fi
fi
[ $status -eq 0 ] && echo "layering: ok"
exit $status
