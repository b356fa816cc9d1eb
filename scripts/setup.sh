#!/usr/bin/env bash
# Installs diffuse's build dependencies from Debian's packages: what is missing only, quietly when
# everything is there. Safe to run again.
set -euo pipefail

# libopenblas0-pthread: libtorch-dev calls BLAS through libblas.so.3, which is the slow reference BLAS
# unless an optimized one is installed (OpenBLAS takes over through Debian's alternatives).
# clang-14, libclang-rt-14-dev (libFuzzer's runtime) and llvm-14 (llvm-symbolizer): the fuzz targets
# (scripts/fuzz.sh, docs/reliability.md).
# libcpp-httplib-dev: diffuse-server's HTTP (examples/server); chromium and chromium-driver: the test that
# drives its web page in headless Chromium (tests/test_server_web_page.cpp, skipped when absent).
packages=(
  build-essential cmake ninja-build pkg-config
  libtorch-dev libgloo-dev libopenblas0-pthread
  nlohmann-json3-dev libspdlog-dev libfmt-dev libpng-dev libcli11-dev
  libgtest-dev libbenchmark-dev
  clang-14 libclang-rt-14-dev llvm-14
  libcpp-httplib-dev chromium chromium-driver
)

missing=()
for package in "${packages[@]}"; do
  if ! dpkg-query -W -f='${Status}' "$package" 2>/dev/null | grep -q "install ok installed"; then
    missing+=("$package")
  fi
done
[ ${#missing[@]} -eq 0 ] && exit 0

echo "setup: installing ${missing[*]}" >&2
sudo=""
if [ "$(id -u)" -ne 0 ]; then
  command -v sudo >/dev/null || { echo "setup: run as root or install sudo" >&2; exit 1; }
  sudo="sudo"
fi
export DEBIAN_FRONTEND=noninteractive
$sudo apt-get update -qq
$sudo apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
