#!/usr/bin/env python3
"""Times diffusers' QwenImageTransformer2DModel on the inputs benchmarks/qwenimage_transformer_step
gives diffuse's, for the table in docs/benchmarks.md (scripts/benchmark_qwenimage.sh runs both).

    PYTHONPATH=/path/to/diffusers/src python3 scripts/diffusers_qwenimage_step.py \\
        --resolutions 1024,1328 --modes eager,compiled --json diffusers.json

The model has Qwen-Image's shape (diffusers' defaults: 60 blocks of 24 x 128 heads; --layers for
fewer) with random bfloat16 weights made on the GPU (no files). One call is batch 1, the packed
latents of a square image (tokens = (size / 16)^2) and --text-tokens prompt tokens with no mask, the
timestep 0.5. For each mode, --warmup untimed calls, then --steps calls each timed alone with CUDA
events after a synchronize; min and median ms and the peak allocated memory are reported.

Modes: "eager" as built; "compiled" = transformer.compile_repeated_blocks(fullgraph=True) with
diffusers' cuDNN attention backend ("_native_cudnn"), which is diffusers' recommended fast setup
(regional compilation). Compiled runs get at least 3 warm-up calls so that compilation stays out.
"""

import argparse
import json
import sys

import torch


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--resolutions", default="1024,1328")
    parser.add_argument("--text-tokens", type=int, default=256)
    parser.add_argument("--layers", type=int, default=None)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--modes", default="eager,compiled")
    parser.add_argument("--json", default=None)
    args = parser.parse_args()

    from diffusers import QwenImageTransformer2DModel

    torch.manual_seed(0)
    kwargs = {} if args.layers is None else {"num_layers": args.layers}
    with torch.device("cuda"):
        model = QwenImageTransformer2DModel(**kwargs).to(torch.bfloat16)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("bias"):
                p.zero_()
            elif p.dim() == 1:
                p.fill_(1)
            else:
                p.normal_(0.0, 0.02)
    model.eval()
    config = model.config
    results = []
    for mode in args.modes.split(","):
        if mode == "compiled":
            try:
                model.set_attention_backend("_native_cudnn")
                model.compile_repeated_blocks(fullgraph=True)
            except Exception as e:  # an old diffusers, or a compile error: recorded, the run goes on
                results.append({"mode": mode, "error": str(e)[:500]})
                print(f"diffusers {mode}: {e}", file=sys.stderr)
                continue
        for size in [int(s) for s in args.resolutions.split(",")]:
            side = size // 16
            g = torch.Generator("cpu").manual_seed(0)
            hidden = torch.randn(1, side * side, config.in_channels, generator=g).to("cuda", torch.bfloat16)
            text = torch.randn(1, args.text_tokens, config.joint_attention_dim, generator=g).to("cuda", torch.bfloat16)
            timestep = torch.full((1,), 0.5, device="cuda", dtype=torch.bfloat16)
            img_shapes = [[(1, side, side)]]

            def call():
                return model(hidden_states=hidden, encoder_hidden_states=text, encoder_hidden_states_mask=None,
                             timestep=timestep, img_shapes=img_shapes, return_dict=False)[0]

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
                        call()
                        end.record()
                        end.synchronize()
                        ms.append(start.elapsed_time(end))
            except Exception as e:
                results.append({"mode": mode, "resolution": size, "error": str(e)[:500]})
                print(f"diffusers {mode} {size}: {e}", file=sys.stderr)
                continue
            ms.sort()
            peak = torch.cuda.max_memory_allocated() / 2**30
            print(f"diffusers {mode} qwen-image transformer {size}x{size} ({side * side} image + {args.text_tokens} "
                  f"text tokens, {config.num_layers} blocks): min {ms[0]:.1f} ms, median {ms[len(ms) // 2]:.1f} ms, "
                  f"peak {peak:.2f} GiB")
            results.append({"mode": mode, "resolution": size, "image_tokens": side * side,
                            "text_tokens": args.text_tokens, "layers": config.num_layers, "min_ms": ms[0],
                            "median_ms": ms[len(ms) // 2], "peak_allocated_gib": peak})
            if args.json:
                with open(args.json, "w") as f:
                    json.dump(results, f, indent=2)


if __name__ == "__main__":
    main()
