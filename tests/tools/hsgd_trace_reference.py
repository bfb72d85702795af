#!/usr/bin/env python3
"""Independent serial reference for hsgd_trace: the same workload as a plain loop over ranks.

usage: hsgd_trace_reference.py TRACE.json --world N --hierarchy P:G,... --warmup W --steps S
                               --dim D --seed K --lr LR
                               [--outer [LEVEL=]nesterov:LR:MU]... [--wire [LEVEL=]FORMAT]...
                               [--fragments F [--delay TAU] [--mix ALPHA]]
                               [--perturb FACTOR] [--min-ratio R]
Exits 0 when every value of TRACE.json is within 1e-12 (relative) of the reference, or, where a
level sends its averages in a compressed wire format, within that format's error bound of the
exact (uncompressed) result, derived below.

--perturb FACTOR moves the trace's value with the loosest bound by FACTOR times its bound before
the check, to show that the check can fail. --min-ratio R also fails a compressed run whose
largest error is below R times its bound (a bound so loose that it checks nothing).

The workload (every rank in float64): p = cos(0.01 (i+1) (K+1)); per step t the gradient
g = sin(0.001 (i+1) (rank+1) (t+1)), p -= lr g, then the averaging of step t:
- plain (no --outer, --wire or --fragments): at steps t >= W, the level whose period divides t
  (the highest such) replaces p by its group's mean;
- with levels that keep an anchor a (an outer optimizer or a compressed wire): in warm-up
  (t < W) g is first replaced by its mean over the world and every anchor follows p; after it,
  at level l's steps, d = mean_group(a_l - p), then with Nesterov (lr, mu) m = mu m + d and
  p = a_l - lr (d + mu m), else p = a_l - d; a level without an anchor takes the mean of p; then
  the anchors of levels 0..l become p;
- streaming (--fragments, hierarchy P:N): fragment f (elements [begin(f), begin(f+1)), the
  first D mod F fragments one larger) starts at the steps t >= W with t % P == f (P/F):
  d = mean_world(a - p) over the fragment, X = a - lr (d + mu m) (m = mu m + d) or X = a - d,
  applied TAU steps later after that step's update (never if past the last step):
  p = (1 - ALPHA) p + ALPHA X (p = X when ALPHA is 1), a = X. Warm-up as above.
"""
import argparse
import json
import math
import sys

# Relative rounding error of one encoding, as the library documents it (a value's own magnitude
# for bf16 and fp16, its 256-value block's largest magnitude for int8), plus 2^-20 for the
# conversion to float on the way in and the float arithmetic of the int8 scale.
WIRE_UNIT = {"native": 0.0, "bf16": 2.0**-8, "fp16": 2.0**-11, "int8": 0.5 / 127}
FLOAT_SLACK = 2.0**-20
# fp16's subnormals below 2^-14 are spaced 2^-24 apart: half of that, absolute, per rounding.
FP16_ABSOLUTE = 2.0**-25
INT8_BLOCK = 256


def fragment_begin(d, fragments, f):
    base, extra = divmod(d, fragments)
    return f * base + min(f, extra)


def level_setting(text, levels, seen, flag):
    """'[LEVEL=]VALUE' -> (level, value); the top level when LEVEL is absent."""
    level, value = levels - 1, text
    if "=" in text:
        head, value = text.split("=", 1)
        level = int(head)
    if not 0 <= level < levels or level in seen:
        sys.exit(f"{flag} {text}: level out of range or given twice")
    seen.add(level)
    return level, value


def parse_outer(text):
    kind, lr, mu = text.split(":")
    if kind != "nesterov":
        sys.exit(f"unknown outer optimizer {text}")
    return float(lr), float(mu)


def wire_error(wire, sent, mean_bound):
    """A bound on |compressed mean - mean| per element of one averaged vector.

    sent[m][i] bounds |value member m sends| and mean_bound[i] bounds |their exact mean|. The
    library rounds each member's value on the way to the owner of its chunk and the owner's mean
    on the way back: with s the scale of a rounding (|x|, or its block's largest |x| for int8),
    |error| <= u_m s_m averaged over the members, plus u s of the mean (whose magnitude is at
    most mean_bound + the first error). Chunks hold whole 256-value blocks, so int8 blocks are
    the vector's own blocks of 256 from its first element."""
    u = WIRE_UNIT[wire]
    if u == 0.0:
        return [0.0] * len(mean_bound)
    u += FLOAT_SLACK
    n, g = len(mean_bound), len(sent)

    def scales(values):
        if wire != "int8":
            return values
        out = []
        for b in range(0, n, INT8_BLOCK):
            top = max(values[b:b + INT8_BLOCK])
            out.extend([top] * len(values[b:b + INT8_BLOCK]))
        return out

    absolute = FP16_ABSOLUTE if wire == "fp16" else 0.0
    member_scales = [scales(s) for s in sent]
    first = [u * sum(member_scales[m][i] for m in range(g)) / g + absolute for i in range(n)]
    out_scales = scales([mean_bound[i] + first[i] for i in range(n)])
    return [first[i] + u * out_scales[i] + absolute for i in range(n)]


# The error bound. The compressed run and the exact reference differ only by the rounding of the
# compressed averages: the gradients do not depend on the parameters, so the workload is affine in
# its state and a rounding error e injected at one averaging moves every later value linearly.
# Per rank and element, bounds are kept on the error of p (Ep), of each level's anchor relative to
# p (D = bound on |err(a) - err(p)|) and of each level's momentum (M). Local steps add no error.
# At an averaging of level l (group G, the injected error of the compressed mean I, the wire
# bound above):
#   err(d) = mean_G(err(a) - err(p)) + inj           -> Ed = mean_G D_l + I
#   err(m) = mu err(m) + err(d)                       -> M  = mu max_G M + Ed
#   err(p') - err(a) = -lr (err(d) + mu err(m))       -> J  = lr (Ed + mu M)   (no outer: J = Ed)
#   err(a) = err(p_r) + (err(a) - err(p_r))           -> Ep' = min_G (Ep + D_l) + J
# The anchors of higher levels k keep their error, p moved: D_k' = min_G (D_k + D_l) + J; those of
# levels <= l become p: D = 0. A plain level's mean averages the errors: Ep' = mean_G Ep,
# D_k' = mean_G D_k. On a single level D stays 0, and summing J over the averagings s with
# M_s = sum_j<=s mu^(s-j) I_j gives |err(p)| <= lr / (1 - mu) * sum_s I_s. As I_s <= u (mean
# |a - p| + |d|) <= 2 u max_G |a - p| (two roundings), each averaging adds at most
# C u max_G |a - p| with C = 2 lr / (1 - mu) (<= 2 lr (1 + mu) / (1 - mu)), or C = 2 without an
# outer optimizer. Streaming with mix alpha: p' = (1 - alpha) p + alpha X, a' = X gives
# Ep' = (1 - alpha) Ep + alpha (min (Ep + D) + J) and D' = (1 - alpha)(D + J).
# The bound adds worst cases, where the roundings' signs mostly cancel: expect errors a tenth to
# a third of it. The float64 arithmetic itself adds 1e-12 relative on top, as the native check
# allows.


def run_reference(a):
    levels = [tuple(int(x) for x in item.split(":")) for item in a.hierarchy.split(",")]
    nlev = len(levels)
    outer, wire = [None] * nlev, ["native"] * nlev
    seen = set()
    for text in a.outer:
        level, value = level_setting(text, nlev, seen, "--outer")
        outer[level] = parse_outer(value)
    seen = set()
    for text in a.wire:
        level, value = level_setting(text, nlev, seen, "--wire")
        wire[level] = value
    keeps = [outer[l] is not None or wire[l] != "native" for l in range(nlev)]
    streaming = a.fragments is not None
    anchored = streaming or any(keeps)
    if streaming and nlev != 1:
        sys.exit("--fragments needs a one-level hierarchy")

    n, dim = a.world, a.dim
    p = [[math.cos(0.01 * (i + 1) * (a.seed + 1)) for i in range(dim)] for _ in range(n)]

    def zeros():
        return [[0.0] * dim for _ in range(n)]

    # Per level (streaming: level 0 holds the fragments' anchors and momenta).
    anchor = [[row[:] for row in p] if (keeps[l] or streaming) else None for l in range(nlev)]
    momentum = [zeros() for _ in range(nlev)]
    ep, dl, ml = zeros(), [zeros() for _ in range(nlev)], [zeros() for _ in range(nlev)]
    pending = []  # streaming: (due, fragment, d, Ed)

    def outer_x(l, r, i, d):
        """The new value from the anchor and the mean d; updates the momentum."""
        if outer[l] is None:
            return anchor[l][r][i] - d
        lr, mu = outer[l]
        momentum[l][r][i] = mu * momentum[l][r][i] + d
        return anchor[l][r][i] - lr * (d + mu * momentum[l][r][i])

    def error_step(l, i, members, ed):
        """J and the new momentum bound of an averaging of level l, element i."""
        if outer[l] is None:
            return ed
        lr, mu = outer[l]
        mnew = mu * max(ml[l][r][i] for r in members) + ed
        for r in members:
            ml[l][r][i] = mnew
        return lr * (ed + mu * mnew)

    def anchored_average(l, members, lo, hi):
        """Level l's anchored averaging of elements [lo, hi) over `members`: (d, Ed) per element."""
        g = len(members)
        delta = [[anchor[l][r][i] - p[r][i] for i in range(lo, hi)] for r in members]
        d = [sum(delta[k][j] for k in range(g)) / g for j in range(hi - lo)]
        mean_d = [sum(dl[l][r][i] for r in members) / g for i in range(lo, hi)]
        sent = [[abs(delta[k][j]) + dl[l][r][lo + j] for j in range(hi - lo)]
                for k, r in enumerate(members)]
        inj = wire_error(wire[l], sent, [abs(d[j]) + mean_d[j] for j in range(hi - lo)])
        return d, [mean_d[j] + inj[j] for j in range(hi - lo)]

    for t in range(a.steps):
        grads = [[math.sin(0.001 * (i + 1) * (r + 1) * (t + 1)) for i in range(dim)]
                 for r in range(n)]
        if anchored and t < a.warmup:
            mean_g = [sum(grads[r][i] for r in range(n)) / n for i in range(dim)]
            grads = [mean_g] * n
        for r in range(n):
            for i in range(dim):
                p[r][i] = p[r][i] - a.lr * grads[r][i]
        if t < a.warmup:
            if anchored:
                for l in range(nlev):
                    if anchor[l] is not None:
                        anchor[l] = [row[:] for row in p]
            continue

        if streaming:
            period = levels[0][0]
            stride = period // a.fragments
            members = range(n)
            if (t % period) % stride == 0:
                f = (t % period) // stride
                lo = fragment_begin(dim, a.fragments, f)
                hi = fragment_begin(dim, a.fragments, f + 1)
                d, ed = anchored_average(0, members, lo, hi)
                pending.append((t + a.delay, f, d, ed))
            for entry in [e for e in pending if e[0] == t]:
                pending.remove(entry)
                _, f, d, ed = entry
                lo = fragment_begin(dim, a.fragments, f)
                for j in range(len(d)):
                    i = lo + j
                    big_j = error_step(0, i, members, ed[j])
                    ea = min(ep[r][i] + dl[0][r][i] for r in members)
                    for r in members:
                        x = outer_x(0, r, i, d[j])
                        if a.mix == 1.0:
                            p[r][i] = x
                        else:
                            p[r][i] = (1 - a.mix) * p[r][i] + a.mix * x
                        anchor[0][r][i] = x
                        ep[r][i] = (1 - a.mix) * ep[r][i] + a.mix * (ea + big_j)
                        dl[0][r][i] = (1 - a.mix) * (dl[0][r][i] + big_j)
            continue

        level = None
        for k, (period, _) in enumerate(levels):
            if t % period == 0:
                level = k  # the highest level whose period divides t
        if level is None:
            continue
        g = levels[level][1]
        for first in range(0, n, g):
            members = range(first, first + g)
            if keeps[level]:
                d, ed = anchored_average(level, members, 0, dim)
                for i in range(dim):
                    big_j = error_step(level, i, members, ed[i])
                    ea = min(ep[r][i] + dl[level][r][i] for r in members)
                    for k in range(level + 1, nlev):
                        if anchor[k] is not None:
                            dk = min(dl[k][r][i] + dl[level][r][i] for r in members) + big_j
                            for r in members:
                                dl[k][r][i] = dk
                    for r in members:
                        p[r][i] = outer_x(level, r, i, d[i])
                        ep[r][i] = ea + big_j
            else:
                for i in range(dim):
                    mean = sum(p[m][i] for m in members) / g
                    mean_ep = sum(ep[m][i] for m in members) / g
                    for k in range(level + 1, nlev):
                        if anchor[k] is not None:
                            dk = sum(dl[k][m][i] for m in members) / g
                            for m in members:
                                dl[k][m][i] = dk
                    for m in members:
                        p[m][i] = mean
                        ep[m][i] = mean_ep
            for k in range(level + 1):
                if anchor[k] is not None:
                    for r in members:
                        anchor[k][r] = p[r][:]
                        dl[k][r] = [0.0] * dim
    compressed = any(w != "native" for w in wire)
    return p, ep, compressed


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("trace")
    ap.add_argument("--world", type=int, required=True)
    ap.add_argument("--hierarchy", required=True)
    ap.add_argument("--warmup", type=int, default=0)
    ap.add_argument("--steps", type=int, required=True)
    ap.add_argument("--dim", type=int, required=True)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--lr", type=float, default=0.05)
    ap.add_argument("--outer", action="append", default=[])
    ap.add_argument("--wire", action="append", default=[])
    ap.add_argument("--fragments", type=int)
    ap.add_argument("--delay", type=int, default=0)
    ap.add_argument("--mix", type=float, default=1.0)
    ap.add_argument("--perturb", type=float)
    ap.add_argument("--min-ratio", type=float, default=0.0)
    a = ap.parse_args()

    p, bound, compressed = run_reference(a)
    n, dim = a.world, a.dim
    with open(a.trace) as f:
        got = json.load(f)["ranks"]
    if [entry["rank"] for entry in got] != list(range(n)):
        sys.exit("ranks missing or out of order")
    for r in range(n):
        if len(got[r]["final"]) != dim:
            sys.exit(f"rank {r}: {len(got[r]['final'])} values, expected {dim}")
    allowed = [[bound[r][i] + 1e-12 * max(1.0, abs(p[r][i])) for i in range(dim)]
               for r in range(n)]
    if a.perturb is not None and dim > 0:
        cells = [(r, i) for r in range(n) for i in range(dim)]
        r, i = max(cells, key=lambda k: allowed[k[0]][k[1]])
        got[r]["final"][i] += a.perturb * allowed[r][i]
        print(f"moved rank {r} value {i} by {a.perturb} times its bound {allowed[r][i]:.3g}")
    worst, ratio, loosest = 0.0, 0.0, 0.0
    for r in range(n):
        for i in range(dim):
            e, v = p[r][i], got[r]["final"][i]
            worst = max(worst, abs(v - e) / max(1.0, abs(e)))
            ratio = max(ratio, abs(v - e) / allowed[r][i])
            loosest = max(loosest, bound[r][i] / max(1.0, abs(e)))
    print(f"max relative difference {worst:.3g} over {n} ranks x {dim} values")
    if compressed:
        print(f"compressed wire: largest bound {loosest:.3g} (relative), "
              f"largest error / bound {ratio:.3g}")
        if ratio < a.min_ratio:
            sys.exit(f"the bound is more than {1 / a.min_ratio:.3g} times the largest error")
    sys.exit(0 if ratio <= 1.0 else 1)


if __name__ == "__main__":
    main()
