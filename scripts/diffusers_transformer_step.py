#!/usr/bin/env python3
"""Times diffusers' FluxTransformer2DModel or QwenImageTransformer2DModel on the inputs that
benchmarks/flux_transformer_step and benchmarks/qwenimage_transformer_step give diffuse's, for the tables
in docs/benchmarks.md.

    PYTHONPATH=/path/to/diffusers/src python3 scripts/diffusers_transformer_step.py --family flux \
        --resolutions 1024,2048 --modes eager,compiled --json diffusers.json

The model has the family's real shape with random bfloat16 weights made on the GPU (no files):
  flux        FLUX.1-dev: 19 double-stream + 38 single-stream blocks of 24 x 128 heads, T5 width 4096,
              guidance embedding; one call = packed latents of a square image (tokens = (size / 16)^2),
              --text-tokens prompt tokens (default 512), pooled CLIP embedding, timestep 1 (the first
              step's sigma), guidance 3.5, the (0, row, col) image ids and zero text ids, as FluxPipeline.
  qwen-image  Qwen-Image: 60 blocks of 24 x 128 heads (--layers for fewer); packed latents, --text-tokens
              prompt tokens (default 256) with no mask, timestep 0.5.
For each mode, --warmup untimed calls, then --steps calls each timed alone with CUDA events after a
synchronize; min and median ms and the peak allocated memory are reported.

Modes: "eager" as built (attention as loaded: PyTorch SDPA); "eager_cudnn": eager with diffusers' cuDNN
attention backend ("_native_cudnn"); "compiled" = transformer.compile_repeated_blocks(fullgraph=True)
with the cuDNN attention backend, diffusers' recommended fast setup (regional compilation). Compiled
runs get at least 3 warm-up calls so that compilation stays out.
"""

import argparse
import json
import sys

import torch


def build_model(family, layers):
    """The family's transformer at its real shape, random bfloat16 weights made on the GPU."""
    if family == "flux":
        from diffusers import FluxTransformer2DModel

        kwargs = dict(patch_size=1, in_channels=64, num_layers=19, num_single_layers=38, attention_head_dim=128,
                      num_attention_heads=24, joint_attention_dim=4096, pooled_projection_dim=768,
                      guidance_embeds=True, axes_dims_rope=(16, 56, 56))
        if layers is not None:
            kwargs["num_layers"] = layers
        cls = FluxTransformer2DModel
    else:
        from diffusers import QwenImageTransformer2DModel

        kwargs = {} if layers is None else {"num_layers": layers}
        cls = QwenImageTransformer2DModel
    torch.manual_seed(0)
    with torch.device("cuda"):
        model = cls(**kwargs).to(torch.bfloat16)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("bias"):
                p.zero_()
            elif p.dim() == 1:
                p.fill_(1)
            else:
                p.normal_(0.0, 0.02)
    return model.eval()


def make_call(family, model, size, text_tokens):
    """One call's inputs as the family's pipeline makes them, and the call."""
    config = model.config
    side = size // 16
    g = torch.Generator("cpu").manual_seed(0)
    bf16 = dict(device="cuda", dtype=torch.bfloat16)
    hidden = torch.randn(1, side * side, config.in_channels, generator=g).to(**bf16)
    if family == "flux":
        text = torch.randn(1, text_tokens, config.joint_attention_dim, generator=g).to(**bf16)
        pooled = torch.randn(1, config.pooled_projection_dim, generator=g).to(**bf16)
        rows = torch.arange(side).repeat_interleave(side)
        cols = torch.arange(side).repeat(side)
        img_ids = torch.stack([torch.zeros_like(rows), rows, cols], dim=1).to(**bf16)
        txt_ids = torch.zeros(text_tokens, 3, **bf16)
        timestep = torch.ones(1, **bf16)
        guidance = torch.full((1,), 3.5, device="cuda", dtype=torch.float32)

        def call():
            return model(hidden_states=hidden, encoder_hidden_states=text, pooled_projections=pooled,
                         timestep=timestep, img_ids=img_ids, txt_ids=txt_ids, guidance=guidance,
                         return_dict=False)[0]
    else:
        text = torch.randn(1, text_tokens, config.joint_attention_dim, generator=g).to(**bf16)
        timestep = torch.full((1,), 0.5, **bf16)
        img_shapes = [[(1, side, side)]]

        def call():
            return model(hidden_states=hidden, encoder_hidden_states=text, encoder_hidden_states_mask=None,
                         timestep=timestep, img_shapes=img_shapes, return_dict=False)[0]
    return side * side, call


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--family", choices=["flux", "qwen-image"], required=True)
    parser.add_argument("--resolutions", default=None, help="comma-separated square sizes "
                        "(default 1024,2048 flux, 1024,1328 qwen-image)")
    parser.add_argument("--text-tokens", type=int, default=None, help="default 512 flux, 256 qwen-image")
    parser.add_argument("--layers", type=int, default=None, help="fewer (double-stream) blocks")
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--modes", default="eager,compiled", help="from eager, eager_cudnn, compiled")
    parser.add_argument("--json", default=None)
    args = parser.parse_args()
    flux = args.family == "flux"
    resolutions = args.resolutions or ("1024,2048" if flux else "1024,1328")
    text_tokens = args.text_tokens or (512 if flux else 256)

    model = build_model(args.family, args.layers)
    blocks = (f"{model.config.num_layers} + {model.config.num_single_layers} blocks" if flux
              else f"{model.config.num_layers} blocks")
    results = []
    compiled = False
    for mode in args.modes.split(","):
        if mode not in ("eager", "eager_cudnn", "compiled"):
            parser.error(f"unknown mode {mode!r} (eager, eager_cudnn, compiled)")
        if compiled:
            # compile_repeated_blocks cannot be undone on the same model: eager modes go first.
            parser.error("--modes: put 'compiled' last")
        try:
            if mode in ("eager_cudnn", "compiled"):
                model.set_attention_backend("_native_cudnn")
            if mode == "compiled":
                model.compile_repeated_blocks(fullgraph=True)
                compiled = True
        except Exception as e:  # an old diffusers, or a compile error: recorded, the run goes on
            results.append({"mode": mode, "error": str(e)[:500]})
            print(f"diffusers {mode}: {e}", file=sys.stderr)
            continue
        for size in [int(s) for s in resolutions.split(",")]:
            tokens, call = make_call(args.family, model, size, text_tokens)
            try:
                with torch.no_grad():
                    for _ in range(max(args.warmup, 3 if mode == "compiled" else 0)):
                        call()
                    torch.cuda.synchronize()
                    torch.cuda.reset_peak_memory_stats()
                    ms = []
                    for _ in range(args.steps):
                        torch.cuda.synchronize()
                        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
                        start.record()
                        out = call()
                        end.record()
                        end.synchronize()
                        ms.append(start.elapsed_time(end))
                    finite = bool(torch.isfinite(out).all())
            except Exception as e:
                results.append({"mode": mode, "resolution": size, "error": str(e)[:500]})
                print(f"diffusers {mode} {size}: {e}", file=sys.stderr)
                continue
            ms.sort()
            peak = torch.cuda.max_memory_allocated() / 2**30
            print(f"diffusers {mode} {args.family} transformer {size}x{size} ({tokens} image + {text_tokens} "
                  f"text tokens, {blocks}): min {ms[0]:.1f} ms, median {ms[len(ms) // 2]:.1f} ms, "
                  f"peak {peak:.2f} GiB{'' if finite else ', OUTPUT NOT FINITE'}")
            results.append({"family": args.family, "mode": mode, "resolution": size, "image_tokens": tokens,
                            "text_tokens": text_tokens, "blocks": blocks, "min_ms": ms[0],
                            "median_ms": ms[len(ms) // 2], "peak_allocated_gib": peak, "output_finite": finite})
            if args.json:
                with open(args.json, "w") as f:
                    json.dump(results, f, indent=2)


if __name__ == "__main__":
    main()
