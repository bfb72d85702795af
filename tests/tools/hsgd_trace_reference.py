#!/usr/bin/env python3
"""Independent serial reference for hsgd_trace: the same workload as a plain loop over ranks.

usage: hsgd_trace_reference.py TRACE.json --world N --hierarchy P:G,... --warmup W --steps S
                               --dim D --seed K --lr LR
Exits 0 when every value of TRACE.json is within 1e-12 (relative) of the reference.
"""
import argparse
import json
import math
import sys


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("trace")
    ap.add_argument("--world", type=int, required=True)
    ap.add_argument("--hierarchy", required=True)
    ap.add_argument("--warmup", type=int, default=0)
    ap.add_argument("--steps", type=int, required=True)
    ap.add_argument("--dim", type=int, required=True)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--lr", type=float, default=0.05)
    a = ap.parse_args()

    levels = [tuple(int(x) for x in item.split(":")) for item in a.hierarchy.split(",")]
    n, dim = a.world, a.dim
    p = [[math.cos(0.01 * (i + 1) * (a.seed + 1)) for i in range(dim)] for _ in range(n)]
    for t in range(a.steps):
        for r in range(n):
            for i in range(dim):
                p[r][i] = p[r][i] - a.lr * math.sin(0.001 * (i + 1) * (r + 1) * (t + 1))
        if t < a.warmup:
            continue
        level = None
        for k, (period, _) in enumerate(levels):
            if t % period == 0:
                level = k  # the highest level whose period divides t
        if level is None:
            continue
        g = levels[level][1]
        for first in range(0, n, g):
            for i in range(dim):
                mean = sum(p[m][i] for m in range(first, first + g)) / g
                for m in range(first, first + g):
                    p[m][i] = mean

    with open(a.trace) as f:
        got = json.load(f)["ranks"]
    if [entry["rank"] for entry in got] != list(range(n)):
        sys.exit("ranks missing or out of order")
    worst = 0.0
    for r in range(n):
        if len(got[r]["final"]) != dim:
            sys.exit(f"rank {r}: {len(got[r]['final'])} values, expected {dim}")
        for i in range(dim):
            e, v = p[r][i], got[r]["final"][i]
            worst = max(worst, abs(v - e) / max(1.0, abs(e)))
    print(f"max relative difference {worst:.3g} over {n} ranks x {dim} values")
    sys.exit(0 if worst <= 1e-12 else 1)


if __name__ == "__main__":
    main()
