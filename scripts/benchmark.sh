#!/usr/bin/env bash
# The benchmark table (docs/benchmarks.md): FLUX.1-dev's transformer with random bfloat16 weights,
# ms per call at batch 1 with 512 text tokens. On one GPU at 1024 and 2048 pixels, then with every
# context-parallel mode over all the GPUs present at 1024, 2048 and 4096 (one process per GPU through
# diffuse-launch): 2 GPUs: ulysses 2, ring 2; 4: ulysses 4, ring 4, unified 2x2; 8: ulysses 8,
# ring 8, unified 2x4 and 4x2 (ring x ulysses). One JSON per mode in OUTDIR, a log per mode in
# OUTDIR/logs, then OUTDIR/benchmarks.png and OUTDIR/table.md beside diffusers' numbers. One GPU runs
# twice: calls launched kernel by kernel, and replayed from a CUDA graph as the pipelines run them.
# With DIFFUSE_BENCH_DIFFUSERS=DIR (diffusers' src/, for a python3 with torch), diffusers' transformer
# is timed on the same one-GPU sizes in the same run (scripts/diffusers_transformer_step.py: eager,
# eager with cuDNN attention, compile_repeated_blocks + cuDNN) and the table compares with those.
#
#   scripts/benchmark.sh OUTDIR [BUILD_DIR]      (BUILD_DIR: default build-gpu if it exists, else build)
#
# Knobs (environment): DIFFUSE_BENCH_GPUS (default: nvidia-smi -L), DIFFUSE_BENCH_SHAPE (flux-dev),
# DIFFUSE_BENCH_DEVICE (default: the process's GPU; "cpu" with DIFFUSE_BENCH_GPUS=2 and
# DIFFUSE_BENCH_SHAPE=flux-tiny tries the whole script on a CPU), DIFFUSE_BENCH_SINGLE and
# DIFFUSE_BENCH_PARALLEL (resolution lists; "none" skips those rows), DIFFUSE_BENCH_ARGS (more options
# for the parallel runs, e.g. --check to compare each with one GPU), DIFFUSE_BENCH_STEPS / DIFFUSE_BENCH_WARMUP (one count for
# every size; default 10 timed after 3 warm-up, 5 after 2 at 4096 and above), DIFFUSE_BENCH_TIMEOUT
# (seconds per mode, default 300), DIFFUSE_BENCH_LAUNCHER (default diffuse-launch; e.g.
# "torchrun --no-python").
set -uo pipefail
cd "$(dirname "$0")/.." || exit 2

if [ $# -lt 1 ] || [ "$1" = "-h" ] || [ "$1" = "--help" ]; then
  sed -n '2,/^set /p' "$0" | sed '$d; s/^# \{0,1\}//'
  exit 2
fi
out=$1
build=${2:-$( [ -d build-gpu ] && echo build-gpu || echo build )}
program=$build/benchmarks/flux_transformer_step
launcher=${DIFFUSE_BENCH_LAUNCHER:-$build/examples/diffuse-launch}
for file in "$program" "${launcher%% *}"; do
  if ! command -v "$file" >/dev/null 2>&1; then
    echo "benchmark.sh: $file is missing: build it first" \
      "(cmake --build $build --target flux_transformer_step diffuse_launch)" >&2
    exit 2
  fi
done

# NVLink multicast is off on the shared H200 machines (docs/gpu.md).
export NCCL_NVLS_ENABLE=0 TORCH_SYMM_MEM_DISABLE_MULTICAST=1 NVSHMEM_DISABLE_NVLS=1
# A rank that dies makes the others fail within this (the launcher also stops them at once).
export DIFFUSE_DIST_TIMEOUT=${DIFFUSE_DIST_TIMEOUT:-300}

gpus=${DIFFUSE_BENCH_GPUS:-$(nvidia-smi -L 2>/dev/null | grep -c '^GPU')}
shape=${DIFFUSE_BENCH_SHAPE:-flux-dev}
single_sizes=${DIFFUSE_BENCH_SINGLE:-1024,2048}
parallel_sizes=${DIFFUSE_BENCH_PARALLEL:-1024,2048,4096}
per_mode_timeout=${DIFFUSE_BENCH_TIMEOUT:-300}
device_args=()
[ -n "${DIFFUSE_BENCH_DEVICE:-}" ] && device_args=(--device "$DIFFUSE_BENCH_DEVICE")
if [ "$gpus" -lt 1 ]; then
  echo "benchmark.sh: no GPU found (nvidia-smi -L); set DIFFUSE_BENCH_GPUS to run anyway" >&2
  exit 2
fi

# Timed steps and warm-up per size, in the order of the list: fewer at 4096, where one call takes seconds.
counts() {  # counts SIZES STEPS_AT_SMALL STEPS_AT_LARGE OVERRIDE
  local list=() size
  for size in ${1//,/ }; do
    if [ -n "$4" ]; then list+=("$4"); elif [ "${size%%x*}" -ge 4096 ]; then list+=("$3"); else list+=("$2"); fi
  done
  local IFS=,
  echo "${list[*]}"
}

mkdir -p "$out/logs"
failed=() written=()
# run NAME PROCESSES SIZES [ARGS...]: one mode, all its sizes in one process group.
run() {
  local name=$1 processes=$2 sizes=$3
  shift 3
  local command=("$program" --shape "$shape" "${device_args[@]}" --resolutions "$sizes"
                 --steps "$(counts "$sizes" 10 5 "${DIFFUSE_BENCH_STEPS:-}")"
                 --warmup "$(counts "$sizes" 3 2 "${DIFFUSE_BENCH_WARMUP:-}")"
                 --json "$out/$name.json" "$@")
  # shellcheck disable=SC2206  # the launcher may be a command with arguments
  [ "$processes" -gt 1 ] && command=($launcher --nproc-per-node "$processes" "${command[@]}")
  rm -f "$out/$name.json"
  echo "== $name: ${command[*]}"
  local start=$SECONDS
  timeout --kill-after=30 "$per_mode_timeout" "${command[@]}" 2>&1 | tee "$out/logs/$name.log"
  local status=${PIPESTATUS[0]}
  echo "== $name: exit $status after $((SECONDS - start)) s"
  [ "$status" -eq 0 ] || failed+=("$name")
  # A mode cut short keeps the sizes it finished (the program rewrites its JSON after each one).
  [ -f "$out/$name.json" ] && written+=("$out/$name.json")
}

echo "benchmark: $gpus GPU(s), shape $shape, results in $out"
nvidia-smi --query-gpu=index,name,memory.total,driver_version --format=csv,noheader 2>/dev/null | sed 's/^/  /'

# One GPU (4096 would take minutes per call there; diffusers' table leaves it out too).
if [ "$single_sizes" != none ]; then
  run single 1 "$single_sizes"
  [ "${DIFFUSE_BENCH_DEVICE:-}" = cpu ] || run single_graph 1 "$single_sizes" --cuda-graphs
fi
diffusers_args=()
if [ -n "${DIFFUSE_BENCH_DIFFUSERS:-}" ] && [ "$single_sizes" != none ]; then
  echo "== diffusers (${DIFFUSE_BENCH_DIFFUSERS})"
  start=$SECONDS
  PYTHONPATH="$DIFFUSE_BENCH_DIFFUSERS${PYTHONPATH:+:$PYTHONPATH}" timeout --kill-after=30 "$per_mode_timeout" \
    python3 scripts/diffusers_transformer_step.py --family flux --resolutions "$single_sizes" \
      --modes eager,eager_cudnn,compiled --json "$out/diffusers.json" 2>&1 | tee "$out/logs/diffusers.log"
  status=${PIPESTATUS[0]}
  echo "== diffusers: exit $status after $((SECONDS - start)) s"
  [ "$status" -eq 0 ] || failed+=(diffusers)
  [ -f "$out/diffusers.json" ] && diffusers_args=(--diffusers "$out/diffusers.json")
fi

case $gpus in
  1) ;;
  2) modes=("ulysses2 1 2" "ring2 2 1") ;;
  4) modes=("ulysses4 1 4" "ring4 4 1" "unified2x2 2 2") ;;
  8) modes=("ulysses8 1 8" "ring8 8 1" "unified2x4 2 4" "unified4x2 4 2") ;;
  *) modes=("ulysses$gpus 1 $gpus" "ring$gpus $gpus 1") ;;  # Ulysses needs the degree to divide 24 heads
esac
if [ "$gpus" -gt 1 ] && [ "$parallel_sizes" != none ]; then
  # shellcheck disable=SC2206  # extra options, split as words
  extra=(${DIFFUSE_BENCH_ARGS:-})
  for mode in "${modes[@]}"; do
    read -r name ring ulysses <<<"$mode"
    run "$name" "$gpus" "$parallel_sizes" --ring-degree "$ring" --ulysses-degree "$ulysses" "${extra[@]}"
  done
fi

echo "== plot and table"
if [ ${#written[@]} -gt 0 ]; then
  python3 scripts/plot_benchmarks.py --png "$out/benchmarks.png" --table "$out/table.md" "${written[@]}" \
    "${diffusers_args[@]}" || failed+=(plot)
else
  failed+=(plot)
fi

if [ ${#failed[@]} -gt 0 ]; then
  echo "benchmark.sh: failed: ${failed[*]} (see $out/logs)" >&2
  exit 1
fi
echo "benchmark.sh: done; $out/table.md, $out/benchmarks.png"
