#!/usr/bin/env python3
"""Where a step's GPU time goes, from a Kineto trace (flux_transformer_step --trace DIR).

    python3 scripts/trace_summary.py DIR/trace_1024x1024_rank0.json [--calls 2] [--top 30]

Sums every CUDA kernel's duration by name and by kind (GEMM, attention, communication, the rest),
divided by the number of profiled calls: milliseconds per transformer call.
"""
import argparse
import collections
import json
import re

KINDS = [
    ("attention", re.compile(r"flash|fmha|cudnn|attention|sdpa", re.I)),
    ("communication", re.compile(r"nccl", re.I)),
    ("gemm", re.compile(r"gemm|nvjet|sm90_xmma|cutlass|cublas|matmul", re.I)),
    ("normalization", re.compile(r"norm", re.I)),
    ("copy / cat / layout", re.compile(r"copy|cat|transpose|memcpy|memset|index|gather|scatter", re.I)),
    ("elementwise / other", re.compile(r".")),
]


def kind_of(name):
    return next(kind for kind, pattern in KINDS if pattern.search(name))


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("trace")
    parser.add_argument("--calls", type=int, default=2)
    parser.add_argument("--top", type=int, default=30)
    args = parser.parse_args()
    with open(args.trace) as f:
        events = json.load(f)["traceEvents"]
    by_name = collections.Counter()
    count = collections.Counter()
    for e in events:
        if e.get("ph") == "X" and e.get("cat") in ("kernel", "gpu_memcpy", "gpu_memset"):
            by_name[e["name"]] += e.get("dur", 0)
            count[e["name"]] += 1
    total = sum(by_name.values())
    by_kind = collections.Counter()
    for name, us in by_name.items():
        by_kind[kind_of(name)] += us
    ms = lambda us: us / 1000 / args.calls
    print(f"{args.trace}: {ms(total):.1f} ms of kernels per call, {sum(count.values()) // args.calls} launches per call")
    for kind, us in by_kind.most_common():
        print(f"  {kind:22s} {ms(us):8.2f} ms  {100 * us / total:5.1f}%")
    print(f"top {args.top} kernels (ms per call, launches per call):")
    for name, us in by_name.most_common(args.top):
        print(f"  {ms(us):8.2f} {count[name] // args.calls:5d}  {name[:150]}")


if __name__ == "__main__":
    main()
