#!/usr/bin/python3
"""Runs optim_trace for SGD, Adam and LAMB, with and without weight decay and gradient
clipping, on one world and schedule, and checks every run against the independent serial
reference (optim_trace_reference.py, run in this process).

usage: optim_trace_matrix.py OPTIM_TRACE --world N [--schedule flat|hierarchical]
                             [--node-size G] [--backend local|mpi] [--mpirun MPIRUN]
                             [--mpiexec-flags=FLAGS ...]

With --backend mpi each run is `MPIRUN -n N FLAGS OPTIM_TRACE --world N ... --backend mpi`,
with Open MPI allowed to run as root and to oversubscribe. FLAGS are split at whitespace
and semicolons (so a CMake list works); give them as --mpiexec-flags=... so that flags
starting with '-' are taken as the value.

Each case runs tensors 100,37,1000 for 6 steps. The clip norm that clips is the median of
the unclipped run's gradient norms, so it clips on some steps and not on others; the other
one is far above every norm. The traces must match the reference within 1e-10 relative to
the largest reference value, and elementwise within 1e-10 (|b| + 1e-3 max|b|).
Exit status: 0 when every case matches, 1 when a run fails or differs, 2 on bad arguments.
"""
import argparse
import json
import math
import os
import re
import shlex
import subprocess
import sys
import tempfile

try:
    import numpy  # noqa: F401
    import torch  # noqa: F401
except ImportError as e:
    sys.exit("optim_trace_matrix needs a Python with numpy and torch (%s): %s"
             % (e, sys.executable))
sys.dont_write_bytecode = True  # keep the source tree clean
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import optim_trace_reference as reference  # noqa: E402

TENSORS = "100,37,1000"
STEPS = 6
TOLERANCE = 1e-10
FLOOR = 1e-3  # elementwise bound floor, as a fraction of the largest reference value
MIN_MOVEMENT = 1e-6
NEVER_CLIPS = "1000"
RUN_TIMEOUT_S = 300
MPI_ENV = {
    "OMPI_ALLOW_RUN_AS_ROOT": "1",
    "OMPI_ALLOW_RUN_AS_ROOT_CONFIRM": "1",
    "OMPI_MCA_rmaps_base_oversubscribe": "1",
}


class CaseFailure(Exception):
    pass


def case_flags(optimizer, weight_decay, clip, tuned):
    flags = ["--tensors", TENSORS, "--steps", str(STEPS), "--optimizer", optimizer,
             "--lr", "0.1" if optimizer == "sgd" else "0.01"]
    if tuned and optimizer != "sgd":
        flags += ["--beta1", "0.8", "--beta2", "0.99", "--eps", "1e-6"]
    if weight_decay:
        flags += ["--weight-decay", "0.05"]
    if clip is not None:
        flags += ["--clip-norm", clip]
    return flags


def expected_trace(world, flags):
    return reference.compute(reference.parse_args(["--world", str(world), "--out", "-"] + flags))


def clipped_steps(trace, clip):
    """Steps on which clip_grad_norm_'s factor is below 1."""
    c = float(clip)
    return sum(1 for n in trace["grad_norms"] if c / (n + reference.CLIP_EPSILON) < 1.0)


def cases(world):
    """Yields (name, flags, expected trace), checking that each case tests what it says."""
    for optimizer in ("sgd", "adam", "lamb"):
        for weight_decay in (False, True):
            label = optimizer + ("_wd" if weight_decay else "")
            plain = case_flags(optimizer, weight_decay, None, False)
            plain_trace = expected_trace(world, plain)
            yield label, plain, plain_trace

            norms = sorted(plain_trace["grad_norms"])
            clip = "%.6g" % (0.5 * (norms[(STEPS - 1) // 2] + norms[STEPS // 2]))
            flags = case_flags(optimizer, weight_decay, clip, False)
            trace = expected_trace(world, flags)
            clipped = clipped_steps(trace, clip)
            if not 0 < clipped < STEPS:
                raise CaseFailure("%s_clip: clip norm %s clips on %d of %d steps, wanted some"
                                  % (label, clip, clipped, STEPS))
            yield label + "_clip", flags, trace

        # A clip norm above every gradient norm must leave the update alone.
        flags = case_flags(optimizer, True, NEVER_CLIPS, True)
        trace = expected_trace(world, flags)
        if clipped_steps(trace, NEVER_CLIPS) != 0:
            raise CaseFailure("%s_noclip: clip norm %s clips" % (optimizer, NEVER_CLIPS))
        yield "%s_wd_noclip_tuned" % optimizer, flags, trace


def is_number(x):
    return isinstance(x, (int, float)) and not isinstance(x, bool)


def compare(name, key, actual, expected):
    """Returns the max error relative to max|expected|; raises CaseFailure on a mismatch."""
    if not isinstance(actual, list):
        raise CaseFailure("%s: %s is not a list" % (name, key))
    if len(actual) != len(expected):
        raise CaseFailure("%s: %s has %d values, the reference %d"
                          % (name, key, len(actual), len(expected)))
    for i, (a, b) in enumerate(zip(actual, expected)):
        if not is_number(a) or not math.isfinite(a):
            raise CaseFailure("%s: %s[%d] = %r is not a finite number" % (name, key, i, a))
        if not math.isfinite(b):
            raise CaseFailure("%s: reference %s[%d] = %r is not finite" % (name, key, i, b))
    if not expected:
        return 0.0
    scale = max(max(abs(b) for b in expected), 1e-300)
    errors = [abs(a - b) for a, b in zip(actual, expected)]
    worst = max(range(len(errors)), key=errors.__getitem__)
    relative = errors[worst] / scale
    if relative > TOLERANCE:
        raise CaseFailure("%s: %s[%d] = %.17g, reference %.17g: error %.3g relative to max|ref| "
                          "%.3g exceeds %g" % (name, key, worst, actual[worst], expected[worst],
                                               relative, scale, TOLERANCE))
    bounds = [TOLERANCE * (abs(b) + FLOOR * scale) for b in expected]
    worst = max(range(len(errors)), key=lambda i: errors[i] / bounds[i])
    if errors[worst] > bounds[worst]:
        raise CaseFailure("%s: %s[%d] = %.17g, reference %.17g: error %.3g exceeds the "
                          "elementwise bound %.3g" % (name, key, worst, actual[worst],
                                                      expected[worst], errors[worst],
                                                      bounds[worst]))
    return relative


def check_moved(name, expected):
    initial = reference.initial_parameters(len(expected["params"]))
    moved = max(abs(a - b) for a, b in zip(expected["params"], initial.tolist()))
    if not moved > MIN_MOVEMENT:
        raise CaseFailure("%s: the reference parameters moved only %.3g from the start"
                          % (name, moved))


def run_program(a, flags, out):
    args = ["--world", str(a.world)] + flags + a.placement + ["--out", out]
    env = None
    if a.backend == "mpi":
        cmd = [a.mpirun, "-n", str(a.world)] + a.mpi_flags + [a.program] + args + \
              ["--backend", "mpi"]
        env = dict(os.environ, **MPI_ENV)
    else:
        cmd = [a.program] + args + (["--backend", "local"] if a.backend else [])
    try:
        run = subprocess.run(cmd, capture_output=True, text=True, env=env,
                             timeout=RUN_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        raise CaseFailure("timed out after %d s: %s" % (RUN_TIMEOUT_S, shlex.join(cmd)))
    if run.returncode != 0:
        raise CaseFailure("exit %d: %s\n%s%s" % (run.returncode, shlex.join(cmd), run.stdout,
                                                 run.stderr))
    try:
        with open(out) as f:
            trace = json.load(f)
    except (OSError, ValueError) as e:
        raise CaseFailure("unreadable output of %s: %s" % (shlex.join(cmd), e))
    if not isinstance(trace, dict):
        raise CaseFailure("output of %s is not a JSON object" % shlex.join(cmd))
    return trace


def parse_args():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("program")
    ap.add_argument("--world", type=int, required=True)
    ap.add_argument("--schedule", choices=("flat", "hierarchical"))
    ap.add_argument("--node-size", type=int)
    ap.add_argument("--backend", choices=("local", "mpi"))
    ap.add_argument("--mpirun")
    ap.add_argument("--mpiexec-flags", action="append", default=[])
    a = ap.parse_args()
    if a.world < 1:
        ap.error("--world must be at least 1")
    if a.node_size is not None and (a.node_size < 1 or a.world % a.node_size != 0):
        ap.error("--node-size must be positive and divide --world")
    if a.backend == "mpi" and not a.mpirun:
        ap.error("--backend mpi needs --mpirun")
    a.mpi_flags = [f for text in a.mpiexec_flags for f in re.split(r"[\s;]+", text) if f]
    a.placement = []
    if a.schedule:
        a.placement += ["--schedule", a.schedule]
    if a.node_size is not None:
        a.placement += ["--node-size", str(a.node_size)]
    return a


def main():
    a = parse_args()
    setting = "world %d, %s, %s" % (a.world, " ".join(a.placement) or "default schedule",
                                    a.backend or "default backend")
    failures = []
    count = 0
    with tempfile.TemporaryDirectory(prefix="optim_trace_") as tmp:
        try:
            all_cases = list(cases(a.world))
        except CaseFailure as e:
            print("FAIL (%s) %s" % (setting, e))
            return 1
        for name, flags, expected in all_cases:
            count += 1
            try:
                check_moved(name, expected)
                out = os.path.join(tmp, name + ".json")
                actual = run_program(a, flags, out)
                errors = [compare(name, key, actual.get(key), expected[key])
                          for key in ("params", "grad_norms")]
                print("%-28s params %.3g  grad_norms %.3g" % (name, errors[0], errors[1]))
            except CaseFailure as e:
                print("FAIL %s\n     case flags: %s" % (e, " ".join(flags)))
                failures.append(name)
    if failures:
        print("optim_trace_matrix (%s): %d of %d cases FAILED: %s"
              % (setting, len(failures), count, ", ".join(failures)))
        return 1
    print("optim_trace_matrix (%s): %d cases match the reference" % (setting, count))
    return 0


if __name__ == "__main__":
    sys.exit(main())
