#!/usr/bin/env bash
# Qwen-Image end to end on one GPU, diffuse beside diffusers in the same run (docs/benchmarks.md,
# "Qwen-Image end to end"): a qwen-image-shaped folder with random bfloat16 weights, one set of
# initial latents, then, prompt to image, 1024x1024, 20 steps, true CFG 4 with a negative prompt:
#   diffuse's generate (the times and peak memory of its last of 3 calls; the transformer replayed
#     from CUDA graphs, the default on a GPU),
#   diffusers' QwenImagePipeline (scripts/compare_diffusers.py): eager (attention as loaded) and
#     compiled (compile_repeated_blocks(fullgraph=True) of the transformer with the _native_cudnn
#     attention backend), each 3 timed runs after its warm-up runs,
#   optionally a float32 diffusers run as the reference (a separate process),
# and the outputs compared (scripts/compare_outputs.py: max|a-b|/max|b| of the image and latents).
#
#   scripts/benchmark_qwenimage_e2e.sh OUT_DIR BUILD_DIR DIFFUSERS_SRC
#
# The folder has the text encoder at its real size (Qwen2.5-VL-7B's language model, 7.1B parameters:
# 28 layers, 3584 wide; its vision tower and lm_head are described but not written, and transformers
# initializes them when diffusers loads the folder) and the transformer at its real width (24 heads of
# 128, joint_attention_dim 3584) with QWEN_E2E_LAYERS of its 60 blocks (0.34B parameters each): with
# 20, ~28 GB in bfloat16 (text encoder ~14 GB, transformer ~14 GB), where all 60 (~55 GB) would not
# leave room on a 64 GiB disk.
#
# Knobs (environment):
#   QWEN_E2E_LAYERS     transformer blocks (default 20)
#   QWEN_E2E_SIZE       image height and width (default 1024)
#   QWEN_E2E_STEPS      denoising steps (default 20)
#   QWEN_E2E_TRUE_CFG   true CFG scale (default 4)
#   QWEN_E2E_REPEATS    timed calls of each program and mode (default 3)
#   QWEN_E2E_REFERENCE  1 (default): also the float32 reference (with 20 blocks ~62 GB of weights on the
#                       GPU and in host memory while loading); 0: compare with diffusers' bfloat16 eager
#                       run only
#   QWEN_E2E_PARTS      what to run, comma-separated (default all, in this order): folder, latents,
#                       diffuse, diffusers, reference, compare. Each part reads what the earlier ones
#                       wrote in OUT_DIR, so a long run can be split over several commands.
#   QWEN_E2E_FOLDER     use this pipeline folder instead of writing OUT_DIR/qwen-image-LAYERS
#   QWEN_E2E_DEVICE     generate's --device (default cuda; cpu with a qwen-image-tiny QWEN_E2E_FOLDER
#                       tries the diffuse part on a CPU; diffusers' parts need CUDA)
set -euo pipefail
cd "$(dirname "$0")/.."

if [ $# -lt 3 ] || [ "$1" = "-h" ] || [ "$1" = "--help" ]; then
  sed -n '2,/^set /p' "$0" | sed '$d; s/^# \{0,1\}//'
  exit 2
fi
out=$1; build=$2; diffusers_src=$3
layers=${QWEN_E2E_LAYERS:-20}; size=${QWEN_E2E_SIZE:-1024}; steps=${QWEN_E2E_STEPS:-20}
cfg=${QWEN_E2E_TRUE_CFG:-4}; repeats=${QWEN_E2E_REPEATS:-3}; reference=${QWEN_E2E_REFERENCE:-1}
parts=",${QWEN_E2E_PARTS:-folder,latents,diffuse,diffusers,reference,compare},"
folder=${QWEN_E2E_FOLDER:-$out/qwen-image-$layers}
device=${QWEN_E2E_DEVICE:-cuda}
prompt="a photograph of an astronaut riding a horse"
negative="blurry, low quality"
export PYTHONUNBUFFERED=1
mkdir -p "$out"

fail() { echo "benchmark_qwenimage_e2e.sh: $*" >&2; exit 1; }
want() { [[ $parts == *",$1,"* ]]; }
need_file() { [ -e "$1" ] || fail "$1 is missing: $2"; }
part() { echo; echo "== $1"; }
for p in ${parts//,/ }; do
  case $p in
    folder | latents | diffuse | diffusers | reference | compare) ;;
    *) fail "QWEN_E2E_PARTS: unknown part '$p'" ;;
  esac
done
if want diffusers || { want reference && [ "$reference" = 1 ]; }; then
  [ -d "$diffusers_src/diffusers" ] ||
    fail "DIFFUSERS_SRC $diffusers_src has no diffusers/ (give diffusers' src folder)"
fi

# The folder, once: a marker written after make_random_pipeline succeeds (it writes model_index.json
# first, so that file alone does not say the weights are whole).
if want folder && [ -z "${QWEN_E2E_FOLDER:-}" ]; then
  part "folder: $folder (qwen-image, bfloat16, $layers transformer blocks)"
  if [ -f "$folder/.written" ]; then
    echo "already written ($(cat "$folder/.written"))"
  else
    need_file "$build/examples/make_random_pipeline" "build it (cmake --build $build --target make_random_pipeline)"
    "$build/examples/make_random_pipeline" --shape qwen-image --dtype bfloat16 --transformer-layers "$layers" \
      --output "$folder"
    echo "make_random_pipeline --shape qwen-image --dtype bfloat16 --transformer-layers $layers" >"$folder/.written"
  fi
  du -sh "$folder"/* | sed 's/^/  /'
fi
[ -f "$folder/model_index.json" ] || fail "no pipeline folder at $folder (run the folder part first)"

# One set of initial latents for every run, in the layout that diffusers' latents= and diffuse's
# generate --latents both take for Qwen-Image: packed [1, (H/16)*(W/16), 64] at Qwen-Image's shape.
# Drawn as QwenImagePipeline.prepare_latents draws them ([B, 1, z_dim, H/s, W/s] with s the VAE's
# scale factor, 2^len(temperal_downsample) = 8; a CPU generator seeded 0, here in float32) and packed
# into 2x2 patches as its _pack_latents does: the one place this layout is made.
latents=$out/latents.safetensors
if want latents; then
  part "latents: $latents"
  python3 - "$latents" "$size" "$folder/vae/config.json" <<'PY'
import json
import sys
import torch
sys.path.insert(0, "scripts")
from safetensors_io import save_tensors
size = int(sys.argv[2])
vae = json.load(open(sys.argv[3]))
channels, scale = vae["z_dim"], 2 ** len(vae["temperal_downsample"])
h = w = 2 * (size // (scale * 2))  # the VAE's latent grid, even
x = torch.randn([1, 1, channels, h, w], generator=torch.Generator("cpu").manual_seed(0))
x = x.view(1, channels, h // 2, 2, w // 2, 2).permute(0, 2, 4, 1, 3, 5).reshape(1, (h // 2) * (w // 2), channels * 4)
save_tensors(sys.argv[1], {"latents": x.contiguous()})
print(f"latents {list(x.shape)} float32")
PY
fi

common=(--model "$folder" --prompt "$prompt" --negative-prompt "$negative" --height "$size" --width "$size"
        --steps "$steps" --true-cfg-scale "$cfg" --dtype bfloat16 --latents "$latents")

if want diffuse; then
  part "diffuse: generate, $repeats calls, the last one timed"
  need_file "$build/examples/generate" "build it (cmake --build $build --target generate)"
  need_file "$latents" "run the latents part first"
  "$build/examples/generate" "${common[@]}" --device "$device" --repeats "$repeats" \
    --save-tensors "$out/diffuse.safetensors" --output "$out/diffuse.png" 2>&1 | tee "$out/diffuse.log"
fi

if want diffusers; then
  part "diffusers: QwenImagePipeline eager, then compiled"
  need_file "$latents" "run the latents part first"
  PYTHONPATH="$diffusers_src${PYTHONPATH:+:$PYTHONPATH}" python3 scripts/compare_diffusers.py "${common[@]}" \
    --seed 0 --modes eager,compiled --compiled-attention-backend _native_cudnn --repeats "$repeats" \
    --save-tensors "$out/diffusers.safetensors" --json "$out/diffusers.json" 2>&1 | tee "$out/diffusers.log"
fi

if want reference && [ "$reference" = 1 ]; then
  part "diffusers: float32 reference (eager, TF32 off, one run)"
  need_file "$latents" "run the latents part first"
  PYTHONPATH="$diffusers_src${PYTHONPATH:+:$PYTHONPATH}" python3 scripts/compare_diffusers.py "${common[@]}" \
    --seed 0 --modes none --reference-float32 \
    --save-tensors "$out/diffusers_float32.safetensors" --json "$out/diffusers_float32.json" 2>&1 |
    tee "$out/diffusers_float32.log"
fi

if want compare; then
  part "compare: max|a-b|/max|b| (compare_outputs.py)"
  need_file "$out/diffusers.safetensors" "run the diffusers part first"
  if [ -f "$out/diffuse.safetensors" ]; then
    echo "-- diffuse vs diffusers eager (both bfloat16)"
    python3 scripts/compare_outputs.py "$out/diffuse.safetensors" "$out/diffusers.safetensors" \
      --names image:eager.image latents:eager.latents 2>&1 | tee "$out/compare_diffuse_eager.log"
  else
    echo "(no $out/diffuse.safetensors: diffuse's output is not compared)"
  fi
  echo "-- diffusers compiled vs eager"
  python3 scripts/compare_outputs.py "$out/diffusers.safetensors" "$out/diffusers.safetensors" \
    --names compiled.image:eager.image compiled.latents:eager.latents 2>&1 | tee "$out/compare_compiled_eager.log"
  if [ -f "$out/diffusers_float32.safetensors" ]; then
    ref=$out/diffusers_float32.safetensors
    if [ -f "$out/diffuse.safetensors" ]; then
      echo "-- diffuse vs the float32 reference"
      python3 scripts/compare_outputs.py "$out/diffuse.safetensors" "$ref" \
        --names image:float32_reference.image latents:float32_reference.latents 2>&1 |
        tee "$out/compare_diffuse_float32.log"
    fi
    echo "-- diffusers eager and compiled vs the float32 reference"
    python3 scripts/compare_outputs.py "$out/diffusers.safetensors" "$ref" \
      --names eager.image:float32_reference.image eager.latents:float32_reference.latents \
      compiled.image:float32_reference.image compiled.latents:float32_reference.latents 2>&1 |
      tee "$out/compare_diffusers_float32.log"
  elif [ "$reference" = 1 ]; then
    echo "(no $out/diffusers_float32.safetensors: run the reference part for the float32 comparisons)"
  fi

  part "summary"
  python3 - "$out" "$folder" <<'PY'
import json, os, re, sys
out, folder = sys.argv[1], sys.argv[2]
transformer = json.load(open(os.path.join(folder, "transformer", "config.json")))
text = json.load(open(os.path.join(folder, "text_encoder", "config.json"))).get("text_config", {})
print(f"folder {folder}: transformer {transformer['num_layers']} blocks of {transformer['num_attention_heads']} x "
      f"{transformer['attention_head_dim']} heads; text encoder {text.get('num_hidden_layers')} layers x "
      f"{text.get('hidden_size')} wide")
log = os.path.join(out, "diffuse.log")
if os.path.isfile(log):
    text = open(log).read()
    times = re.findall(r"^times: .*$", text, re.M)
    peak = re.findall(r"^peak memory: .*$", text, re.M)
    print("diffuse   ", times[-1] if times else "(no times line in diffuse.log)")
    print("          ", peak[-1] if peak else "(no peak memory line in diffuse.log)")
path = os.path.join(out, "diffusers.json")
if os.path.isfile(path):
    report = json.load(open(path))
    for mode, entry in report["modes"].items():
        if entry.get("status") != "ok":
            print(f"diffusers {mode}: {entry.get('error')}")
            continue
        loop = entry.get("denoise_loop", {})
        print(f"diffusers {mode}: {entry['seconds_per_image']:.3f} s per image, denoise loop "
              f"{loop.get('ms_total', float('nan')) / 1000:.3f} s ({loop.get('ms_per_step', float('nan')):.1f} ms per "
              f"step), peak {entry['peak_memory_gib']['allocated']:.2f} GiB allocated")
PY
  cat <<EOF

Where the numbers come from:
  diffuse   'times:' line of diffuse.log: wall clock of the last of $repeats generate calls (load excluded),
            split into encode / denoise / decode; 'peak memory:' the most libtorch's CUDA caching
            allocator held for tensors during that call (torch.cuda.max_memory_allocated's counter).
  diffusers diffusers.json (scripts/compare_diffusers.py --help explains every field): seconds_per_image,
            the median wall clock of pipe(...) between torch.cuda.synchronize() calls over $repeats runs
            after the warm-up runs; denoise_loop from CUDA events; peak_memory_gib.allocated,
            torch.cuda.max_memory_allocated over the timed runs.
  outputs   compare_*.log: max|a-b|/max|b| per tensor (image in [0, 1], final packed latents).
EOF
fi
