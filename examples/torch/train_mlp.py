#!/usr/bin/env python3
"""Train a small MLP three ways over gloo with strata_torch, and compare them.

Each rank trains on its own shard of a synthetic classification task (the shards differ: each
rank sees mostly two classes of its own), and the ranks meet:

- synchronous DDP: a gradient all-reduce over all ranks at every step;
- hierarchical SGD: synchronous DDP for the warm-up steps (strata_torch's post-local SGD hook),
  then strata_torch.HierarchicalModelAverager averages the models in pairs every 2 steps and over
  the whole world every 8;
- DiLoCo: local SGD steps, and every 8 steps the world averages the distance from the last
  meeting and takes an outer Nesterov step with it (lr 0.7, momentum 0.9).

Every method starts from the same model and draws the same batches. The table gives the mean over
ranks of each rank's loss on a common held-out set, the wall time of the training loop (the
slowest rank), the collectives run and the megabytes each rank sent.

Run it plainly (it starts --world processes itself) or under torchrun, which sets the rank, the
world size and the rendezvous address (--world is then ignored):

    /usr/bin/python3 examples/torch/train_mlp.py
    /usr/bin/python3 -m torch.distributed.run --nproc_per_node 4 --redirects 1 --tee 1 \
        examples/torch/train_mlp.py

(PyTorch 1.13's torchrun fails at start on Python 3.11 without --redirects and --tee.)
"""

import argparse
import os
import socket
import sys
import time
from collections import OrderedDict
from pathlib import Path

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn as nn
import torch.nn.functional as F
from torch.distributed.algorithms.ddp_comm_hooks import default_hooks
from torch.nn.parallel import DistributedDataParallel as DDP

try:
    import strata_torch
except ImportError:
    # In the source tree the package is built into build/python.
    sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "build" / "python"))
    try:
        import strata_torch
    except ImportError:
        sys.exit("train_mlp.py: strata_torch is not importable; build it with "
                 "`cmake --build build --target strata_torch_python` or install it with "
                 "`/usr/bin/python3 -m pip install --no-build-isolation ./python`")

INPUTS, HIDDEN, CLASSES = 32, 64, 8
# Pairs of consecutive ranks stand for the nodes of a cluster in the hierarchy.
NODE = 2
DILOCO_PERIOD = 8


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--world", type=int, default=4,
                   help="processes to start when not run under torchrun (default 4)")
    p.add_argument("--steps", type=int, default=300, help="optimizer steps (default 300)")
    p.add_argument("--seed", type=int, default=1, help="seed of the data and the model")
    p.add_argument("--batch", type=int, default=32, help="minibatch per rank (default 32)")
    p.add_argument("--lr", type=float, default=0.2, help="SGD learning rate (default 0.2)")
    p.add_argument("--warmup", type=int, default=30,
                   help="synchronous steps before hierarchical SGD averages models (default 30)")
    args = p.parse_args(argv)
    if args.world < 1 or args.steps < 1 or args.batch < 1 or args.warmup < 0:
        p.error("--world, --steps and --batch must be at least 1, --warmup at least 0")
    return args


def hierarchy(world):
    """Pairs every 2 steps and the world every 8, where the world is made of pairs."""
    if world % NODE == 0 and world > NODE:
        return OrderedDict([(2, NODE), (8, world)])
    return OrderedDict([(8, world)])


# --- data ------------------------------------------------------------------------------------

class Task:
    """Gaussian clusters, one per class. Rank r draws 70 % of its samples from classes 2r and
    2r + 1 (mod the class count) and the rest from all classes; the held-out set is balanced and
    the same on every rank."""

    def __init__(self, seed, rank, world):
        g = torch.Generator().manual_seed(seed)
        self.means = torch.randn(CLASSES, INPUTS, generator=g) * 0.6
        self.rank, self.world, self.seed = rank, world, seed
        held_out = torch.Generator().manual_seed(seed + 1_000_003)
        y = torch.arange(4096) % CLASSES
        self.test = (self.sample(y, held_out), y)

    def sample(self, y, g):
        return self.means[y] + torch.randn(len(y), INPUTS, generator=g)

    def stream(self, batch):
        """The rank's batches; the same sequence for every method."""
        g = torch.Generator().manual_seed(self.seed * 7919 + 17 + self.rank)
        own = torch.tensor([(2 * self.rank) % CLASSES, (2 * self.rank + 1) % CLASSES])
        while True:
            mine = torch.rand(batch, generator=g) < 0.7
            y = torch.where(mine, own[torch.randint(2, (batch,), generator=g)],
                            torch.randint(CLASSES, (batch,), generator=g))
            yield self.sample(y, g), y


def make_model(seed):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(INPUTS, HIDDEN), nn.Tanh(), nn.Linear(HIDDEN, HIDDEN), nn.Tanh(),
                         nn.Linear(HIDDEN, CLASSES))


# --- what each rank sends --------------------------------------------------------------------
# Bytes are counted as a ring all-reduce sends them: a rank of a group of g sends
# 2 (g - 1) / g times the buffer. A DDP gradient bucket counts its buffer's bytes; a model
# average, or DiLoCo's average of the pseudo-gradient, counts the parameters' bytes. The
# construction of DDP and of the averagers (their groups, DDP's broadcast of the initial model),
# the small comparison of the members' calls that strata runs before each collective, and the
# evaluation are not counted.

def ring_bytes(nbytes, group):
    return 2 * (group - 1) * nbytes / group


class Counter:
    def __init__(self):
        self.collectives = 0
        self.bytes = 0.0

    def add(self, nbytes, group):
        self.collectives += 1
        self.bytes += ring_bytes(nbytes, group)


def counting_allreduce_hook(state, bucket):
    """DDP's own gradient all-reduce, counted."""
    counter, world = state
    b = bucket.buffer()
    counter.add(b.numel() * b.element_size(), world)
    return default_hooks.allreduce_hook(None, bucket)


class CountingPostLocalSGD:
    """strata_torch's post-local SGD hook, counted: over the world during the averager's
    warm-up, inside each node afterwards."""

    def __init__(self, state, counter, world):
        self.state, self.counter, self.world = state, counter, world

    def hook(self, bucket):
        b = bucket.buffer()
        averager = self.state.averager
        group = self.world if averager.step < averager.warmup_steps else self.state.ranks_per_node
        if group > 1:
            self.counter.add(b.numel() * b.element_size(), group)
        return strata_torch.post_local_sgd_hook(self.state, bucket)


def counting_hook(holder, bucket):
    return holder.hook(bucket)


# --- the three methods -----------------------------------------------------------------------

def param_bytes(model):
    return sum(p.numel() * p.element_size() for p in model.parameters())


def train(method, args, task, rank, world):
    model = make_model(args.seed)
    counter = Counter()
    nbytes = param_bytes(model)
    if method == "sync":
        net = DDP(model)
        net.register_comm_hook((counter, world), counting_allreduce_hook)
        step_end = None
    elif method == "hier":
        net = DDP(model)
        averager = strata_torch.HierarchicalModelAverager(hierarchy(world),
                                                          warmup_steps=args.warmup)
        state = strata_torch.PostLocalSGDState(averager, ranks_per_node=1)
        net.register_comm_hook(CountingPostLocalSGD(state, counter, world), counting_hook)

        def step_end():
            group = averager.average_parameters(net.parameters())
            if group is not None:
                counter.add(nbytes, group)
    else:
        net = model
        averager = strata_torch.HierarchicalModelAverager(
            OrderedDict([(DILOCO_PERIOD, world)]), outer=strata_torch.Nesterov(0.7, 0.9))
        # The anchors are the initial parameters. Before the first backward pass no parameter
        # has a gradient, and the averager (as PyTorch's) skips parameters without one, so the
        # tensors themselves are passed here.
        averager.begin([p.data for p in net.parameters()])

        def step_end():
            group = averager.average_parameters(net.parameters())
            if group is not None:
                counter.add(nbytes, group)

    optimizer = torch.optim.SGD(net.parameters(), lr=args.lr)
    batches = task.stream(args.batch)
    dist.barrier()
    start = time.perf_counter()
    for _ in range(args.steps):
        x, y = next(batches)
        loss = F.cross_entropy(net(x), y)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        if step_end is not None:
            step_end()
    wall = time.perf_counter() - start

    with torch.no_grad():
        x, y = task.test
        out = model(x)
        result = torch.tensor([F.cross_entropy(out, y).item(),
                               (out.argmax(1) == y).double().mean().item()], dtype=torch.float64)
    dist.all_reduce(result)
    slowest = torch.tensor([wall], dtype=torch.float64)
    dist.all_reduce(slowest, op=dist.ReduceOp.MAX)
    return {"loss": result[0].item() / world, "acc": result[1].item() / world,
            "wall": slowest.item(), "collectives": counter.collectives,
            "mb": counter.bytes / 1e6}


def run(rank, world, args):
    torch.set_num_threads(1)  # several processes share the cores
    dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        task = Task(args.seed, rank, world)
        results = [(m, train(m, args, task, rank, world)) for m in ("sync", "hier", "diloco")]
        if rank == 0:
            report(args, world, results)
    finally:
        dist.destroy_process_group()


def report(args, world, results):
    model = make_model(args.seed)
    n = sum(p.numel() for p in model.parameters())
    h = ", ".join(f"{p}: {g}" for p, g in hierarchy(world).items())
    print(f"{world} ranks (gloo, one process each), MLP {INPUTS}-{HIDDEN}-{HIDDEN}-{CLASSES} "
          f"({n} parameters), {args.steps} steps of batch {args.batch} per rank, lr {args.lr}")
    print(f"hierarchical SGD: {{{h}}} after {args.warmup} synchronous warm-up steps "
          "(post-local SGD hook)")
    print(f"DiLoCo: the world every {DILOCO_PERIOD} steps, outer Nesterov lr 0.7, momentum 0.9")
    print()
    names = {"sync": "synchronous DDP", "hier": f"hierarchical SGD ({{{h}}})",
             "diloco": f"DiLoCo (period {DILOCO_PERIOD})"}
    print(f"{'method':<34}{'test loss':>10}{'test acc':>10}{'wall (s)':>10}"
          f"{'collectives':>13}{'MB sent':>10}")
    for method, r in results:
        print(f"{names[method]:<34}{r['loss']:>10.4f}{100 * r['acc']:>9.1f}%{r['wall']:>10.2f}"
              f"{r['collectives']:>13}{r['mb']:>10.3f}")
    sys.stdout.flush()


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def main():
    args = parse_args()
    if "RANK" in os.environ and "WORLD_SIZE" in os.environ:
        # Started by torchrun: it set the rank, the world and the rendezvous address.
        run(int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"]), args)
        return
    os.environ.setdefault("MASTER_ADDR", "127.0.0.1")
    os.environ.setdefault("MASTER_PORT", str(free_port()))
    mp.spawn(run, args=(args.world, args), nprocs=args.world, join=True)


if __name__ == "__main__":
    main()
