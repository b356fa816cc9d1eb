#!/usr/bin/env bash
# diffuse-server's overhead: seconds per image through HTTP against the generate program's call for
# the same request, on a random pipeline of a named shape (no download: make_random_pipeline writes it).
#
#   scripts/benchmark_server.sh BUILD_DIR OUT_DIR            # flux-dev shape, bfloat16, cuda, 1024x1024, 28 steps
#   scripts/benchmark_server.sh BUILD_DIR OUT_DIR --cpu      # flux-tiny shape, float32, cpu, 256x256, 4 steps
#
# Environment overrides: SHAPE, DTYPE, DEVICE, SIZE, STEPS, REQUESTS (20), PROMPT.
# Prints both times and the server's overhead in percent; the server's first image is checked to be
# generate's PNG byte for byte. Files: OUT_DIR/<shape>-random (the pipeline, kept for the next run),
# generate.png, generate.log, server.log, server.png.
set -euo pipefail

if [ $# -lt 2 ]; then
  echo "usage: $0 BUILD_DIR OUT_DIR [--cpu]" >&2
  exit 2
fi
build=$(cd "$1" && pwd)
mkdir -p "$2"
out=$(cd "$2" && pwd)
if [ "${3:-}" = "--cpu" ]; then
  : "${SHAPE:=flux-tiny}" "${DTYPE:=float32}" "${DEVICE:=cpu}" "${SIZE:=256}" "${STEPS:=4}"
else
  : "${SHAPE:=flux-dev}" "${DTYPE:=bfloat16}" "${DEVICE:=cuda}" "${SIZE:=1024}" "${STEPS:=28}"
fi
: "${REQUESTS:=20}" "${PROMPT:=a photo of a lighthouse on a cliff at dawn}"
for program in generate make_random_pipeline diffuse-server; do
  [ -x "$build/examples/$program" ] || { echo "$0: $build/examples/$program is not built" >&2; exit 1; }
done
command -v curl >/dev/null || { echo "$0: curl is needed" >&2; exit 1; }

pipeline="$out/$SHAPE-random"
if [ ! -f "$pipeline/model_index.json" ]; then
  echo "making a random $SHAPE pipeline in $pipeline" >&2
  "$build/examples/make_random_pipeline" --shape "$SHAPE" --output "$pipeline" >&2
fi

# generate: the same call three times in one process; its last call's time (the first ones warm up).
"$build/examples/generate" --model "$pipeline" --dtype "$DTYPE" --device "$DEVICE" --prompt "$PROMPT" \
  --width "$SIZE" --height "$SIZE" --steps "$STEPS" --seed 0 --repeats 3 --output "$out/generate.png" \
  >"$out/generate.log" 2>&1
generate_seconds=$(sed -n 's/.*, total \([0-9.e+-]*\) s$/\1/p' "$out/generate.log" | tail -1)
[ -n "$generate_seconds" ] || { echo "$0: no time in $out/generate.log" >&2; cat "$out/generate.log" >&2; exit 1; }

# The server, on a free port; stopped with SIGTERM at the end, whatever happens.
"$build/examples/diffuse-server" --model "$pipeline" --dtype "$DTYPE" --device "$DEVICE" --port 0 --quiet \
  --max-size "$((SIZE > 2048 ? SIZE : 2048))" >"$out/server.log" 2>&1 &
server=$!
trap 'kill -TERM $server 2>/dev/null || true; wait $server 2>/dev/null || true' EXIT
port=""
for _ in $(seq 1 1200); do
  port=$(sed -n 's/.*listening on http:\/\/127.0.0.1:\([0-9]*\).*/\1/p' "$out/server.log")
  [ -n "$port" ] && break
  kill -0 $server 2>/dev/null || { echo "$0: the server exited:" >&2; cat "$out/server.log" >&2; exit 1; }
  sleep 0.5
done
[ -n "$port" ] || { echo "$0: the server did not start" >&2; exit 1; }

body="{\"prompt\": \"$PROMPT\", \"size\": \"${SIZE}x${SIZE}\", \"steps\": $STEPS, \"seed\": 0}"
request() {
  curl -sS --fail-with-body -o "$1" -w '%{time_total}' -H 'Content-Type: application/json' -d "$body" \
    "http://127.0.0.1:$port/v1/images/generations"
}
request "$out/response.json" >/dev/null  # warm-up
python3 -c 'import base64, json, sys; open(sys.argv[2], "wb").write(base64.b64decode(json.load(open(sys.argv[1]))["data"][0]["b64_json"]))' \
  "$out/response.json" "$out/server.png"
if cmp -s "$out/server.png" "$out/generate.png"; then same="yes"; else same="NO"; fi

total=0
for i in $(seq 1 "$REQUESTS"); do
  seconds=$(request /dev/null)
  total=$(python3 -c "print($total + $seconds)")
done
python3 - "$total" "$REQUESTS" "$generate_seconds" "$SHAPE" "$DTYPE" "$DEVICE" "$SIZE" "$STEPS" "$same" <<'PY'
import sys
total, n, gen = float(sys.argv[1]), int(sys.argv[2]), float(sys.argv[3])
shape, dtype, device, size, steps, same = sys.argv[4:10]
server = total / n
print(f"{shape} {dtype} on {device}, {size}x{size}, {steps} steps")
print(f"generate (its call):                    {gen:.4f} s per image")
print(f"diffuse-server ({n} sequential requests): {server:.4f} s per image (HTTP request to answer, PNG and base64 included)")
print(f"server overhead: {100 * (server - gen) / gen:+.2f}%")
print(f"server PNG identical to generate's: {same}")
PY
