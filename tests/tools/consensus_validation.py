#!/usr/bin/env python3
"""Checks that the consensus model orders schedules as real training does.

usage: consensus_validation.py --demo PATH/hsgd_demo --sim PATH/straggler_sim
                               [--world N] [--steps S] [--batch B] [--json]

For a set of schedules (synchronous SGD, local SGD with several periods, hierarchies, one with
warm-up, one with intra-node gradients), runs the real training of hsgd_demo once per schedule
and records its measured consensus distance (mean over the steps of (1/n) sum_i ||x_i - xbar||^2),
and asks straggler_sim for the model's expected consensus distance of the same schedule. Passes
(exit 0) when the Spearman rank correlation is at least 0.95 and the model's order of the
schedules is exactly the measured one; otherwise exits 1 with a one-line reason.

With --json, stdout is one object {"world":..,"steps":..,"schedules":[{"schedule":..,"model":..,
"measured":..},...],"spearman":..,"kendall":..,...} and the verdict line goes to stderr.
"""
import argparse
import json
import math
import subprocess
import sys
import time

RANKS_PER_NODE = 4
MIN_SPEARMAN = 0.95
# Smallest ratio between neighbouring model values (sorted) that the check keeps. The model is a
# random walk; a real loss surface pulls the replicas back together, more so the longer they run
# apart, so two schedules whose predicted spread differs by a few percent can swap places in
# training without the model being wrong about anything that matters. Such near-ties are
# excluded; schedules are separated by at least 15% instead.
MIN_SEPARATION = 1.15


class Schedule:
    def __init__(self, kind, value=None, warmup=0, intra_node=False):
        self.kind = kind  # "sync", "local" or "hier"
        self.value = value  # the period of local SGD, the P:G,... text of a hierarchy
        self.warmup = warmup
        self.intra_node = intra_node

    def label(self):
        s = {"sync": "sync", "local": f"local:{self.value}", "hier": f"{self.value}"}[self.kind]
        if self.warmup:
            s += f" warm-up {self.warmup}"
        if self.intra_node:
            s += " intra-node"
        return s

    def common_flags(self):
        flags = []
        if self.warmup:
            flags += ["--warmup", str(self.warmup)]
        if self.intra_node:
            flags += ["--intra-node"]
        return flags

    def demo_flags(self):
        if self.kind == "sync":
            flags = ["--methods", "sync"]
        elif self.kind == "local":
            flags = ["--methods", "local", "--local-period", str(self.value)]
        else:
            flags = ["--methods", "hier", "--hierarchy", self.value]
        if self.intra_node:
            flags += ["--ranks-per-node", str(RANKS_PER_NODE)]
        return flags + self.common_flags()

    def sim_flags(self):
        if self.kind == "sync":
            flags = ["--hierarchy", "sync"]
        elif self.kind == "local":
            flags = ["--local-sgd", str(self.value)]
        else:
            flags = ["--hierarchy", self.value]
        return flags + self.common_flags()


def candidates(world, steps):
    """Schedules in order of preference; those that do not fit the world are left out.

    The warm-up and intra-node cases come early so that the near-tie filter keeps them."""
    warmup = steps // 4

    def hier_to_world(lower, top_period, **kw):
        groups = [int(item.split(":")[1]) for item in lower.split(",")]
        if any(g >= world or world % g for g in groups):
            return None
        return Schedule("hier", f"{lower},{top_period}:{world}", **kw)

    pool = [
        Schedule("sync"),
        Schedule("local", 2, intra_node=True),
        hier_to_world("2:4", 8, warmup=warmup),
        hier_to_world("1:8", 8),
        hier_to_world("1:4", 4),
        Schedule("local", 2),
        hier_to_world("1:2", 4),
        hier_to_world("2:2,4:8", 8),
        Schedule("local", 4),
        hier_to_world("4:4", 16),
        Schedule("local", 8),
        Schedule("local", 16, warmup=warmup),
        Schedule("local", 16),
        # Fill-ins for worlds where some of the above are near-ties or do not fit.
        hier_to_world("1:2", 16),
        Schedule("local", 32),
    ]
    return [s for s in pool if s is not None]


class RunError(Exception):
    pass


def run_json(cmd):
    try:
        p = subprocess.run(cmd, capture_output=True, text=True)
    except OSError as e:
        raise RunError(f"cannot run {cmd[0]}: {e}") from e
    if p.returncode != 0:
        last = (p.stderr.strip().splitlines() or ["no message"])[-1]
        raise RunError(f"{' '.join(cmd)} exited with {p.returncode}: {last}")
    try:
        return json.loads(p.stdout)
    except json.JSONDecodeError as e:
        raise RunError(f"{' '.join(cmd)} printed no JSON object: {e}") from e


def model_value(sim, world, steps, s):
    cmd = [sim, "--world", str(world), "--node-size", str(RANKS_PER_NODE), "--steps", str(steps),
           "--seeds", "1", "--json"] + s.sim_flags()
    return float(run_json(cmd)["consensus"])


def measured_value(demo, world, steps, batch, seed, s):
    cmd = [demo, "--world", str(world), "--steps", str(steps), "--batch", str(batch), "--seed",
           str(seed), "--step-ms", "0", "--straggler-rate", "0", "--quiet", "--json"]
    cmd += s.demo_flags()
    results = run_json(cmd)["results"]
    if len(results) != 1:
        raise RunError(f"{' '.join(cmd)}: expected one result, got {len(results)}")
    return float(results[0]["consensus_mean"])


def separated(schedules, values):
    """Keeps schedules in order of preference, dropping one whose model value is within
    MIN_SEPARATION of one already kept (0 is only a tie with 0)."""
    kept, dropped = [], []
    for s, v in zip(schedules, values):
        near = [k for k, kv in kept if near_tie(v, kv)]
        (dropped if near else kept).append((s, v))
    return kept, dropped


def near_tie(a, b):
    lo, hi = min(a, b), max(a, b)
    if lo == 0.0:
        return hi == 0.0
    return hi / lo < MIN_SEPARATION


def average_ranks(xs):
    order = sorted(range(len(xs)), key=lambda i: xs[i])
    ranks = [0.0] * len(xs)
    i = 0
    while i < len(order):
        j = i
        while j + 1 < len(order) and xs[order[j + 1]] == xs[order[i]]:
            j += 1
        for k in range(i, j + 1):
            ranks[order[k]] = (i + j) / 2.0 + 1.0
        i = j + 1
    return ranks


def pearson(xs, ys):
    n = len(xs)
    mx, my = sum(xs) / n, sum(ys) / n
    sxy = sum((x - mx) * (y - my) for x, y in zip(xs, ys))
    sxx = sum((x - mx) ** 2 for x in xs)
    syy = sum((y - my) ** 2 for y in ys)
    if sxx == 0.0 or syy == 0.0:
        return float("nan")
    return sxy / math.sqrt(sxx * syy)


def spearman(xs, ys):
    return pearson(average_ranks(xs), average_ranks(ys))


def sign(v):
    return (v > 0) - (v < 0)


def kendall_tau_b(xs, ys):
    concordant = discordant = ties_x = ties_y = 0
    n = len(xs)
    for i in range(n):
        for j in range(i + 1, n):
            dx, dy = sign(xs[i] - xs[j]), sign(ys[i] - ys[j])
            if dx == 0 and dy == 0:
                continue
            if dx == 0:
                ties_x += 1
            elif dy == 0:
                ties_y += 1
            elif dx == dy:
                concordant += 1
            else:
                discordant += 1
    den = math.sqrt((concordant + discordant + ties_x) * (concordant + discordant + ties_y))
    return float("nan") if den == 0 else (concordant - discordant) / den


def order_mismatches(labels, xs, ys):
    """Pairs whose order (or tie) under the model differs from the measured one."""
    bad = []
    for i in range(len(xs)):
        for j in range(i + 1, len(xs)):
            if sign(xs[i] - xs[j]) != sign(ys[i] - ys[j]):
                bad.append((labels[i], labels[j]))
    return bad


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--demo", required=True, help="path of hsgd_demo")
    ap.add_argument("--sim", required=True, help="path of straggler_sim")
    ap.add_argument("--world", type=int, default=16)
    ap.add_argument("--steps", type=int, default=1000)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--json", action="store_true")
    a = ap.parse_args()
    if a.world < 8 or a.world % RANKS_PER_NODE:
        ap.error(f"--world must be at least 8 and a multiple of {RANKS_PER_NODE}")
    if a.steps < 64:
        ap.error("--steps must be at least 64 (twice the longest period)")

    start = time.monotonic()
    pool = candidates(a.world, a.steps)
    try:
        kept, dropped = separated(pool, [model_value(a.sim, a.world, a.steps, s) for s in pool])
        kept.sort(key=lambda sv: sv[1])
        rows = []
        for s, model in kept:
            measured = measured_value(a.demo, a.world, a.steps, a.batch, a.seed, s)
            rows.append({"schedule": s.label(), "model": model, "measured": measured})
    except RunError as e:
        print(f"FAIL: {e}", file=sys.stderr)
        return 1
    seconds = time.monotonic() - start

    labels = [r["schedule"] for r in rows]
    model = [r["model"] for r in rows]
    measured = [r["measured"] for r in rows]
    rho = spearman(model, measured)
    tau = kendall_tau_b(model, measured)
    mismatches = order_mismatches(labels, model, measured)
    exact = not mismatches

    reasons = []
    if len(rows) < 10:
        reasons.append(f"only {len(rows)} well-separated schedules (need 10)")
    if not any(s.warmup for s, _ in kept) or not any(s.intra_node for s, _ in kept):
        reasons.append("no warm-up or no intra-node schedule left after excluding near-ties")
    if not rho >= MIN_SPEARMAN:
        reasons.append(f"Spearman {rho:.4f} < {MIN_SPEARMAN}")
    if not exact:
        pairs = "; ".join(f"{p} vs {q}" for p, q in mismatches[:5])
        more = ", ..." if len(mismatches) > 5 else ""
        reasons.append(f"order differs for {len(mismatches)} pair(s): {pairs}{more}")
    passed = not reasons
    verdict = (f"PASS: Spearman {rho:.4f} >= {MIN_SPEARMAN} and the model's order equals the "
               f"measured order for all {len(rows)} schedules" if passed else
               "FAIL: " + "; ".join(reasons))

    if a.json:
        print(json.dumps({
            "world": a.world,
            "steps": a.steps,
            "batch": a.batch,
            "seed": a.seed,
            "schedules": rows,
            "spearman": rho,
            "kendall": tau,
            "exact_order": exact,
            "excluded_near_ties": [s.label() for s, _ in dropped],
            "seconds": round(seconds, 2),
            "pass": passed,
        }))
        print(verdict, file=sys.stderr)
    else:
        mr, xr = average_ranks(model), average_ranks(measured)
        print(f"world {a.world} ({RANKS_PER_NODE} ranks per node), {a.steps} steps, batch "
              f"{a.batch}, seed {a.seed}")
        print(f"{'schedule':<28} {'model':>10} {'measured':>12} {'model rank':>11} "
              f"{'measured rank':>14}")
        for i in sorted(range(len(rows)), key=lambda i: (model[i], measured[i])):
            print(f"{labels[i]:<28} {model[i]:>10.5g} {measured[i]:>12.5g} {mr[i]:>11g} "
                  f"{xr[i]:>14g}")
        if dropped:
            print("excluded as near-ties of a kept schedule (model within "
                  f"{MIN_SEPARATION - 1:.0%}): " + ", ".join(s.label() for s, _ in dropped))
        print(f"Spearman {rho:.4f} (need >= {MIN_SPEARMAN}), Kendall tau-b {tau:.4f}, "
              f"exact order: {'yes' if exact else 'no'}; {seconds:.1f} s")
        print(verdict)
    return 0 if passed else 1


if __name__ == "__main__":
    sys.exit(main())
