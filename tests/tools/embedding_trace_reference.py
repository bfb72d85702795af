#!/usr/bin/env python3
"""Independent serial reference for embedding_trace: the whole workload as one plain loop.

usage: embedding_trace_reference.py TRACE.json --world N --tables RxD[,RxD...]
                                    --batch B|B0,...,B{N-1} --hotness K --steps T --lr LR
                                    [--pooling sum|mean] [--policy P[,...]] [--node-size R]
                                    [--hierarchical] [--no-dedup] [--backend local|mpi]
                                    [--out FILE]
       embedding_trace_reference.py --write FILE <the same flags>
       embedding_trace_reference.py --self-test

It takes the flags embedding_trace got. Placement flags (--policy, --node-size,
--hierarchical, --no-dedup, --backend, --out) are accepted and ignored: the result
of the workload does not depend on where the rows live.

Compares TRACE.json with the reference: the structure must match exactly, tables and
last_outputs within 1e-12 relative (to max(1, |reference|)), output_sums[t] within
1e-12 relative to max(1, sum of |O| of step t). With --write FILE the reference's own
trace is written instead, in the same format.

Exit status: 0 when the trace matches (or the file was written, or the self-test
passed), 1 on a mismatch, 2 on bad arguments or an unreadable trace.
"""
import argparse
import json
import math
import sys

MASK64 = (1 << 64) - 1
GOLDEN_GAMMA = 0x9E3779B97F4A7C15
TOLERANCE = 1e-12


def splitmix64(x):
    z = (x + GOLDEN_GAMMA) & MASK64
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & MASK64
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & MASK64
    return z ^ (z >> 31)


def lookup_id(t, s, j, k, rows):
    x = ((t + 1) * 1000003 + (s + 1) * 7919 + (k + 1) * 104729 + (j + 1) * 31) & MASK64
    h = splitmix64(x)
    # The shift skews ids towards low rows, so some rows are hot and others never touched.
    return (h % rows) >> (h >> 61)


def initial_table(j, rows, width):
    return [[math.cos(0.001 * (i + 1) * (d + 1) + 0.1 * (j + 1)) for d in range(width)]
            for i in range(rows)]


def upstream_gradient(t, s, j, width, scale):
    g = [math.sin(0.01 * (s + 1) * (d + 1) + 0.1 * (j + 1) + 0.001 * (t + 1)) for d in range(width)]
    if scale is not None:
        g = [v * scale for v in g]
    return g


def run_workload(shapes, samples, hotness, steps, lr, pooling):
    """Returns (tables, output_sums, output_abs_sums, last_outputs)."""
    tables = [initial_table(j, r, w) for j, (r, w) in enumerate(shapes)]
    mean = pooling == "mean"
    grad_scale = 1.0 / hotness if mean else None
    output_sums, output_abs_sums, last_outputs = [], [], []
    for t in range(steps):
        ids = [[[lookup_id(t, s, j, k, r) for k in range(hotness)]
                for j, (r, _) in enumerate(shapes)] for s in range(samples)]

        outputs = []  # order s, j, d
        for s in range(samples):
            for j in range(len(shapes)):
                table = tables[j]
                # sum() adds left to right from 0, the order the workload prescribes.
                pooled = [sum(col) for col in zip(*(table[i] for i in ids[s][j]))]
                if mean:
                    pooled = [v / hotness for v in pooled]
                outputs.extend(pooled)
        output_sums.append(sum(outputs, 0.0))
        output_abs_sums.append(sum((abs(v) for v in outputs), 0.0))
        last_outputs = outputs

        for j, (_, w) in enumerate(shapes):
            accumulated = {}
            for s in range(samples):
                g = upstream_gradient(t, s, j, w, grad_scale)
                for i in ids[s][j]:
                    acc = accumulated.get(i)
                    accumulated[i] = list(g) if acc is None else [a + b for a, b in zip(acc, g)]
            table = tables[j]
            for i, acc in accumulated.items():
                table[i] = [v - lr * a for v, a in zip(table[i], acc)]
    return tables, output_sums, output_abs_sums, last_outputs


def trace_document(shapes, tables, output_sums, last_outputs):
    return {
        "tables": [{"rows": r, "width": w, "values": [v for row in table for v in row]}
                   for (r, w), table in zip(shapes, tables)],
        "output_sums": list(output_sums),
        "last_outputs": list(last_outputs),
    }


class Mismatch(Exception):
    pass


def expect_list(value, name, length):
    if not isinstance(value, list):
        raise Mismatch(f"{name}: not a list")
    if len(value) != length:
        raise Mismatch(f"{name}: {len(value)} entries, reference {length}")
    return value


def is_number(v):
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def check_value(got, expected, scale, where, worst):
    """Returns the updated worst relative difference or raises Mismatch."""
    if not is_number(got):
        raise Mismatch(f"{where}: trace {json.dumps(got)} reference {expected!r}")
    diff = abs(got - expected)
    bound = max(1.0, scale)
    # Written as 'not <=' so that NaN fails.
    if not diff <= TOLERANCE * bound:
        raise Mismatch(f"{where}: trace {got!r} reference {expected!r}")
    return max(worst, diff / bound)


def compare(doc, reference, abs_sums, shapes):
    """Returns (worst relative difference, values compared) or raises Mismatch."""
    if not isinstance(doc, dict):
        raise Mismatch("trace: not a JSON object")
    for key in ("tables", "output_sums", "last_outputs"):
        if key not in doc:
            raise Mismatch(f"trace: no '{key}'")
    worst, count = 0.0, 0
    got_tables = expect_list(doc["tables"], "tables", len(shapes))
    for j, (r, w) in enumerate(shapes):
        name = f"tables[{j}]"
        entry = got_tables[j]
        if not isinstance(entry, dict):
            raise Mismatch(f"{name}: not a JSON object")
        if entry.get("rows") != r or entry.get("width") != w:
            raise Mismatch(f"{name}: {entry.get('rows')}x{entry.get('width')}, reference {r}x{w}")
        values = expect_list(entry.get("values"), f"{name}.values", r * w)
        expected = reference["tables"][j]["values"]
        for n, (a, b) in enumerate(zip(values, expected)):
            worst = check_value(a, b, abs(b), f"{name}.values[{n}] (row {n // w}, col {n % w})",
                                worst)
        count += r * w

    sums = expect_list(doc["output_sums"], "output_sums", len(reference["output_sums"]))
    for t, (a, b) in enumerate(zip(sums, reference["output_sums"])):
        worst = check_value(a, b, abs_sums[t], f"output_sums[{t}] (step {t})", worst)
    count += len(sums)

    expected_last = reference["last_outputs"]
    last = expect_list(doc["last_outputs"], "last_outputs", len(expected_last))
    offsets = []  # (table, offset within a sample's outputs)
    for j, (_, w) in enumerate(shapes):
        offsets.extend((j, d) for d in range(w))
    per_sample = len(offsets)
    for n, (a, b) in enumerate(zip(last, expected_last)):
        j, d = offsets[n % per_sample]
        where = f"last_outputs[{n}] (sample {n // per_sample}, table {j}, col {d})"
        worst = check_value(a, b, abs(b), where, worst)
    count += len(last)
    return worst, count


def parse_tables(text):
    shapes = []
    for item in text.split(","):
        parts = item.strip().lower().split("x")
        if len(parts) != 2:
            raise ValueError(f"table '{item}' is not RxD")
        r, w = int(parts[0]), int(parts[1])
        if r < 1 or w < 1:
            raise ValueError(f"table '{item}' needs at least one row and one column")
        shapes.append((r, w))
    return shapes


def parse_batch(text, world):
    sizes = [int(x) for x in text.split(",")]
    if any(b < 0 for b in sizes):
        raise ValueError("batch sizes must not be negative")
    if len(sizes) == 1:
        return sizes * world
    if len(sizes) != world:
        raise ValueError(f"{len(sizes)} batch sizes for a world of {world}")
    return sizes


def build_parser():
    ap = argparse.ArgumentParser(
        description="Serial reference for embedding_trace; compares a trace or writes one.")
    ap.add_argument("trace", nargs="?", help="trace written by embedding_trace")
    ap.add_argument("--write", metavar="FILE", help="write the reference trace instead")
    ap.add_argument("--self-test", action="store_true", help="check this script itself")
    ap.add_argument("--world", type=int)
    ap.add_argument("--tables")
    ap.add_argument("--policy")
    ap.add_argument("--batch")
    ap.add_argument("--hotness", type=int)
    ap.add_argument("--steps", type=int)
    ap.add_argument("--lr", type=float)
    ap.add_argument("--pooling", choices=("sum", "mean"), default="sum")
    ap.add_argument("--node-size", type=int)
    ap.add_argument("--hierarchical", action="store_true")
    ap.add_argument("--no-dedup", action="store_true")
    ap.add_argument("--frequent", type=int, help="ignored: hybrid tables give the same result for every frequent set")
    ap.add_argument("--backend", choices=("local", "mpi"))
    ap.add_argument("--out")
    return ap


def workload_from_args(ap, a):
    for flag in ("world", "tables", "batch", "hotness", "steps", "lr"):
        if getattr(a, flag) is None:
            ap.error(f"--{flag} is required")
    if a.world < 1:
        ap.error("--world must be at least 1")
    if a.hotness < 1:
        ap.error("--hotness must be at least 1")
    if a.steps < 0:
        ap.error("--steps must not be negative")
    if not math.isfinite(a.lr):
        ap.error("--lr must be finite")
    try:
        shapes = parse_tables(a.tables)
        batches = parse_batch(a.batch, a.world)
    except ValueError as e:
        ap.error(str(e))
    return shapes, sum(batches)


def self_test():
    # Published outputs of splitmix64 seeded with 0: the k-th is splitmix64(k * gamma).
    known = [0xE220A8397B1DCDAF, 0x6E789E6AA1B965F4, 0x06C45D188009454F]
    for k, want in enumerate(known):
        got = splitmix64((k * GOLDEN_GAMMA) & MASK64)
        if got != want:
            print(f"embedding_trace_reference: self-test FAILED, splitmix64 output {k}: "
                  f"{got:#018x}, expected {want:#018x}")
            return 1
    if splitmix64(1234567) != 0x599ED017FB08FC85:
        print("embedding_trace_reference: self-test FAILED, splitmix64 seeded with 1234567")
        return 1
    shapes = [(50, 4), (7, 3)]
    for pooling in ("sum", "mean"):
        tables, sums, abs_sums, last = run_workload(shapes, 5, 3, 2, 0.1, pooling)
        ref = trace_document(shapes, tables, sums, last)
        round_trip = json.loads(json.dumps(ref))
        compare(round_trip, ref, abs_sums, shapes)
        round_trip["tables"][1]["values"][4] += 1e-9
        try:
            compare(round_trip, ref, abs_sums, shapes)
        except Mismatch:
            pass
        else:
            print("embedding_trace_reference: self-test FAILED, a perturbed value was accepted")
            return 1
    print("embedding_trace_reference: self-test OK")
    return 0


def main():
    ap = build_parser()
    a = ap.parse_args()
    if a.self_test:
        return self_test()
    if a.write is None and a.trace is None:
        ap.error("TRACE.json or --write FILE is required")
    shapes, samples = workload_from_args(ap, a)

    tables, sums, abs_sums, last = run_workload(shapes, samples, a.hotness, a.steps, a.lr,
                                                a.pooling)
    reference = trace_document(shapes, tables, sums, last)
    if a.write is not None:
        with open(a.write, "w") as f:
            json.dump(reference, f)  # json writes floats with repr(), so they round-trip
            f.write("\n")
        print(f"embedding_trace_reference: wrote {a.write}")
        return 0

    try:
        with open(a.trace) as f:
            doc = json.load(f)
    except (OSError, ValueError) as e:
        print(f"embedding_trace_reference: cannot read {a.trace}: {e}")
        return 2
    try:
        worst, count = compare(doc, reference, abs_sums, shapes)
    except Mismatch as e:
        print(f"embedding_trace_reference: MISMATCH {e}")
        return 1
    print(f"embedding_trace_reference: OK, max relative difference {worst:.3g} over {count} values")
    return 0


if __name__ == "__main__":
    sys.exit(main())
