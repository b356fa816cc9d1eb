#!/usr/bin/env bash
# One family end to end on one GPU, diffuse beside diffusers in the same run (docs/benchmarks.md,
# "Qwen-Image end to end" and "FLUX.1 end to end"): a folder shaped like the real model with random
# bfloat16 weights, one set of initial latents, then, prompt to image:
#   diffuse's generate (the times and peak memory of its last of REPEATS calls; the denoiser replayed
#     from CUDA graphs, the default on a GPU), and the same under --offload model,
#   diffusers' pipeline (scripts/compare_diffusers.py): eager (attention as loaded) and compiled
#     (compile_repeated_blocks(fullgraph=True) of the transformer with the _native_cudnn attention
#     backend), each REPEATS timed runs after its warm-up runs, and eager under
#     enable_model_cpu_offload (mode model_offload),
#   optionally a float32 diffusers run as the reference (a separate process),
#   optionally (part stages) each stage's output of both programs in float32 and in bfloat16,
# and the outputs compared (scripts/compare_outputs.py: max|a-b|/max|b| of the image and latents).
#
#   FAMILY=qwenimage scripts/benchmark_e2e.sh OUT_DIR BUILD_DIR DIFFUSERS_SRC
#   FAMILY=flux      scripts/benchmark_e2e.sh OUT_DIR BUILD_DIR DIFFUSERS_SRC
#
# FAMILY=qwenimage (the default): make_random_pipeline --shape qwen-image. The text encoder at its real
# size (Qwen2.5-VL-7B's language model, 7.1B parameters: 28 layers, 3584 wide; its vision tower and
# lm_head are described but not written, and transformers initializes them when diffusers loads the
# folder) and the transformer at its real width (24 heads of 128, joint_attention_dim 3584) with
# QWEN_E2E_LAYERS of its 60 blocks (0.34B parameters each): with 20, ~28 GB in bfloat16 (text encoder
# ~14 GB, transformer ~14 GB), where all 60 (~55 GB) would not leave room on a 64 GiB disk.
# 1024x1024, 20 steps, true CFG 4 with a negative prompt.
#
# FAMILY=flux: make_random_pipeline --shape flux-dev, FLUX.1-dev's shape whole (transformer 11.9B
# parameters, T5-XXL encoder 4.8B, CLIP-L, the VAE), ~34 GB in bfloat16. 1024x1024, 28 steps,
# guidance 3.5, 512 T5 tokens.
#
# Knobs (environment; PREFIX is QWEN for qwenimage, FLUX for flux):
#   PREFIX_E2E_SIZE       image height and width (default 1024)
#   PREFIX_E2E_STEPS      denoising steps (default 20 Qwen-Image, 28 FLUX)
#   PREFIX_E2E_REPEATS    timed calls of each program and mode (default 3)
#   PREFIX_E2E_REFERENCE  1: also the float32 reference (Qwen-Image with 20 blocks: ~62 GB of weights on
#                         the GPU and in host memory while loading; FLUX ~68 GB); 0: compare with
#                         diffusers' bfloat16 eager run only. Default 1 Qwen-Image, 0 FLUX.
#   PREFIX_E2E_PARTS      what to run, comma-separated, in this order: folder, latents, diffuse,
#                         diffuse_offload, diffusers, diffusers_offload, reference, stages, compare.
#                         Default: all but stages for FLUX; for Qwen-Image all but stages and the two
#                         _offload parts. stages says where the programs part when their outputs
#                         differ: diffuse's model_sharding writes its embeddings, latents and image in
#                         bfloat16 and in float32; diffusers runs in float32 from diffuse's float32
#                         embeddings (writing its own too); then the float32 outputs of both, and each
#                         program's bfloat16 outputs (diffusers': the diffusers part's, else one more
#                         eager run), are compared with diffusers' float32 ones (Qwen-Image's ~62 GB
#                         and FLUX's ~68 GB of float32 weights, as the reference). Each
#                         part reads what the earlier ones wrote in OUT_DIR, so a long run can be split
#                         over several commands (each under ~9 minutes on one H200: the FLUX folder
#                         takes ~2, each diffusers part loads the folder again).
#   PREFIX_E2E_FOLDER     use this pipeline folder instead of writing one in OUT_DIR
#   PREFIX_E2E_DEVICE     generate's --device (default cuda; cpu with a qwen-image-tiny or flux-tiny
#                         folder tries the diffuse parts on a CPU; diffusers' parts need CUDA)
#   QWEN_E2E_LAYERS       Qwen-Image: transformer blocks (default 20)
#   QWEN_E2E_TRUE_CFG     Qwen-Image: true CFG scale (default 4)
#   FLUX_E2E_GUIDANCE     FLUX: guidance (default 3.5)
#   FLUX_E2E_TOKENS       FLUX: T5 tokens, --max-sequence-length (default 512)
set -euo pipefail
cd "$(dirname "$0")/.."

if [ $# -lt 3 ] || [ "$1" = "-h" ] || [ "$1" = "--help" ]; then
  sed -n '2,/^set /p' "$0" | sed '$d; s/^# \{0,1\}//'
  exit 2
fi
out=$1; build=$2; diffusers_src=$3
family=${FAMILY:-qwenimage}
fail() { echo "benchmark_e2e.sh: $*" >&2; exit 1; }
case $family in
  qwenimage) prefix=QWEN ;;
  flux) prefix=FLUX ;;
  *) fail "FAMILY must be qwenimage or flux, got '$family'" ;;
esac
# knob NAME DEFAULT: $PREFIX_E2E_NAME, or DEFAULT.
knob() { local name="${prefix}_E2E_$1"; echo "${!name:-$2}"; }

size=$(knob SIZE 1024); repeats=$(knob REPEATS 3); device=$(knob DEVICE cuda)
prompt="a photograph of an astronaut riding a horse"
if [ "$family" = qwenimage ]; then
  layers=$(knob LAYERS 20); steps=$(knob STEPS 20); cfg=$(knob TRUE_CFG 4); reference=$(knob REFERENCE 1)
  parts=",$(knob PARTS folder,latents,diffuse,diffusers,reference,compare),"
  shape=qwen-image; written_folder=$out/qwen-image-$layers; shape_args=(--transformer-layers "$layers")
  negative="blurry, low quality"
  family_args=(--negative-prompt "$negative" --true-cfg-scale "$cfg")
  what="qwen-image, bfloat16, $layers transformer blocks"
else
  steps=$(knob STEPS 28); guidance=$(knob GUIDANCE 3.5); tokens=$(knob TOKENS 512); reference=$(knob REFERENCE 0)
  parts=",$(knob PARTS folder,latents,diffuse,diffuse_offload,diffusers,diffusers_offload,reference,compare),"
  shape=flux-dev; written_folder=$out/flux-dev; shape_args=()
  family_args=(--guidance "$guidance" --max-sequence-length "$tokens")
  what="flux-dev, bfloat16"
fi
given_folder=$(knob FOLDER "")
folder=${given_folder:-$written_folder}
export PYTHONUNBUFFERED=1
mkdir -p "$out"

want() { [[ $parts == *",$1,"* ]]; }
need_file() { [ -e "$1" ] || fail "$1 is missing: $2"; }
part() { echo; echo "== $1"; }
for p in ${parts//,/ }; do
  case $p in
    folder | latents | diffuse | diffuse_offload | diffusers | diffusers_offload | reference | stages | compare) ;;
    *) fail "${prefix}_E2E_PARTS: unknown part '$p'" ;;
  esac
done
if want diffusers || want diffusers_offload || want stages || { want reference && [ "$reference" = 1 ]; }; then
  [ -d "$diffusers_src/diffusers" ] ||
    fail "DIFFUSERS_SRC $diffusers_src has no diffusers/ (give diffusers' src folder)"
fi

# The folder, once: a marker written after make_random_pipeline succeeds (it writes model_index.json
# first, so that file alone does not say the weights are whole).
if want folder && [ -z "$given_folder" ]; then
  part "folder: $folder ($what)"
  if [ -f "$folder/.written" ]; then
    echo "already written ($(cat "$folder/.written"))"
  else
    need_file "$build/examples/make_random_pipeline" "build it (cmake --build $build --target make_random_pipeline)"
    "$build/examples/make_random_pipeline" --shape "$shape" --dtype bfloat16 ${shape_args[@]+"${shape_args[@]}"} \
      --output "$folder"
    echo "make_random_pipeline --shape $shape --dtype bfloat16 ${shape_args[*]-}" >"$folder/.written"
  fi
  du -sh "$folder"/* | sed 's/^/  /'
fi
[ -f "$folder/model_index.json" ] || fail "no pipeline folder at $folder (run the folder part first)"

# One set of initial latents for every run, in the layout that diffusers' latents= and diffuse's
# generate --latents both take for FLUX and Qwen-Image: packed [1, (H/16)*(W/16), 64]. Drawn as the
# pipelines' prepare_latents draw them from a CPU generator seeded 0 (here in float32): Qwen-Image
# [B, 1, z_dim, H/s, W/s] with s = 2^len(temperal_downsample), FLUX [B, in_channels/4, H/s, W/s] with
# s = 2^(len(block_out_channels)-1), the same values in the same order; then packed into 2x2 patches as
# their _pack_latents do: the one place this layout is made.
latents=$out/latents.safetensors
if want latents; then
  part "latents: $latents"
  python3 - "$latents" "$size" "$folder" "$family" <<'PY'
import json
import os
import sys
import torch
sys.path.insert(0, "scripts")
from safetensors_io import save_tensors
path, size, folder, family = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4]
vae = json.load(open(os.path.join(folder, "vae", "config.json")))
if family == "qwenimage":
    channels, scale = vae["z_dim"], 2 ** len(vae["temperal_downsample"])
else:
    transformer = json.load(open(os.path.join(folder, "transformer", "config.json")))
    channels, scale = transformer["in_channels"] // 4, 2 ** (len(vae["block_out_channels"]) - 1)
h = w = 2 * (size // (scale * 2))  # the VAE's latent grid, even
x = torch.randn([1, channels, h, w], generator=torch.Generator("cpu").manual_seed(0))
x = x.view(1, channels, h // 2, 2, w // 2, 2).permute(0, 2, 4, 1, 3, 5).reshape(1, (h // 2) * (w // 2), channels * 4)
save_tensors(path, {"latents": x.contiguous()})
print(f"latents {list(x.shape)} float32")
PY
fi

base=(--model "$folder" --prompt "$prompt" --height "$size" --width "$size" --steps "$steps"
      "${family_args[@]}" --latents "$latents")
common=("${base[@]}" --dtype bfloat16)

# run_diffuse NAME [generate options...]: generate's last of $repeats calls, into NAME.log / NAME.safetensors.
run_diffuse() {
  local name=$1; shift
  need_file "$build/examples/generate" "build it (cmake --build $build --target generate)"
  need_file "$latents" "run the latents part first"
  "$build/examples/generate" "${common[@]}" --device "$device" --repeats "$repeats" "$@" \
    --save-tensors "$out/$name.safetensors" --output "$out/$name.png" 2>&1 | tee "$out/$name.log"
}
if want diffuse; then
  part "diffuse: generate, $repeats calls, the last one timed"
  run_diffuse diffuse
fi
if want diffuse_offload; then
  part "diffuse: generate --offload model, $repeats calls, the last one timed"
  run_diffuse diffuse_offload --offload model
fi

# run_diffusers NAME [compare_diffusers options...]: into NAME.log / NAME.json / NAME.safetensors.
run_diffusers() {
  local name=$1; shift
  need_file "$latents" "run the latents part first"
  PYTHONPATH="$diffusers_src${PYTHONPATH:+:$PYTHONPATH}" python3 scripts/compare_diffusers.py "${common[@]}" \
    --seed 0 "$@" --save-tensors "$out/$name.safetensors" --json "$out/$name.json" 2>&1 | tee "$out/$name.log"
}
if want diffusers; then
  part "diffusers: eager, then compiled"
  run_diffusers diffusers --modes eager,compiled --compiled-attention-backend _native_cudnn --repeats "$repeats"
fi
if want diffusers_offload; then
  part "diffusers: eager under enable_model_cpu_offload"
  run_diffusers diffusers_offload --modes model_offload --repeats "$repeats"
fi
if want reference && [ "$reference" = 1 ]; then
  part "diffusers: float32 reference (eager, TF32 off, one run)"
  run_diffusers diffusers_float32 --modes none --reference-float32
fi

# compare A.safetensors B.safetensors LOG a:b...: max|a-b|/max|b| when both files exist.
compare() {
  local a=$out/$1 b=$out/$2 log=$out/$3; shift 3
  if [ -f "$a" ] && [ -f "$b" ]; then
    python3 scripts/compare_outputs.py "$a" "$b" --names "$@" 2>&1 | tee "$log" || echo "(compare_outputs.py failed)"
  else
    echo "(skipped: $([ -f "$a" ] || echo "$a ")$([ -f "$b" ] || echo "$b ")missing)"
  fi
}
# Stage by stage. The family's embedding tensors, under the names model_sharding writes them
# (compare_diffusers.py writes diffusers' own as text.NAME).
if [ "$family" = qwenimage ]; then embeddings=(prompt_embeds negative_prompt_embeds)
else embeddings=(prompt_embeds pooled_prompt_embeds); fi
if want stages; then
  part "stages: each stage's output of both programs, in float32 and in bfloat16"
  need_file "$build/examples/model_sharding" "build it (cmake --build $build --target model_sharding)"
  need_file "$latents" "run the latents part first"
  for dtype in float32 bfloat16; do
    "$build/examples/model_sharding" "${base[@]}" --dtype $dtype --device "$device" \
      --save-tensors "$out/stages_diffuse_$dtype.safetensors" --output "$out/stages_diffuse_$dtype.png" 2>&1 |
      tee "$out/stages_diffuse_$dtype.log" | { grep -v '^\[' || true; }
  done
  run_diffusers stages_diffusers_float32 --dtype float32 --modes eager --warmup 0 --repeats 1 \
    --embeddings "$out/stages_diffuse_float32.safetensors" | tail -3
  # diffusers' bfloat16 outputs: the diffusers part's eager run (it saves its embeddings as text.*).
  theirs=diffusers.safetensors
  if [ ! -f "$out/$theirs" ]; then
    theirs=stages_diffusers_bfloat16.safetensors
    run_diffusers stages_diffusers_bfloat16 --modes eager --warmup 0 --repeats 1 | tail -3
  fi
  ours_names=(); theirs_names=()
  for name in "${embeddings[@]}"; do ours_names+=("$name:text.$name"); theirs_names+=("text.$name"); done
  echo "-- float32: diffuse vs diffusers (diffusers' latents and image from diffuse's float32 embeddings)"
  compare stages_diffuse_float32.safetensors stages_diffusers_float32.safetensors stages_float32.log \
    "${ours_names[@]}" latents:eager.latents image:eager.image
  echo "-- diffuse bfloat16 vs diffusers float32"
  compare stages_diffuse_bfloat16.safetensors stages_diffusers_float32.safetensors stages_diffuse_bfloat16.log \
    "${ours_names[@]}" latents:eager.latents image:eager.image
  echo "-- diffusers bfloat16 (eager) vs diffusers float32"
  compare "$theirs" stages_diffusers_float32.safetensors stages_diffusers_bfloat16.log \
    "${theirs_names[@]}" eager.latents eager.image
fi

if want compare; then
  part "compare: max|a-b|/max|b| (compare_outputs.py)"
  echo "-- diffuse vs diffusers eager (both bfloat16)"
  compare diffuse.safetensors diffusers.safetensors compare_diffuse_eager.log image:eager.image latents:eager.latents
  echo "-- diffusers compiled vs eager"
  compare diffusers.safetensors diffusers.safetensors compare_compiled_eager.log \
    compiled.image:eager.image compiled.latents:eager.latents
  echo "-- diffuse --offload model vs diffuse on one device"
  compare diffuse_offload.safetensors diffuse.safetensors compare_diffuse_offload.log image:image latents:latents
  echo "-- diffusers model_offload vs eager"
  compare diffusers_offload.safetensors diffusers.safetensors compare_diffusers_offload.log \
    model_offload.image:eager.image model_offload.latents:eager.latents
  if [ "$reference" = 1 ]; then
    echo "-- diffuse vs the float32 reference"
    compare diffuse.safetensors diffusers_float32.safetensors compare_diffuse_float32.log \
      image:float32_reference.image latents:float32_reference.latents
    echo "-- diffusers eager and compiled vs the float32 reference"
    compare diffusers.safetensors diffusers_float32.safetensors compare_diffusers_float32.log \
      eager.image:float32_reference.image eager.latents:float32_reference.latents \
      compiled.image:float32_reference.image compiled.latents:float32_reference.latents
  fi

  part "summary"
  python3 - "$out" "$folder" "$family" <<'PY'
import json, os, re, sys
out, folder, family = sys.argv[1], sys.argv[2], sys.argv[3]
transformer = json.load(open(os.path.join(folder, "transformer", "config.json")))
if family == "qwenimage":
    text = json.load(open(os.path.join(folder, "text_encoder", "config.json"))).get("text_config", {})
    print(f"folder {folder}: transformer {transformer['num_layers']} blocks of {transformer['num_attention_heads']} x "
          f"{transformer['attention_head_dim']} heads; text encoder {text.get('num_hidden_layers')} layers x "
          f"{text.get('hidden_size')} wide")
else:
    t5 = json.load(open(os.path.join(folder, "text_encoder_2", "config.json")))
    print(f"folder {folder}: transformer {transformer['num_layers']} double + {transformer['num_single_layers']} single "
          f"blocks of {transformer['num_attention_heads']} x {transformer['attention_head_dim']} heads; T5 "
          f"{t5.get('num_layers')} layers x {t5.get('d_model')} wide")
for name, label in (("diffuse", "diffuse"), ("diffuse_offload", "diffuse --offload model")):
    log = os.path.join(out, name + ".log")
    if os.path.isfile(log):
        text = open(log).read()
        times = re.findall(r"^times: .*$", text, re.M)
        peak = re.findall(r"^peak memory: .*$", text, re.M)
        print(f"{label:<24}", times[-1] if times else f"(no times line in {name}.log)")
        print(f"{'':<24}", peak[-1] if peak else f"(no peak memory line in {name}.log)")
for name in ("diffusers", "diffusers_offload"):
    path = os.path.join(out, name + ".json")
    if not os.path.isfile(path):
        continue
    for mode, entry in json.load(open(path))["modes"].items():
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
  diffuse   'times:' line of diffuse.log (diffuse_offload.log: --offload model): wall clock of the last
            of $repeats generate calls (load excluded), split into encode / denoise / decode; 'peak
            memory:' the most libtorch's CUDA caching allocator held for tensors during that call
            (torch.cuda.max_memory_allocated's counter).
  diffusers diffusers.json, diffusers_offload.json (scripts/compare_diffusers.py --help explains every
            field): seconds_per_image, the median wall clock of pipe(...) between
            torch.cuda.synchronize() calls over $repeats runs after the warm-up runs; denoise_loop from
            CUDA events; peak_memory_gib.allocated, torch.cuda.max_memory_allocated over the timed runs.
  outputs   compare_*.log: max|a-b|/max|b| per tensor (image in [0, 1], final packed latents).
EOF
fi
