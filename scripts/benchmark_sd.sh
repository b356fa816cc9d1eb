#!/usr/bin/env bash
# Stable Diffusion 1.5 on one GPU, diffuse beside diffusers in the same run (docs/benchmarks.md):
# an sd15-shaped folder with random fp16 weights, one set of initial latents, then
#   diffuse's generate (fp16, 512x512, 50 steps, guidance 7.5; times of a warm call),
#   diffusers' StableDiffusionPipeline eager and with torch.compile of the UNet (CUDA graphs), and a
#   float32 diffusers run as the reference that both fp16 outputs are compared with.
#
#   scripts/benchmark_sd.sh OUT_DIR BUILD_DIR DIFFUSERS_SRC
set -euo pipefail
out=${1:?OUT_DIR}; build=${2:?BUILD_DIR}; diffusers_src=${3:?DIFFUSERS_SRC}
steps=${SD_STEPS:-50}; size=${SD_SIZE:-512}
mkdir -p "$out"
folder="$out/sd15-random"
[ -f "$folder/model_index.json" ] || "$build/examples/make_random_pipeline" --shape sd15 --dtype float16 --output "$folder"
python3 - "$out/latents.safetensors" "$size" <<'PY'
import sys, torch
sys.path.insert(0, "scripts")
from safetensors_io import save_tensors
size = int(sys.argv[2])
latents = torch.randn([1, 4, size // 8, size // 8], generator=torch.Generator("cpu").manual_seed(0))
save_tensors(sys.argv[1], {"latents": latents})
PY
prompt="a photograph of an astronaut riding a horse"
"$build/examples/generate" --model "$folder" --prompt "$prompt" --negative-prompt "blurry" --height "$size" --width "$size" \
  --steps "$steps" --guidance 7.5 --dtype float16 --device cuda --latents "$out/latents.safetensors" --repeats 3 \
  --save-tensors "$out/diffuse_sd.safetensors" --output "$out/diffuse_sd.png" 2>&1 | tee "$out/diffuse_sd.log"
# The same without CUDA graphs (each UNet call launched kernel by kernel), for the table.
"$build/examples/generate" --model "$folder" --prompt "$prompt" --negative-prompt "blurry" --height "$size" --width "$size" \
  --steps "$steps" --guidance 7.5 --dtype float16 --device cuda --latents "$out/latents.safetensors" --repeats 3 \
  --cuda-graphs off --save-tensors "$out/diffuse_sd_eager.safetensors" --output "$out/diffuse_sd_eager.png" 2>&1 |
  tee "$out/diffuse_sd_eager.log"
python3 scripts/compare_outputs.py "$out/diffuse_sd.safetensors" "$out/diffuse_sd_eager.safetensors" \
  --names image:image latents:latents 2>&1 | tee "$out/compare_graphs.log"
PYTHONPATH="$diffusers_src" python3 scripts/compare_diffusers.py --model "$folder" --prompt "$prompt" \
  --negative-prompt "blurry" --height "$size" --width "$size" --steps "$steps" --guidance 7.5 --dtype float16 --seed 0 \
  --latents "$out/latents.safetensors" --modes eager,compiled --repeats 3 --reference-float32 \
  --save-tensors "$out/diffusers_sd.safetensors" --json "$out/diffusers_sd.json" 2>&1 | tail -40 | tee "$out/diffusers_sd.log"
python3 scripts/compare_outputs.py "$out/diffuse_sd.safetensors" "$out/diffusers_sd.safetensors" \
  --names image:float32_reference.image latents:float32_reference.latents 2>&1 | tee "$out/compare_diffuse.log"
python3 scripts/compare_outputs.py "$out/diffusers_sd.safetensors" "$out/diffusers_sd.safetensors" \
  --names eager.image:float32_reference.image compiled.image:float32_reference.image 2>&1 | tee "$out/compare_diffusers.log"
