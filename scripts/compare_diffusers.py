#!/usr/bin/env python3
"""Times diffusers' own pipeline on one pipeline folder, for comparison with diffuse in the same run.

    PYTHONPATH=/path/to/diffusers/src python3 scripts/compare_diffusers.py --model DIR \\
        [--latents FILE] [--modes eager,model_offload,compiled] [--reference-float32] \\
        [--save-tensors OUT.safetensors] --json OUT.json

The folder is in diffusers' format (model_index.json and one folder per component), a
StableDiffusionPipeline, a FluxPipeline or a QwenImagePipeline (read from model_index.json's
_class_name). Everything loads from that folder (local_files_only; the Hub is never contacted). For
each mode the pipeline runs --warmup times untimed, then --repeats times timed, with output_type "pt";
the report gives:

  seconds_per_image   wall clock around pipe(...), torch.cuda.synchronize() before and after,
                      divided by the batch: text encoding, denoising, VAE decoding, no loading.
  denoiser_ms         CUDA events recorded by forward pre/post hooks on pipe.unet / pipe.transformer,
                      i.e. around the callable the pipeline calls (the compiled one in compiled mode):
                      the GPU-timeline span of one denoiser call, per call.
  denoise_loop        CUDA events: from the first denoiser call's start to the end of the last
                      step (callback_on_step_end, after scheduler.step); ms per loop iteration
                      (= per denoiser call; PNDM makes steps + 1 of them), and the steady-state
                      figure that leaves out the first iteration. Nothing synchronizes mid-run, so
                      these do not perturb seconds_per_image.
  peak memory         torch.cuda.max_memory_allocated / _reserved over the timed runs.

Modes: "eager" as loaded; "model_offload" = eager under pipe.enable_model_cpu_offload(device=--device) (each
model moved to the GPU when the pipeline calls it and back to the CPU when the next one is called:
accelerate's cpu_offload_with_hook; the weight moves are inside seconds_per_image, and the denoiser's
first call of each run includes its upload); "compiled" = the denoiser under torch.compile (SD: torch.compile(pipe.unet,
mode=--compile-mode) with CUDA graphs by default; FLUX and Qwen-Image: regional compilation,
pipe.transformer.compile_repeated_blocks(fullgraph=True), when diffusers has it), with
--compiled-attention-backend set on the denoiser first if given (e.g. _native_cudnn: eager keeps the
attention as loaded, compiled gets diffusers' recommended fast setup). Compiled modes get at least 2
warm-up runs so that compilation and autotuning stay out of the timings. A mode that fails (a compile
error, out of memory) records its error and the report goes on. The modes run in the order eager,
model_offload, compiled: compilation changes the loaded model in place, and after model_offload the
pipeline is put back on the GPU (remove_all_hooks, then to) when a later mode follows. With
model_offload alone the pipeline is loaded into CPU memory and never moved whole to the GPU. "--modes none" with --reference-float32 runs the float32
reference alone (a separate process, so that a long benchmark can be run in parts).

Qwen-Image: true CFG (a second transformer call per step with the negative prompt) runs when
--true-cfg-scale (default 4, diffusers' default) is above 1 and --negative-prompt is given, as in
diffusers and diffuse's generate; denoiser_ms then counts both calls of a step. guidance_scale is
passed only with --guidance (Qwen-Image is not guidance-distilled; diffusers ignores it with a warning).

Same inputs as diffuse: --latents FILE is a safetensors file with a float32 tensor "latents" in the
shape diffusers' latents= argument takes ([B, 4, H/8, W/8] for SD, packed [B, (H/16)*(W/16), 64] for
FLUX and Qwen-Image), passed on the device in the pipeline's dtype; diffuse's generate --latents takes
the same file in the same layout for every family, so nothing converts it. The generator is
torch.Generator("cpu") seeded with --seed. --save-tensors writes, per mode, "MODE.image" (float32
[B, 3, H, W] in [0, 1]) and "MODE.latents" (float32, the final latents before VAE scaling, packed for
FLUX and Qwen-Image), and with --reference-float32 "float32_reference.image" / ".latents" from one
float32 eager run with TF32 off: compare diffuse's `generate --save-tensors` output with
scripts/compare_outputs.py. It also writes "text.prompt_embeds" (and "text.pooled_prompt_embeds",
"text.negative_prompt_embeds", "text.prompt_embeds_mask", "text.negative_prompt_embeds_mask" where the
family makes them; not with --modes model_offload alone) from the pipeline's own encode_prompt, one
image per prompt: diffuse's
`model_sharding --save-tensors` writes its embeddings under the same names without "text.", so a
difference can be traced to the text side or to the denoiser.

--embeddings FILE runs every mode from those embeddings instead of the prompts: a safetensors file with
float32 prompt_embeds (and pooled_prompt_embeds for FLUX; negative_prompt_embeds for guidance; int64
masks for Qwen-Image, all positions valid where absent), as model_sharding --save-tensors writes them.
With diffuse's embeddings in, the two programs' latents differ only by the denoiser and scheduler.

Needs torch with CUDA and diffusers' source on PYTHONPATH (or installed); transformers for the text
encoders; the safetensors package is optional.
"""

from __future__ import annotations

import argparse
import datetime
import gc
import json
import os
import platform
import statistics
import sys
import time
import traceback

# Before diffusers / transformers / huggingface_hub are imported: never reach for the network.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import safetensors_io  # noqa: E402  (beside this script)


class Family:
    """What differs between the supported pipeline classes, in one place."""

    def __init__(self, name, denoiser, steps, guidance, dtype, compile_mode, compile_scope):
        self.name = name                    # "sd", "flux" or "qwen-image", as written in the report
        self.denoiser = denoiser            # the pipeline attribute that is timed and compiled
        self.steps = steps                  # diffusers' default num_inference_steps
        self.guidance = guidance            # diffusers' default guidance_scale (None: not passed)
        self.dtype = dtype                  # the usual half-precision dtype for the family
        self.compile_mode = compile_mode    # --compile-mode auto resolves to this
        self.compile_scope = compile_scope  # --compile-scope auto resolves to this


FAMILIES = {
    # SD's UNet is small and launch-bound at 512x512: CUDA graphs (reduce-overhead) pay off.
    "StableDiffusionPipeline": Family("sd", "unet", 50, 7.5, "float16", "reduce-overhead", "full"),
    # FLUX's 57 transformer blocks: regional compilation compiles two block classes once each.
    "FluxPipeline": Family("flux", "transformer", 28, 3.5, "bfloat16", "default", "regional"),
    # Qwen-Image's 60 identical blocks: regional compilation too. Its guidance is true CFG
    # (--true-cfg-scale), so guidance_scale is left to diffusers (None) unless --guidance is given.
    "QwenImagePipeline": Family("qwen-image", "transformer", 50, None, "bfloat16", "default", "regional"),
}

# diffusers' QwenImagePipeline.__call__ default for true_cfg_scale (and diffuse's).
QWEN_TRUE_CFG_SCALE = 4.0

# --modes, in the order they run.
MODES = ["eager", "model_offload", "compiled"]
COMPILE_MODES = ["auto", "default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs"]

DEFINITIONS = {
    "seconds_per_image": "wall clock around pipe(..., output_type='pt') with torch.cuda.synchronize() before "
                         "and after, divided by the batch; excludes loading; median over the timed runs",
    "denoiser_ms": "CUDA events recorded in forward pre/post hooks on the pipeline's denoiser attribute (the "
                   "compiled callable in compiled mode; the hooks sit outside any compiled region): GPU-timeline "
                   "ms from the start to the end of one call, pooled over the timed runs",
    "denoise_loop": "CUDA events: ms from the first denoiser call's start to the last callback_on_step_end "
                    "(after scheduler.step); ms_per_step = that / loop iterations (= denoiser calls); "
                    "ms_per_step_steady leaves out the first iteration; medians over the timed runs",
    "outside_loop_ms": "median seconds_per_run minus median denoise-loop ms: text encoding, latent "
                       "preparation, VAE decoding, post-processing and launch gaps",
    "peak_memory_gib": "torch.cuda.max_memory_allocated / max_memory_reserved over the timed runs (the peak "
                       "statistics are reset after the warm-up runs), GiB",
}


# ---------------------------------------------------------------------------------------------------
# Command line


def parse_args(argv=None):
    """The options; --help prints the module docstring above them, so it explains the measurements."""
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="\n\n".join(__doc__.split("\n\n")[1:]))
    parser.add_argument("--model", required=True, metavar="DIR",
                        help="pipeline folder in diffusers' format (StableDiffusionPipeline, FluxPipeline or "
                             "QwenImagePipeline)")
    parser.add_argument("--prompt", action="append", metavar="TEXT",
                        help="prompt; repeat for a batch (default: one astronaut prompt)")
    parser.add_argument("--negative-prompt", metavar="TEXT",
                        help="SD and Qwen-Image: negative prompt for every prompt (default: none; SD then "
                             "uses '', Qwen-Image runs without true CFG)")
    parser.add_argument("--height", type=int,
                        help="image height (default: the pipeline's, 512 SD 1.5, 1024 FLUX and Qwen-Image)")
    parser.add_argument("--width", type=int, help="image width (default: the pipeline's)")
    parser.add_argument("--steps", type=int, help="num_inference_steps (default: 50 SD, 28 FLUX, 50 Qwen-Image)")
    parser.add_argument("--guidance", type=float,
                        help="guidance_scale (default: 7.5 SD, 3.5 FLUX, not passed for Qwen-Image)")
    parser.add_argument("--true-cfg-scale", type=float, default=QWEN_TRUE_CFG_SCALE, metavar="X",
                        help="Qwen-Image only: true_cfg_scale; true CFG runs when X > 1 and --negative-prompt "
                             f"is given (default {QWEN_TRUE_CFG_SCALE:g})")
    parser.add_argument("--seed", type=int, default=0, help="seed of the CPU generator (default 0)")
    parser.add_argument("--num-images-per-prompt", type=int, default=1, metavar="N", help="(default 1)")
    parser.add_argument("--max-sequence-length", type=int, default=512, metavar="N",
                        help="FLUX: T5 tokens (at most 512); Qwen-Image: text tokens after the template "
                             "(at most 1024); default 512 (diffusers' default for both)")
    parser.add_argument("--dtype", choices=["float16", "bfloat16", "float32"],
                        help="weights and compute (default: float16 SD, bfloat16 FLUX and Qwen-Image)")
    parser.add_argument("--device", default="cuda", help="CUDA device (default cuda)")
    parser.add_argument("--latents", metavar="FILE",
                        help="safetensors (or .pt) file with a float32 tensor 'latents' in the shape of "
                             "diffusers' latents= argument: [B,4,H/8,W/8] SD, packed [B,(H/16)*(W/16),64] FLUX "
                             "and Qwen-Image")
    parser.add_argument("--embeddings", metavar="FILE",
                        help="safetensors file with prompt_embeds (pooled_prompt_embeds, negative_prompt_embeds, "
                             "masks) to run from instead of encoding --prompt, as diffuse's model_sharding "
                             "--save-tensors writes them")
    parser.add_argument("--modes", default="eager,compiled",
                        help="comma-separated, from eager, model_offload (eager under "
                             "enable_model_cpu_offload) and compiled (default eager,compiled); 'none' with "
                             "--reference-float32 runs only the float32 reference")
    parser.add_argument("--compile-mode", choices=COMPILE_MODES, default="auto",
                        help="torch.compile mode for the compiled mode; auto = reduce-overhead (CUDA graphs) for "
                             "SD's UNet, default for FLUX's and Qwen-Image's regional compilation")
    parser.add_argument("--compile-scope", choices=["auto", "full", "regional"], default="auto",
                        help="full = torch.compile of the whole denoiser; regional = "
                             "compile_repeated_blocks (its repeated blocks only); auto = full SD, regional FLUX and "
                             "Qwen-Image")
    parser.add_argument("--no-fullgraph", dest="fullgraph", action="store_false",
                        help="let torch.compile break graphs instead of failing on them")
    parser.add_argument("--attention-backend", metavar="NAME",
                        help="diffusers' set_attention_backend(NAME) on the denoiser, e.g. _native_cudnn, "
                             "_native_flash, flash, native, in every mode (default: leave as loaded)")
    parser.add_argument("--compiled-attention-backend", metavar="NAME",
                        help="set_attention_backend(NAME) on the denoiser in the compiled mode only, before "
                             "it compiles (e.g. _native_cudnn); eager keeps --attention-backend or as loaded")
    parser.add_argument("--warmup", type=int, default=1, metavar="N",
                        help="untimed runs before the timed ones (default 1; compiled modes at least 2)")
    parser.add_argument("--repeats", type=int, default=3, metavar="N", help="timed runs per mode (default 3)")
    parser.add_argument("--reference-float32", action="store_true",
                        help="also run once in float32, eager, TF32 off, and keep its output")
    parser.add_argument("--save-tensors", metavar="FILE",
                        help="write MODE.image / MODE.latents (float32) of each mode here (safetensors, or .pt)")
    parser.add_argument("--json", default="compare_diffusers.json", metavar="OUT",
                        help="report path (default compare_diffusers.json); rewritten after every mode")
    args = parser.parse_args(argv)

    args.modes = [m.strip() for m in args.modes.split(",") if m.strip()]
    if args.modes == ["none"]:
        if not args.reference_float32:
            parser.error("--modes none runs nothing without --reference-float32")
        args.modes = []
    else:
        unknown = [m for m in args.modes if m not in MODES]
        if unknown or not args.modes:
            parser.error(f"--modes takes {', '.join(MODES)} (or none), got {','.join(args.modes) or 'nothing'}")
    # Compiled last: compiling changes the loaded denoiser in place (compile_repeated_blocks) or replaces it.
    args.modes = sorted(set(args.modes), key=MODES.index)
    if args.repeats < 1 or args.warmup < 0:
        parser.error("--repeats must be at least 1 and --warmup at least 0")
    if args.embeddings and not os.path.isfile(args.embeddings):
        parser.error(f"--embeddings {args.embeddings}: no such file")
    for path in (args.json, args.save_tensors):
        parent = os.path.dirname(os.path.abspath(path)) if path else None
        if parent and not os.path.isdir(parent):
            parser.error(f"{path}: folder {parent} does not exist")
    return args


def read_model_index(model_dir):
    """model_index.json of the folder, checked early so that a wrong path fails before torch imports."""
    path = os.path.join(model_dir, "model_index.json")
    if not os.path.isfile(path):
        sys.exit(f"compare_diffusers: {model_dir}: no model_index.json (not a diffusers pipeline folder)")
    with open(path) as f:
        return json.load(f)


def detect_family(index):
    """The Family for model_index.json's _class_name; anything else is refused with the supported names."""
    class_name = index.get("_class_name")
    if class_name not in FAMILIES:
        sys.exit(f"compare_diffusers: _class_name {class_name!r} is not supported "
                 f"(supported: {', '.join(FAMILIES)})")
    return FAMILIES[class_name]


def check_latents_file(path):
    """Fails before the slow load when --latents is missing or has no 'latents' tensor (header only)."""
    if not os.path.isfile(path):
        sys.exit(f"compare_diffusers: --latents {path}: no such file")
    try:
        names = safetensors_io.tensor_names(path)
    except Exception as e:  # noqa: BLE001 (any unreadable file is the same user error)
        sys.exit(f"compare_diffusers: --latents {path}: {e}")
    if "latents" not in names:
        sys.exit(f"compare_diffusers: --latents {path}: no tensor named 'latents' (it has: {', '.join(names)})")


def import_stack():
    """torch, diffusers and transformers, with a message that says how to fix a missing diffusers."""
    import torch

    try:
        import diffusers
    except ImportError as e:
        sys.exit(f"compare_diffusers: cannot import diffusers ({e}); put its source on the path: "
                 "PYTHONPATH=/path/to/diffusers/src")
    try:
        import transformers
    except ImportError as e:
        sys.exit(f"compare_diffusers: cannot import transformers ({e}); the text encoders need it")
    if not torch.cuda.is_available():
        sys.exit("compare_diffusers: torch sees no CUDA device")
    return torch, diffusers, transformers


# ---------------------------------------------------------------------------------------------------
# Loading


def load_tokenizers(model_dir, index, transformers):
    """Finds the tokenizers that the class named in model_index.json cannot load, and loads a fallback.

    Returns (late, report). Each transformers tokenizer of the folder is tried with the named class
    (as diffusers would load it: from_pretrained(folder), no other arguments). Those that load are left
    to diffusers, so the pipeline is loaded exactly as diffusers loads it. For one that fails (a fast
    tokenizer that cannot be built from the files, or a class transformers 5 no longer has), the slow
    class, then AutoTokenizer(use_fast=False), is tried; the first that loads goes into late, to be
    passed to from_pretrained as None (diffusers would reject a slow class where a fast one is named)
    and set on the pipeline afterwards. report says, per tokenizer, what was asked for, what loaded
    and the errors on the way.
    """
    late, report = {}, {}
    for name, spec in index.items():
        if not (isinstance(spec, list) and len(spec) == 2 and spec[0] == "transformers"
                and isinstance(spec[1], str) and "Tokenizer" in spec[1]):
            continue
        folder = os.path.join(model_dir, name)
        requested = spec[1]
        candidates = [requested]
        if requested.endswith("Fast"):
            candidates.append(requested[: -len("Fast")])
        candidates.append("AutoTokenizer(use_fast=False)")
        errors = []
        for candidate in candidates:
            try:
                if candidate.startswith("AutoTokenizer"):
                    tokenizer = transformers.AutoTokenizer.from_pretrained(folder, use_fast=False)
                else:
                    cls = getattr(transformers, candidate, None)
                    if cls is None:
                        raise ImportError(f"transformers {transformers.__version__} has no {candidate}")
                    tokenizer = cls.from_pretrained(folder)
            except Exception as e:  # noqa: BLE001 (any failure means: try the next class)
                errors.append(f"{candidate}: {type(e).__name__}: {e}")
                continue
            report[name] = {"requested": requested, "loaded": type(tokenizer).__name__,
                            "fallback": candidate != requested}
            if candidate != requested:
                print(f"compare_diffusers: {name}: {requested} failed, using {type(tokenizer).__name__}",
                      file=sys.stderr)
                late[name] = tokenizer
            break
        else:
            # Nothing loaded it here; diffusers will try itself and raise its own error if it fails too.
            report[name] = {"requested": requested, "loaded": None, "fallback": False}
        if errors:
            report[name]["errors"] = errors
    return late, report


def dtype_keyword(diffusers):
    """'dtype' where diffusers has renamed torch_dtype (it resolves both), else 'torch_dtype'.

    Newer diffusers deprecate torch_dtype; older ones would hand an unknown 'dtype' to the components.
    """
    try:
        from diffusers.pipelines import pipeline_utils
    except ImportError:
        return "torch_dtype"
    return "dtype" if hasattr(pipeline_utils, "_resolve_dtype") else "torch_dtype"


def load_pipeline(args, family, index, dtype, torch, diffusers, transformers):
    """DiffusionPipeline.from_pretrained(folder, dtype, local_files_only) on the device, progress bar off.

    SD gets safety_checker=None, feature_extractor=None and requires_safety_checker=False: the
    benchmark folders set them to null, and on a real SD 1.5 folder they would only add work that
    diffuse does not do. Tokenizers that their named class cannot load come from load_tokenizers.
    Returns (pipe, info for the report).
    """
    from diffusers import DiffusionPipeline

    late, tokenizer_report = load_tokenizers(args.model, index, transformers)
    keyword = dtype_keyword(diffusers)
    kwargs = {keyword: dtype, "local_files_only": True, **{name: None for name in late}}
    if family.name == "sd":
        kwargs.update(safety_checker=None, feature_extractor=None, requires_safety_checker=False)
    start = time.perf_counter()
    pipe = DiffusionPipeline.from_pretrained(args.model, **kwargs)
    for name, tokenizer in late.items():
        setattr(pipe, name, tokenizer)
        # FluxPipeline reads the CLIP length from its tokenizer in __init__, where ours was still None.
        if name == "tokenizer" and hasattr(pipe, "tokenizer_max_length"):
            pipe.tokenizer_max_length = tokenizer.model_max_length
    for name, entry in tokenizer_report.items():
        entry["loaded"] = type(getattr(pipe, name, None)).__name__
    if args.modes != ["model_offload"]:  # model offload alone: the weights stay in CPU memory
        pipe.to(args.device)
    torch.cuda.synchronize(args.device)
    seconds = time.perf_counter() - start
    pipe.set_progress_bar_config(disable=True)
    info = {"pipeline_class": type(pipe).__name__, "scheduler": type(pipe.scheduler).__name__,
            "load_seconds": seconds, "dtype_keyword": keyword, "tokenizers": tokenizer_report,
            "memory_after_load_gib": torch.cuda.memory_allocated(args.device) / 2**30}
    return pipe, info


def resolve_size(pipe, family, height, width):
    """The height and width the pipeline will use, made explicit so the report and the latents agree."""
    if family.name == "sd":
        sample = pipe.unet.config.sample_size
        default_h, default_w = (sample, sample) if isinstance(sample, int) else tuple(sample)
        default_h, default_w = default_h * pipe.vae_scale_factor, default_w * pipe.vae_scale_factor
    else:
        default_h = default_w = pipe.default_sample_size * pipe.vae_scale_factor
    return height or default_h, width or default_w


def expected_latents_shape(pipe, family, batch, height, width):
    """The shape diffusers' prepare_latents accepts as latents= for this family and size."""
    scale = pipe.vae_scale_factor
    if family.name == "sd":
        return [batch, pipe.unet.config.in_channels, height // scale, width // scale]
    # FLUX and Qwen-Image: the VAE latent grid rounded down to even, packed into 2x2 patches
    # (transformer.config.in_channels = 4 x the VAE's latent channels: 64 for both).
    h = 2 * (height // (scale * 2))
    w = 2 * (width // (scale * 2))
    return [batch, (h // 2) * (w // 2), pipe.transformer.config.in_channels]


def load_latents(path, expected_shape, torch):
    """The 'latents' tensor of --latents, as float32 on the CPU, checked against the expected shape."""
    latents = safetensors_io.load_tensor(path, "latents")
    if latents.dtype != torch.float32:
        print(f"compare_diffusers: --latents {path}: 'latents' is {latents.dtype}, not float32; converting",
              file=sys.stderr)
        latents = latents.float()
    if list(latents.shape) != list(expected_shape):
        sys.exit(f"compare_diffusers: --latents {path}: 'latents' has shape {list(latents.shape)}, this run needs "
                 f"{list(expected_shape)} (batch = prompts x --num-images-per-prompt)")
    return latents


# What encode_prompt makes, by family, under the names diffuse's model_sharding --save-tensors uses.
EMBEDDING_NAMES = ["prompt_embeds", "pooled_prompt_embeds", "negative_prompt_embeds", "prompt_embeds_mask",
                   "negative_prompt_embeds_mask"]


def encode_prompts(pipe, family, args, prompts, guidance, true_cfg, torch):
    """diffusers' encode_prompt for the run's prompts, one image per prompt, as {name: float32/int64 CPU tensor}.

    The negative prompts are encoded where the call would use them: SD under classifier-free guidance
    ("" when none is given), Qwen-Image under true CFG. A mask that diffusers drops (every position
    valid) is absent, as in diffuse's file.
    """
    device = args.device
    negatives = [args.negative_prompt] * len(prompts) if args.negative_prompt is not None else None
    out = {}
    with torch.no_grad():
        if family.name == "flux":
            embeds, pooled, _ = pipe.encode_prompt(prompt=prompts, prompt_2=None, device=device,
                                                   num_images_per_prompt=1,
                                                   max_sequence_length=args.max_sequence_length)
            out.update(prompt_embeds=embeds, pooled_prompt_embeds=pooled)
        elif family.name == "sd":
            embeds, negative = pipe.encode_prompt(prompts, device, 1, guidance is not None and guidance > 1,
                                                  negative_prompt=negatives)
            out.update(prompt_embeds=embeds, negative_prompt_embeds=negative)
        else:
            embeds, mask = pipe.encode_prompt(prompt=prompts, device=device, num_images_per_prompt=1,
                                              max_sequence_length=args.max_sequence_length)
            out.update(prompt_embeds=embeds, prompt_embeds_mask=mask)
            if true_cfg:
                negative, negative_mask = pipe.encode_prompt(prompt=negatives, device=device, num_images_per_prompt=1,
                                                             max_sequence_length=args.max_sequence_length)
                out.update(negative_prompt_embeds=negative, negative_prompt_embeds_mask=negative_mask)
    return {name: (t.long() if name.endswith("_mask") else t.float()).cpu()
            for name, t in out.items() if t is not None}


def load_embeddings(path, family, dtype, device, torch):
    """The call's embedding arguments from --embeddings (see EMBEDDING_NAMES), on the device.

    Qwen-Image: diffusers runs true CFG only when negative embeddings come with a mask, so a
    negative without one gets a mask of ones (diffuse leaves it out when every position is valid).
    """
    names = safetensors_io.tensor_names(path)
    if "prompt_embeds" not in names:
        sys.exit(f"compare_diffusers: --embeddings {path}: no tensor named 'prompt_embeds' (it has: {', '.join(names)})")
    if family.name == "flux" and "pooled_prompt_embeds" not in names:
        sys.exit(f"compare_diffusers: --embeddings {path}: FLUX needs 'pooled_prompt_embeds' too")
    kwargs = {}
    for name in EMBEDDING_NAMES:
        if name in names:
            tensor = safetensors_io.load_tensor(path, name)
            kwargs[name] = tensor.to(device, torch.long if name.endswith("_mask") else dtype)
    if family.name == "qwen-image":
        for prefix in ("", "negative_"):
            embeds = kwargs.get(prefix + "prompt_embeds")
            if embeds is not None and prefix + "prompt_embeds_mask" not in kwargs:
                kwargs[prefix + "prompt_embeds_mask"] = torch.ones(embeds.shape[:2], dtype=torch.long, device=device)
    return kwargs


def apply_attention_backend(pipe, family, backend):
    """set_attention_backend(backend) on the denoiser, and how many attention processors took it.

    Only processors that route through diffusers' attention dispatcher honour it (FLUX's do; SD's UNet
    uses AttnProcessor2_0, which calls F.scaled_dot_product_attention itself), so the count tells
    whether the setting changed anything. A failure is reported, not raised: the run goes on as loaded.
    """
    info = {"requested": backend, "env_DIFFUSERS_ATTN_BACKEND": os.environ.get("DIFFUSERS_ATTN_BACKEND")}
    if not backend:
        info["applied"] = False
        info["note"] = "left as loaded"
        return info
    model = getattr(pipe, family.denoiser)
    if not hasattr(model, "set_attention_backend"):
        info.update(applied=False, error="this diffusers has no set_attention_backend")
        return info
    try:
        model.set_attention_backend(backend)
    except Exception as e:  # noqa: BLE001
        info.update(applied=False, error=f"{type(e).__name__}: {e}")
        print(f"compare_diffusers: set_attention_backend({backend!r}) failed: {e}", file=sys.stderr)
        return info
    processors = [getattr(m, "processor", None) for m in model.modules()]
    using = [p for p in processors if getattr(p, "_attention_backend", None) is not None]
    info.update(applied=bool(using), processors_using_it=len(using))
    if not using:
        info["note"] = ("no attention processor of this model routes through diffusers' dispatcher, "
                        "so the setting changes nothing here")
    return info


# ---------------------------------------------------------------------------------------------------
# Timing


class RunTimer:
    """Times one pipe(...) call from the inside with CUDA events, never synchronizing during it.

    Forward pre/post hooks on the denoiser bracket every call with events; callback_on_step_end
    records one event per loop iteration and keeps the latest latents (after the last iteration: the
    final latents). Events are read after the caller's torch.cuda.synchronize(). The hooks go on the
    object the pipeline calls: with torch.compile that is the OptimizedModule (its own hooks run in
    Python, outside the compiled frame); with regional compilation the transformer, whose blocks are
    the compiled parts. Hooks are removed before a mode compiles, so dynamo never traces them.
    """

    def __init__(self, torch):
        self.torch = torch
        self.handles = []
        self.start_run()

    def attach(self, module):
        self.handles = [module.register_forward_pre_hook(self._before_call),
                        module.register_forward_hook(self._after_call)]
        return self

    def detach(self):
        for handle in self.handles:
            handle.remove()
        self.handles = []

    def start_run(self):
        self.calls = []        # (start event, end event) per denoiser call
        self.step_ends = []    # one event per loop iteration
        self.latents = None    # the latents after the latest iteration
        self._pending = None

    def _event(self):
        event = self.torch.cuda.Event(enable_timing=True)
        event.record()
        return event

    def _before_call(self, module, args):
        self._pending = self._event()

    def _after_call(self, module, args, output):
        self.calls.append((self._pending, self._event()))

    def callback(self, pipe, step, timestep, callback_kwargs):
        """callback_on_step_end: returns {} so the pipeline keeps its own tensors."""
        self.step_ends.append(self._event())
        self.latents = callback_kwargs["latents"]
        return {}

    def finish_run(self, seconds):
        """The run's numbers; call after torch.cuda.synchronize()."""
        call_ms = [start.elapsed_time(end) for start, end in self.calls]
        run = {"seconds": seconds, "call_ms": call_ms, "iterations": len(self.step_ends)}
        if self.calls and self.step_ends:
            run["loop_ms"] = self.calls[0][0].elapsed_time(self.step_ends[-1])
            if len(self.step_ends) > 1:
                run["steady_ms_per_step"] = (self.step_ends[0].elapsed_time(self.step_ends[-1])
                                             / (len(self.step_ends) - 1))
        return run


def call_kwargs(family, args, prompts, latents, height, width, steps, guidance, timer, embeddings=None):
    """The keyword arguments of one pipe(...) call, with a fresh CPU generator so every run is the same.

    embeddings: from load_embeddings, passed instead of the prompts (and negative prompts)."""
    import torch

    kwargs = {
        "prompt": prompts if embeddings is None else None,
        "height": height,
        "width": width,
        "num_inference_steps": steps,
        "num_images_per_prompt": args.num_images_per_prompt,
        "generator": torch.Generator("cpu").manual_seed(args.seed),
        # A copy per call: nothing in diffusers writes into it today, and so it stays that way.
        "latents": latents.clone() if latents is not None else None,
        "output_type": "pt",
        "callback_on_step_end": timer.callback,
        "callback_on_step_end_tensor_inputs": ["latents"],
    }
    if guidance is not None:  # Qwen-Image: None unless --guidance (diffusers' default there)
        kwargs["guidance_scale"] = guidance
    if embeddings is not None:
        kwargs.update(embeddings)
    elif family.name in ("sd", "qwen-image") and args.negative_prompt is not None:
        # One per prompt: diffusers encodes the negative prompts as a batch of their own.
        kwargs["negative_prompt"] = [args.negative_prompt] * len(prompts)
    if family.name in ("flux", "qwen-image"):
        kwargs["max_sequence_length"] = args.max_sequence_length
    if family.name == "qwen-image":
        kwargs["true_cfg_scale"] = args.true_cfg_scale
    return kwargs


def timed_call(pipe, kwargs, device, torch):
    """Seconds of one pipe(...) call between two synchronizes, and its images [B, 3, H, W] in [0, 1]."""
    torch.cuda.synchronize(device)
    start = time.perf_counter()
    images = pipe(**kwargs).images
    torch.cuda.synchronize(device)
    return time.perf_counter() - start, images


def summarize(runs, batch, steps):
    """Medians (and spread) over the timed runs of RunTimer.finish_run results."""
    seconds = [r["seconds"] for r in runs]
    calls = [ms for r in runs for ms in r["call_ms"]]
    summary = {
        "seconds_per_run": seconds,
        "seconds_per_image": statistics.median(seconds) / batch,
        "seconds_per_image_min": min(seconds) / batch,
        "seconds_per_image_mean": statistics.fmean(seconds) / batch,
    }
    if calls:
        summary["denoiser_ms"] = {
            "median": statistics.median(calls), "mean": statistics.fmean(calls),
            "min": min(calls), "max": max(calls), "calls_per_run": len(runs[0]["call_ms"]),
        }
    loops = [r for r in runs if "loop_ms" in r]
    if loops:
        loop_ms = statistics.median(r["loop_ms"] for r in loops)
        iterations = loops[0]["iterations"]
        summary["denoise_loop"] = {
            "ms_total": loop_ms,
            "iterations": iterations,
            "requested_steps": steps,
            "ms_per_step": loop_ms / iterations,
        }
        steady = [r["steady_ms_per_step"] for r in loops if "steady_ms_per_step" in r]
        if steady:
            summary["denoise_loop"]["ms_per_step_steady"] = statistics.median(steady)
        summary["outside_loop_ms"] = statistics.median(seconds) * 1000 - loop_ms
    return summary


def compile_denoiser(pipe, family, args, torch):
    """Puts the denoiser under torch.compile as --compile-mode / --compile-scope say; returns what it did.

    regional: compile_repeated_blocks (diffusers >= 0.34), which compiles each block class once and
    reuses it for every block, so FLUX compiles in a minute rather than many; full: the whole model
    through torch.compile, assigned back to the pipeline attribute as diffusers' docs do.
    """
    mode = family.compile_mode if args.compile_mode == "auto" else args.compile_mode
    scope = family.compile_scope if args.compile_scope == "auto" else args.compile_scope
    options = {"fullgraph": args.fullgraph}
    if mode != "default":
        options["mode"] = mode
    model = getattr(pipe, family.denoiser)
    info = {"mode": mode, "fullgraph": args.fullgraph}
    if scope == "regional" and hasattr(model, "compile_repeated_blocks"):
        model.compile_repeated_blocks(**options)
        info["how"] = f"pipe.{family.denoiser}.compile_repeated_blocks(**{options})"
        info["blocks"] = list(getattr(model, "_repeated_blocks", []))
    else:
        if scope == "regional":
            info["note"] = "this diffusers has no compile_repeated_blocks; compiled the whole model"
        setattr(pipe, family.denoiser, torch.compile(model, **options))
        info["how"] = f"pipe.{family.denoiser} = torch.compile(pipe.{family.denoiser}, **{options})"
    return info


def run_mode(mode, pipe, family, args, inputs, torch):
    """Warm-up and timed runs of one mode. Returns (report entry, {name: tensor} to save).

    Any exception (compilation, out of memory) ends only this mode: its entry gets status "error",
    the error and the end of the traceback, and the caller goes on with the next mode.
    """
    entry = {"status": "error", "denoiser": family.denoiser}
    tensors = {}
    timer = RunTimer(torch)
    device = args.device
    try:
        if mode == "model_offload":
            pipe.enable_model_cpu_offload(device=device)
            entry["offload"] = f"pipe.enable_model_cpu_offload(device={device!r})"
        if mode == "compiled":
            if args.compiled_attention_backend:
                # Before compiling, so that the compiled blocks trace the chosen backend.
                entry["attention_backend"] = apply_attention_backend(pipe, family, args.compiled_attention_backend)
            entry["compile"] = compile_denoiser(pipe, family, args, torch)
        warmups = args.warmup if mode == "eager" else max(2, args.warmup)
        timer.attach(getattr(pipe, family.denoiser))
        entry["warmup_seconds"] = []
        for _ in range(warmups):
            timer.start_run()
            seconds, _ = timed_call(pipe, call_kwargs(family, args, timer=timer, **inputs), device, torch)
            entry["warmup_seconds"].append(seconds)
            print(f"  {mode}: warm-up {len(entry['warmup_seconds'])}/{warmups}: {seconds:.2f} s", flush=True)
        torch.cuda.reset_peak_memory_stats(device)
        runs = []
        images = None
        for i in range(args.repeats):
            timer.start_run()
            seconds, images = timed_call(pipe, call_kwargs(family, args, timer=timer, **inputs), device, torch)
            runs.append(timer.finish_run(seconds))
            print(f"  {mode}: run {i + 1}/{args.repeats}: {seconds:.3f} s", flush=True)
        entry.update(summarize(runs, len(inputs["prompts"]) * args.num_images_per_prompt, inputs["steps"]))
        entry["peak_memory_gib"] = {"allocated": torch.cuda.max_memory_allocated(device) / 2**30,
                                    "reserved": torch.cuda.max_memory_reserved(device) / 2**30}
        entry["output_shape"] = list(images.shape)
        tensors[f"{mode}.image"] = images.detach().float().cpu()
        if timer.latents is not None:
            tensors[f"{mode}.latents"] = timer.latents.detach().float().cpu()
        entry["status"] = "ok"
    except Exception as e:  # noqa: BLE001 (one failing mode must not lose the others)
        entry["error"] = f"{type(e).__name__}: {e}"
        entry["traceback"] = traceback.format_exc()[-4000:]
        print(f"compare_diffusers: mode {mode} failed: {entry['error']}", file=sys.stderr)
    finally:
        timer.detach()
        timer.start_run()  # drop references to events and latents
        if mode == "model_offload" and args.modes[-1] != mode:
            pipe.remove_all_hooks()  # the weights are in CPU memory; the next mode runs them on the GPU
            pipe.to(device)
        torch.cuda.empty_cache()
    return entry, tensors


# ---------------------------------------------------------------------------------------------------
# float32 reference


def tf32_state(torch):
    """Whether float32 matmuls and cuDNN convolutions may use TF32 now, for the report.

    Read through the legacy allow_tf32 flags only: torch >= 2.9 raises when a program reads one API
    after setting the other ("mix of the legacy and new APIs"), and this script never sets the new one.
    """
    state = {}
    for key, read in (("matmul_allow_tf32", lambda: torch.backends.cuda.matmul.allow_tf32),
                      ("cudnn_allow_tf32", lambda: torch.backends.cudnn.allow_tf32)):
        try:
            state[key] = bool(read())
        except Exception as e:  # noqa: BLE001 (report, never fail, on a flag)
            state[key] = f"unreadable: {e}"
    return state


def set_tf32(torch, matmul, cudnn):
    """Sets the legacy allow_tf32 flags (which set cuDNN conv and RNN together, keeping torch consistent)."""
    torch.backends.cuda.matmul.allow_tf32 = matmul
    torch.backends.cudnn.allow_tf32 = cudnn


def run_float32_reference(args, family, index, inputs, latents_cpu, torch, diffusers, transformers, loaded=None):
    """One float32 eager run with TF32 off, from a fresh float32 load. Returns (report entry, tensors).

    Untimed in spirit: it is a single cold run (its seconds are reported, but they include first-call
    overheads). Attention stays as loaded (no --attention-backend): the reference should be the plain
    path. Failures are recorded, not raised. loaded: (pipe, load info) of a float32 pipeline that main
    loaded already (--modes none), used instead of a second load; the caller drops its own reference.
    """
    entry = {"status": "error", "dtype": "float32", "attention_backend": "as loaded"}
    tensors = {}
    pipe = None
    saved = tf32_state(torch)
    try:
        # cuDNN convolutions default to TF32, which would put ~1e-3 errors into the VAE and the UNet of
        # a "float32" reference; matmuls default to IEEE already.
        set_tf32(torch, matmul=False, cudnn=False)
    except Exception as e:  # noqa: BLE001
        entry["tf32_error"] = f"{type(e).__name__}: {e}"
    entry["tf32"] = tf32_state(torch)
    timer = RunTimer(torch)
    try:
        if loaded is None:
            loaded = load_pipeline(args, family, index, torch.float32, torch, diffusers, transformers)
        pipe, load_info = loaded
        loaded = None
        entry["load_seconds"] = load_info["load_seconds"]
        run_inputs = dict(inputs)
        if latents_cpu is not None:
            run_inputs["latents"] = latents_cpu.to(args.device, torch.float32)
        if run_inputs.get("embeddings"):
            run_inputs["embeddings"] = {name: t if name.endswith("_mask") else t.float()
                                        for name, t in run_inputs["embeddings"].items()}
        torch.cuda.reset_peak_memory_stats(args.device)
        seconds, images = timed_call(pipe, call_kwargs(family, args, timer=timer, **run_inputs), args.device, torch)
        entry["seconds"] = seconds
        entry["peak_memory_gib"] = {"allocated": torch.cuda.max_memory_allocated(args.device) / 2**30}
        entry["output_shape"] = list(images.shape)
        tensors["float32_reference.image"] = images.detach().float().cpu()
        if timer.latents is not None:
            tensors["float32_reference.latents"] = timer.latents.detach().float().cpu()
        entry["status"] = "ok"
    except Exception as e:  # noqa: BLE001
        entry["error"] = f"{type(e).__name__}: {e}"
        entry["traceback"] = traceback.format_exc()[-4000:]
        print(f"compare_diffusers: float32 reference failed: {entry['error']}", file=sys.stderr)
    finally:
        if all(isinstance(v, bool) for v in saved.values()):
            set_tf32(torch, saved["matmul_allow_tf32"], saved["cudnn_allow_tf32"])
        timer.start_run()
        del pipe
        free_memory(torch)
    return entry, tensors


def free_memory(torch):
    """Drops compiled graphs (they hold the weights and CUDA-graph pools) and cached blocks."""
    try:
        torch._dynamo.reset()
        from torch._inductor import cudagraph_trees

        cudagraph_trees.reset_cudagraph_trees()
    except Exception:  # noqa: BLE001 (best effort: an older torch may lack one of these)
        pass
    gc.collect()
    torch.cuda.empty_cache()


# ---------------------------------------------------------------------------------------------------
# Report


def environment(args, torch, diffusers, transformers):
    """Versions and hardware, so a number in the report can be traced to what produced it."""
    props = torch.cuda.get_device_properties(args.device)
    return {
        "diffusers_version": diffusers.__version__,
        "diffusers_path": os.path.dirname(diffusers.__file__),
        "torch_version": torch.__version__,
        "transformers_version": transformers.__version__,
        "cuda_version": torch.version.cuda,
        "cudnn_version": torch.backends.cudnn.version(),
        "python_version": platform.python_version(),
        "gpu": torch.cuda.get_device_name(args.device),
        "gpu_memory_gib": props.total_memory / 2**30,
        "gpu_capability": f"{props.major}.{props.minor}",
        "hostname": platform.node(),
        "tf32": tf32_state(torch),
    }


def write_report(report, path):
    """Writes the JSON atomically, so an interrupted run leaves the previous complete report."""
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        json.dump(report, f, indent=2, default=str)
        f.write("\n")
    os.replace(tmp, path)


def print_table(report):
    """A few columns per mode on stdout; the JSON has the rest."""
    header = (f"{'mode':<18} {'status':<7} {'s/image':>8} {'1st warm-up s':>13} {'denoiser ms':>11} "
              f"{'ms/step':>8} {'steady':>8} {'peak GiB':>8}")
    print()
    print(f"{report['family']} {report['width']}x{report['height']}, {report['steps']} steps, {report['dtype']}, "
          f"batch {report['batch']}, {report['gpu']}, diffusers {report['diffusers_version']}, "
          f"torch {report['torch_version']}")
    print(header)
    print("-" * len(header))

    def cell(value, fmt):
        width = int(fmt.split(".")[0])
        return format(value, fmt) if isinstance(value, (int, float)) else format("-", f">{width}")

    rows = list(report["modes"].items())
    if report.get("float32_reference"):
        rows.append(("float32_reference", report["float32_reference"]))
    for name, entry in rows:
        if entry.get("status") != "ok":
            print(f"{name:<18} {'error':<7} {entry.get('error', '')[:100]}")
            continue
        loop = entry.get("denoise_loop", {})
        warm = entry.get("warmup_seconds") or [None]
        seconds = entry.get("seconds_per_image", entry.get("seconds"))
        print(f"{name:<18} {'ok':<7} {cell(seconds, '8.3f')} {cell(warm[0], '13.2f')} "
              f"{cell(entry.get('denoiser_ms', {}).get('median'), '11.2f')} {cell(loop.get('ms_per_step'), '8.2f')} "
              f"{cell(loop.get('ms_per_step_steady'), '8.2f')} "
              f"{cell(entry.get('peak_memory_gib', {}).get('allocated'), '8.2f')}")
    for name, entry in report["modes"].items():
        # The compiled mode's own backend (--compiled-attention-backend), else the run's.
        attention = entry.get("attention_backend") or report.get("attention_backend") or {}
        backend = attention.get("requested") or "as loaded"
        if attention.get("requested") and not attention.get("applied"):
            backend += f" (NOT applied: {attention.get('error') or attention.get('note')})"
        how = entry.get("compile", {}).get("how", "not compiled")
        if entry.get("offload"):
            how += f", {entry['offload']}"
        print(f"  {name}: {how}; attention backend {backend}")
    print("s/image: wall clock of pipe(...) between torch.cuda.synchronize() calls, per image; denoiser ms / ms/step:\n"
          "CUDA events around each denoiser call / per loop iteration; peak GiB: torch.cuda.max_memory_allocated\n"
          "over the timed runs (after the warm-up runs; the float32 reference: its one run)")


def main(argv=None):
    args = parse_args(argv)
    index = read_model_index(args.model)
    family = detect_family(index)
    if args.latents:
        check_latents_file(args.latents)
    torch, diffusers, transformers = import_stack()

    dtype_name = args.dtype or family.dtype
    dtype = getattr(torch, dtype_name)
    prompts = args.prompt or ["a photograph of an astronaut riding a horse"]
    batch = len(prompts) * args.num_images_per_prompt
    steps = args.steps or family.steps
    guidance = args.guidance if args.guidance is not None else family.guidance
    if family.name == "flux" and args.negative_prompt is not None:
        print("compare_diffusers: --negative-prompt is ignored for FLUX (no true CFG here)", file=sys.stderr)
    true_cfg = None
    if family.name == "qwen-image":
        # diffusers' rule (QwenImagePipeline.__call__), which diffuse's generate follows too.
        true_cfg = args.true_cfg_scale > 1 and args.negative_prompt is not None
        if not true_cfg:
            print(f"compare_diffusers: Qwen-Image runs without true CFG (--true-cfg-scale {args.true_cfg_scale:g}, "
                  f"--negative-prompt {'given' if args.negative_prompt is not None else 'not given'}): one "
                  "transformer call per step", file=sys.stderr)
    # --modes none: only the float32 reference, from the one float32 pipeline loaded below.
    reference_only = not args.modes
    if reference_only:
        dtype_name = "float32"
        dtype = torch.float32

    # Keys in reading order; the ones filled in later are placed here as None.
    report = {
        **environment(args, torch, diffusers, transformers),
        "family": family.name,
        "model": os.path.abspath(args.model),
        "pipeline_class": None,
        "scheduler": None,
        "height": None,
        "width": None,
        "steps": steps,
        "guidance": guidance,
        "true_cfg_scale": args.true_cfg_scale if family.name == "qwen-image" else None,
        "true_cfg": true_cfg,
        "dtype": dtype_name,
        "batch": batch,
        "prompts": prompts,
        "negative_prompt": args.negative_prompt if family.name in ("sd", "qwen-image") else None,
        "max_sequence_length": args.max_sequence_length if family.name in ("flux", "qwen-image") else None,
        "seed": args.seed,
        "latents_file": os.path.abspath(args.latents) if args.latents else None,
        "embeddings_file": os.path.abspath(args.embeddings) if args.embeddings else None,
        "warmup": args.warmup,
        "repeats": args.repeats,
        "load_seconds": None,
        "memory_after_load_gib": None,
        "dtype_keyword": None,
        "tokenizers": None,
        "attention_backend": None,
        "command": sys.argv,
        "date": datetime.datetime.now().isoformat(timespec="seconds"),
        "definitions": DEFINITIONS,
        "modes": {},
        "float32_reference": None,
        "saved_tensors": None,
    }

    print(f"loading {args.model} ({index.get('_class_name')}, {dtype_name}) ...", flush=True)
    pipe, load_info = load_pipeline(args, family, index, dtype, torch, diffusers, transformers)
    report.update(load_info)
    height, width = resolve_size(pipe, family, args.height, args.width)
    report.update(height=height, width=width)

    latents_cpu = None
    if args.latents:
        latents_cpu = load_latents(args.latents, expected_latents_shape(pipe, family, batch, height, width), torch)
    inputs = {"prompts": prompts, "height": height, "width": width, "steps": steps, "guidance": guidance,
              "latents": latents_cpu.to(args.device, dtype) if latents_cpu is not None else None}
    if args.embeddings:
        inputs["embeddings"] = load_embeddings(args.embeddings, family, dtype, args.device, torch)
        rows = inputs["embeddings"]["prompt_embeds"].shape[0]
        if rows != len(prompts):
            sys.exit(f"compare_diffusers: --embeddings {args.embeddings}: {rows} rows of prompt_embeds, but "
                     f"{len(prompts)} prompts (give one --prompt per row; they are not encoded)")
    if not reference_only:  # the reference keeps the attention as loaded
        report["attention_backend"] = apply_attention_backend(pipe, family, args.attention_backend)
    write_report(report, args.json)

    saved = {}
    # The embeddings need the text encoders on the GPU: not with model_offload alone (loaded to CPU memory).
    if args.save_tensors and not reference_only and args.modes != ["model_offload"]:
        encoded = encode_prompts(pipe, family, args, prompts, guidance, true_cfg, torch)
        saved.update({f"text.{name}": tensor for name, tensor in encoded.items()})
    for mode in args.modes:
        print(f"mode {mode} ...", flush=True)
        entry, tensors = run_mode(mode, pipe, family, args, inputs, torch)
        report["modes"][mode] = entry
        saved.update(tensors)
        write_report(report, args.json)

    if args.save_tensors and saved:
        safetensors_io.save_tensors(args.save_tensors, saved)
    if args.reference_float32:
        loaded = (pipe, load_info) if reference_only else None
        del pipe, load_info
        inputs["latents"] = None
        free_memory(torch)
        print("float32 reference ...", flush=True)
        entry, tensors = run_float32_reference(args, family, index, inputs, latents_cpu, torch, diffusers,
                                               transformers, loaded=loaded)
        del loaded
        free_memory(torch)
        report["float32_reference"] = entry
        saved.update(tensors)
        if args.save_tensors and tensors:
            safetensors_io.save_tensors(args.save_tensors, saved)
    if args.save_tensors:
        report["saved_tensors"] = {"file": os.path.abspath(args.save_tensors),
                                   "names": {name: list(t.shape) for name, t in saved.items()}}

    write_report(report, args.json)
    print_table(report)
    print(f"\nreport: {args.json}" + (f"\ntensors: {args.save_tensors}" if args.save_tensors and saved else ""))
    if reference_only:
        return 0 if report["float32_reference"].get("status") == "ok" else 1
    failed = [m for m, e in report["modes"].items() if e.get("status") != "ok"]
    return 1 if len(failed) == len(report["modes"]) else 0


if __name__ == "__main__":
    sys.exit(main())
