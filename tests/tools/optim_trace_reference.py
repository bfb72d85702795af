#!/usr/bin/python3
"""Independent serial reference for optim_trace: data-parallel training of a few tensors
with SGD, Adam or LAMB on the mean of every rank's gradient, modelled as one process.

usage: optim_trace_reference.py --world N --tensors S0,S1,... --steps T
                                --optimizer sgd|adam|lamb --lr LR
                                [--beta1 B1] [--beta2 B2] [--eps E] [--weight-decay WD]
                                [--clip-norm C] [--node-size G] [--schedule flat|hierarchical]
                                [--backend local|mpi] --out FILE
       optim_trace_reference.py --self-test

It takes the flags optim_trace got and writes the JSON optim_trace should produce:
{"params": [final parameters], "grad_norms": [norm of the mean gradient before clipping,
one per step]}. The schedule, node size and backend only decide the order in which the
ranks' gradients are added, so they are validated (the node size must divide the world)
and otherwise ignored.

The model, all in double precision:
  - The parameters are the tensors concatenated, p[i] = cos(0.01 * (i + 1)), the same on
    every rank.
  - At step t (from 0) rank r's gradient is
    g_r[i] = sin(0.001 * (i + 1) * (r + 1) * (t + 1)) + 0.01 * p[i]
    and the update uses their mean g: the sum over ranks in rank order, divided by N.
  - With --clip-norm C the mean gradient is scaled as torch.nn.utils.clip_grad_norm_ does
    over all tensors: g *= min(1, C / (||g|| + 1e-6)).
  - sgd:  p -= lr * (g + wd * p).
  - adam: torch.optim.Adam itself on float64 tensors (L2 weight decay, bias correction,
          no amsgrad), one torch parameter per tensor, .grad set to g.
  - lamb: per tensor, with t1 = t + 1:
          m = b1 m + (1 - b1) g;  v = b2 v + (1 - b2) g^2
          u = (m / (1 - b1^t1)) / (sqrt(v / (1 - b2^t1)) + eps) + wd * p
          p -= lr * (||p|| / ||u||) * u,  the ratio being 1 where either norm is 0.
SGD and LAMB are plain loops over Python floats. --self-test checks them against
vectorised numpy formulations and Adam against a hand-written Adam loop.

Exit status: 0 when the file was written (or the self-test passed), 1 when the self-test
failed, 2 on bad arguments.
"""
import argparse
import json
import math
import sys

import numpy as np

CLIP_EPSILON = 1e-6  # the constant torch.nn.utils.clip_grad_norm_ adds to the norm
SELF_TEST_TOLERANCE = 1e-13


# --- arguments -------------------------------------------------------------------------------

def tensor_sizes(text):
    try:
        sizes = [int(s) for s in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError("--tensors must be a comma-separated list of sizes")
    if not sizes or any(s <= 0 for s in sizes):
        raise argparse.ArgumentTypeError("--tensors sizes must be positive")
    return sizes


def make_parser():
    ap = argparse.ArgumentParser(description="Serial reference for optim_trace.")
    ap.add_argument("--world", type=int)
    ap.add_argument("--tensors", type=tensor_sizes)
    ap.add_argument("--steps", type=int)
    ap.add_argument("--optimizer", choices=("sgd", "adam", "lamb"))
    ap.add_argument("--lr", type=float)
    ap.add_argument("--beta1", type=float, default=0.9)
    ap.add_argument("--beta2", type=float, default=0.999)
    ap.add_argument("--eps", type=float, default=1e-8)
    ap.add_argument("--weight-decay", type=float, default=0.0)
    ap.add_argument("--clip-norm", type=float)
    # Placement only: they change the rounding of the mean gradient, not its value.
    ap.add_argument("--node-size", type=int)
    ap.add_argument("--schedule", choices=("flat", "hierarchical"))
    ap.add_argument("--backend", choices=("local", "mpi"))
    ap.add_argument("--out")
    ap.add_argument("--self-test", action="store_true")
    return ap


def parse_args(argv):
    """Parses and validates optim_trace's flags; exits with status 2 on bad input."""
    ap = make_parser()
    a = ap.parse_args(argv)
    if a.self_test:
        return a
    for flag in ("world", "tensors", "steps", "optimizer", "lr", "out"):
        if getattr(a, flag) is None:
            ap.error("--%s is required" % flag.replace("_", "-"))
    if a.world < 1:
        ap.error("--world must be at least 1")
    if a.steps < 0:
        ap.error("--steps must not be negative")
    if a.node_size is not None and (a.node_size < 1 or a.world % a.node_size != 0):
        ap.error("--node-size must be positive and divide --world")
    if not all(math.isfinite(x) for x in (a.lr, a.beta1, a.beta2, a.eps, a.weight_decay)):
        ap.error("--lr, --beta1, --beta2, --eps and --weight-decay must be finite")
    if not (0.0 <= a.beta1 < 1.0 and 0.0 <= a.beta2 < 1.0):
        ap.error("--beta1 and --beta2 must lie in [0, 1)")
    if a.eps < 0.0 or a.weight_decay < 0.0:
        ap.error("--eps and --weight-decay must not be negative")
    if a.clip_norm is not None and not (a.clip_norm > 0.0 and math.isfinite(a.clip_norm)):
        ap.error("--clip-norm must be positive and finite")
    return a


# --- the workload ----------------------------------------------------------------------------

def initial_parameters(count):
    return np.array([math.cos(0.01 * (i + 1)) for i in range(count)], dtype=np.float64)


def mean_gradient(p, world, step):
    """The mean over ranks of every rank's gradient at parameters p, summed in rank order."""
    index = np.arange(1, p.size + 1, dtype=np.float64)
    total = np.zeros(p.size, dtype=np.float64)
    for r in range(world):
        total += np.sin(0.001 * index * (r + 1) * (step + 1)) + 0.01 * p
    return total / world


def l2_norm(values):
    return math.sqrt(sum(x * x for x in values))


def clip_factor(norm, clip_norm):
    if clip_norm is None:
        return 1.0
    return min(1.0, clip_norm / (norm + CLIP_EPSILON))


def tensor_ranges(sizes):
    begin = 0
    for size in sizes:
        yield range(begin, begin + size)
        begin += size


class SerialSgd:
    def __init__(self, opts):
        self.lr = opts.lr
        self.wd = opts.weight_decay

    def step(self, p, g, step):
        p, g = p.tolist(), g.tolist()
        for i in range(len(p)):
            p[i] -= self.lr * (g[i] + self.wd * p[i])
        return np.array(p, dtype=np.float64)


class SerialLamb:
    def __init__(self, opts):
        self.opts = opts
        count = sum(opts.tensors)
        self.m = [0.0] * count
        self.v = [0.0] * count

    def step(self, p, g, step):
        o = self.opts
        b1, b2 = o.beta1, o.beta2
        t1 = step + 1
        correction1 = 1.0 - b1 ** t1
        correction2 = 1.0 - b2 ** t1
        p, g = p.tolist(), g.tolist()
        m, v = self.m, self.v
        for indices in tensor_ranges(o.tensors):
            u = []
            for i in indices:
                m[i] = b1 * m[i] + (1.0 - b1) * g[i]
                v[i] = b2 * v[i] + (1.0 - b2) * g[i] * g[i]
                m_hat = m[i] / correction1
                v_hat = v[i] / correction2
                u.append(m_hat / (math.sqrt(v_hat) + o.eps) + o.weight_decay * p[i])
            p_norm = l2_norm(p[i] for i in indices)
            u_norm = l2_norm(u)
            ratio = p_norm / u_norm if p_norm > 0.0 and u_norm > 0.0 else 1.0
            for k, i in enumerate(indices):
                p[i] -= o.lr * ratio * u[k]
        return np.array(p, dtype=np.float64)


class TorchAdam:
    """torch.optim.Adam on float64 tensors, one torch parameter per tensor."""

    def __init__(self, opts, p):
        import torch
        torch.set_num_threads(1)
        self.torch = torch
        self.ranges = list(tensor_ranges(opts.tensors))
        self.params = [torch.tensor(p[r.start:r.stop], dtype=torch.float64, requires_grad=True)
                       for r in self.ranges]
        self.optimizer = torch.optim.Adam(self.params, lr=opts.lr, betas=(opts.beta1, opts.beta2),
                                          eps=opts.eps, weight_decay=opts.weight_decay,
                                          amsgrad=False)

    def step(self, p, g, step):
        for param, r in zip(self.params, self.ranges):
            param.grad = self.torch.tensor(g[r.start:r.stop], dtype=self.torch.float64)
        self.optimizer.step()
        return np.concatenate([param.detach().numpy().copy() for param in self.params])


def make_optimizer(opts, p):
    if opts.optimizer == "sgd":
        return SerialSgd(opts)
    if opts.optimizer == "adam":
        return TorchAdam(opts, p)
    return SerialLamb(opts)


def compute(opts):
    """Returns {"params": [...], "grad_norms": [...]} for the parsed flags."""
    p = initial_parameters(sum(opts.tensors))
    optimizer = make_optimizer(opts, p)
    grad_norms = []
    for step in range(opts.steps):
        g = mean_gradient(p, opts.world, step)
        norm = l2_norm(g.tolist())
        grad_norms.append(norm)
        g = g * clip_factor(norm, opts.clip_norm)
        p = optimizer.step(p, g, step)
    return {"params": p.tolist(), "grad_norms": grad_norms}


# --- self-test -------------------------------------------------------------------------------

def vectorised_run(opts):
    """The same workload as whole-array numpy expressions, for SGD and LAMB."""
    sizes = opts.tensors
    n = sum(sizes)
    p = np.cos(0.01 * np.arange(1, n + 1, dtype=np.float64))
    m = np.zeros(n)
    v = np.zeros(n)
    bounds = np.cumsum([0] + sizes)
    ranks = np.arange(1, opts.world + 1, dtype=np.float64)[:, None]
    norms = []
    for step in range(opts.steps):
        grads = np.sin(0.001 * np.arange(1, n + 1)[None, :] * ranks * (step + 1)) + 0.01 * p
        g = grads.mean(axis=0)
        norm = float(np.linalg.norm(g))
        norms.append(norm)
        if opts.clip_norm is not None:
            g = g * np.minimum(1.0, opts.clip_norm / (norm + CLIP_EPSILON))
        if opts.optimizer == "sgd":
            p = p - opts.lr * (g + opts.weight_decay * p)
            continue
        m = opts.beta1 * m + (1 - opts.beta1) * g
        v = opts.beta2 * v + (1 - opts.beta2) * np.square(g)
        u = (m / (1 - opts.beta1 ** (step + 1))) / (
            np.sqrt(v / (1 - opts.beta2 ** (step + 1))) + opts.eps) + opts.weight_decay * p
        for lo, hi in zip(bounds[:-1], bounds[1:]):
            pn, un = np.linalg.norm(p[lo:hi]), np.linalg.norm(u[lo:hi])
            ratio = pn / un if pn > 0 and un > 0 else 1.0
            p[lo:hi] = p[lo:hi] - opts.lr * ratio * u[lo:hi]
    return {"params": p.tolist(), "grad_norms": norms}


def hand_written_adam_run(opts):
    """Adam as the textbook loop over Python floats, gradients from math.sin."""
    n = sum(opts.tensors)
    p = [math.cos(0.01 * (i + 1)) for i in range(n)]
    m = [0.0] * n
    v = [0.0] * n
    b1, b2 = opts.beta1, opts.beta2
    norms = []
    for step in range(opts.steps):
        g = [0.0] * n
        for i in range(n):
            for r in range(opts.world):
                g[i] += math.sin(0.001 * (i + 1) * (r + 1) * (step + 1)) + 0.01 * p[i]
            g[i] /= opts.world
        norm = l2_norm(g)
        norms.append(norm)
        scale = clip_factor(norm, opts.clip_norm)
        for i in range(n):
            gi = g[i] * scale + opts.weight_decay * p[i]
            m[i] = b1 * m[i] + (1 - b1) * gi
            v[i] = b2 * v[i] + (1 - b2) * gi * gi
            m_hat = m[i] / (1 - b1 ** (step + 1))
            v_hat = v[i] / (1 - b2 ** (step + 1))
            p[i] -= opts.lr * m_hat / (math.sqrt(v_hat) + opts.eps)
    return {"params": p, "grad_norms": norms}


def relative_difference(a, b):
    a, b = np.asarray(a), np.asarray(b)
    if a.shape != b.shape:
        return math.inf
    return float(np.max(np.abs(a - b)) / max(float(np.max(np.abs(b))), 1e-300))


def self_test():
    failures = 0
    base = ["--world", "3", "--tensors", "5,3,7", "--steps", "5", "--out", "unused"]
    unclipped = {}
    for optimizer, lr in (("sgd", "0.1"), ("lamb", "0.05"), ("adam", "0.05")):
        unclipped[optimizer] = compute(parse_args(base + ["--optimizer", optimizer, "--lr", lr]))
    for optimizer, lr in (("sgd", "0.1"), ("lamb", "0.05"), ("adam", "0.05")):
        norms = sorted(unclipped[optimizer]["grad_norms"])
        clip = "%.6g" % norms[len(norms) // 2]  # clips on some steps only
        variants = [[], ["--weight-decay", "0.1"], ["--clip-norm", clip],
                    ["--weight-decay", "0.1", "--clip-norm", clip, "--beta1", "0.8",
                     "--beta2", "0.99", "--eps", "1e-6"]]
        for extra in variants:
            opts = parse_args(base + ["--optimizer", optimizer, "--lr", lr] + extra)
            got = compute(opts)
            alternative = hand_written_adam_run(opts) if optimizer == "adam" else vectorised_run(opts)
            moved = relative_difference(got["params"], initial_parameters(15).tolist())
            for key in ("params", "grad_norms"):
                err = relative_difference(got[key], alternative[key])
                ok = err <= SELF_TEST_TOLERANCE and moved > 1e-6
                failures += not ok
                print("%s %-4s %-10s %s rel err %.3g" % ("ok  " if ok else "FAIL", optimizer, key,
                                                        " ".join(extra) or "(defaults)", err))

    # Where a tensor's parameters (the first) or its update (the second) are all zero,
    # the trust ratio is 1.
    opts = parse_args(["--world", "1", "--tensors", "2,2", "--steps", "1", "--optimizer", "lamb",
                       "--lr", "0.5", "--out", "unused"])
    p = SerialLamb(opts).step(np.array([0.0, 0.0, 3.0, 4.0]), np.array([2.0, -1.0, 0.0, 0.0]), 0)
    expected = [-0.5 * 2.0 / (2.0 + opts.eps), 0.5 * 1.0 / (1.0 + opts.eps), 3.0, 4.0]
    err = relative_difference(p.tolist(), expected)
    ok = err <= SELF_TEST_TOLERANCE
    failures += not ok
    print("%s lamb zero-norm tensors rel err %.3g" % ("ok  " if ok else "FAIL", err))
    print("self-test %s" % ("passed" if failures == 0 else "FAILED (%d checks)" % failures))
    return 0 if failures == 0 else 1


def main(argv):
    opts = parse_args(argv)
    if opts.self_test:
        return self_test()
    result = compute(opts)
    with open(opts.out, "w") as f:
        json.dump(result, f, allow_nan=False)
        f.write("\n")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
