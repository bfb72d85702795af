#!/usr/bin/env python3
"""Charts predicted speed-up against consensus distance for 256 GPUs and writes docs/consensus.svg.

The setting is the straggler study's largest: straggler_sim --preset t4-resnet18 --world 256
--straggler-rate 0.01. Every point is a schedule the planner considers (hierarchies of up to
--max-levels levels, global period at most 8, contiguous and rotated groups); x is its expected
consensus distance (how far the replicas drift apart, exact), y its predicted speed-up over
synchronous SGD (mean over --seeds runs of --steps steps).

    python3 bench/consensus_chart.py --sim build/examples/straggler_sim --svg docs/consensus.svg

The planner shows at most 1000 schedules per run, so the chart walks down the consensus axis:
each run asks for the fastest schedules no farther apart than the least-spread contiguous
schedule of the run before. Whatever is on the frontier between two such bounds is faster than
that schedule, which was shown, so it was shown too: the frontier is complete (up to the
planner's screening, see strata::sim::plan), while the slow schedules far below it are left out.
Prints the frontier and the labelled schedules on stdout; takes well under a minute on 2 cores.
"""

import argparse
import json
import math
import subprocess
import sys

SETTING = ["--preset", "t4-resnet18", "--world", "256", "--straggler-rate", "0.01"]
MAX_PERIOD = 8
REFERENCE = "2:8,4:64,8:256"  # the study's hierarchy for 256 GPUs
LOCAL_PERIOD = 8
PER_RUN = 1000  # the most straggler_sim --plan --top shows


def run(sim, args):
    out = subprocess.run([sim] + SETTING + args, check=True, capture_output=True, text=True)
    return json.loads(out.stdout)


def key(p):
    return (p["hierarchy"], p["rotated"])


def sweep(sim, mc, max_levels):
    """Every schedule on the frontier, and the fastest others, keyed by (hierarchy, rotated)."""
    plan = ["--plan", "--max-period", str(MAX_PERIOD), "--max-levels", str(max_levels),
            "--rotate-groups", "--top", str(PER_RUN), "--json"] + mc
    points = {}
    bound, bound_consensus, runs = None, math.inf, 0
    while True:
        d = run(sim, plan + (["--max-consensus-of", bound] if bound else []))
        runs += 1
        shown = d["plans"] if bound else d["ranked"]
        for p in shown:
            points[key(p)] = p
        everything = len(shown) < PER_RUN or d.get("within_bound", math.inf) <= PER_RUN
        contiguous = [p for p in shown if not p["rotated"]]
        if everything or not contiguous:
            break
        nearest = min(contiguous, key=lambda p: p["consensus"])
        # A bound that does not shrink would ask the same question again.
        if nearest["consensus"] <= 0 or nearest["consensus"] >= bound_consensus:
            break
        bound, bound_consensus = nearest["hierarchy"], nearest["consensus"]
    return points, runs


def frontier(points):
    """The fastest schedule at each consensus level: those faster than all closer-together ones."""
    best, out = -math.inf, []
    for p in sorted(points, key=lambda p: (p["consensus"], -p["speedup"])):
        if p["speedup"] > best:
            out.append(p)
            best = p["speedup"]
    return out


def name(p):
    if p["hierarchy"] == "sync":
        return "synchronous SGD"
    return p["hierarchy"] + (", rotated" if p["rotated"] else "")


def print_summary(front, marks, settings, runs, count):
    print(f"## Speed-up against consensus distance ({settings})\n")
    print(f"{count} schedules charted from {runs} planner runs; the frontier holds {len(front)}; "
          f"the median half-width of its points' 95% speed-up intervals is "
          f"{ci_half_width(front):.2f}×.\n")
    print("| hierarchy | rotated | speed-up | consensus |")
    print("| --- | --- | ---: | ---: |")
    for p in front:
        print(f"| `{p['hierarchy']}` | {'yes' if p['rotated'] else 'no'} | {p['speedup']:.2f}× "
              f"| {p['consensus']:.4g} |")
    print("\n| labelled | hierarchy | rotated | speed-up | 95% CI | consensus |")
    print("| --- | --- | --- | ---: | --- | ---: |")
    for label, p in marks:
        # A single schedule's output names the per-seed interval differently from the planner's.
        lo, hi = p.get("speedup_ci95") or p["speedup_per_seed_ci95"]
        print(f"| {label} | `{p['hierarchy']}` | {'yes' if p['rotated'] else 'no'} "
              f"| {p['speedup']:.2f}× | [{lo:.2f}, {hi:.2f}] | {p['consensus']:.4g} |")
    print()


def ci_half_width(points):
    """The median half-width of the speed-ups' 95% intervals: how far apart is noise."""
    widths = sorted((p["speedup_ci95"][1] - p["speedup_ci95"][0]) / 2 for p in points
                    if "speedup_ci95" in p and p["hierarchy"] != "sync")
    return widths[len(widths) // 2] if widths else 0.0


class Axes:
    """Pixel positions: a log consensus axis, with a separate column at its left for 0."""

    def __init__(self, left, top, width, height, zero_width, lo_decade, hi_decade, ymin, ymax):
        self.left, self.top, self.width, self.height = left, top, width, height
        self.zero_width = zero_width
        self.lo, self.hi = lo_decade, hi_decade
        self.ymin, self.ymax = ymin, ymax

    def x(self, consensus):
        if consensus <= 0:
            return self.left + self.zero_width / 2
        # A little room after the break keeps the 0 and the first decade's labels apart.
        x0 = self.left + self.zero_width + 16
        f = (math.log10(consensus) - self.lo) / (self.hi - self.lo)
        return x0 + (self.left + self.width - x0) * f

    def y(self, speedup):
        return self.top + self.height * (self.ymax - speedup) / (self.ymax - self.ymin)


def circle_path(points, ax, r):
    return "".join(f"M{ax.x(c) - r:.1f},{ax.y(s):.1f}a{r},{r} 0 1,0 {2 * r},0"
                   f"a{r},{r} 0 1,0 {-2 * r},0" for c, s in points)


def triangle_path(points, ax, r):
    h = r * 0.866
    return "".join(f"M{ax.x(c):.1f},{ax.y(s) - r:.1f}l{h:.1f},{1.5 * r:.1f}h{-2 * h:.1f}z"
                   for c, s in points)


def thin(points, ax):
    """Drops points that would land on a pixel already drawn: they add nothing to the picture."""
    seen, out = set(), []
    for p in points:
        cell = (round(ax.x(p["consensus"])), round(ax.y(p["speedup"])))
        if cell not in seen:
            seen.add(cell)
            out.append((p["consensus"], p["speedup"]))
    return out


def svg_chart(points, front, marks, reference, settings, count, path):
    positive = [p["consensus"] for p in points if p["consensus"] > 0]
    lo = math.floor(math.log10(min(positive)))
    hi = math.ceil(math.log10(max(positive)))
    top_speedup = max(p["speedup"] for p in points)
    ymin, ymax = 0.5, math.ceil(top_speedup * 2) / 2
    W, H = 960, 600
    ax = Axes(left=70, top=60, width=600, height=460, zero_width=50, lo_decade=lo,
              hi_decade=hi, ymin=ymin, ymax=ymax)
    x_end, y_end = ax.left + ax.width, ax.top + ax.height
    spread = ci_half_width(front)
    colors = {"contiguous": "#1b9e77", "rotated": "#7570b3", "frontier": "#d95f02",
              "mark": "#222222"}
    out = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{W}" height="{H}" '
           f'viewBox="0 0 {W} {H}" font-family="sans-serif" font-size="12">',
           f'<rect width="{W}" height="{H}" fill="white"/>',
           f'<text x="{W / 2}" y="22" text-anchor="middle" font-size="15">Predicted speed-up over '
           f'synchronous SGD against consensus distance</text>',
           f'<text x="{W / 2}" y="40" text-anchor="middle" fill="#444">{settings}</text>']
    # Grid, axes and the break between the 0 column and the log axis.
    for k in range(int(ymin * 2), int(ymax * 2) + 1):
        v = k / 2
        y = ax.y(v)
        out.append(f'<line x1="{ax.left}" y1="{y:.1f}" x2="{x_end}" y2="{y:.1f}" stroke="#eee"/>')
        out.append(f'<text x="{ax.left - 6}" y="{y + 4:.1f}" text-anchor="end">{v:g}×</text>')
    for e in range(lo, hi + 1):
        x = ax.x(10.0 ** e)
        out.append(f'<line x1="{x:.1f}" y1="{ax.top}" x2="{x:.1f}" y2="{y_end}" stroke="#eee"/>')
        out.append(f'<text x="{x:.1f}" y="{y_end + 18}" text-anchor="middle">{10.0 ** e:g}</text>')
        if e < hi:
            for m in range(2, 10):
                xm = ax.x(m * 10.0 ** e)
                out.append(f'<line x1="{xm:.1f}" y1="{y_end}" x2="{xm:.1f}" y2="{y_end - 4}" '
                           f'stroke="#999"/>')
    x_zero = ax.x(0)
    out.append(f'<text x="{x_zero:.1f}" y="{y_end + 18}" text-anchor="middle">0</text>')
    gap = ax.left + ax.zero_width
    out.append(f'<rect x="{ax.left}" y="{ax.top}" width="{ax.width}" height="{ax.height}" '
               f'fill="none" stroke="#999"/>')
    out.append(f'<rect x="{gap - 4}" y="{ax.top - 1}" width="8" height="{ax.height + 2}" '
               f'fill="white"/>')
    for yb in (ax.top, y_end):
        for dx in (-4, 4):
            out.append(f'<line x1="{gap + dx - 3}" y1="{yb + 5}" x2="{gap + dx + 3}" '
                       f'y2="{yb - 5}" stroke="#999"/>')
    out.append(f'<text x="{ax.left + ax.width / 2}" y="{y_end + 40}" text-anchor="middle">'
               f'expected consensus distance (mean squared spread of the replicas per coordinate, '
               f'in steps\' noise variance; log scale)</text>')
    out.append(f'<text transform="translate({ax.left - 44},{ax.top + ax.height / 2}) rotate(-90)" '
               f'text-anchor="middle">predicted speed-up over synchronous SGD</text>')
    y1 = ax.y(1)
    out.append(f'<line x1="{ax.left}" y1="{y1:.1f}" x2="{x_end}" y2="{y1:.1f}" stroke="#000" '
               f'stroke-dasharray="4 3"/>')
    # The reference's consensus: the quality bound of the planner's answer.
    xr = ax.x(reference["consensus"])
    out.append(f'<line x1="{xr:.1f}" y1="{ax.top}" x2="{xr:.1f}" y2="{y_end}" stroke="#444" '
               f'stroke-dasharray="2 3"/>')
    # The candidates, contiguous under rotated, thinned to one per pixel.
    contiguous = thin([p for p in points if not p["rotated"]], ax)
    rotated = thin([p for p in points if p["rotated"]], ax)
    out.append(f'<path d="{triangle_path(rotated, ax, 3)}" fill="none" '
               f'stroke="{colors["rotated"]}" stroke-width="0.8" stroke-opacity="0.7"/>')
    out.append(f'<path d="{circle_path(contiguous, ax, 2.2)}" fill="none" '
               f'stroke="{colors["contiguous"]}" stroke-width="0.8" stroke-opacity="0.7"/>')
    # The frontier as steps: at a consensus level, the best speed-up of any schedule at or below.
    steps = []
    for i, p in enumerate(front):
        x, y = ax.x(p["consensus"]), ax.y(p["speedup"])
        if i:
            steps.append(f"{x:.1f},{steps_y:.1f}")
        steps.append(f"{x:.1f},{y:.1f}")
        steps_y = y
    steps.append(f"{x_end:.1f},{steps_y:.1f}")
    out.append(f'<polyline points="{" ".join(steps)}" fill="none" stroke="{colors["frontier"]}" '
               f'stroke-width="2"/>')
    # Labelled schedules: (label, point, text anchor, dx, dy).
    for label, p, anchor, dx, dy in marks:
        x, y = ax.x(p["consensus"]), ax.y(p["speedup"])
        out.append(f'<circle cx="{x:.1f}" cy="{y:.1f}" r="5" fill="none" stroke="{colors["mark"]}" '
                   f'stroke-width="2"/>')
        out.append(f'<line x1="{x:.1f}" y1="{y:.1f}" x2="{x + dx:.1f}" y2="{y + dy:.1f}" '
                   f'stroke="#888"/>')
        lines = label.split("\n")
        ty = y + dy + (4 if dy >= 0 else -4 - 14 * (len(lines) - 1))
        tx = x + dx + (4 if anchor == "start" else -4 if anchor == "end" else 0)
        for n, line in enumerate(lines):
            # A white halo keeps a label readable where it crosses points or lines.
            out.append(f'<text x="{tx:.1f}" y="{ty + 14 * n:.1f}" text-anchor="{anchor}" '
                       f'fill="{colors["mark"]}" stroke="white" stroke-width="3" '
                       f'paint-order="stroke">{line}</text>')
    # Legend.
    lx, ly = x_end + 24, ax.top + 10
    out.append(f'<circle cx="{lx}" cy="{ly}" r="3" fill="none" stroke="{colors["contiguous"]}"/>')
    out.append(f'<text x="{lx + 12}" y="{ly + 4}">contiguous groups</text>')
    out.append(f'<path d="M{lx},{ly + 17}l3,4.5h-6z" fill="none" stroke="{colors["rotated"]}"/>')
    out.append(f'<text x="{lx + 12}" y="{ly + 24}">rotated (shuffled) groups</text>')
    out.append(f'<line x1="{lx - 6}" y1="{ly + 40}" x2="{lx + 6}" y2="{ly + 40}" '
               f'stroke="{colors["frontier"]}" stroke-width="2"/>')
    out.append(f'<text x="{lx + 12}" y="{ly + 44}">Pareto frontier: the fastest</text>')
    out.append(f'<text x="{lx + 12}" y="{ly + 58}">schedule at each consensus level</text>')
    out.append(f'<circle cx="{lx}" cy="{ly + 74}" r="5" fill="none" stroke="{colors["mark"]}" '
               f'stroke-width="2"/>')
    out.append(f'<text x="{lx + 12}" y="{ly + 78}">labelled schedules</text>')
    out.append(f'<line x1="{lx - 6}" y1="{ly + 94}" x2="{lx + 6}" y2="{ly + 94}" stroke="#000" '
               f'stroke-dasharray="4 3"/>')
    out.append(f'<text x="{lx + 12}" y="{ly + 98}">synchronous SGD (1×)</text>')
    out.append(f'<line x1="{lx}" y1="{ly + 106}" x2="{lx}" y2="{ly + 120}" stroke="#444" '
               f'stroke-dasharray="2 3"/>')
    out.append(f'<text x="{lx + 12}" y="{ly + 112}">consensus of {REFERENCE}:</text>')
    out.append(f'<text x="{lx + 12}" y="{ly + 126}">the planner\'s quality bound</text>')
    notes = [f"{count} schedules; hierarchies", "of group sizes aligned to 4-GPU",
             f"nodes, global period ≤ {MAX_PERIOD}.", "Slow schedules far below the",
             "frontier are left out.",
             f"A point's 95% CI: ±{spread:.2f}×", "(median half-width on the", "frontier)."]
    for n, line in enumerate(notes):
        out.append(f'<text x="{lx - 6}" y="{ly + 160 + 15 * n}" fill="#666">{line}</text>')
    out.append("</svg>")
    with open(path, "w", encoding="utf-8") as f:
        f.write("\n".join(out) + "\n")


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sim", required=True, help="path of the straggler_sim executable")
    ap.add_argument("--svg", help="write the chart here")
    ap.add_argument("--steps", type=int, default=400)
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--max-levels", type=int, default=4)
    a = ap.parse_args()
    mc = ["--steps", str(a.steps), "--seeds", str(a.seeds)]
    settings = (f"256 GPUs (4 × T4 per node, ResNet-18), 1% chance per GPU and step of a 1 s "
                f"straggler; {a.steps} steps × {a.seeds} seeds")

    found, runs = sweep(a.sim, mc, a.max_levels)
    sync = dict(run(a.sim, ["--hierarchy", "sync", "--json"] + mc), hierarchy="sync",
                rotated=False)
    local = dict(run(a.sim, ["--local-sgd", str(LOCAL_PERIOD), "--json"] + mc),
                 hierarchy=f"{LOCAL_PERIOD}:256", rotated=False)
    ref = dict(run(a.sim, ["--hierarchy", REFERENCE, "--json"] + mc), hierarchy=REFERENCE,
               rotated=False)
    bounded = run(a.sim, ["--plan", "--max-period", str(MAX_PERIOD), "--max-levels",
                          str(a.max_levels), "--max-consensus-of", REFERENCE, "--json"] + mc)
    best = bounded["plans"][0]
    runs += 1
    for p in (ref, best):
        found.setdefault(key(p), p)
    points = list(found.values())
    front = frontier(points + [sync])

    marks = [("synchronous SGD", sync), (f"local SGD, period {LOCAL_PERIOD}", local),
             (f"reference {REFERENCE}", ref), ("best within the reference's consensus", best)]
    print_summary(front, marks, settings, runs, len(points))
    r, b = ref, best
    print(f"Within the consensus of {REFERENCE} ({r['consensus']:.4g}), the planner's fastest is "
          f"{name(b)}: {b['speedup']:.2f}× against {r['speedup']:.2f}× "
          f"({100 * (b['speedup'] / r['speedup'] - 1):+.0f} %), consensus {b['consensus']:.4g} "
          f"({b['consensus_ratio']:.2f} of the reference's).")
    if a.svg:
        chart_marks = [
            ("synchronous SGD\n(consensus 0)", sync, "start", 14, 28),
            (f"local SGD, period {LOCAL_PERIOD}\n{local['speedup']:.2f}×", local, "end", -14, -22),
            (f"{REFERENCE} (reference)\n{ref['speedup']:.2f}×", ref, "start", 16, 34),
            (f"best within its consensus:\n{name(best)}\n{best['speedup']:.2f}×", best, "end",
             -16, -40),
        ]
        svg_chart(points + [sync], front, chart_marks, ref, settings, len(points), a.svg)
        print(f"wrote {a.svg}", file=sys.stderr)


if __name__ == "__main__":
    main()
