#!/usr/bin/env python3
"""strata_torch.HierarchicalModelAverager against PyTorch's own HierarchicalModelAverager.

usage: pytorch_parity.py --world N [--steps S] [--restart-at R] [--timeout SECONDS]

Starts N gloo processes on 127.0.0.1. Each trains two copies of one small float64 model in
lockstep, from the same rank-dependent start on the same rank-dependent data, with SGD with
momentum over two parameter groups; one group holds a parameter that no loss reaches, so its
.grad stays None and both averagers must leave it alone. After every optimizer step copy A is
averaged by torch.distributed.algorithms.model_averaging's HierarchicalModelAverager and copy B
by strata_torch's, with the same hierarchy and warm-up; the two copies must then agree to 1e-12
on every rank, and the group size strata_torch reports must be the one PyTorch's averager picked.

Halfway the run restarts strata_torch's averager from its state_dict(), saved through
torch.save/torch.load; the fresh averager's schedule before the load is shown to disagree with
PyTorch's from that step on, and to agree after it.

Exits 0 when every rank passes, and prints one summary line with the largest difference seen.
"""
import argparse
import copy
import io
import json
import os
import sys
import tempfile
import time
from collections import OrderedDict
from datetime import timedelta

from launch import run_world

TOLERANCE = 1e-12

# A hierarchy per world: three levels on 8 ranks, whose periods 2 and 3 do not divide each other,
# so that the "largest period dividing the step" rule decides between non-nested levels (step 6).
HIERARCHIES = {
    4: (OrderedDict([(2, 2), (4, 4)]), 3),
    8: (OrderedDict([(2, 2), (3, 4), (8, 8)]), 5),
}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--world", type=int, required=True, choices=sorted(HIERARCHIES))
    ap.add_argument("--steps", type=int, default=30)
    ap.add_argument("--restart-at", type=int, default=13)
    ap.add_argument("--timeout", type=float, default=120.0)
    ap.add_argument("--worker", type=int)
    ap.add_argument("--results")
    a = ap.parse_args()
    if a.worker is not None:
        return worker(a.worker, a)
    if not 0 < a.restart_at < a.steps:
        sys.exit("--restart-at must lie inside the run")

    start = time.monotonic()
    with tempfile.TemporaryDirectory() as results:
        codes = run_world(__file__, a.world,
                          ["--results", results, "--world", str(a.world), "--steps", str(a.steps),
                           "--restart-at", str(a.restart_at)], a.timeout)
        reports = []
        for r in range(a.world):
            path = os.path.join(results, f"rank{r}.json")
            if os.path.exists(path):
                with open(path) as f:
                    reports.append(json.load(f))
    ok = all(c == 0 for c in codes) and len(reports) == a.world and all(r["ok"] for r in reports)
    worst = max((r["max_diff"] for r in reports), default=float("nan"))
    hierarchy, warmup = HIERARCHIES[a.world]
    print(f"pytorch_parity world {a.world} hierarchy {dict(hierarchy)} warmup {warmup}: "
          f"{a.steps} steps, restart after {a.restart_at}, max |A - B| {worst:.3g} "
          f"(limit {TOLERANCE:g}), exit codes {codes}, {time.monotonic() - start:.1f} s: "
          f"{'PASS' if ok else 'FAIL'}")
    return 0 if ok else 1


# --- one rank ---------------------------------------------------------------------------------

def worker(rank, a):
    import torch
    import torch.distributed as dist
    import torch.nn as nn
    from torch.distributed.algorithms.model_averaging.hierarchical_model_averager import (
        HierarchicalModelAverager as TorchAverager)

    import strata_torch

    torch.set_num_threads(1)
    torch.set_default_dtype(torch.float64)
    world = a.world
    dist.init_process_group("gloo", rank=rank, world_size=world, timeout=timedelta(seconds=60))
    hierarchy, warmup = HIERARCHIES[world]
    failures = []

    def fail(text):
        failures.append(text)
        # The first few say what went wrong; the rest would only repeat it every step.
        if len(failures) <= 5:
            print(f"rank {rank}: {text}", file=sys.stderr, flush=True)

    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc1 = nn.Linear(6, 10)
            self.fc2 = nn.Linear(10, 3)
            # No loss reaches it: its .grad stays None, and PyTorch's averager skips it.
            self.spare = nn.Parameter(torch.randn(4))

        def forward(self, x):
            return self.fc2(torch.tanh(self.fc1(x)))

    def optimizer_for(model):
        return torch.optim.SGD(
            [{"params": model.fc1.parameters()},
             {"params": [model.fc2.weight, model.fc2.bias, model.spare], "lr": 0.03,
              "momentum": 0.5}],
            lr=0.05, momentum=0.9)

    # Rank-dependent starting points (as without DDP's initial broadcast), so that every
    # averaging, and every parameter wrongly averaged, moves values.
    torch.manual_seed(1000 + rank)
    model_a = Net()
    model_b = copy.deepcopy(model_a)
    opt_a, opt_b = optimizer_for(model_a), optimizer_for(model_b)
    spare_start = model_a.spare.detach().clone()

    def torch_averager(hierarchy, warmup):
        # PyTorch 1.13's dist.new_subgroups refuses to run without CUDA although it only makes
        # groups of consecutive ranks with the default (here gloo) backend; it is told CUDA is
        # there while the averager builds its groups, and PyTorch's own code does the rest.
        available = torch.cuda.is_available
        torch.cuda.is_available = lambda: True
        try:
            return TorchAverager(hierarchy, warmup_steps=warmup)
        finally:
            torch.cuda.is_available = available

    torch_avg = torch_averager(hierarchy, warmup)
    strata_avg = strata_torch.HierarchicalModelAverager(hierarchy, warmup_steps=warmup)

    def torch_group_size(averager, step):
        """The group size PyTorch's averager averages over at `step`, by its own code."""
        saved = averager.step
        averager.step = step
        try:
            if step < averager.warmup_steps:
                return None
            group = averager._find_process_group()
            return None if group is None else dist.get_world_size(group)
        finally:
            averager.step = saved

    def torch_schedule(averager, start, count):
        return [torch_group_size(averager, s) for s in range(start, start + count)]

    def max_diff():
        return max((pa - pb).abs().max().item()
                   for pa, pb in zip(model_a.parameters(), model_b.parameters()))

    worst = 0.0
    seen_sizes = set()
    largest_move = 0.0
    horizon = 2 * max(hierarchy)
    for step in range(a.steps):
        if step == a.restart_at:
            saved = strata_avg.state_dict()
            buffer = io.BytesIO()
            torch.save(saved, buffer)
            buffer.seek(0)
            loaded = torch.load(buffer)
            if loaded != saved:
                fail(f"state_dict changed through torch.save/torch.load: {saved} -> {loaded}")
            if loaded.get("step") != step:
                fail(f"state_dict step {loaded.get('step')} after {step} calls")
            del strata_avg
            strata_avg = strata_torch.HierarchicalModelAverager(hierarchy, warmup_steps=warmup)
            # PyTorch's averager keeps no state_dict: after a real restart its step is back at 0
            # unless the caller restores it by hand, as here.
            torch_avg = torch_averager(hierarchy, warmup)
            torch_avg.step = loaded["step"]
            want = torch_schedule(torch_avg, torch_avg.step, horizon)
            # Without its state the new averager would start the schedule over from step 0.
            unloaded = strata_avg.schedule(horizon, start=strata_avg.step)
            if strata_avg.step != 0:
                fail(f"a new averager starts at step {strata_avg.step}")
            if unloaded == want:
                fail(f"a new averager's schedule {unloaded} already matches PyTorch's after the "
                     f"restart, so the restart check shows nothing")
            strata_avg.load_state_dict(loaded)
            restored = strata_avg.schedule(horizon, start=strata_avg.step)
            if strata_avg.step != step:
                fail(f"after load_state_dict the step is {strata_avg.step}, saved at {step}")
            if restored != want:
                fail(f"restored schedule {restored} != PyTorch's {want} from step {step}")

        g = torch.Generator().manual_seed(7919 * (rank + 1) + step)
        x = torch.randn(16, 6, generator=g)
        y = torch.randn(16, 3, generator=g)
        for model, opt in ((model_a, opt_a), (model_b, opt_b)):
            opt.zero_grad()
            nn.functional.mse_loss(model(x), y).backward()
            opt.step()
        if model_a.spare.grad is not None or model_b.spare.grad is not None:
            fail("the spare parameter got a gradient; the test model is wrong")

        expected = torch_group_size(torch_avg, torch_avg.step)
        before = [p.detach().clone() for p in model_b.parameters()]
        # Both forms of the argument, to each averager, in every combination over three steps;
        # model.parameters() is a generator, read once.
        form = step % 3
        torch_avg.average_parameters(
            opt_a.param_groups if form == 0 else model_a.parameters())
        got = strata_avg.average_parameters(
            model_b.parameters() if form == 1 else opt_b.param_groups)
        if got != expected:
            fail(f"step {step}: strata_torch averaged over {got}, PyTorch over {expected}")
        if torch_avg.step != strata_avg.step:
            fail(f"step {step}: step counters {torch_avg.step} (PyTorch) != {strata_avg.step}")
        if got is not None:
            seen_sizes.add(got)
            largest_move = max(largest_move, max(
                (p.detach() - q).abs().max().item() for p, q in zip(model_b.parameters(), before)))
        diff = max_diff()
        worst = max(worst, diff)
        if diff > TOLERANCE:
            fail(f"step {step}: max |A - B| = {diff:.3g}")

    if not torch.equal(model_b.spare.detach(), spare_start):
        fail("strata_torch averaged the parameter whose .grad is None")
    if seen_sizes != set(hierarchy.values()):
        fail(f"the run averaged over group sizes {sorted(seen_sizes)} only; "
             f"it should reach every level {list(hierarchy.values())}")
    if largest_move < 1e-6:
        fail(f"averaging moved parameters by at most {largest_move:.3g}: the check is vacuous")

    with open(os.path.join(a.results, f"rank{rank}.json"), "w") as f:
        json.dump({"ok": not failures, "max_diff": worst, "failures": failures}, f)
    # No rank leaves while a peer may still need it in a collective.
    dist.barrier()
    dist.destroy_process_group()
    return 0 if not failures else 1


if __name__ == "__main__":
    sys.exit(main())
