#!/usr/bin/env bash
# Fetches, here (Debian 12, apt), the Debian packages softprompt builds against that a bare GPU
# machine lacks, into DIR (default .gpu-deps, git-ignored), for scripts/gpu_check.sh --deps DIR.
# Such a machine has the NVIDIA driver, the CUDA toolkit, a C++ compiler and CMake, and no network:
# the packages travel with the working tree, so their total size is printed (keep it small).
# MPI is left out: gpu_check.sh builds with -DSOFTPROMPT_MPI=OFF.
set -euo pipefail
cd "$(dirname "$0")/.."
dir=${1:-.gpu-deps}

packages=(
  # headers, pkg-config files and CMake packages
  libeigen3-dev nlohmann-json3-dev libcli11-dev libgtest-dev libgmock-dev
  libopenblas-pthread-dev libsentencepiece-dev libpcre2-dev libicu-dev libcpp-httplib-dev
  libdnnl-dev ocl-icd-opencl-dev opencl-c-headers opencl-clhpp-headers
  libssl-dev zlib1g-dev libbrotli-dev  # named by cpp-httplib.pc (its headers need none of them)
  # the shared libraries those link against, beyond what any Linux with a compiler has
  libopenblas0-pthread libgfortran5 libquadmath0 libsentencepiece0 libpcre2-8-0 libicu72
  libcpp-httplib0.11 libbrotli1 libdnnl2 ocl-icd-libopencl1
  # pkg-config, in case the machine has none
  pkgconf pkgconf-bin libpkgconf3
)

mkdir -p "$dir"
rm -f "$dir"/*.deb
(cd "$dir" && apt-get download -q=2 "${packages[@]}" 2>/dev/null) || {
  echo "gpu_deps: apt-get download failed (run scripts/bootstrap.sh's apt-get update first?)" >&2
  exit 1
}
echo "gpu_deps: $(ls "$dir"/*.deb | wc -l) packages, $(du -sm "$dir" | cut -f1) MiB in $dir"
