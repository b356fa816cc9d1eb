#!/usr/bin/env bash
# The main job on a fresh Debian machine: set up, build, then inspect the reference FLUX.1-shaped
# pipeline (components, classes, parameter counts, bytes by dtype, read from headers only).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
bash scripts/build.sh
folder=${1:-../shared/fixtures/tiny-flux/pipeline}
./build/examples/inspect "$folder"
