#!/usr/bin/env python3
"""The averaging benchmarks in one short run, summed up in one line of JSON.

    python3 bench/summary.py [--build build] [--mpirun mpirun]

Runs, with short settings (a few minutes together on a 2-core machine):

- the local averaging benchmark (build/bench/averaging_bench; ranks are threads) for 8 and 16
  ranks at 16 and 64 MB of float32 parameters per rank, three repetitions each (medians);
- the MPI averaging benchmark (build/bench/mpi_averaging_bench) under mpirun with 8 processes at
  1, 4, 16 and 64 MB per rank, three times (on a machine with fewer cores than processes, single
  runs differ by 20 % and more; each ratio is the median over the runs), if it was built.

and prints a few readable lines (the commands and any failure go to standard error), then, as
the LAST line of its standard output, one JSON object:

    {"local": {"8": {"16": {"fused_over_flat": ..., "flat_over_allcore": ...}, "64": {...}},
               "16": {...}},
     "mpi": {"8": {"1": {"fused_over_blocking": ...}, "4": {...}, "16": {...}, "64": {...}}}}

(world size, then MB per rank). The ratios are those of the tables in docs/performance.md:

- local fused_over_flat: the fused average of ~110 separate tensors as the averagers run it on the
  local backend (avg_zero_copy: LocalComm::all_reduce_tensors, no staging buffer) over the
  in-place path on one flat buffer (avg_flat), as throughputs (bytes per rank per second), so
  above 1 means the fused path is the faster;
- local flat_over_allcore: the flat path's throughput times the rank count over the machine's
  all-core memcpy bandwidth measured in the same run (an all-reduce moves each rank's bytes about
  once, so the ranks together at best reach that bandwidth);
- mpi fused_over_blocking: the time of strata's fused average over the time of one blocking
  MPI_Allreduce of a flat buffer of the same bytes plus its 1/n scaling (medians of the slowest
  rank; "strata fused" over "raw flat" in mpi_averaging_bench), so below 1 means strata is the
  faster.

A part whose program is missing or fails is reported as null, with the reason on stderr.
"""

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time
from collections import defaultdict

LOCAL_RANKS = (8, 16)
LOCAL_MB = (16, 64)
MPI_PROCESSES = 8
MPI_MB = (1, 4, 16, 64)


def busy_seconds():
    """CPU seconds the whole machine has spent busy since boot (Linux), or None."""
    try:
        with open("/proc/stat") as f:
            values = [int(v) for v in f.readline().split()[1:]]
    except (OSError, ValueError):
        return None
    return (sum(values) - values[3] - values[4]) / os.sysconf("SC_CLK_TCK")  # less idle, iowait


def run(cmd, env=None, timeout=600):
    """The command's standard output; raises on failure, with its standard error. Says how much
    CPU time other programs took meanwhile: with fewer cores than ranks, any other load shows in
    the ratios."""
    print("$ " + " ".join(cmd), file=sys.stderr, flush=True)
    before, started = busy_seconds(), time.time()
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    done = subprocess.run(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                          timeout=timeout, check=False)
    after, wall = busy_seconds(), time.time() - started
    now = resource.getrusage(resource.RUSAGE_CHILDREN)
    if before is not None and after is not None and wall > 0:
        own = (now.ru_utime + now.ru_stime) - (children.ru_utime + children.ru_stime)
        others = max(0.0, (after - before) - own)
        print(f"  {wall:.0f} s; other programs used {others:.1f} CPU s meanwhile "
              f"({100 * others / (wall * (os.cpu_count() or 1)):.0f} % of the machine)",
              flush=True)
    if done.returncode != 0:
        raise RuntimeError(f"{cmd[0]} exited with {done.returncode}:\n{done.stderr[-2000:]}")
    return done.stdout


def local_measurements(output):
    """(family, ranks, MB) -> bytes per second, the median over the repetitions, from Google
    Benchmark's JSON output. memcpy_all_cores counts threads, not ranks: it gets ranks 0."""
    doc = json.loads(output)
    runs = defaultdict(list)
    medians = {}
    for b in doc.get("benchmarks", []):
        if b.get("error_occurred") or "MB" not in b:
            continue
        family = b.get("run_name", b["name"]).split("/")[0]
        ranks = 0 if family == "memcpy_all_cores" else int(b.get("ranks", 0))
        key = (family, ranks, int(b["MB"]))
        if b.get("run_type") == "aggregate":
            if b.get("aggregate_name") == "median":
                medians[key] = b["bytes_per_second"]
        else:
            runs[key].append(b["bytes_per_second"])
    result = {key: statistics.median(v) for key, v in runs.items()}
    result.update(medians)
    return result


def gb(bytes_per_second):
    return "n/a" if not bytes_per_second else f"{bytes_per_second / 1e9:.3g} GB/s"


def local_summary(build):
    program = os.path.join(build, "bench", "averaging_bench")
    sizes = "|".join(str(mb) for mb in LOCAL_MB)
    ranks = "|".join(str(r) for r in LOCAL_RANKS)
    pattern = f"^((avg_flat|avg_zero_copy)/ranks:({ranks})|memcpy_all_cores)/MB:({sizes})(/|$)"
    output = run([program, f"--benchmark_filter={pattern}", "--benchmark_format=json",
                  "--benchmark_repetitions=3", "--benchmark_report_aggregates_only=true"])
    m = local_measurements(output)
    summary = {}
    for r in LOCAL_RANKS:
        per_size = {}
        for mb in LOCAL_MB:
            flat = m.get(("avg_flat", r, mb))
            fused = m.get(("avg_zero_copy", r, mb))
            allcore = m.get(("memcpy_all_cores", 0, mb))
            per_size[str(mb)] = {
                "fused_over_flat": round(fused / flat, 3) if fused and flat else None,
                "flat_over_allcore": round(flat * r / allcore, 3) if flat and allcore else None,
            }
            print(f"local, {r} ranks, {mb} MB/rank: fused {gb(fused)}, flat {gb(flat)}, "
                  f"all-core memcpy {gb(allcore)}", flush=True)
        summary[str(r)] = per_size
    return summary


def mpi_summary(build, mpirun, runs):
    program = os.path.join(build, "bench", "mpi_averaging_bench")
    if not os.path.exists(program):
        raise RuntimeError(f"{program} was not built (no MPI in this build)")
    env = dict(os.environ)
    env.update({
        "OMPI_ALLOW_RUN_AS_ROOT": "1",
        "OMPI_ALLOW_RUN_AS_ROOT_CONFIRM": "1",
        "OMPI_MCA_rmaps_base_oversubscribe": "1",
        # More processes than cores: a rank that waits gives its core away.
        "OMPI_MCA_mpi_yield_when_idle": "1",
    })
    sizes = ",".join(str(mb) for mb in MPI_MB)
    ratios = defaultdict(list)
    for r in range(runs):
        output = run([mpirun, "-np", str(MPI_PROCESSES), program, "--sizes-mb", sizes, "--json"],
                     env=env)
        table = [line for line in output.splitlines() if line.startswith("|")]
        print(f"mpi, {MPI_PROCESSES} processes, run {r + 1} of {runs}:\n" + "\n".join(table),
              flush=True)
        seconds = json.loads(output.strip().splitlines()[-1])["seconds"]
        for mb in MPI_MB:
            row = seconds.get(str(mb * 1024), {})
            if row.get("fused") and row.get("raw_flat"):
                ratios[mb].append(row["fused"] / row["raw_flat"])
    per_size = {}
    for mb in MPI_MB:
        ratio = statistics.median(ratios[mb]) if ratios[mb] else None
        per_size[str(mb)] = {"fused_over_blocking": round(ratio, 3) if ratio else None}
    return {str(MPI_PROCESSES): per_size}


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--build", default="build", help="the build directory (default: build)")
    parser.add_argument("--mpirun", default="mpirun", help="the MPI launcher (default: mpirun)")
    parser.add_argument("--mpi-runs", type=int, default=3,
                        help="runs of the MPI benchmark; each ratio is the median over the runs "
                             "(default: 3)")
    args = parser.parse_args()

    result = {}
    for part, measure in (("local", lambda: local_summary(args.build)),
                          ("mpi", lambda: mpi_summary(args.build, args.mpirun, args.mpi_runs))):
        try:
            result[part] = measure()
        except (OSError, RuntimeError, ValueError, KeyError, subprocess.TimeoutExpired) as e:
            print(f"{part}: not measured: {e}", file=sys.stderr)
            result[part] = None
    try:
        with open("/proc/loadavg") as f:
            print("load average after the run: " + " ".join(f.read().split()[:3]), flush=True)
    except OSError:
        pass
    sys.stderr.flush()
    print(json.dumps(result), flush=True)


if __name__ == "__main__":
    main()
