#!/usr/bin/env python3
"""Time one averaging of ResNet-18's parameters: PyTorch's HierarchicalModelAverager against
strata_torch's, over gloo, with a flat all-reduce of the same bytes as the floor.

ResNet-18's 62 parameter tensors (11,689,512 float32 values, 46.8 MB; the shapes are written out
below) are averaged over the whole world at every call (hierarchy {1: world}). For each world
size the script starts that many processes, and each process times, in rounds:

- torch:  torch.distributed.algorithms.model_averaging's HierarchicalModelAverager;
- strata: strata_torch.HierarchicalModelAverager, the same arguments and the same tensors;
- flat:   torch.distributed.all_reduce of one pre-packed buffer of the same size (sum, no copy).

Each round times the three one after another, each call preceded by a barrier; a call's time is
the slowest rank's. The first --warmup rounds are left out; the table gives the median and the
90th percentile over the --calls rounds after them, and the last line is the same as JSON.

    /usr/bin/python3 bench/torch_bench.py [--worlds 4,8] [--calls 20] [--warmup 3]
"""

import argparse
import json
import os
import socket
import statistics
import sys
import time
import warnings
from collections import OrderedDict
from pathlib import Path

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch.distributed.algorithms.model_averaging import hierarchical_model_averager as hma

try:
    import strata_torch
except ImportError:
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "build" / "python"))
    try:
        import strata_torch
    except ImportError:
        sys.exit("torch_bench.py: strata_torch is not importable; build it with "
                 "`cmake --build build --target strata_torch_python`")


def resnet18_shapes():
    """The shapes of torchvision's resnet18().parameters(), in order (62 tensors)."""
    shapes = [(64, 3, 7, 7), (64,), (64,)]  # conv1, bn1
    inplanes = 64
    for planes, stride in ((64, 1), (128, 2), (256, 2), (512, 2)):
        for block in range(2):
            cin = inplanes if block == 0 else planes
            shapes += [(planes, cin, 3, 3), (planes,), (planes,),     # conv1, bn1
                       (planes, planes, 3, 3), (planes,), (planes,)]  # conv2, bn2
            if block == 0 and (stride != 1 or inplanes != planes):
                shapes += [(planes, inplanes, 1, 1), (planes,), (planes,)]  # downsample
        inplanes = planes
    shapes += [(1000, 512), (1000,)]  # fc
    return shapes


def numel(shape):
    n = 1
    for d in shape:
        n *= d
    return n


def percentile(values, q):
    v = sorted(values)
    i = q * (len(v) - 1)
    lo = int(i)
    hi = min(lo + 1, len(v) - 1)
    return v[lo] + (v[hi] - v[lo]) * (i - lo)


def timed(fn):
    dist.barrier()
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def worker(rank, world, args, port, queue):
    os.environ["MASTER_ADDR"] = "127.0.0.1"
    os.environ["MASTER_PORT"] = str(port)
    torch.set_num_threads(1)  # the processes share the cores
    dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        shapes = resnet18_shapes()
        g = torch.Generator().manual_seed(1000 + rank)
        params = [torch.nn.Parameter(torch.randn(s, generator=g)) for s in shapes]
        for p in params:  # both averagers skip parameters without a gradient
            p.grad = torch.zeros_like(p)
        copies = [torch.nn.Parameter(p.detach().clone()) for p in params]
        for p in copies:
            p.grad = torch.zeros_like(p)
        hierarchy = OrderedDict([(1, world)])
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # PyTorch warns that period 1 could be plain DDP
            theirs = hma.HierarchicalModelAverager(hierarchy)
        ours = strata_torch.HierarchicalModelAverager(hierarchy)
        flat = torch.randn(sum(numel(s) for s in shapes), generator=g)

        # The same average from both, before anything is timed.
        theirs.average_parameters(params)
        ours.average_parameters(copies)
        worst = max((a - b).abs().max().item() for a, b in zip(params, copies))
        if worst > 1e-5:
            raise RuntimeError(f"strata and PyTorch averages differ by {worst}")

        methods = (("torch", lambda: theirs.average_parameters(params)),
                   ("strata", lambda: ours.average_parameters(copies)),
                   ("flat", lambda: dist.all_reduce(flat)))
        times = {name: [] for name, _ in methods}
        for _ in range(args.warmup + args.calls):
            for name, fn in methods:
                times[name].append(timed(fn))
        # A call lasts until its slowest rank is done.
        out = {}
        for name, t in times.items():
            v = torch.tensor(t[args.warmup:], dtype=torch.float64)
            dist.all_reduce(v, op=dist.ReduceOp.MAX)
            out[name] = v.tolist()
        if rank == 0:
            queue.put({"world": world, "tensors": len(shapes),
                       "values": sum(numel(s) for s in shapes), "max_diff": worst,
                       "times": out})
    finally:
        dist.destroy_process_group()


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run_world(world, args):
    ctx = mp.get_context("spawn")
    queue = ctx.SimpleQueue()
    mp.start_processes(worker, args=(world, args, free_port(), queue), nprocs=world,
                       start_method="spawn")
    return queue.get()


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--worlds", default="4,8", help="world sizes, one after another (default 4,8)")
    p.add_argument("--calls", type=int, default=20, help="timed calls per method (default 20)")
    p.add_argument("--warmup", type=int, default=3, help="calls left out first (default 3)")
    args = p.parse_args()
    worlds = [int(w) for w in args.worlds.split(",")]
    if args.calls < 1 or args.warmup < 0 or min(worlds) < 1:
        p.error("--calls must be at least 1, --warmup at least 0, world sizes at least 1")

    start = time.perf_counter()
    results = [run_world(w, args) for w in worlds]
    elapsed = time.perf_counter() - start

    mb = results[0]["values"] * 4 / 1e6
    print(f"{results[0]['tensors']} tensors, {results[0]['values']} float32 values "
          f"({mb:.1f} MB) per rank, averaged over the world at every call; gloo, one process "
          f"per rank; median and p90 over {args.calls} calls after {args.warmup}, ms")
    print()
    header = (f"{'world':>5}  {'method':<8}{'median':>10}{'p90':>10}{'/flat':>8}"
              f"{'/torch':>8}")
    print(header)
    summary = {"tensors": results[0]["tensors"], "values": results[0]["values"],
               "calls": args.calls, "warmup": args.warmup, "worlds": {}}
    for r in results:
        t = r["times"]
        med = {k: statistics.median(v) * 1e3 for k, v in t.items()}
        p90 = {k: percentile(v, 0.9) * 1e3 for k, v in t.items()}
        for name in ("torch", "strata", "flat"):
            print(f"{r['world']:>5}  {name:<8}{med[name]:>10.1f}{p90[name]:>10.1f}"
                  f"{med[name] / med['flat']:>8.2f}{med[name] / med['torch']:>8.2f}")
        summary["worlds"][str(r["world"])] = {
            "median_ms": {k: round(v, 3) for k, v in med.items()},
            "p90_ms": {k: round(v, 3) for k, v in p90.items()},
            "strata_over_torch": round(med["strata"] / med["torch"], 3),
            "strata_over_flat": round(med["strata"] / med["flat"], 3),
            "torch_over_flat": round(med["torch"] / med["flat"], 3),
            "max_diff_vs_torch": r["max_diff"]}
    summary["seconds"] = round(elapsed, 1)
    print()
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
