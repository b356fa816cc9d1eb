#!/usr/bin/env bash
# Sets up, builds and runs every test: the GoogleTest suites through ctest, then an out-of-tree
# consumer that finds the installed package with find_package(diffuse).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
bash scripts/build.sh

status=0
(cd build && ctest --output-on-failure --timeout 900 -j"${DIFFUSE_TEST_JOBS:-2}") || status=$?

echo "== consumer: install, then find_package(diffuse) from another project"
rm -rf build/install build/consumer
cmake --install build --prefix build/install >/dev/null
if cmake -S tests/consumer -B build/consumer -DCMAKE_PREFIX_PATH="$PWD/build/install" >/dev/null &&
   cmake --build build/consumer -j2 >/dev/null &&
   ./build/consumer/consumer; then
  echo "consumer: OK"
else
  echo "consumer: FAILED"
  status=1
fi
exit $status
