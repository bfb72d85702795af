#!/usr/bin/env bash
# Installs the Debian packages strata's build, tests and demo need, only those that are missing.
# The CUDA toolkit (nvcc, CCCL, NCCL) is not a Debian package here: the build uses it when it is
# found under /usr/local/cuda or on PATH, and says what it left out otherwise.
set -euo pipefail

packages=(cmake ninja-build ccache g++ doctest-dev libboost-dev libthrust-dev libcub-dev
          libopenmpi-dev openmpi-bin libbenchmark-dev python3 clang-format-14
          python3-numpy python3-torch libtorch-dev libgloo-dev pybind11-dev python3-dev
          python3-pip python3-setuptools)

if ! command -v dpkg-query >/dev/null 2>&1 || ! command -v apt-get >/dev/null 2>&1; then
  echo "setup: not a Debian system; install these yourself: ${packages[*]}" >&2
  exit 0
fi

missing=()
for p in "${packages[@]}"; do
  if ! dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed"; then
    missing+=("$p")
  fi
done
if [ ${#missing[@]} -eq 0 ]; then
  exit 0
fi

echo "setup: installing ${missing[*]}"
sudo=()
if [ "$(id -u)" -ne 0 ]; then
  sudo=(sudo)
fi
export DEBIAN_FRONTEND=noninteractive
"${sudo[@]}" apt-get update -qq
"${sudo[@]}" apt-get install -y -qq --no-install-recommends "${missing[@]}"
