#!/usr/bin/env python3
"""strata_torch's outer optimizers against the C++ averager: hsgd_trace's workload, replayed.

usage: outer_trace.py --hsgd-trace PATH [--world 4] [--timeout SECONDS]

For each case below, runs `hsgd_trace --world 4 --hierarchy 2:2,4:4 ...` (the C++ averager on
in-process ranks) and reads the final parameters of every rank from its JSON output
({"ranks": [{"rank": r, "final": [...]}, ...]}). Then 4 gloo processes on 127.0.0.1 replay the
same workload with strata_torch.HierarchicalModelAverager, as tests/tools/hsgd_trace_reference.py
describes it. Every rank, in float64, starts from p[i] = cos(0.01 (i+1) (K+1)); at step t the
gradient is g[i] = sin(0.001 (i+1) (rank+1) (t+1)), averaged over the world first while t < W
when any level keeps an anchor (an outer optimizer), then p -= lr g and the averager's call.
With an outer optimizer, begin() records the initial p first.

Exits 0 when every rank's final values match the trace within 1e-12 (relative, as the
reference checks: |x - trace| <= 1e-12 max(1, |trace|)).
"""
import argparse
import json
import math
import os
import subprocess
import sys
import tempfile
import time
from datetime import timedelta

from launch import run_world

TOLERANCE = 1e-12
HIERARCHY = "2:2,4:4"

# name, hsgd_trace's --outer flags, strata_torch's `outer` as (level's period or None for the
# top-level form, lr, momentum) entries, warm-up, steps, dim, seed, lr. No run ends on a step
# that averages over the world, so the ranks' final values differ.
CASES = [
    ("plain", [], [], 3, 31, 29, 1, 0.05),
    ("top", ["--outer", "nesterov:0.7:0.9"], [(None, 0.7, 0.9)], 3, 42, 37, 2, 0.05),
    ("level0", ["--outer", "0=nesterov:0.5:0.8"], [(2, 0.5, 0.8)], 5, 43, 37, 4, 0.04),
    ("both", ["--outer", "0=nesterov:0.5:0.8", "--outer", "1=nesterov:0.7:0.9"],
     [(2, 0.5, 0.8), (4, 0.7, 0.9)], 2, 40, 19, 3, 0.06),
]


def trace_args(case, world):
    _, flags, _, warmup, steps, dim, seed, lr = case
    return ["--world", str(world), "--hierarchy", HIERARCHY, "--warmup", str(warmup),
            "--steps", str(steps), "--dim", str(dim), "--seed", str(seed), "--lr", repr(lr)] + flags


def read_trace(path, world, dim):
    """The final values of each rank, after checking the shape of hsgd_trace's output."""
    with open(path) as f:
        doc = json.load(f)
    if not isinstance(doc, dict) or not isinstance(doc.get("ranks"), list):
        raise ValueError(f"{path}: expected an object with a list 'ranks'")
    ranks = doc["ranks"]
    if [entry.get("rank") for entry in ranks] != list(range(world)):
        raise ValueError(f"{path}: ranks {[e.get('rank') for e in ranks]}, expected 0..{world - 1}")
    finals = []
    for entry in ranks:
        final = entry.get("final")
        if not isinstance(final, list) or len(final) != dim:
            raise ValueError(f"{path}: rank {entry['rank']} has no list 'final' of {dim} values")
        finals.append([float(v) for v in final])
    return finals


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--hsgd-trace")
    ap.add_argument("--world", type=int, default=4)
    ap.add_argument("--timeout", type=float, default=120.0)
    ap.add_argument("--worker", type=int)
    ap.add_argument("--dir")
    a = ap.parse_args()
    if a.worker is not None:
        return worker(a.worker, a)
    if not a.hsgd_trace:
        ap.error("--hsgd-trace is required")
    if a.world != 4:
        ap.error("the cases are written for the hierarchy 2:2,4:4, which needs --world 4")

    start = time.monotonic()
    ok = True
    with tempfile.TemporaryDirectory() as tmp:
        traces = {}
        for case in CASES:
            name, dim = case[0], case[5]
            out = os.path.join(tmp, f"trace_{name}.json")
            argv = [a.hsgd_trace] + trace_args(case, a.world) + ["--out", out]
            done = subprocess.run(argv, timeout=a.timeout)
            if done.returncode != 0:
                print(f"{name}: {' '.join(argv)} exited with {done.returncode}", file=sys.stderr)
                return 1
            traces[name] = read_trace(out, a.world, dim)

        codes = run_world(__file__, a.world, ["--world", str(a.world), "--dir", tmp], a.timeout)
        if any(c != 0 for c in codes):
            print(f"workers' exit codes {codes}", file=sys.stderr)
            ok = False
        for case in CASES:
            name = case[0]
            worst, bad = 0.0, []
            for r in range(a.world):
                path = os.path.join(tmp, f"replay_{name}_{r}.json")
                if not os.path.exists(path):
                    bad.append(f"rank {r}: no result")
                    continue
                with open(path) as f:
                    got = json.load(f)
                want = traces[name][r]
                for i, (x, e) in enumerate(zip(got, want)):
                    err = abs(x - e) / max(1.0, abs(e))
                    worst = max(worst, err)
                    if not err <= TOLERANCE:
                        bad.append(f"rank {r} value {i}: {x!r} vs the trace's {e!r}")
            # Ranks that all end equal would check less: every rank's own values are compared.
            spread = max(abs(traces[name][r][i] - traces[name][0][i])
                         for r in range(a.world) for i in range(case[5]))
            if not spread > 1e-9:
                bad.append(f"the ranks' final values agree (spread {spread:.3g}): pick other steps")
            print(f"{name}: {' '.join(trace_args(case, a.world))}: max relative difference "
                  f"{worst:.3g} over {a.world} ranks x {case[5]} values (spread across ranks "
                  f"{spread:.3g}): {'PASS' if not bad else 'FAIL'}")
            for line in bad[:5]:
                print(f"  {line}", file=sys.stderr)
            ok = ok and not bad
    print(f"outer_trace: {len(CASES)} cases, {time.monotonic() - start:.1f} s: "
          f"{'PASS' if ok else 'FAIL'}")
    return 0 if ok else 1


# --- one rank ---------------------------------------------------------------------------------

def worker(rank, a):
    import torch
    import torch.distributed as dist

    import strata_torch

    torch.set_num_threads(1)
    world = a.world
    dist.init_process_group("gloo", rank=rank, world_size=world, timeout=timedelta(seconds=60))
    hierarchy = {int(p): int(g) for p, g in (item.split(":") for item in HIERARCHY.split(","))}
    for name, _, outer_entries, warmup, steps, dim, seed, lr in CASES:
        if not outer_entries:
            outer = None
        elif outer_entries[0][0] is None:
            outer = strata_torch.Nesterov(outer_entries[0][1], outer_entries[0][2])
        else:
            outer = {period: strata_torch.Nesterov(olr, mu) for period, olr, mu in outer_entries}
        avg = strata_torch.HierarchicalModelAverager(hierarchy, warmup_steps=warmup, outer=outer)
        # Python floats are IEEE doubles and math.cos/sin are the C library's, as in hsgd_trace.
        p = torch.tensor([math.cos(0.01 * (i + 1) * (seed + 1)) for i in range(dim)],
                         dtype=torch.float64)
        if outer is not None:
            avg.begin([p])
        for t in range(steps):
            g = torch.tensor([math.sin(0.001 * (i + 1) * (rank + 1) * (t + 1)) for i in range(dim)],
                             dtype=torch.float64)
            if outer is not None and t < warmup:
                dist.all_reduce(g)
                g /= world
            p -= lr * g
            avg.average_parameters([p])
        if avg.step != steps:
            print(f"rank {rank} {name}: step {avg.step} after {steps} calls", file=sys.stderr)
            return 1
        with open(os.path.join(a.dir, f"replay_{name}_{rank}.json"), "w") as f:
            json.dump(p.tolist(), f)
    dist.barrier()
    dist.destroy_process_group()
    return 0


if __name__ == "__main__":
    sys.exit(main())
