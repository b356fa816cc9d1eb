#!/usr/bin/env python3
"""diffusers' UNet2DConditionModel profiled the way benchmarks/unet_step profiles diffuse's, to compare
where the GPU time goes kernel by kind (scripts/trace_summary.py reads both traces).

    PYTHONPATH=diffusers/src python3 scripts/trace_diffusers_unet.py --model sd15-random --out DIR

One call's shapes as the pipeline makes them under classifier-free guidance: batch 2 x --images, 77 text
tokens, timestep 500. Writes DIR/diffusers_unet_{eager,compiled}.json (2 profiled calls each, after
warm-up) and prints min/median ms per call of each mode (CUDA events, synchronized per call). "compiled"
is torch.compile(unet, mode=--compile-mode, fullgraph=True), what scripts/compare_diffusers.py does for SD.
"""
import argparse
import os
import statistics

os.environ.setdefault("HF_HUB_OFFLINE", "1")


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--model", required=True, help="pipeline folder (its unet/ is read)")
    parser.add_argument("--out", required=True, help="folder for the Chrome traces")
    parser.add_argument("--height", type=int, default=512)
    parser.add_argument("--width", type=int, default=512)
    parser.add_argument("--images", type=int, default=1)
    parser.add_argument("--steps", type=int, default=20, help="timed calls per mode")
    parser.add_argument("--compile-mode", default="reduce-overhead")
    parser.add_argument("--modes", default="eager,compiled")
    args = parser.parse_args()

    import torch
    from diffusers import UNet2DConditionModel

    os.makedirs(args.out, exist_ok=True)
    unet = UNet2DConditionModel.from_pretrained(os.path.join(args.model, "unet"), torch_dtype=torch.float16)
    unet = unet.to("cuda").eval()
    torch.manual_seed(0)
    batch = 2 * args.images
    sample = torch.randn(batch, unet.config.in_channels, args.height // 8, args.width // 8, device="cuda",
                         dtype=torch.float16)
    timestep = torch.tensor(500.0, device="cuda")
    text = torch.randn(batch, 77, unet.config.cross_attention_dim, device="cuda", dtype=torch.float16)

    for mode in args.modes.split(","):
        model = unet if mode == "eager" else torch.compile(unet, mode=args.compile_mode, fullgraph=True)

        def call():
            return model(sample, timestep, encoder_hidden_states=text, return_dict=False)[0]

        with torch.inference_mode():
            for _ in range(5):
                call()
            torch.cuda.synchronize()
            times = []
            for _ in range(args.steps):
                start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
                torch.cuda.synchronize()
                start.record()
                call()
                end.record()
                torch.cuda.synchronize()
                times.append(start.elapsed_time(end))
            with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CUDA]) as prof:
                for _ in range(2):
                    call()
                torch.cuda.synchronize()
        path = os.path.join(args.out, f"diffusers_unet_{mode}.json")
        prof.export_chrome_trace(path)
        print(f"diffusers unet {args.height}x{args.width}, batch {batch}, float16, {mode}: "
              f"min {min(times):.2f} ms, median {statistics.median(times):.2f} ms  (trace {path})")


if __name__ == "__main__":
    main()
