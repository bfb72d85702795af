#!/usr/bin/env python3
"""Runs embedding_trace over every placement policy for one world size and checks each run
against the independent serial reference (embedding_trace_reference.py).

usage: embedding_trace_matrix.py EMBEDDING_TRACE --world N [--mpi MPIEXEC] [--out-dir DIR]

Per world: each policy alone and mixed, pinned placements, hybrid tables with frequent sets from
none to every row and chosen by the cost model, sum and mean pooling, with and without
de-duplication, and the hierarchical all-to-all where nodes of 2 (or 4) ranks divide the world.
Batches are uneven and rank 1 has none. With --mpi the runs are `MPIEXEC -np N EMBEDDING_TRACE
--backend mpi ...`. Exits 1 at the first run that fails or differs from the reference.
"""
import argparse
import os
import subprocess
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
REFERENCE = os.path.join(HERE, "embedding_trace_reference.py")
TABLES = "1000x16,500x16,64x8,5x8"


def cases(world):
    shards = 1
    while shards * 2 <= min(world, 8):
        shards *= 2
    node = 4 if world % 4 == 0 and world > 4 else (2 if world % 2 == 0 and world > 2 else world)
    col = "column:%d" % shards
    batch = ",".join("0" if (r == 1 and world > 1) else str((3 * r + 2) % 7 + 1)
                     for r in range(world))
    policies = [
        "table", col, "row", "table-row", "dp",
        "table,%s,row,dp" % col,
        "table@%d,%s@0,table-row@0,row" % (world - 1, col),
        "dp,table-row,%s,table" % col,
        # Hybrid: every frequent-set size from none to every row, and the cost model's choice.
        "hybrid/0,hybrid:table/1,hybrid:%s/7,hybrid:table-row/5" % col,
        "hybrid:row/1000,hybrid/64,hybrid:table/64,hybrid/5",
        "hybrid,hybrid:%s,hybrid:table,dp" % col,
    ]
    out = []
    for i, policy in enumerate(policies):
        for dedup in (True, False):
            args = ["--tables", TABLES, "--policy", policy, "--batch", batch,
                    "--hotness", str(1 + (i % 3)), "--steps", "3", "--lr", "0.05",
                    "--pooling", "mean" if (i + dedup) % 2 else "sum", "--node-size", str(node)]
            if not dedup:
                args.append("--no-dedup")
            out.append(args)
            if node < world:
                out.append(args + ["--hierarchical"])
    return out


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("program")
    ap.add_argument("--world", type=int, required=True)
    ap.add_argument("--mpi")
    ap.add_argument("--out-dir", default=".")
    a = ap.parse_args()
    trace = os.path.join(a.out_dir, "embedding_trace_w%d%s.json" % (a.world, "_mpi" if a.mpi else ""))
    runs = cases(a.world)
    for args in runs:
        if a.mpi:
            cmd = [a.mpi, "-np", str(a.world), a.program, "--backend", "mpi"] + args
        else:
            cmd = [a.program, "--world", str(a.world)] + args
        run = subprocess.run(cmd + ["--out", trace], capture_output=True, text=True)
        if run.returncode != 0:
            print("FAILED (exit %d): %s\n%s%s" % (run.returncode, " ".join(cmd), run.stdout,
                                                  run.stderr))
            return 1
        ref = subprocess.run([sys.executable, REFERENCE, trace, "--world", str(a.world)] + args,
                             capture_output=True, text=True)
        if ref.returncode != 0:
            print("DIFFERS: %s\n%s%s" % (" ".join(cmd), ref.stdout, ref.stderr))
            return 1
    print("embedding_trace_matrix: world %d, %d runs match the serial reference" %
          (a.world, len(runs)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
