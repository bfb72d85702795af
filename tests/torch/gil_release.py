#!/usr/bin/env python3
"""strata_torch talks to its process groups without the GIL.

usage: gil_release.py [--world N] [--rounds R]

Gloo's worker threads free the tensors of finished collectives under gloo's own lock, and a
tensor that had a Python object needs the GIL for that. A rank that held the GIL while it waited
for gloo's lock (to enqueue a collective when an averager, a node group or a DDP hook state is
made or used, or to stop the workers when an averager is destroyed) waited forever. Each round
here leaves such a tensor behind (an all-reduce whose Python tensor is dropped at once), then
makes, uses and drops an averager and a hook state. Exits 0 when every rank finishes every round
within the deadline; a rank that deadlocks makes the run fail at the deadline instead.
"""
import argparse
import datetime
import os
import sys
from collections import OrderedDict

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

import strata_torch
from launch import free_port


def rank_main(rank, world, port, rounds):
    torch.set_num_threads(1)
    os.environ["MASTER_ADDR"] = "127.0.0.1"
    os.environ["MASTER_PORT"] = str(port)
    dist.init_process_group("gloo", rank=rank, world_size=world,
                            timeout=datetime.timedelta(seconds=30))
    w = torch.zeros(100)
    for _ in range(rounds):
        t = torch.full((1000,), float(rank))
        dist.all_reduce(t)
        del t
        avg = strata_torch.HierarchicalModelAverager(OrderedDict([(1, 2), (2, world)]))
        state = strata_torch.PostLocalSGDState(avg, ranks_per_node=2)
        u = torch.ones(10)
        dist.all_reduce(u)
        del u
        avg.average_parameters([w])
        del state, avg
    dist.destroy_process_group()


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--world", type=int, default=4)
    ap.add_argument("--rounds", type=int, default=20)
    ap.add_argument("--deadline", type=float, default=120.0)
    a = ap.parse_args()
    ctx = mp.spawn(rank_main, args=(a.world, free_port(), a.rounds), nprocs=a.world, join=False)
    deadline = datetime.datetime.now() + datetime.timedelta(seconds=a.deadline)
    try:
        while not ctx.join(timeout=1.0):
            if datetime.datetime.now() > deadline:
                for p in ctx.processes:
                    p.kill()
                print(f"FAIL: the ranks did not finish {a.rounds} rounds in {a.deadline} s "
                      "(deadlock)")
                return 1
    except Exception as e:  # a rank failed: its peers timed out waiting for a stuck one
        for p in ctx.processes:
            if p.is_alive():
                p.kill()
        print(f"FAIL: a rank failed: {str(e).strip().splitlines()[-1]}")
        return 1
    print(f"ok: {a.world} ranks, {a.rounds} rounds of averagers and hook states made, used and "
          "dropped beside gloo collectives")
    return 0


if __name__ == "__main__":
    sys.exit(main())
