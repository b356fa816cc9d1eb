#!/usr/bin/env bash
# The main job on a fresh Debian machine: set up, build, make a small FLUX.1-shaped pipeline with
# random weights (flux-tiny, seconds on a CPU), and generate a PNG from a prompt with it.
#
#   scripts/demo.sh                          # the flux-tiny demo
#   scripts/demo.sh /path/to/FLUX.1-dev ...  # any pipeline folder; further arguments go to generate
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
bash scripts/build.sh

mkdir -p build/demo
if [ $# -ge 1 ]; then
  model=$1
  shift
else
  model=build/demo/flux-tiny
  [ -f "$model/model_index.json" ] || ./build/examples/make_random_pipeline --shape flux-tiny --output "$model" >/dev/null
  set -- --height 256 --width 256 --steps 8
fi
./build/examples/generate --model "$model" --prompt "a photo of a cat wearing a tiny wizard hat" --seed 0 \
  --output build/demo/cat.png "$@"
echo "demo: the image is at $(pwd)/build/demo/cat.png"
