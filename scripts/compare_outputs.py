#!/usr/bin/env python3
"""How far one output is from another: max|a - b| / max|b| and max|a - b|, tensor by tensor.

    python3 scripts/compare_outputs.py ours.safetensors diffusers.safetensors \\
        --names image:float32_reference.image latents:float32_reference.latents

A is the output under test (diffuse's `generate --save-tensors FILE`: float32 `image` [B, 3, H, W]
in [0, 1] and the final `latents`), B the reference (compare_diffusers.py --save-tensors: `MODE.image`,
`MODE.latents` for each mode, `float32_reference.image` / `.latents`). Each --names item is
A_NAME[:B_NAME]; B_NAME defaults to A_NAME. Files are safetensors, or torch.save dicts (.pt/.pth).

Needs no torch and no numpy for safetensors files (numpy makes it faster when it is there).
With --tolerance X the exit status is 1 when some relative difference exceeds X, for scripts.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import safetensors_io  # noqa: E402  (beside this script)


def difference(a, b) -> dict:
    """max|a-b|, max|b|, their ratio, mean|a-b| and the count of non-finite values, for flat sequences.

    The ratio to max|b| (not elementwise relative error) is the measure: it is what "within 1e-2 of the
    reference" means for images in [0, 1] and for latents alike, and it does not blow up at zeros.
    """
    try:
        import numpy as np
    except ImportError:
        np = None
    if np is not None and isinstance(a, np.ndarray) and isinstance(b, np.ndarray):
        diff = np.abs(a - b)
        finite = np.isfinite(diff)
        nonfinite = int(diff.size - finite.sum())
        max_abs_diff = float(diff[finite].max()) if finite.any() else math.nan
        mean_abs_diff = float(diff[finite].mean()) if finite.any() else math.nan
        b_finite = np.abs(b[np.isfinite(b)])
        max_abs_b = float(b_finite.max()) if b_finite.size else math.nan
    else:
        max_abs_diff = 0.0
        max_abs_b = 0.0
        total = 0.0
        nonfinite = 0
        for x, y in zip(a, b):
            d = abs(x - y)
            if math.isfinite(d):
                if d > max_abs_diff:
                    max_abs_diff = d
                total += d
            else:
                nonfinite += 1
            if math.isfinite(y) and abs(y) > max_abs_b:
                max_abs_b = abs(y)
        count = len(a) - nonfinite
        mean_abs_diff = total / count if count else math.nan
    relative = max_abs_diff / max_abs_b if max_abs_b > 0 else (0.0 if max_abs_diff == 0 else math.inf)
    return {"max_abs_diff": max_abs_diff, "max_abs_b": max_abs_b, "relative": relative,
            "mean_abs_diff": mean_abs_diff, "nonfinite": nonfinite}


def parse_pair(item: str) -> tuple[str, str]:
    """'image' -> ('image', 'image'); 'image:eager.image' -> ('image', 'eager.image')."""
    a_name, sep, b_name = item.partition(":")
    return a_name, (b_name if sep else a_name)


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="\n\n".join(__doc__.split("\n\n")[1:]))
    parser.add_argument("a", help="file under test (e.g. diffuse's generate --save-tensors output)")
    parser.add_argument("b", help="reference file (e.g. compare_diffusers.py --save-tensors output)")
    parser.add_argument("--names", nargs="+", default=["image", "latents"], metavar="A_NAME[:B_NAME]",
                        help="tensor pairs to compare (default: image latents)")
    parser.add_argument("--tolerance", type=float, default=None,
                        help="exit with status 1 when some max|a-b|/max|b| is above this")
    parser.add_argument("--json", metavar="OUT", help="also write the numbers to this JSON file")
    parser.add_argument("--list", action="store_true", help="list the tensor names of both files and exit")
    args = parser.parse_args()

    if args.list:
        for path in (args.a, args.b):
            print(f"{path}: {', '.join(safetensors_io.tensor_names(path))}")
        return 0

    results = []
    failed = False
    print(f"A = {args.a}\nB = {args.b}  (reference)")
    print(f"{'A name':<24} {'B name':<28} {'shape':<20} {'max|a-b|/max|b|':>16} {'max|a-b|':>12} "
          f"{'mean|a-b|':>12}")
    for item in args.names:
        a_name, b_name = parse_pair(item)
        row = {"a": a_name, "b": b_name}
        try:
            a_shape, a_values = safetensors_io.load_values(args.a, a_name)
            b_shape, b_values = safetensors_io.load_values(args.b, b_name)
            if a_shape != b_shape:
                raise ValueError(f"shapes differ: A {a_shape}, B {b_shape}")
            row["shape"] = a_shape
            row.update(difference(a_values, b_values))
        except (KeyError, ValueError, OSError) as e:
            row["error"] = str(e).strip("'\"")
            failed = True
            print(f"{a_name:<24} {b_name:<28} error: {row['error']}")
            results.append(row)
            continue
        over = args.tolerance is not None and not row["relative"] <= args.tolerance
        failed |= over
        note = f"  nonfinite: {row['nonfinite']}" if row["nonfinite"] else ""
        note += "  ABOVE TOLERANCE" if over else ""
        print(f"{a_name:<24} {b_name:<28} {str(a_shape):<20} {row['relative']:>16.3e} "
              f"{row['max_abs_diff']:>12.3e} {row['mean_abs_diff']:>12.3e}{note}")
        results.append(row)

    if args.json:
        with open(args.json, "w") as f:
            json.dump({"a": args.a, "b": args.b, "tolerance": args.tolerance, "pairs": results}, f, indent=2)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
