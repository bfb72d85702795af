#!/usr/bin/env python3
"""Compares two hsgd_trace outputs: same ranks, same lengths, values within a relative tolerance.

usage: compare_traces.py A.json B.json [--tol 1e-12]
"""
import argparse
import json
import sys


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("a")
    ap.add_argument("b")
    ap.add_argument("--tol", type=float, default=1e-12)
    args = ap.parse_args()
    with open(args.a) as f:
        a = json.load(f)["ranks"]
    with open(args.b) as f:
        b = json.load(f)["ranks"]
    if [r["rank"] for r in a] != [r["rank"] for r in b]:
        sys.exit("the two traces have different ranks")
    worst = 0.0
    for ra, rb in zip(a, b):
        if len(ra["final"]) != len(rb["final"]):
            sys.exit(f"rank {ra['rank']}: {len(ra['final'])} values against {len(rb['final'])}")
        for x, y in zip(ra["final"], rb["final"]):
            worst = max(worst, abs(x - y) / max(1.0, abs(y)))
    print(f"max relative difference {worst:.3g} over {len(a)} ranks")
    sys.exit(0 if worst <= args.tol else 1)


if __name__ == "__main__":
    main()
