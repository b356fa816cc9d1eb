#!/usr/bin/env bash
# Sets up, builds and runs every test: the GoogleTest suites through ctest, then an out-of-tree
# consumer that finds the installed package with find_package(diffuse), a C program built on the C
# API through pkg-config, and the C API's threaded test again under AddressSanitizer (build-asan/;
# DIFFUSE_TEST_ASAN=0 skips that one).
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

echo "== C consumer: examples/c_generate.c as C99 with pkg-config --cflags --libs diffuse"
fixtures="${DIFFUSE_FIXTURES:-$PWD/../shared/fixtures}"
pc_file=$(find build/install -name diffuse.pc -print -quit 2>/dev/null || true)
mkdir -p build/consumer
if [ -n "$pc_file" ] &&
   export PKG_CONFIG_PATH="$(dirname "$pc_file")" &&
   cc -std=c99 -Wall -Wextra -pedantic -Werror examples/c_generate.c $(pkg-config --cflags --libs diffuse) \
     -Wl,-rpath,"$(pkg-config --variable=libdir diffuse)" -o build/consumer/c_generate &&
   ./build/consumer/c_generate --help >/dev/null &&
   { [ ! -d "$fixtures/tiny-flux/pipeline" ] ||
     ./build/consumer/c_generate --model "$fixtures/tiny-flux/pipeline" --prompt "a dog" --height 64 --width 96 \
       --steps 2 --seed 0 --quiet --output build/consumer/c_generate.png; }; then
  echo "C consumer: OK"
else
  echo "C consumer: FAILED"
  status=1
fi

if [ "${DIFFUSE_TEST_ASAN:-1}" != 0 ]; then
  # A second, separate build with AddressSanitizer: the library and the C API's test only (about 8 min
  # on 2 cores). Leaks are checked at exit; tests/lsan.supp may only name leaks inside libtorch's own
  # static initialisation (none today).
  echo "== AddressSanitizer: test_c_api with leak detection (build-asan/)"
  start=$SECONDS
  generator=()
  command -v ninja >/dev/null && generator=(-G Ninja)
  # gtest_discover_tests runs the program while building; leaks are checked on the real run below.
  if cmake -S . -B build-asan "${generator[@]}" -DCMAKE_BUILD_TYPE=RelWithDebInfo \
       "-DCMAKE_CXX_FLAGS=-fsanitize=address -fno-omit-frame-pointer" \
       -DDIFFUSE_BUILD_EXAMPLES=OFF -DDIFFUSE_BUILD_BENCHMARKS=OFF >/dev/null &&
     ASAN_OPTIONS=detect_leaks=0 cmake --build build-asan -j"${DIFFUSE_BUILD_JOBS:-$(nproc)}" --target test_c_api &&
     echo "asan: built in $((SECONDS - start)) s" &&
     ASAN_OPTIONS=detect_leaks=1:abort_on_error=0 \
     LSAN_OPTIONS="suppressions=$PWD/tests/lsan.supp:print_suppressions=1" \
       ./build-asan/tests/test_c_api; then
    echo "asan: OK, no leaks ($((SECONDS - start)) s)"
  else
    echo "asan: FAILED"
    status=1
  fi
fi
exit $status
