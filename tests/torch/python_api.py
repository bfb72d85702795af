#!/usr/bin/env python3
"""strata_torch's Python API: argument checks, schedule, state, and the averaging call.

usage: python_api.py [--world 4] [--timeout SECONDS]

First in this process, with torch.distributed never initialised: check_hierarchy and the
averager's constructor reject bad hierarchies and warm-ups with a one-line ValueError naming the
rule, before any process group is needed; Nesterov rejects bad settings. Then in --world gloo
processes on 127.0.0.1: the rule that needs the world size, without creating a process group;
TypeError for tensors it cannot average; schedule() against PyTorch's rule written out here;
what average_parameters averages, in place, and the group size it returns; state_dict round
trips (with and without an outer optimizer) and refusals; an averager over a process group
other than the world; the post-local SGD communication hook under DDP.

Exits 0 when every check passes on every rank.
"""
import argparse
import io
import sys
import time
from collections import OrderedDict
from datetime import timedelta

import torch
import torch.distributed as dist

import strata_torch
from launch import run_world

Averager = strata_torch.HierarchicalModelAverager

# Bad hierarchies any world rejects, with a word of the rule each breaks (lower case).
BAD_HIERARCHIES = [
    ("group size not a multiple", OrderedDict([(2, 3), (4, 4)]), "multiple"),
    ("periods not increasing", OrderedDict([(4, 2), (2, 4)]), "period"),
    ("equal group sizes", OrderedDict([(2, 4), (4, 4)]), "group size"),
    ("group sizes not increasing", OrderedDict([(2, 4), (4, 2)]), "group size"),
    ("empty", OrderedDict(), "empty|at least one"),
    ("zero period", OrderedDict([(0, 2), (4, 4)]), "period"),
    ("negative period", OrderedDict([(-2, 2), (4, 4)]), "period"),
    ("zero group size", OrderedDict([(2, 0), (4, 4)]), "group size"),
]


class Checks:
    """Collects failures instead of stopping, so that every rank runs every collective."""

    def __init__(self, who):
        self.who = who
        self.failures = []
        self.count = 0

    def check(self, ok, text):
        self.count += 1
        if not ok:
            self.failures.append(text)
            print(f"{self.who}: FAIL {text}", file=sys.stderr, flush=True)
        return ok

    def raises(self, kind, words, what, fn, *args, **kwargs):
        """fn(*args, **kwargs) must raise `kind` with a one-line message holding one of `words`
        ('a|b'), if given. Returns the exception."""
        try:
            fn(*args, **kwargs)
        except Exception as e:  # noqa: BLE001 - the type is what is checked
            message = str(e)
            self.check(type(e) is kind or isinstance(e, kind),
                       f"{what}: raised {type(e).__name__} ({message}), expected {kind.__name__}")
            self.check(message.strip() != "" and "\n" not in message.strip(),
                       f"{what}: the message is not one line: {message!r}")
            if words:
                self.check(any(w in message.lower() for w in words.split("|")),
                           f"{what}: the message {message!r} does not name the rule ({words})")
            return e
        self.check(False, f"{what}: nothing raised, expected {kind.__name__}")
        return None


def torch_rule(hierarchy, warmup, step):
    """PyTorch's HierarchicalModelAverager's choice at `step`: from the warm-up on, the group of
    the largest period that divides the step, else none."""
    if step < warmup:
        return None
    for period in reversed(list(hierarchy)):
        if step % period == 0:
            return hierarchy[period]
    return None


# --- this process, torch.distributed never initialised ---------------------------------------

def single_process_checks(c):
    for name, h, words in BAD_HIERARCHIES:
        c.raises(ValueError, words, f"check_hierarchy({name} {dict(h)}, 4)",
                 strata_torch.check_hierarchy, h, 4)
    c.raises(ValueError, "world", "check_hierarchy(last group 4, world 8)",
             strata_torch.check_hierarchy, OrderedDict([(2, 2), (4, 4)]), 8)
    c.raises(ValueError, "world", "check_hierarchy(last group 8, world 4)",
             strata_torch.check_hierarchy, OrderedDict([(2, 2), (4, 8)]), 4)
    for h, world in ((OrderedDict([(2, 2), (4, 4)]), 4), (OrderedDict([(1, 1)]), 1),
                     ({3: 2, 5: 6, 6: 12}, 12), ({1: 8}, 8)):
        try:
            c.check(strata_torch.check_hierarchy(h, world) is None,
                    f"check_hierarchy({dict(h)}, {world}) returned something")
        except Exception as e:  # noqa: BLE001
            c.check(False, f"check_hierarchy({dict(h)}, {world}) raised {e!r}")

    # The rules that need no world size are checked before any process group is looked for:
    # here there is none at all, so anything else would raise something other than ValueError.
    for name, h, words in BAD_HIERARCHIES:
        c.raises(ValueError, words, f"HierarchicalModelAverager({name} {dict(h)}) without "
                 f"torch.distributed", Averager, h)
    c.raises(ValueError, "warmup", "HierarchicalModelAverager(warmup_steps=-1) without "
             "torch.distributed", Averager, OrderedDict([(2, 2), (4, 4)]), warmup_steps=-1)
    c.check(not dist.is_initialized(), "a rejected constructor initialised torch.distributed")

    c.raises(ValueError, "", "Nesterov(lr=0)", strata_torch.Nesterov, 0.0, 0.9)
    c.raises(ValueError, "", "Nesterov(lr=-1)", strata_torch.Nesterov, -1.0, 0.9)
    c.raises(ValueError, "", "Nesterov(momentum=1)", strata_torch.Nesterov, 0.7, 1.0)
    c.raises(ValueError, "", "Nesterov(momentum=-0.1)", strata_torch.Nesterov, 0.7, -0.1)
    o = strata_torch.Nesterov(lr=0.7, momentum=0.9)
    c.check((o.lr, o.momentum) == (0.7, 0.9), f"Nesterov(0.7, 0.9) holds {o.lr}, {o.momentum}")


# --- one rank of the world --------------------------------------------------------------------

def group_ranks(rank, size):
    first = rank // size * size
    return list(range(first, first + size))


def rank_checks(c, rank, world):
    h4 = OrderedDict([(2, 2), (4, 4)])
    store = dist.distributed_c10d._get_default_store()

    # -- rejected constructions create no process group and write nothing to the store.
    dist.barrier()
    groups_before = (dist.distributed_c10d._group_count, len(dist.distributed_c10d._pg_map))
    keys_before = store.num_keys()
    c.raises(ValueError, "world", "last group 8 in a world of 4", Averager,
             OrderedDict([(2, 2), (4, 8)]))
    c.raises(ValueError, "world", "last group 2 in a world of 4", Averager, OrderedDict([(1, 2)]))
    for name, h, words in BAD_HIERARCHIES:
        c.raises(ValueError, words, f"HierarchicalModelAverager({name})", Averager, h)
    c.raises(ValueError, "warmup", "warmup_steps=-3", Averager, h4, warmup_steps=-3)
    c.raises(ValueError, "period", "outer for a period not in the hierarchy", Averager, h4,
             outer={3: strata_torch.Nesterov(0.7, 0.9)})
    keys_after = store.num_keys()
    groups_after = (dist.distributed_c10d._group_count, len(dist.distributed_c10d._pg_map))
    c.check(groups_after == groups_before,
            f"rejected constructors created process groups: {groups_before} -> {groups_after}")
    c.check(keys_after == keys_before,
            f"rejected constructors wrote to the store: {keys_before} -> {keys_after} keys")
    dist.barrier()

    # -- schedule() is PyTorch's rule.
    for h, warmup in ((h4, 0), (OrderedDict([(1, 2), (3, 4)]), 5), (OrderedDict([(4, 4)]), 2),
                      (OrderedDict([(1, 1), (2, 2), (6, 4)]), 3),
                      (OrderedDict([(3, 2), (5, 4)]), 0)):
        avg = Averager(h, warmup_steps=warmup)
        want = [torch_rule(h, warmup, s) for s in range(60)]
        got = avg.schedule(60)
        c.check(got == want, f"schedule(60) of {dict(h)} warm-up {warmup}: {got} != {want}")
        got = avg.schedule(23, start=17)
        c.check(got == want[17:40], f"schedule(23, start=17) of {dict(h)} warm-up {warmup}: "
                f"{got} != {want[17:40]}")
        c.check(avg.schedule(0) == [], "schedule(0) is not empty")
        c.check(avg.step == 0 and avg.warmup_steps == warmup,
                f"new averager: step {avg.step}, warmup_steps {avg.warmup_steps}")

    # -- properties.
    hierarchy = OrderedDict([(1, 2), (3, 4)])
    given = OrderedDict(hierarchy)
    avg = Averager(given, warmup_steps=2)
    given[9] = 8  # the averager keeps its own copy
    kept = avg.period_group_size_dict
    c.check(isinstance(kept, OrderedDict) and list(kept.items()) == [(1, 2), (3, 4)],
            f"period_group_size_dict is {kept!r}")
    # The step is assignable, as PyTorch's attribute (edge_checks); put back to 0 here.
    avg.step = 5
    c.check(avg.step == 5, f"step {avg.step} after assigning 5")
    avg.step = 0

    # -- what average_parameters averages, in place, and what it returns. Every value is a
    # small integer or half of one, so every mean is exact.
    def value(r, step, k):
        return float(10 * r + step + k) + 0.5 * (r % 2)

    plain = torch.zeros(3, 2, dtype=torch.float64)
    with_grad = torch.nn.Parameter(torch.zeros(5, dtype=torch.float64))
    with_grad.grad = torch.zeros_like(with_grad)
    no_grad = torch.nn.Parameter(torch.zeros(4, dtype=torch.float64))
    objects = [plain, with_grad, no_grad]
    pointers = [t.data_ptr() for t in objects]
    for step in range(14):
        for k, t in enumerate(objects):
            with torch.no_grad():
                t.fill_(value(rank, step, k))
        # A list, a one-pass generator, and parameter groups mixed with a plain tensor.
        form = step % 3
        if form == 0:
            arg = [plain, with_grad, no_grad]
        elif form == 1:
            arg = (t for t in objects)
        else:
            arg = [{"params": [with_grad]}, {"params": [no_grad]}, plain]
        got = avg.average_parameters(arg)
        want = torch_rule(hierarchy, 2, step)
        c.check(got == want, f"step {step}: average_parameters returned {got}, expected {want}")
        c.check(avg.step == step + 1, f"step {step}: the step is {avg.step} after the call")
        members = group_ranks(rank, want) if want else [rank]
        for k, t in enumerate(objects):
            averaged = want is not None and t is not no_grad
            expect = (sum(value(m, step, k) for m in members) / len(members) if averaged
                      else value(rank, step, k))
            c.check(bool(torch.all(t.detach() == expect)),
                    f"step {step}: tensor {k} holds {t.detach().flatten()[0].item()}, "
                    f"expected {expect} ({'averaged' if averaged else 'untouched'})")
        c.check([t.data_ptr() for t in objects] == pointers,
                f"step {step}: the tensors' storage moved: not averaged in place")

    # float32 works as well as float64.
    single = torch.full((7,), float(rank), dtype=torch.float32)
    got = avg.average_parameters([single])
    want = torch_rule(hierarchy, 2, 14)
    members = group_ranks(rank, want)
    c.check(got == want and bool(torch.all(single == sum(members) / len(members))),
            f"float32: returned {got}, values {single.tolist()}")

    # -- TypeError for what cannot be averaged; the step stays and nothing is written.
    step_before = avg.step
    keep = torch.full((4,), float(rank), dtype=torch.float64)
    bad_inputs = [
        ("mixed float64 and float32", [keep, torch.zeros(3, dtype=torch.float32)]),
        ("a transposed (non-contiguous) tensor", [keep, torch.zeros(3, 4,
                                                                    dtype=torch.float64).t()]),
        ("a strided slice", [keep, torch.zeros(10, dtype=torch.float64)[::2]]),
        ("a tensor on the meta device", [keep, torch.zeros(3, dtype=torch.float64,
                                                           device="meta")]),
        ("an int64 tensor", [torch.zeros(3, dtype=torch.int64)]),
        ("a string", [keep, "weights"]),
    ]
    for what, arg in bad_inputs:
        c.raises(TypeError, "", f"average_parameters({what})", avg.average_parameters, arg)
    c.check(avg.step == step_before, f"rejected calls moved the step {step_before} -> {avg.step}")
    c.check(bool(torch.all(keep == float(rank))), "a rejected call wrote to a tensor")

    # -- state_dict: contents, torch.save round trip, loading into a new averager.
    sd = avg.state_dict()
    c.check(sd.get("step") == avg.step and sd.get("warmup_steps") == 2
            and sd.get("hierarchy") == "1:2,3:4" and sd.get("phase") == "absolute"
            and "outer" not in sd, f"state_dict() is {sd}")
    buffer = io.BytesIO()
    torch.save(sd, buffer)
    buffer.seek(0)
    loaded = torch.load(buffer)
    c.check(loaded == sd, f"state_dict changed through torch.save/torch.load: {loaded}")
    other = Averager(OrderedDict([(1, 2), (3, 4)]), warmup_steps=2)
    other.load_state_dict(loaded)
    c.check(other.step == avg.step, f"loaded step {other.step}, saved {avg.step}")
    c.check(other.schedule(12, start=other.step) == avg.schedule(12, start=avg.step),
            "the loaded averager's schedule differs from the saved one's")
    for _ in range(3):
        a_t = torch.full((2,), float(rank), dtype=torch.float64)
        b_t = a_t.clone()
        ga, gb = avg.average_parameters([a_t]), other.average_parameters([b_t])
        c.check(ga == gb and torch.equal(a_t, b_t),
                f"after the load: {ga} {a_t.tolist()} vs the original's {gb} {b_t.tolist()}")

    fresh = Averager(h4, warmup_steps=2)
    c.raises(ValueError, "", "load_state_dict of another hierarchy", fresh.load_state_dict, sd)
    fresh = Averager(OrderedDict([(1, 2), (3, 4)]), warmup_steps=0)
    c.raises(ValueError, "", "load_state_dict of another warm-up", fresh.load_state_dict, sd)
    c.check(fresh.step == 0, f"a refused load_state_dict set the step to {fresh.step}")

    # With an outer optimizer the anchors and momenta travel too: the original and the restored
    # averager continue on equal parameters to equal results.
    outer = {2: strata_torch.Nesterov(0.5, 0.8), 4: strata_torch.Nesterov(0.7, 0.9)}
    first = Averager(h4, warmup_steps=1, outer=outer)
    p = torch.linspace(-1.0, 1.0, 9, dtype=torch.float64) * (rank + 1)
    first.begin([p])
    for t in range(7):
        p -= 0.05 * torch.sin(torch.arange(9, dtype=torch.float64) * (rank + 1) * (t + 1))
        first.average_parameters([p])
    buffer = io.BytesIO()
    torch.save(first.state_dict(), buffer)
    buffer.seek(0)
    saved = torch.load(buffer)
    c.check("outer" in saved, f"an outer averager's state_dict has no outer state: {saved}")
    second = Averager(h4, warmup_steps=1, outer=outer)
    second.load_state_dict(saved)
    # A new averager that starts from the same parameters without the load: the comparison
    # below would see the difference.
    third = Averager(h4, warmup_steps=1, outer=outer)
    q, r = p.clone(), p.clone()
    third.begin([r])
    for t in range(7, 16):
        step_grad = 0.05 * torch.sin(torch.arange(9, dtype=torch.float64) * (rank + 1) * (t + 1))
        for x in (p, q, r):
            x -= step_grad
        g1, g2 = first.average_parameters([p]), second.average_parameters([q])
        third.average_parameters([r])
        c.check(g1 == g2, f"outer restore, step {t}: group {g1} vs {g2}")
    diff = (p - q).abs().max().item()
    c.check(diff <= 1e-15, f"outer restore: the restored averager ends {diff:.3g} away")
    unrestored = (p - r).abs().max().item()
    c.check(unrestored > 1e-6, f"without the load an averager ends only {unrestored:.3g} away: "
            f"the restore check shows nothing")

    # -- timeout: a timedelta is taken, anything else refused.
    timed = Averager(h4, timeout=timedelta(seconds=30))
    x = torch.full((3,), float(rank), dtype=torch.float64)
    c.check(timed.average_parameters([x]) == 4 and bool(torch.all(x == 1.5)),
            f"with a timeout: {x.tolist()}")
    c.raises(TypeError, "", "timeout=30 (not a timedelta)", Averager, h4, timeout=30)

    # -- an averager over a process group other than the world: pairs of consecutive ranks.
    pairs = [dist.new_group([0, 1]), dist.new_group([2, 3])]
    mine = pairs[rank // 2]
    sub = Averager(OrderedDict([(1, 1), (2, 2)]), process_group=mine)
    for step in range(4):
        y = torch.full((3,), float(rank * rank), dtype=torch.float64)
        got = sub.average_parameters([y])
        want = 2 if step % 2 == 0 else 1
        expect = (sum(m * m for m in group_ranks(rank, 2)) / 2) if want == 2 else rank * rank
        c.check(got == want and bool(torch.all(y == expect)),
                f"sub-group averager, step {step}: returned {got}, values {y.tolist()}, "
                f"expected {want}, {expect}")
    c.raises(ValueError, "world", "a hierarchy of 4 ranks over a group of 2", Averager,
             OrderedDict([(2, 2), (4, 4)]), process_group=mine)

    # -- the post-local SGD hook under DDP: gradients averaged over the world in warm-up, over
    # the node (2 consecutive ranks) after it.
    post_local_checks(c, rank, world)


def post_local_checks(c, rank, world):
    torch.manual_seed(0)
    module = torch.nn.Linear(3, 1, bias=False).double()
    ddp = torch.nn.parallel.DistributedDataParallel(module)
    avg = Averager(OrderedDict([(2, 2), (4, 4)]), warmup_steps=2)
    state = strata_torch.PostLocalSGDState(avg, ranks_per_node=2)
    ddp.register_comm_hook(state, strata_torch.post_local_sgd_hook)

    def local_grad(r, step):
        # d(sum(w . x))/dw = x: each rank's gradient is its input.
        return torch.tensor([r + 1.0, 2.0 * r + step, 0.5 * step], dtype=torch.float64)

    for step in range(5):
        ddp.zero_grad()
        ddp(local_grad(rank, step).unsqueeze(0)).sum().backward()
        members = list(range(world)) if step < 2 else group_ranks(rank, 2)
        want = sum(local_grad(m, step) for m in members) / len(members)
        got = module.weight.grad.flatten()
        c.check(torch.allclose(got, want, rtol=0, atol=1e-14),
                f"post-local SGD, step {step}: gradient {got.tolist()}, expected {want.tolist()} "
                f"(mean over ranks {members})")
        with torch.no_grad():
            module.weight -= 0.1 * module.weight.grad
        avg.average_parameters(module.parameters())


def edge_checks(c, rank, world):
    """The assignable step, the timeout's bounds, inference tensors refused before any
    communication, and a refused outer state that leaves the step as it was."""
    avg = strata_torch.HierarchicalModelAverager(OrderedDict([(2, 2), (4, world)]))
    avg.step = 6
    c.check(avg.step == 6 and avg.schedule(3, start=6) == [2, None, 4],
            f"assigned step: {avg.step}, schedule {avg.schedule(3, start=6)}")
    w = torch.full((3,), float(rank))
    c.check(avg.average_parameters([w]) == 2 and avg.step == 7, "the assigned step averages pairs")
    c.raises(ValueError, "non-negative", "a negative step", setattr, avg, "step", -1)
    c.raises(ValueError, "millisecond", "a zero timeout", strata_torch.HierarchicalModelAverager,
             OrderedDict([(1, world)]), timeout=timedelta(0))
    with torch.inference_mode():
        frozen = torch.ones(3)
    c.raises(TypeError, "inference", "an inference tensor", avg.average_parameters, [frozen])
    c.check(avg.step == 7 and frozen.tolist() == [1.0, 1.0, 1.0],
            "a refused inference tensor leaves the step and the tensor as they were")
    outer = strata_torch.HierarchicalModelAverager(OrderedDict([(2, world)]),
                                                   outer=strata_torch.Nesterov(0.5, 0.5))
    p = torch.zeros(3, dtype=torch.float64)
    outer.begin([p])
    sd = outer.state_dict()
    sd["step"] = 5
    sd["outer"]["elements"] = 4  # does not fit
    c.raises(ValueError, "does not fit", "a refused outer state", outer.load_state_dict, sd)
    c.check(outer.step == 0, f"a refused outer state left the step at {outer.step}")


def worker(rank, world):
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=world, timeout=timedelta(seconds=60))
    c = Checks(f"rank {rank}")
    rank_checks(c, rank, world)
    edge_checks(c, rank, world)
    # Every rank's verdict, so that all finish together and rank 0 can tell.
    bad = torch.tensor([float(len(c.failures))])
    dist.all_reduce(bad)
    if rank == 0:
        print(f"python_api: {c.count} checks per rank in a world of {world}, "
              f"{int(bad.item())} failed over all ranks")
    dist.destroy_process_group()
    return 0 if not c.failures else 1


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--world", type=int, default=4)
    ap.add_argument("--timeout", type=float, default=120.0)
    ap.add_argument("--worker", type=int)
    a = ap.parse_args()
    if a.worker is not None:
        return worker(a.worker, a.world)
    if a.world != 4:
        ap.error("the checks are written for a world of 4")
    start = time.monotonic()
    c = Checks("single process")
    single_process_checks(c)
    print(f"python_api: {c.count} single-process checks, {len(c.failures)} failed")
    codes = run_world(__file__, a.world, ["--world", str(a.world)], a.timeout)
    ok = not c.failures and all(x == 0 for x in codes)
    print(f"python_api: exit codes {codes}, {time.monotonic() - start:.1f} s: "
          f"{'PASS' if ok else 'FAIL'}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
