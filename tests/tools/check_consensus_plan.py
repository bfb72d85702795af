#!/usr/bin/env python3
"""Checks straggler_sim's planner with a quality bound on its own JSON answer.

Runs `straggler_sim ... --plan --max-consensus-of REF --json` and requires: at least one plan;
every plan's consensus distance at most the reference's and its speed-up at least the
reference's; plans best first (time per step ascending); consensus_ratio equal to the plan's
consensus over the reference's. Exit 0 when it holds, 1 with the reason otherwise.

usage: check_consensus_plan.py STRAGGLER_SIM [straggler_sim arguments...]
"""
import json
import subprocess
import sys


def main():
    if len(sys.argv) < 2:
        print(__doc__.strip().splitlines()[-1], file=sys.stderr)
        return 2
    cmd = sys.argv[1:] + ["--json"]
    out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
    answer = json.loads(out.strip().splitlines()[-1])
    ref = answer["reference"]
    plans = answer["plans"]
    problems = []
    if not plans:
        problems.append("no plan meets the bound")
    for i, p in enumerate(plans):
        name = f"plan {i + 1} ({p['hierarchy']}{', rotated' if p['rotated'] else ''})"
        if p["consensus"] > ref["consensus"] * (1 + 1e-12):
            problems.append(f"{name}: consensus {p['consensus']} above the reference's {ref['consensus']}")
        if p["speedup"] < ref["speedup"]:
            problems.append(f"{name}: speed-up {p['speedup']} below the reference's {ref['speedup']}")
        if i > 0 and plans[i - 1]["ms_per_step"] > p["ms_per_step"]:
            problems.append(f"{name}: faster than the plan ranked above it")
        if ref["consensus"] > 0:
            want = p["consensus"] / ref["consensus"]
            if abs(p["consensus_ratio"] - want) > 1e-5 * want:
                problems.append(f"{name}: consensus_ratio {p['consensus_ratio']}, expected {want}")
    if problems:
        print("check_consensus_plan: " + "; ".join(problems))
        return 1
    best = plans[0]
    print(f"reference {ref['hierarchy']}: {ref['speedup']:.3f}x, consensus {ref['consensus']:.4g}; "
          f"best {best['hierarchy']}{' (rotated)' if best['rotated'] else ''}: "
          f"{best['speedup']:.3f}x, consensus {best['consensus']:.4g} "
          f"({ref['ms_per_step'] / best['ms_per_step']:.2f}x faster than the reference); "
          f"{len(plans)} plans, {answer['within_bound']} of {answer['candidates']} schedules within the bound")
    return 0


if __name__ == "__main__":
    sys.exit(main())
