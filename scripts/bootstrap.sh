#!/usr/bin/env bash
# Installs the Debian packages softprompt builds against, when missing. Idempotent and quiet:
# prints nothing when everything is present, one line per install, one clear error on failure.
set -euo pipefail

packages=(
  cmake g++ make pkg-config
  libeigen3-dev libopenblas-dev nlohmann-json3-dev libsentencepiece-dev libpcre2-dev libicu-dev libcli11-dev
  mpich libmpich-dev  # data-parallel training: mpiexec and the MPI library
  libcpp-httplib-dev curl  # softprompt serve's HTTP server; its tests talk to it with curl
  libdnnl-dev ocl-icd-opencl-dev  # oneDNN's CMake config requires OpenCL (only a Recommends)
  libgtest-dev libgmock-dev libbenchmark-dev
)

missing=()
for package in "${packages[@]}"; do
  if ! dpkg-query -W -f='${Status}' "$package" 2>/dev/null | grep -q "install ok installed"; then
    missing+=("$package")
  fi
done
[ ${#missing[@]} -eq 0 ] && exit 0

echo "bootstrap: installing ${missing[*]}"
sudo_cmd=()
if [ "$(id -u)" -ne 0 ]; then
  if command -v sudo >/dev/null 2>&1; then
    sudo_cmd=(sudo)
  else
    echo "bootstrap: error: need root (or sudo) to apt-get install: ${missing[*]}" >&2
    exit 1
  fi
fi
log=$(mktemp)
if ! { "${sudo_cmd[@]}" apt-get update -qq && \
       DEBIAN_FRONTEND=noninteractive "${sudo_cmd[@]}" apt-get install -y -qq --no-install-recommends "${missing[@]}"; } >"$log" 2>&1; then
  echo "bootstrap: error: apt-get failed to install ${missing[*]}; its output:" >&2
  tail -n 20 "$log" >&2
  rm -f "$log"
  exit 1
fi
rm -f "$log"
