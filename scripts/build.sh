#!/usr/bin/env bash
# Configures and builds diffuse in ./build (Release). Extra arguments go to CMake's configure step.
set -euo pipefail
cd "$(dirname "$0")/.."
generator=()
command -v ninja >/dev/null && generator=(-G Ninja)
if [ ! -f build/CMakeCache.txt ]; then
  cmake -S . -B build "${generator[@]}" -DCMAKE_BUILD_TYPE=Release "$@" >/dev/null
fi
jobs=${DIFFUSE_BUILD_JOBS:-$(nproc)}
cmake --build build -j"$jobs"
