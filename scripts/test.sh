#!/usr/bin/env bash
# Sets up, builds and runs every test: the GoogleTest suites through ctest, then an out-of-tree
# consumer that finds the installed package with find_package(diffuse), a C program built on the C
# API through pkg-config, and a subset of the suites again under AddressSanitizer and
# UndefinedBehaviorSanitizer (build-sanitize/; DIFFUSE_TEST_SANITIZERS=0 or DIFFUSE_TEST_ASAN=0
# skips that part), then the libFuzzer targets for a bounded time (DIFFUSE_TEST_FUZZ=0 skips them).
# docs/reliability.md describes what each part guarantees.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
bash scripts/build.sh

status=0
# A test that fails runs once more (--repeat until-pass:2): the multi-process tests race real processes
# on two busy cores; a failure that repeats still fails the run, and the first one stays in the log.
(cd build && ctest --output-on-failure --timeout 900 --repeat until-pass:2 -j"${DIFFUSE_TEST_JOBS:-2}") || status=$?

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

# A second, separate build with AddressSanitizer and UndefinedBehaviorSanitizer (build-sanitize/):
# the library and the test programs that exercise its parsing, I/O, C API, tokenizers, scheduler and
# error paths (docs/reliability.md says why these; about 25 min on 2 cores, most of it compiling).
# DIFFUSE_TEST_SANITIZERS=0 (or the older DIFFUSE_TEST_ASAN=0) skips it; DIFFUSE_SANITIZER_TESTS
# replaces the list of test programs.
if [ "${DIFFUSE_TEST_SANITIZERS:-${DIFFUSE_TEST_ASAN:-1}}" != 0 ]; then
  read -r -a sanitizer_tests <<< "${DIFFUSE_SANITIZER_TESTS:-test_c_api test_safetensors test_io test_tokenizers test_qwen2_tokenizer test_scheduler test_flux_latents test_faults}"
  echo "== Sanitizers (address, undefined): ${sanitizer_tests[*]} (build-sanitize/)"
  start=$SECONDS
  generator=()
  command -v ninja >/dev/null && generator=(-G Ninja)
  # UBSan stays recoverable at compile time so that tests/ubsan.supp can apply; halt_on_error makes
  # any report that is not suppressed end the program (as -fno-sanitize-recover would).
  export UBSAN_OPTIONS="halt_on_error=1:print_stacktrace=1:suppressions=$PWD/tests/ubsan.supp"
  # gtest_discover_tests runs each program while building; leaks are checked on the real runs below.
  # -O1 -g1 (line tables are enough for the reports) compiles in about half the time of -O2 -g.
  if cmake -S . -B build-sanitize "${generator[@]}" -DCMAKE_BUILD_TYPE=RelWithDebInfo \
       "-DCMAKE_CXX_FLAGS_RELWITHDEBINFO=-O1 -g1 -DNDEBUG" \
       "-DCMAKE_CXX_FLAGS=-fsanitize=address,undefined -fno-omit-frame-pointer" \
       -DDIFFUSE_BUILD_EXAMPLES=OFF -DDIFFUSE_BUILD_BENCHMARKS=OFF >/dev/null &&
     ASAN_OPTIONS=detect_leaks=0 cmake --build build-sanitize -j"${DIFFUSE_BUILD_JOBS:-$(nproc)}" \
       --target "${sanitizer_tests[@]}" helper_faults; then
    echo "sanitizers: built in $((SECONDS - start)) s"
    mkdir -p build-sanitize/logs
    for test in "${sanitizer_tests[@]}"; do
      test_start=$SECONDS
      log="build-sanitize/logs/$test.log"
      # Leaks are checked at exit (tests/lsan.supp may only name libtorch's own start-up);
      # allocator_may_return_null: a failed huge allocation throws as it does without ASan (the fault
      # tests ask for terabytes on purpose) instead of aborting.
      if ASAN_OPTIONS=detect_leaks=1:allocator_may_return_null=1 \
         LSAN_OPTIONS="suppressions=$PWD/tests/lsan.supp" \
           "./build-sanitize/tests/$test" --gtest_brief=1 >"$log" 2>&1; then
        echo "sanitizers: $test OK ($((SECONDS - test_start)) s)"
      else
        reports=$(grep -cE "ERROR: (Address|Leak)Sanitizer|runtime error:" "$log" || true)
        echo "sanitizers: $test FAILED ($((SECONDS - test_start)) s, $reports sanitizer report(s)); the end of $log:"
        tail -n 40 "$log"
        if [ "$reports" != 0 ]; then
          echo "sanitizers: the reports (each with the lines that follow it):"
          grep -nE -A 30 "ERROR: (Address|Leak)Sanitizer|runtime error:" "$log" | head -n 200
        fi
        # The multi-process fault tests race real processes (a rank killed mid-collective); run the
        # failed tests once more, so that one unlucky schedule is reported above without failing
        # the run, while a failure that repeats does.
        failed=$(sed -n 's/^\[  FAILED  \] \([A-Za-z0-9_]*\.[A-Za-z0-9_]*\) (.*/\1/p' "$log" | paste -sd: -)
        if [ -n "$failed" ] &&
           ASAN_OPTIONS=detect_leaks=1:allocator_may_return_null=1 \
           LSAN_OPTIONS="suppressions=$PWD/tests/lsan.supp" \
             "./build-sanitize/tests/$test" --gtest_brief=1 --gtest_filter="$failed" >"$log.rerun" 2>&1; then
          echo "sanitizers: $test: FLAKY: $failed failed once and passed when run again ($log.rerun)"
        else
          status=1
          [ -n "$failed" ] && { echo "sanitizers: $test: $failed failed again:"; tail -n 40 "$log.rerun"; }
        fi
      fi
    done
    echo "sanitizers: done in $((SECONDS - start)) s"
  else
    echo "sanitizers: build FAILED"
    status=1
  fi
fi
# libFuzzer targets (fuzz/, build-fuzz/ with clang): each one over the reproducers of the bugs it found,
# then from its seed corpus for DIFFUSE_FUZZ_SECONDS (default 60) each. DIFFUSE_TEST_FUZZ=0 skips.
if [ "${DIFFUSE_TEST_FUZZ:-1}" != 0 ]; then
  echo "== Fuzzing: every target over fuzz/regressions, then ${DIFFUSE_FUZZ_SECONDS:-60} s each (build-fuzz/)"
  start=$SECONDS
  if DIFFUSE_FUZZ_SECONDS=${DIFFUSE_FUZZ_SECONDS:-60} bash scripts/fuzz.sh; then
    echo "fuzz: OK ($((SECONDS - start)) s)"
  else
    echo "fuzz: FAILED ($((SECONDS - start)) s)"
    status=1
  fi
fi
exit $status
