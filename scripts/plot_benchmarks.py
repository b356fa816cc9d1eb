#!/usr/bin/env python3
"""Plots and tabulates flux_transformer_step's JSON files beside diffusers' numbers and our targets.

    python3 scripts/plot_benchmarks.py --png OUT/benchmarks.png --table OUT/table.md OUT/*.json \
        [--diffusers OUT/diffusers.json]

The PNG has one panel per resolution: ms per transformer call for each mode (ours, diffusers' beside
it where there is a number, the target as a red line). The markdown table (printed, and written with
--table) has ours, diffusers' and the target per row. With --diffusers (the JSON of
scripts/diffusers_transformer_step.py --family flux, measured in the same run), the one-GPU rows compare
with its compiled number instead of the published one, and a second table puts every one-GPU row of
both programs side by side per size. matplotlib is needed for the PNG only.
"""

import argparse
import json
import sys
from pathlib import Path

# diffusers: ms per transformer call, FLUX.1-dev shape, random bf16 weights, batch 1, 512 text tokens,
# on H200s (eager; the published numbers). Keys: (GPUs, mode label) -> {side in pixels: ms}.
DIFFUSERS = {
    (1, "1 GPU"): {1024: 175, 2048: 857},
    (4, "ulysses 4"): {1024: 125, 2048: 256, 4096: 1931},
    (4, "ring 4"): {1024: 207, 2048: 295, 4096: 2061},
    (4, "unified 2x2"): {1024: 237, 2048: 286, 4096: 2001},
}
DIFFUSERS_DEVICE = "H200"

# Our targets, same keys.
TARGETS = {
    (1, "1 GPU"): {1024: 112, 2048: 640},
    (1, "1 GPU, CUDA graph"): {1024: 112, 2048: 640},
    (4, "ulysses 4"): {1024: 60, 2048: 220, 4096: 1600},
    (4, "ring 4"): {1024: 75, 2048: 220, 4096: 1600},
    (4, "unified 2x2"): {1024: 70, 2048: 220, 4096: 1600},
}


def mode_label(run):
    """"1 GPU", "1 GPU, CUDA graph", "ulysses 4", "ring 4", "unified 2x2" (ring x ulysses)."""
    ring, ulysses = run.get("ring_degree", 1), run.get("ulysses_degree", 1)
    if run.get("cuda_graphs"):
        return "1 GPU, CUDA graph"
    if ring > 1 and ulysses > 1:
        return f"unified {ring}x{ulysses}"
    if ring > 1:
        return f"ring {ring}"
    if ulysses > 1:
        return f"ulysses {ulysses}"
    return "1 GPU" if run.get("world_size", 1) == 1 else f"{run['world_size']} GPUs"


def size_label(height, width):
    return f"{height}x{width}"


def load_diffusers(path):
    """diffusers_transformer_step.py's JSON: {mode: {side: median ms}} for the FLUX rows without errors."""
    measured = {}
    for row in json.loads(Path(path).read_text()):
        if row.get("family", "flux") == "flux" and "median_ms" in row and row.get("text_tokens") == 512:
            measured.setdefault(row["mode"], {})[row["resolution"]] = row["median_ms"]
    return measured


def same_run_table(rows, measured):
    """One row per size: every one-GPU mode of ours and of diffusers, measured in one run."""
    ours_modes = sorted({row["mode"] for row in rows if row["gpus"] == 1})
    theirs = [mode for mode in ("eager", "eager_cudnn", "compiled") if mode in measured]
    names = {"eager": "diffusers eager", "eager_cudnn": "diffusers eager, cuDNN attention",
             "compiled": "diffusers compile_repeated_blocks + cuDNN"}
    header = ["size"] + [f"diffuse, {mode}" for mode in ours_modes] + [names[m] for m in theirs]
    header += ["target", "best diffuse vs compiled"]
    lines = ["| " + " | ".join(header) + " |", "| --- |" + " ---: |" * (len(header) - 1)]
    for size in sorted({(row["pixels"], row["size"]) for row in rows if row["gpus"] == 1}):
        here = {row["mode"]: row for row in rows if row["gpus"] == 1 and row["size"] == size[1]}
        side = next(iter(here.values()))["square"]
        ours = [here[m]["ours"] if m in here else None for m in ours_modes]
        diff = [measured[m].get(side) for m in theirs]
        targets = [here[m]["target"] for m in ours_modes if m in here and here[m]["target"]]
        best = min((v for v in ours if v), default=None)
        compiled = measured.get("compiled", {}).get(side)
        ratio = f"{compiled / best:.2f}x faster" if best and compiled else ""
        cells = [size[1]] + [f"{v:.1f}" if v else "" for v in ours + diff]
        cells += [str(targets[0]) if targets else "", ratio]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def load_rows(paths):
    """One row per (run, resolution), in a stable order: GPUs, then mode, then size."""
    order = {"single": 0, "ulysses": 1, "ring": 2, "unified": 3}
    rows = []
    for path in paths:
        try:
            run = json.loads(Path(path).read_text())
        except (OSError, ValueError) as error:
            print(f"plot_benchmarks: skipping {path}: {error}", file=sys.stderr)
            continue
        gpus = run.get("world_size", 1)
        label = mode_label(run)
        for result in run.get("results", []):
            height, width = result["height"], result["width"]
            # diffusers' numbers and the targets are for FLUX.1-dev's shape, square, with 512 text tokens.
            comparable = run.get("shape") == "flux-dev" and height == width and result.get("text_tokens") == 512
            key, square = (gpus, label), (height if comparable else None)
            peaks = result.get("peak_allocated_gb_per_rank") or [0]
            rows.append({
                "gpus": gpus,
                "mode": label,
                "sort": (gpus, order.get(run.get("mode"), 9), run.get("ring_degree", 1), height * width),
                "size": size_label(height, width),
                "pixels": height * width,
                "square": square,  # the side where diffusers' numbers apply, else None
                "device": run.get("device", "?"),
                "shape": run.get("shape", "?"),
                "ours": result["ms_median"],
                "ours_min": result["ms_min"],
                "tflops": result.get("effective_tflops_per_s"),
                "peak_gb": max(peaks),
                "diffusers": DIFFUSERS.get(key, {}).get(square),
                "target": TARGETS.get(key, {}).get(square),
            })
    rows.sort(key=lambda row: row["sort"])
    return rows


def markdown_table(rows, diffusers_note=None):
    lines = [
        "| GPUs | mode | size | ours, median ms | ours, min ms | diffusers ms | target ms | vs diffusers "
        "| effective TFLOP/s | peak GiB (largest rank) | target |",
        "| ---: | --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | --- |",
    ]
    for row in rows:
        diffusers, target = row["diffusers"], row["target"]
        speedup = f"{diffusers / row['ours']:.2f}x faster" if diffusers and row["ours"] else ""
        if speedup and diffusers < row["ours"]:
            speedup = f"{row['ours'] / diffusers:.2f}x slower"
        met = "" if not target else ("met" if row["ours"] <= target else "missed")
        tflops = f"{row['tflops']:.0f}" if row["tflops"] is not None and row["tflops"] >= 1 else (
            f"{row['tflops']:.3g}" if row["tflops"] is not None else "")
        lines.append(
            f"| {row['gpus']} | {row['mode']} | {row['size']} | {row['ours']:.1f} | {row['ours_min']:.1f} "
            f"| {diffusers if diffusers else ''} | {target if target else ''} | {speedup} | {tflops} "
            f"| {row['peak_gb']:.1f} | {met} |")
    devices = sorted({row["device"] for row in rows})
    shapes = sorted({row["shape"] for row in rows})
    lines.append("")
    diffusers_note = diffusers_note or f"diffusers: {DIFFUSERS_DEVICE}, eager (published)"
    lines.append(f"Ours: {', '.join(devices)} ({', '.join(shapes)}); {diffusers_note}. "
                 "ms per transformer call, batch 1, 512 text tokens; median and minimum over the timed steps "
                 "(each step as long as its slowest rank).")
    return "\n".join(lines) + "\n"


def plot(rows, png_path):
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("plot_benchmarks: matplotlib is not installed: no plot", file=sys.stderr)
        return False
    sizes = sorted({(row["pixels"], row["size"]) for row in rows})
    fig, axes = plt.subplots(1, len(sizes), figsize=(5.5 * len(sizes), 5), squeeze=False)
    width = 0.38
    for axis, (_, size) in zip(axes[0], sizes):
        here = [row for row in rows if row["size"] == size]
        labels = [row["mode"] for row in here]
        xs = range(len(here))
        ours = axis.bar([x - width / 2 for x in xs], [row["ours"] for row in here], width,
                        label="diffuse (ours)", color="#1f77b4")
        axis.bar([x + width / 2 for x in xs], [row["diffusers"] or 0 for row in here], width,
                 label=f"diffusers ({DIFFUSERS_DEVICE})", color="#bbbbbb", hatch="//", edgecolor="#777777")
        for bar, row in zip(ours, here):
            axis.annotate(f"{row['ours']:.0f}", (bar.get_x() + bar.get_width() / 2, bar.get_height()),
                          ha="center", va="bottom", fontsize=8)
        target_in_legend = False
        for x, row in zip(xs, here):
            if row["diffusers"]:
                axis.annotate(f"{row['diffusers']:.0f}", (x + width / 2, row["diffusers"]),
                              ha="center", va="bottom", fontsize=8, color="#555555")
            if row["target"]:
                axis.hlines(row["target"], x - width, x + width, colors="red", linestyles="--", linewidth=1.5,
                            label=None if target_in_legend else "target")
                target_in_legend = True
        axis.set_xticks(list(xs))
        axis.set_xticklabels(labels, rotation=20, ha="right")
        axis.set_title(size)
        axis.set_ylabel("ms per transformer call")
        axis.grid(axis="y", alpha=0.3)
        tallest = max(max(row["ours"], row["diffusers"] or 0, row["target"] or 0) for row in here)
        axis.set_ylim(0, tallest * 1.1)
    # One legend for the figure: every kind of mark that some panel drew.
    legend = {}
    for axis in axes[0]:
        for handle, label in zip(*axis.get_legend_handles_labels()):
            legend.setdefault(label, handle)
    fig.legend(legend.values(), legend.keys(), loc="upper right", ncol=len(legend), fontsize=9)
    devices = ", ".join(sorted({row["device"] for row in rows}))
    shapes = ", ".join(sorted({row["shape"] for row in rows}))
    fig.suptitle(f"FLUX.1 transformer ({shapes}), batch 1, 512 text tokens: ours on {devices}", x=0.01,
                 ha="left")
    fig.tight_layout(rect=(0, 0, 1, 0.95))
    Path(png_path).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(png_path, dpi=150)
    print(f"wrote {png_path}")
    return True


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("json", nargs="+", help="flux_transformer_step --json files")
    parser.add_argument("--png", help="write the plot here")
    parser.add_argument("--table", help="write the markdown table here")
    parser.add_argument("--diffusers", help="scripts/diffusers_transformer_step.py --family flux --json "
                        "output from the same run")
    args = parser.parse_args()
    rows = load_rows(args.json)
    if not rows:
        print("plot_benchmarks: no results in the files given", file=sys.stderr)
        return 1
    if args.diffusers:
        measured = load_diffusers(args.diffusers)
        # The one-GPU rows compare with diffusers compiled in the same run, not the published eager numbers.
        for row in rows:
            if row["gpus"] == 1 and row["square"]:
                row["diffusers"] = measured.get("compiled", {}).get(row["square"], row["diffusers"])
    table = markdown_table(rows, "diffusers: one-GPU rows compiled, in this run" if args.diffusers else None)
    if args.diffusers:
        table += "\nOne GPU, ms per call (median), both programs in this run:\n\n" + same_run_table(rows, measured)
    print(table)
    if args.table:
        Path(args.table).parent.mkdir(parents=True, exist_ok=True)
        Path(args.table).write_text(table)
        print(f"wrote {args.table}")
    if args.png:
        plot(rows, args.png)
    return 0


if __name__ == "__main__":
    sys.exit(main())
