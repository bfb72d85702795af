"""The launcher the multi-process torch tests share: one Python process per rank on loopback, each
started as `SCRIPT --worker RANK ARGS...` with torch.distributed's environment (MASTER_ADDR,
MASTER_PORT, WORLD_SIZE, RANK) and gloo on the loopback interface."""
import os
import socket
import subprocess
import sys
import time


def free_port():
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run_world(script, world, worker_argv, timeout):
    """Runs `world` workers of `script`; returns their exit codes, None for one killed. A rank
    that fails leaves its peers waiting in a collective: they are ended after a short grace
    rather than at the collective's own timeout, and all of them at `timeout`."""
    env = dict(os.environ, MASTER_ADDR="127.0.0.1", MASTER_PORT=str(free_port()),
               WORLD_SIZE=str(world), GLOO_SOCKET_IFNAME="lo", OMP_NUM_THREADS="1")
    procs = [subprocess.Popen([sys.executable, os.path.abspath(script), "--worker", str(r)]
                              + list(worker_argv), env=dict(env, RANK=str(r)))
             for r in range(world)]
    deadline = time.monotonic() + timeout
    codes = [None] * world
    failed_at = None
    while any(c is None for c in codes):
        for r, p in enumerate(procs):
            if codes[r] is None:
                codes[r] = p.poll()
                if codes[r] not in (None, 0) and failed_at is None:
                    failed_at = time.monotonic()
        now = time.monotonic()
        if now > deadline or (failed_at is not None and now > failed_at + 5):
            for r, p in enumerate(procs):
                if codes[r] is None:
                    p.kill()
                    p.wait()
                    print(f"rank {r}: killed ({'timeout' if now > deadline else 'a peer failed'})",
                          file=sys.stderr)
            break
        time.sleep(0.05)
    return codes
