#!/usr/bin/env python3
"""Predicts the published straggler experiment with straggler_sim and writes docs/stragglers.svg.

Runs straggler_sim --preset t4-resnet18 --json for every GPU count and schedule of the study,
with and without the per-step intra-node gradient all-reduce, prints the Markdown tables of
docs/stragglers.md on stdout and writes the chart of speed-up against GPU count.

    python3 bench/stragglers_chart.py --sim build/examples/straggler_sim --svg docs/stragglers.svg
"""

import argparse
import json
import subprocess
import sys

# The study's settings: GPUs -> (per-rank straggler rate per step, hierarchies it compared).
SETTINGS = {
    64: (0.02, ["2:8,4:32,8:64", "4:32,8:64"]),
    128: (0.01, ["2:8,4:32,8:128", "4:32,8:128"]),
    256: (0.01, ["1:4,2:16,4:64,8:256", "2:8,4:64,8:256", "4:16,8:256"]),
}
LOCAL_PERIODS = [2, 4, 8]


def simulate(sim, world, rate, schedule, intra, seeds, steps):
    cmd = [sim, "--preset", "t4-resnet18", "--world", str(world), "--steps", str(steps),
           "--step-ms", "55", "--straggler-rate", str(rate), "--straggler-delay-ms", "1000",
           "--seeds", str(seeds), "--json"] + schedule
    if intra:
        cmd.append("--intra-node")
    out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
    return json.loads(out)


def schedules(world):
    rows = [("synchronous SGD", ["--hierarchy", "sync"], False)]
    rows += [(f"local SGD, period {p}", ["--local-sgd", str(p)], True) for p in LOCAL_PERIODS]
    rows += [(f"hierarchical SGD `{h}`", ["--hierarchy", h], True) for h in SETTINGS[world][1]]
    return rows


def series_key(label, world):
    # One series per schedule shape: the world's own size is written N.
    return label.replace(f":{world}`", ":N`")


def table(sim, seeds, steps, rate_of, title):
    results = {}  # (label, world, intra) -> json
    print(f"### {title}\n")
    print("| GPUs | schedule | ms/step | 95% CI | speed-up | ms/step, intra-node | 95% CI | speed-up |")
    print("| ---: | --- | ---: | --- | ---: | ---: | --- | ---: |")
    for world in SETTINGS:
        rate = rate_of(world)
        for label, args, can_intra in schedules(world):
            cells = []
            for intra in (False, True):
                if intra and not can_intra:
                    cells.append("| — | — | —")
                    continue
                r = simulate(sim, world, rate, args, intra, seeds, steps)
                results[(label, world, intra)] = r
                cells.append(f"| {r['ms_per_step']:.1f} | [{r['ci95'][0]:.1f}, {r['ci95'][1]:.1f}]"
                             f" | {r['speedup']:.2f}×")
            print(f"| {world} | {label} " + " ".join(cells) + " |")
    print()
    return results


PERSISTENT_SCENARIOS = [
    ("ranks 3 and 17 always 1.5× slower", ["--straggler-rate", "0"]),
    ("… and 0.1 % random 1 s stragglers", ["--straggler-rate", "0.001"]),
    ("… and 1 % random 1 s stragglers", ["--straggler-rate", "0.01"]),
    ("… and log-normal step times, σ = 0.3", ["--straggler-rate", "0", "--lognormal-sigma", "0.3"]),
]
PERSISTENT_HIERARCHIES = ["2:8,4:64,8:256", "1:4,4:16,32:256"]


def persistent_table(sim, seeds, steps):
    print("### Persistent stragglers: contiguous against shuffled groups (256 GPUs)\n")
    print("| delays | hierarchy | sync SGD ms/step | contiguous ms/step | 95% CI "
          "| shuffled ms/step | 95% CI | shuffled vs contiguous |")
    print("| --- | --- | ---: | ---: | --- | ---: | --- | ---: |")
    for name, extra in PERSISTENT_SCENARIOS:
        for h in PERSISTENT_HIERARCHIES:
            cmd = [sim, "--preset", "t4-resnet18", "--world", "256", "--steps", str(steps),
                   "--seeds", str(seeds), "--hierarchy", h, "--slow-ranks", "3,17",
                   "--slow-factor", "1.5", "--rotate-groups", "--json"] + extra
            r = json.loads(subprocess.run(cmd, check=True, capture_output=True, text=True).stdout)
            change = 100 * (r["ms_per_step"] / r["contiguous_ms_per_step"] - 1)
            print(f"| {name} | `{h}` | {r['sync_ms_per_step']:.1f} "
                  f"| {r['contiguous_ms_per_step']:.1f} "
                  f"| [{r['contiguous_ci95'][0]:.1f}, {r['contiguous_ci95'][1]:.1f}] "
                  f"| {r['ms_per_step']:.1f} | [{r['ci95'][0]:.1f}, {r['ci95'][1]:.1f}] "
                  f"| {change:+.1f} % |")
    print()


def svg_chart(results, path):
    worlds = list(SETTINGS)
    panels = [(False, "without intra-node gradient all-reduce"),
              (True, "with intra-node gradient all-reduce every step")]
    series = {}
    for (label, world, intra), r in results.items():
        if label.startswith("synchronous"):
            continue
        series.setdefault(series_key(label, world), {}).setdefault(intra, {})[world] = r["speedup"]
    names = sorted(series, key=lambda s: (not s.startswith("local"), s))
    top = max(v for s in series.values() for p in s.values() for v in p.values())
    ymax = 1
    while ymax < top:
        ymax += 1
    colors = ["#1b9e77", "#d95f02", "#7570b3", "#e7298a", "#66a61e", "#e6ab02", "#a6761d",
              "#666666", "#1f78b4"]
    W, H = 1080, 430
    pw, ph, left, top_margin = 300, 300, 60, 50
    out = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{W}" height="{H}" '
           f'viewBox="0 0 {W} {H}" font-family="sans-serif" font-size="12">',
           f'<rect width="{W}" height="{H}" fill="white"/>',
           f'<text x="{W / 2}" y="22" text-anchor="middle" font-size="15">Predicted speed-up over '
           f'synchronous SGD (straggler_sim --preset t4-resnet18, 1 s stragglers)</text>']
    for k, (intra, title) in enumerate(panels):
        x0 = left + k * (pw + 80)
        y0 = top_margin + ph
        out.append(f'<text x="{x0 + pw / 2}" y="{top_margin - 12}" text-anchor="middle">{title}</text>')
        out.append(f'<rect x="{x0}" y="{top_margin}" width="{pw}" height="{ph}" fill="none" stroke="#999"/>')
        for v in range(0, ymax + 1):
            y = y0 - ph * v / ymax
            out.append(f'<line x1="{x0}" y1="{y:.1f}" x2="{x0 + pw}" y2="{y:.1f}" stroke="#eee"/>')
            out.append(f'<text x="{x0 - 6}" y="{y + 4:.1f}" text-anchor="end">{v}×</text>')
        def xpos(i):
            return x0 + pw * (i + 0.5) / len(worlds)
        for i, w in enumerate(worlds):
            out.append(f'<text x="{xpos(i):.1f}" y="{y0 + 18}" text-anchor="middle">{w} GPUs</text>')
            rate = SETTINGS[w][0]
            out.append(f'<text x="{xpos(i):.1f}" y="{y0 + 32}" text-anchor="middle" fill="#666">'
                       f'{rate * 100:g}% per rank</text>')
        y1 = y0 - ph / ymax
        out.append(f'<line x1="{x0}" y1="{y1:.1f}" x2="{x0 + pw}" y2="{y1:.1f}" stroke="#000" '
                   f'stroke-dasharray="4 3"/>')
        for n, name in enumerate(names):
            pts = series[name].get(intra, {})
            xy = [(xpos(worlds.index(w)), y0 - ph * v / ymax) for w, v in sorted(pts.items())]
            c = colors[n % len(colors)]
            if len(xy) > 1:
                d = " ".join(f"{x:.1f},{y:.1f}" for x, y in xy)
                out.append(f'<polyline points="{d}" fill="none" stroke="{c}" stroke-width="2"/>')
            for x, y in xy:
                out.append(f'<circle cx="{x:.1f}" cy="{y:.1f}" r="4" fill="{c}"/>')
    lx = left + 2 * (pw + 80) - 40
    for n, name in enumerate(names):
        y = top_margin + 10 + 20 * n
        c = colors[n % len(colors)]
        out.append(f'<circle cx="{lx}" cy="{y}" r="4" fill="{c}"/>')
        out.append(f'<text x="{lx + 10}" y="{y + 4}">{name.replace("`", "")}</text>')
    out.append(f'<text x="{lx}" y="{top_margin + 20 + 20 * len(names)}" fill="#666">N: the GPU count</text>')
    out.append(f'<text x="{lx}" y="{top_margin + 36 + 20 * len(names)}" fill="#666">dashed: synchronous SGD</text>')
    out.append("</svg>")
    with open(path, "w", encoding="utf-8") as f:
        f.write("\n".join(out) + "\n")


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sim", required=True, help="path of the straggler_sim executable")
    ap.add_argument("--svg", help="write the chart here")
    ap.add_argument("--seeds", type=int, default=10)
    ap.add_argument("--steps", type=int, default=1000)
    a = ap.parse_args()
    results = table(a.sim, a.seeds, a.steps, lambda w: SETTINGS[w][0],
                    "Each rank straggles independently at the stated rate (the issue's model)")
    table(a.sim, a.seeds, a.steps, lambda w: SETTINGS[w][0] / w,
          "One straggler per step at the stated rate (per-rank rate divided by the GPU count)")
    persistent_table(a.sim, a.seeds, a.steps)
    if a.svg:
        svg_chart(results, a.svg)
        print(f"wrote {a.svg}", file=sys.stderr)


if __name__ == "__main__":
    main()
