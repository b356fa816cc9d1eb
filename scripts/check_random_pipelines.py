#!/usr/bin/env python3
"""Checks that folders written by make_random_pipeline load and run in diffusers and transformers, as
the folders those libraries write load and run in diffuse.

    PYTHONPATH=/path/to/diffusers/src python3 scripts/check_random_pipelines.py DIR [DIR ...]

For each pipeline folder: every tokenizer loads with transformers' AutoTokenizer (the fast, `tokenizers`
backed class, as diffusers loads it) and encodes a prompt; then diffusers'
DiffusionPipeline.from_pretrained loads the whole folder (local files only) and runs two steps at a
small size with output_type "latent". Prints one line per folder and exits 1 if any failed.
Needs torch, transformers and diffusers' source; runs on the CPU or, when there is one, a GPU.
"""

import json
import os
import sys
import traceback


def check(folder):
    import torch
    from diffusers import DiffusionPipeline
    from transformers import AutoTokenizer

    with open(os.path.join(folder, "model_index.json")) as f:
        index = json.load(f)
    notes = []
    for name in sorted(index):
        if name.startswith("tokenizer") and isinstance(index[name], list) and index[name][0]:
            tokenizer = AutoTokenizer.from_pretrained(os.path.join(folder, name), local_files_only=True)
            ids = tokenizer("a photo of a cat, 42 times")["input_ids"]
            notes.append(f"{name}: {type(tokenizer).__name__} {len(ids)} ids")
    pipe = DiffusionPipeline.from_pretrained(folder, local_files_only=True, torch_dtype=torch.float32)
    pipe.to("cuda" if torch.cuda.is_available() else "cpu")
    kwargs = {"prompt": "a photo of a cat", "height": 64, "width": 64, "num_inference_steps": 2,
              "output_type": "latent", "generator": torch.Generator("cpu").manual_seed(0)}
    if index["_class_name"] == "QwenImagePipeline":
        kwargs.update(negative_prompt="blurry", true_cfg_scale=4.0)
    latents = pipe(**kwargs).images
    if not torch.isfinite(latents).all():
        raise RuntimeError("the latents are not finite")
    notes.append(f"{index['_class_name']}: latents {tuple(latents.shape)}")
    return notes


def main():
    if len(sys.argv) < 2:
        sys.exit(__doc__)
    failed = 0
    for folder in sys.argv[1:]:
        try:
            print(f"OK {folder}: " + "; ".join(check(folder)))
        except Exception as e:  # one line per folder, the traceback after it
            failed += 1
            print(f"FAILED {folder}: {type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}")
            traceback.print_exc(limit=3)
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
