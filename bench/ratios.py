#!/usr/bin/env python3
"""Markdown tables of averaging throughput against memcpy, from averaging_bench's JSON output.

    averaging_bench --benchmark_format=json --benchmark_out=avg.json --benchmark_out_format=json
    python3 bench/ratios.py avg.json          # or: averaging_bench --benchmark_format=json | ratios.py -

Every benchmark of averaging_bench reports bytes_per_second (bytes per rank per second; for
memcpy_all_cores, all threads together) and the counters `ranks` and `MB`. Per rank count this
prints, for each size, each averaging variant's throughput and its ratio to single-threaded memcpy
of the same bytes in the same run, the fused/per-tensor speed-up, and the flat path's share of the
machine's all-core copy bandwidth (an all-reduce reads and writes each rank's bytes once, as a
memcpy does, so N ranks at best reach the all-core memcpy bandwidth / N each). With
--benchmark_repetitions the median is used.
"""

import argparse
import json
import statistics
import sys
from collections import defaultdict

VARIANTS = [("avg_flat", "flat"), ("avg_fused", "fused"), ("avg_zero_copy", "zero-copy"),
            ("avg_per_tensor", "per-tensor")]


def load(path):
    with (sys.stdin if path == "-" else open(path)) as f:
        return json.load(f)


def collect(docs, stat):
    """(family, ranks, MB) -> (bytes per second, real time) over every run in `docs`: the median,
    or with stat == "best" the fastest run (on a shared machine, other load only adds time)."""
    runs = defaultdict(list)
    medians = {}
    errors = set()
    for doc in docs:
        for b in doc.get("benchmarks", []):
            name = b.get("run_name", b["name"])
            family = name.split("/")[0]
            if b.get("error_occurred"):
                errors.add(name)
                continue
            if "ranks" not in b or "MB" not in b:
                continue
            aggregate = b.get("run_type") == "aggregate"
            if aggregate and b.get("aggregate_name") != "median":
                continue  # mean, stddev, cv: their counters are not sizes
            key = (family, int(b["ranks"]), int(b["MB"]))
            value = (b.get("bytes_per_second", 0.0), b.get("real_time", 0.0))
            if aggregate:
                medians[key] = value
            else:
                runs[key].append(value)
    result = dict(medians)  # only where the individual runs were not reported
    for key, v in runs.items():
        if stat == "best":
            result[key] = max(v, key=lambda x: (x[0], -x[1]))
        else:
            result[key] = (statistics.median(x[0] for x in v), statistics.median(x[1] for x in v))
    return result, errors


def gbs(x):
    return f"{x / 1e9:.3g}"


def ratio(a, b):
    return f"{a / b:.3f}" if a and b else "–"


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("json", nargs="+",
                        help="averaging_bench --benchmark_format=json output(s), or - for stdin; "
                             "the runs of several files are pooled")
    parser.add_argument("--stat", choices=["median", "best"], default="median",
                        help="per benchmark: the median run (default) or the fastest one")
    args = parser.parse_args()
    docs = [load(path) for path in args.json]
    data, errors = collect(docs, args.stat)

    doc = docs[0]
    ctx = doc.get("context", {})
    print(f"Host: {ctx.get('host_name', '?')}, {ctx.get('num_cpus', '?')} CPUs at "
          f"{ctx.get('mhz_per_cpu', '?')} MHz, load average "
          f"{', '.join(f'{x:.2f}' for x in ctx.get('load_avg', [])) or '?'} at the start; "
          f"{args.stat} of {len(docs)} file(s); GB/s = 1e9 bytes per rank per second.\n")

    sizes = sorted({mb for (_, _, mb) in data if mb > 0})
    ranks_all = sorted({r for (f, r, _) in data if f.startswith("avg_")})
    memcpy = {mb: data.get(("memcpy", 1, mb), (None, None))[0] for mb in sizes}
    all_cores = {mb: v[0] for (f, r, mb), v in data.items() if f == "memcpy_all_cores"}
    threads = next((r for (f, r, _) in data if f == "memcpy_all_cores"), "?")

    print(f"memcpy: one thread, and all {threads} hardware threads at once (total)\n")
    print("| MB | memcpy GB/s | all-core memcpy GB/s |")
    print("| ---: | ---: | ---: |")
    for mb in sizes:
        m, a = memcpy.get(mb), all_cores.get(mb)
        print(f"| {mb} | {gbs(m) if m else '–'} | {gbs(a) if a else '–'} |")
    print()

    barriers = {r: v[1] for (f, r, _), v in data.items() if f == "barrier"}
    if barriers:
        print("barrier (one rendezvous of all ranks): "
              + ", ".join(f"{r} ranks {barriers[r]:.0f} us" for r in sorted(barriers)) + "\n")

    for n in ranks_all:
        print(f"### {n} ranks (bytes per rank per second; ratios to single-thread memcpy)\n")
        head = ["MB/rank", "memcpy GB/s"]
        for _, v in VARIANTS:
            head += [f"{v} GB/s", f"{v}/memcpy"]
        head += ["fused/per-tensor", "fused/flat", "zero-copy/flat", f"flat×{n}/all-core memcpy"]
        print("| " + " | ".join(head) + " |")
        print("|" + " ---: |" * len(head))
        for mb in sizes:
            m = memcpy.get(mb)
            row = [str(mb), gbs(m) if m else "–"]
            vals = {}
            for family, _ in VARIANTS:
                v = data.get((family, n, mb), (None, None))[0]
                vals[family] = v
                row += [gbs(v) if v else "–", ratio(v, m)]
            row += [ratio(vals["avg_fused"], vals["avg_per_tensor"]),
                    ratio(vals["avg_fused"], vals["avg_flat"]),
                    ratio(vals["avg_zero_copy"], vals["avg_flat"]),
                    ratio(vals["avg_flat"] * n if vals["avg_flat"] else None, all_cores.get(mb))]
            print("| " + " | ".join(row) + " |")
        print()

    for name in sorted(errors):
        print(f"- {name}: failed (see the benchmark's error message)")


if __name__ == "__main__":
    main()
