#!/usr/bin/env bash
# Builds the libFuzzer targets (fuzz/, into build-fuzz/ with clang, AddressSanitizer and
# UndefinedBehaviorSanitizer) and runs each one for a bounded time: first over the reproducers of
# bugs already found (fuzz/regressions/<target>/), then fuzzing from its seed corpus
# (fuzz/corpus/<target>/). Prints one line per target and exits non-zero if any target crashed,
# leaked, hung, ran out of memory or broke one of its checks.
#
#   scripts/fuzz.sh                      every target, DIFFUSE_FUZZ_SECONDS (60) each
#   scripts/fuzz.sh fuzz_configs         some targets only
#   DIFFUSE_FUZZ_SECONDS=600 scripts/fuzz.sh
#
# Environment: DIFFUSE_FUZZ_SECONDS (fuzzing time per target), DIFFUSE_FUZZ_JOBS (targets run at
# once; default the number of cores), DIFFUSE_BUILD_JOBS, CXX_FUZZ (the clang++ to use),
# DIFFUSE_FUZZ_SOURCE_DIR (another checkout's include/ and src/ to fuzz, e.g. one with a fix applied).
# New inputs the fuzzer finds go to build-fuzz/corpus/<target>/ (never into the repository; merge
# the useful ones by hand, see docs/reliability.md), kept for the next run there; crash reproducers
# go to build-fuzz/artifacts/<target>/.
set -euo pipefail
cd "$(dirname "$0")/.."

seconds=${DIFFUSE_FUZZ_SECONDS:-60}
jobs=${DIFFUSE_FUZZ_JOBS:-$(nproc)}
build=build-fuzz
all_targets=(fuzz_safetensors fuzz_checkpoint fuzz_configs fuzz_clip_tokenizer fuzz_t5_tokenizer
             fuzz_qwen2_tokenizer)
targets=("$@")
[ ${#targets[@]} -eq 0 ] && targets=("${all_targets[@]}")

# Each target's dictionary and largest input: the tokenizer inputs hold a whole vocabulary.
declare -A dict=([fuzz_safetensors]=safetensors [fuzz_checkpoint]=safetensors [fuzz_configs]=json
                 [fuzz_clip_tokenizer]=clip_tokenizer [fuzz_t5_tokenizer]=t5_tokenizer
                 [fuzz_qwen2_tokenizer]=qwen2_tokenizer)
declare -A max_len=([fuzz_safetensors]=4096 [fuzz_checkpoint]=4096 [fuzz_configs]=4096
                    [fuzz_clip_tokenizer]=8192 [fuzz_t5_tokenizer]=8192 [fuzz_qwen2_tokenizer]=8192)
for target in "${targets[@]}"; do
  [ -n "${dict[$target]:-}" ] || { echo "fuzz: unknown target '$target' (${all_targets[*]})" >&2; exit 2; }
done

# ---- build ------------------------------------------------------------------------------------------
cxx=${CXX_FUZZ:-$(command -v clang++-14 || command -v clang++ || true)}
[ -n "$cxx" ] || { echo "fuzz: clang++ not found (Debian: clang-14 libclang-rt-14-dev)" >&2; exit 2; }
generator=()
command -v ninja >/dev/null && generator=(-G Ninja)
start=$SECONDS
mkdir -p "$build"
if ! { cmake -S fuzz -B "$build" "${generator[@]}" -DCMAKE_CXX_COMPILER="$cxx" \
         -DDIFFUSE_SOURCE_DIR="${DIFFUSE_FUZZ_SOURCE_DIR:-$PWD}" &&
       cmake --build "$build" -j"${DIFFUSE_BUILD_JOBS:-$(nproc)}"; } >"$build/build.log" 2>&1; then
  tail -40 "$build/build.log" >&2
  echo "fuzz: build failed (log: $build/build.log)" >&2
  exit 2
fi
echo "fuzz: built the targets in $((SECONDS - start)) s ($("$cxx" --version | head -1))"

# ---- run --------------------------------------------------------------------------------------------
symbolizer=$(command -v llvm-symbolizer-14 || command -v llvm-symbolizer || true)
[ -n "$symbolizer" ] && export ASAN_SYMBOLIZER_PATH="$symbolizer"
# Leaks are checked by libFuzzer after any input that allocated more than it freed, and at exit.
export ASAN_OPTIONS="detect_leaks=1"
export UBSAN_OPTIONS="print_stacktrace=1:halt_on_error=1"
# The suppressions of the other ASan run (tests/lsan.supp: libtorch's own start-up only, none today).
[ -f tests/lsan.supp ] && export LSAN_OPTIONS="suppressions=$PWD/tests/lsan.supp:print_suppressions=0"
mkdir -p "$build/logs"
# The targets write each input to files (the readers take paths): in memory when /dev/shm is there.
[ -z "${TMPDIR:-}" ] && [ -d /dev/shm ] && [ -w /dev/shm ] && export TMPDIR=/dev/shm

# Runs one target; its log is $build/logs/<target>.log and its one-line result <target>.result.
run_target() {
  local target=$1 binary="$build/$1" log="$build/logs/$1.log"
  local scratch="$build/corpus/$target" artifacts="$build/artifacts/$target/"
  rm -rf "$artifacts"
  mkdir -p "$scratch" "$artifacts"
  : >"$log"
  local status=0 regressions=()
  # Known reproducers first: each must now be an answer, not a crash.
  if [ -d "fuzz/regressions/$target" ]; then
    mapfile -t regressions < <(find "fuzz/regressions/$target" -type f ! -name '*.md' | sort)
  fi
  if [ ${#regressions[@]} -gt 0 ]; then
    echo "== regressions: ${#regressions[@]} files" >>"$log"
    timeout --signal=KILL 300 "$binary" -timeout=10 -rss_limit_mb=2048 -malloc_limit_mb=2048 \
      -artifact_prefix="$artifacts" "${regressions[@]}" >>"$log" 2>&1 || status=$?
  fi
  if [ $status -eq 0 ]; then
    echo "== fuzzing ${seconds} s" >>"$log"
    timeout --signal=KILL $((seconds + 300)) "$binary" -max_total_time="$seconds" -timeout=10 \
      -rss_limit_mb=2048 -malloc_limit_mb=2048 -detect_leaks=1 -max_len="${max_len[$target]}" \
      -dict="fuzz/dict/${dict[$target]}.dict" -artifact_prefix="$artifacts" -print_final_stats=1 \
      "$scratch" "fuzz/corpus/$target" >>"$log" 2>&1 || status=$?
  fi
  # A target that crashed could not remove its scratch folder (fuzz_support.cpp's ScratchFolder).
  rm -rf "${TMPDIR:-/tmp}/diffuse-$target-"*
  local runs execs new result artifact
  runs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log" | tail -1)
  execs=$(sed -n 's/^stat::average_exec_per_sec: *//p' "$log" | tail -1)
  new=$(sed -n 's/^stat::new_units_added: *//p' "$log" | tail -1)
  artifact=$(sed -n 's/.*Test unit written to \(.*\)$/\1/p' "$log" | tail -1)
  if grep -q "^== fuzzing" "$log"; then :; else  # a regression failed: name it rather than its copy
    artifact=$(sed -n 's/^Running: \(.*\)$/\1/p' "$log" | tail -1)
  fi
  if [ $status -eq 0 ]; then
    result="OK: ${runs:-0} runs (${execs:-0}/s), ${new:-0} new inputs, ${seconds} s"
  else
    local kind="crash"
    grep -q "ERROR: libFuzzer: timeout" "$log" && kind="hang (over 10 s)"
    grep -q "ERROR: libFuzzer: out-of-memory\|ERROR: libFuzzer: out-of-memory (malloc" "$log" && kind="out of memory"
    grep -q "ERROR: LeakSanitizer" "$log" && kind="leak"
    grep -q "runtime error:" "$log" && kind="undefined behavior"
    grep -q "ERROR: AddressSanitizer" "$log" &&
      kind="memory error ($(sed -n 's/.*ERROR: AddressSanitizer: \([a-z-]*\).*/\1/p' "$log" | head -1))"
    grep -q "diffuse fuzz: BUG" "$log" && kind="$(grep -m1 "diffuse fuzz: BUG" "$log" | sed 's/^== diffuse fuzz: //' | cut -c1-160)"
    [ $status -eq 137 ] && kind="killed at the deadline"
    result="FAILED: $kind; reproducer ${artifact:-none (see the log)}; log $log"
  fi
  echo "$result" >"$build/logs/$target.result"
}

start=$SECONDS
running=0
for target in "${targets[@]}"; do
  run_target "$target" &
  running=$((running + 1))
  if [ "$running" -ge "$jobs" ]; then
    wait -n || true
    running=$((running - 1))
  fi
done
wait || true

status=0
for target in "${targets[@]}"; do
  result=$(cat "$build/logs/$target.result" 2>/dev/null || echo "FAILED: no result")
  printf '%-22s %s\n' "$target" "$result"
  case "$result" in OK:*) ;; *) status=1 ;; esac
done
echo "fuzz: ran ${#targets[@]} targets in $((SECONDS - start)) s, ${jobs} at a time: $([ $status -eq 0 ] && echo OK || echo FAILED)"
exit $status
