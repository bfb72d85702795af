"""make gpu-check's script (cmake/scripts/gpu_check.sh) on a machine without a GPU: a bundle whose
programs are stand-ins, and stand-ins for nvidia-smi and mpiexec, so that the script's own logic
runs: every kind of check, the budget, exit 77 counted as a failure, the summary with both
benches' ratios, and a non-zero exit on any failure.

    python3 gpu_check_script_test.py SOURCE_DIR WORK_DIR
"""
import json
import os
import shutil
import stat
import subprocess
import sys

source, work = sys.argv[1], sys.argv[2]

VERSIONS = {"devices": [{"name": "Stand-in GPU", "compute_capability": "9.0",
                         "memory_bytes": 2 ** 37}],
            "cuda_driver": 13000, "cuda_runtime": 13000, "nccl": 22809}
BENCH = {"gpu": "Stand-in GPU", "tensors": 64, "reps": 20,
         "rows": [{"bytes": 2 ** 26, "memcpy_ms": 1.0, "fused_ms": 2.2, "graph_ms": 2.1,
                   "fused_over_memcpy": 2.2, "graph_over_memcpy": 2.1, "memcpy_gb_s": 134.2,
                   "fused_gb_s": 122.0, "graph_gb_s": 127.8, "launches": 2}]}
MODES = {"gpu": "Stand-in GPU", "gpus": 1, "processes": 2, "shared_gpu": True, "nccl": 22809,
         "reps": 100,
         "rows": [{"bytes": 4, "nonblocking_call_us": 40.0, "blocking_call_us": 12.0,
                   "nonblocking_step_us": 90.0, "blocking_step_us": 60.0,
                   "blocking_over_nonblocking_call": 0.3, "blocking_over_nonblocking_step": 0.6667}]}


def script(path, body):
    with open(path, "w") as f:
        f.write("#!/bin/sh\n" + body + "\n")
    os.chmod(path, os.stat(path).st_mode | stat.S_IXUSR | stat.S_IXGRP | stat.S_IXOTH)


def make_bundle(root, fail_mode_bench=False, skip_ctest=False):
    bundle = os.path.join(root, "bundle")
    tools = os.path.join(root, "tools")
    nccl = os.path.join(root, "nccl")
    for d in (os.path.join(bundle, "bin"), tools, nccl):
        os.makedirs(d)
    b = os.path.join(bundle, "bin")
    script(os.path.join(b, "strata_gpu_versions"), f"echo '{json.dumps(VERSIONS)}'")
    script(os.path.join(b, "unit"), "exit 77" if skip_ctest else "echo unit tests passed")
    script(os.path.join(b, "doc"), "echo the example of the docs ran")
    script(os.path.join(b, "bench"), f"echo '{json.dumps(BENCH)}'")
    script(os.path.join(b, "multi"), "echo every rank passed")
    script(os.path.join(b, "modes"), "exit 3" if fail_mode_bench else f"echo '{json.dumps(MODES)}'")
    rows = [["gpu.unit", "ctest", "1", "30", "bin/unit"],
            ["doc.device", "doc", "1", "30", "bin/doc"],
            ["device_averaging_bench", "bench", "1", "30", "bin/bench", "--json"],
            ["gpu.multi.np2", "mpi", "2", "30", "bin/multi"],
            ["nccl_mode_bench", "mpibench", "2", "30", "bin/modes", "--json"]]
    with open(os.path.join(bundle, "checks.tsv"), "w") as f:
        f.write("".join("\t".join(r) + "\n" for r in rows))
    script(os.path.join(tools, "nvidia-smi"), 'echo "GPU 0: Stand-in GPU"')
    # mpiexec -n N program args...: the program once, standing for its N ranks.
    script(os.path.join(tools, "mpiexec"), 'shift 2; exec "$@"')
    open(os.path.join(nccl, "libnccl.so.2"), "w").close()
    return bundle, tools, nccl


def run(name, **kw):
    root = os.path.join(work, name)
    shutil.rmtree(root, ignore_errors=True)
    os.makedirs(root)
    bundle, tools, nccl = make_bundle(root, **kw)
    out = os.path.join(root, "out")
    env = dict(os.environ, GPU_BUNDLE=bundle, GPU_CHECK_OUT=out, NCCL_LIBRARY_DIR=nccl,
               GPU_CHECK_BUDGET_S="120", PATH=tools + os.pathsep + os.environ["PATH"])
    p = subprocess.run(["bash", os.path.join(source, "cmake", "scripts", "gpu_check.sh")],
                       cwd=source, env=env, text=True, capture_output=True, timeout=300)
    with open(os.path.join(out, "summary.json")) as f:
        return p, json.load(f)


failures = []


def expect(cond, what, p=None):
    if not cond:
        failures.append(what + ("" if p is None else f"\n--- stdout\n{p.stdout}\n--- stderr\n{p.stderr}"))


p, summary = run("all_pass")
expect(p.returncode == 0, f"every check passing: exit {p.returncode}", p)
expect(summary["passed"] is True, "summary says passed", p)
expect(len(summary["checks"]) == 5, f"five checks, got {len(summary['checks'])}", p)
expect({c["kind"] for c in summary["checks"]} == {"ctest", "doc", "bench", "mpi", "mpibench"},
       "every kind ran", p)
modes = summary.get("nccl_mode_bench") or {}
expect(modes.get("processes") == 2 and modes.get("rows", [{}])[0].get(
    "blocking_over_nonblocking_step") == 0.6667, f"the modes' ratios: {modes}", p)
dab = summary.get("device_averaging_bench") or {}
expect(dab.get("rows", [{}])[0].get("pack_unpack_over_copy_bandwidth") == round(122.0 / 134.2, 4),
       f"the pack/unpack ratio: {dab}", p)
expect("nccl_mode_bench (all-reduce, 2 processes" in p.stdout, "the modes' table is printed", p)
expect(modes.get("shared_gpu") is True and "compare the call ratio" in p.stdout,
       "a shared GPU is flagged", p)

p, summary = run("mode_bench_fails", fail_mode_bench=True)
expect(p.returncode == 1, f"a failing bench: exit {p.returncode}", p)
failed = [c for c in summary["checks"] if c["status"] == "failed"]
expect([c["name"] for c in failed] == ["nccl_mode_bench"] and failed[0].get("exit_code") == 3,
       f"the failed check is named with its exit code: {failed}", p)

p, summary = run("skip_is_failure", skip_ctest=True)
expect(p.returncode == 1, f"a skipping test on a GPU machine: exit {p.returncode}", p)
failed = [c for c in summary["checks"] if c["status"] == "failed"]
expect(len(failed) == 1 and "skipped" in failed[0].get("why", ""),
       f"exit 77 is a failure: {failed}", p)

if failures:
    print("\n\n".join(failures))
    sys.exit(1)
print("gpu_check.sh: passing, failing and skipping checks are each reported as they should be")
