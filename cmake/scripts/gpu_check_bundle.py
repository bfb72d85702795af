#!/usr/bin/env python3
"""Prepares, on a build machine, everything `make gpu-check` needs on a GPU machine that has an
NVIDIA driver and NCCL's library but maybe no compiler, CMake, MPI or network.

    gpu_check_bundle.py [--build build] [--out gpu-bundle] [--jobs 2] [--max-mib 48]

It builds the GPU programs of the configured build tree (every ctest labelled `gpu`, the GPU
examples of the docs, device_averaging_bench and strata_gpu_versions) and writes into --out:

    bin/            the programs, without debug information
    lib/            the CUDA runtime they link (libcudart)
    mpi/            the MPI runtime of this machine (Open MPI: mpirun, its plugins and libraries),
                    relocatable, for the checks that start several processes
    vendor/         header-only dependencies for a build on the GPU machine (doctest, Boost.MP11,
                    NCCL's header; CCCL's Thrust and CUB as cccl.tar.xz)
    checks.tsv      one check per line: name, kind, processes, timeout (s), program, arguments
    manifest.json   where and from what it was built, every file with its size and SHA-256

NCCL's library (hundreds of MB) is not carried: gpu-check finds the GPU machine's own.
"""

import argparse
import datetime
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile

PROGRAM = "gpu-check-bundle"
# Libraries every Linux system has; a program's copy of any other travels with it.
SYSTEM_LIBS = re.compile(
    r"^(linux-vdso|ld-linux|libc|libm|libdl|libpthread|librt|libutil|libresolv|libstdc\+\+|"
    r"libgcc_s|libz)\.")
# MPI plugins for fabrics that one machine does not use; their libraries are large.
FABRIC_LIBS = re.compile(r"^lib(ucp|ucs|uct|ucm|fabric|ibverbs|rdmacm|psm|psm2|jvm|nl-|cuda\.so)")
BENCH_ARGS = ["--min-bytes", "1M", "--max-bytes", "1G", "--tensors", "64", "--reps", "20",
              "--json"]
MODE_BENCH_ARGS = ["--min-bytes", "4", "--max-bytes", "16M", "--reps", "100", "--json"]
MPI_LAUNCHERS = {"mpiexec", "mpirun", "orterun", "prterun", "mpiexec.hydra"}


def fail(message):
    print(f"{PROGRAM}: {message}", file=sys.stderr)
    sys.exit(1)


def run(cmd, **kw):
    return subprocess.run(cmd, check=True, text=True, **kw)


def output(cmd, **kw):
    return subprocess.run(cmd, check=True, text=True, capture_output=True, **kw).stdout


def cache_value(build, key):
    with open(os.path.join(build, "CMakeCache.txt")) as f:
        for line in f:
            if line.startswith(key + ":"):
                return line.split("=", 1)[1].strip()
    return ""


def ctest_tests(build, *args):
    doc = json.loads(output(["ctest", "--test-dir", build, "--show-only=json-v1", *args]))
    tests = []
    for t in doc.get("tests", []):
        props = {p["name"]: p["value"] for p in t.get("properties", [])}
        tests.append({"name": t["name"], "command": t.get("command", []), "props": props})
    return tests


def plan_checks(build):
    """The checks and the build targets they need, from ctest's own list."""
    checks = []
    for t in ctest_tests(build, "-L", "gpu"):
        cmd = t["command"]
        if not cmd:
            fail(f"ctest test {t['name']} has no command")
        timeout = int(float(t["props"].get("TIMEOUT", 180)))
        if os.path.basename(cmd[0]) in MPI_LAUNCHERS:
            n_flag = next(i for i, a in enumerate(cmd) if a in ("-n", "-np", "--np"))
            exe = next(a for a in cmd[n_flag + 2:] if os.path.isabs(a) and a.startswith(build))
            args = cmd[cmd.index(exe) + 1:]
            checks.append({"name": t["name"], "kind": "mpi", "np": int(cmd[n_flag + 1]),
                           "exe": exe, "args": args, "timeout": timeout})
        else:
            checks.append({"name": t["name"], "kind": "ctest", "np": 1, "exe": cmd[0],
                           "args": cmd[1:], "timeout": timeout})
    # The docs' programs that are CUDA (the device example): labelled docs, exit 77 without a GPU.
    for t in ctest_tests(build, "-L", "docs"):
        src = os.path.join(build, "tests", "doc_examples", t["name"] + ".cu")
        if os.path.exists(src):
            checks.append({"name": t["name"], "kind": "doc", "np": 1, "exe": t["command"][0],
                           "args": t["command"][1:], "timeout": 120})
    checks.append({"name": "device_averaging_bench", "kind": "bench", "np": 1,
                   "exe": os.path.join(build, "bench", "device_averaging_bench"),
                   "args": BENCH_ARGS, "timeout": 180})
    # NCCL's two modes against each other: two processes, over sockets when they share a GPU.
    checks.append({"name": "nccl_mode_bench", "kind": "mpibench", "np": 2,
                   "exe": os.path.join(build, "bench", "nccl_mode_bench"),
                   "args": MODE_BENCH_ARGS, "timeout": 120})
    # The quick ones first: the multi-process runs take longest and least predictably, and a
    # spent time budget should cost as few checks as possible.
    order = {"ctest": 0, "doc": 1, "bench": 2, "mpi": 3, "mpibench": 4}
    return sorted(checks, key=lambda c: order[c["kind"]])


def ldd(path, env=None):
    """soname -> resolved path (None when not found)."""
    libs = {}
    for line in output(["ldd", path], env=env).splitlines():
        m = re.match(r"\s*(\S+) => (not found|\S+)", line)
        if m:
            libs[m.group(1)] = None if m.group(2) == "not found" else m.group(2)
    return libs


def copy_lib(path, dest_dir, soname):
    """The real file under its own name, and the soname as a link to it."""
    real = os.path.realpath(path)
    os.makedirs(dest_dir, exist_ok=True)
    target = os.path.join(dest_dir, os.path.basename(real))
    if not os.path.exists(target):
        shutil.copy2(real, target)
    link = os.path.join(dest_dir, soname)
    if soname != os.path.basename(real) and not os.path.lexists(link):
        os.symlink(os.path.basename(real), link)


def strip_copy(src, dest):
    shutil.copy2(src, dest)
    run(["strip", "--strip-debug", dest])


def ompi_paths():
    paths = {}
    for line in output(["ompi_info", "--parsable", "--path", "all"]).splitlines():
        parts = line.split(":", 2)
        if len(parts) == 3 and parts[0] == "path":
            paths[parts[1]] = parts[2]
    version = ""
    for line in output(["ompi_info", "--parsable"]).splitlines():
        if line.startswith("ompi:version:full:"):
            version = line.split(":", 3)[3]
    return paths, version


def bundle_mpi(dest, launcher):
    """Open MPI's launcher, plugins and help texts under mpi/root (the same paths relative to
    its prefix, so that OPAL_PREFIX relocates them), its libraries and theirs in mpi/lib."""
    if shutil.which("ompi_info") is None:
        fail("the MPI checks need Open MPI here (ompi_info not found) to carry its runtime")
    paths, version = ompi_paths()
    prefix = paths["prefix"]
    root = os.path.join(dest, "mpi", "root")
    libdir = os.path.join(dest, "mpi", "lib")

    def under_root(p):
        if not p.startswith(prefix):
            fail(f"Open MPI's {p} is not under its prefix {prefix}")
        return os.path.join(root, os.path.relpath(p, "/"))

    wanted = []  # (file, its place in the bundle)
    real_launcher = os.path.realpath(shutil.which(launcher) or "")
    for exe in (real_launcher, os.path.join(paths["bindir"], "orted")):
        if os.path.isfile(exe):
            wanted.append((exe, under_root(os.path.join(paths["bindir"], os.path.basename(exe)))))
    skipped = []
    plugin_dir = paths["pkglibdir"]
    for name in sorted(os.listdir(plugin_dir)):
        p = os.path.join(plugin_dir, name)
        if not name.endswith(".so"):
            continue
        deps = ldd(p)
        if any(v is None or FABRIC_LIBS.match(k) for k, v in deps.items()):
            skipped.append(name)
            continue
        wanted.append((p, under_root(p)))
    data = paths["pkgdatadir"]
    for name in os.listdir(data):
        p = os.path.join(data, name)
        if os.path.isfile(p):
            wanted.append((p, under_root(p)))
    for src, dst in wanted:
        os.makedirs(os.path.dirname(dst), exist_ok=True)
        if src.endswith(".so") or os.access(src, os.X_OK):
            strip_copy(os.path.realpath(src), dst)
        else:
            shutil.copy2(src, dst)
    # PMIx, where Open MPI uses an external one: its few plugins, relocated by PMIX_PREFIX.
    pmix_prefix = ""
    libs = {}
    for src, _ in wanted:
        if src.endswith(".so") or os.access(src, os.X_OK):
            libs.update(ldd(src))
    for soname, path in list(libs.items()):
        if path and soname.startswith("libpmix"):
            pmix_prefix = os.path.dirname(os.path.dirname(os.path.realpath(path)))
            plugins = os.path.join(pmix_prefix, "lib", "pmix")
            if os.path.isdir(plugins):
                for name in os.listdir(plugins):
                    if name.endswith(".so"):
                        dst = os.path.join(root, os.path.relpath(plugins, "/"), name)
                        os.makedirs(os.path.dirname(dst), exist_ok=True)
                        strip_copy(os.path.join(plugins, name), dst)
                        libs.update(ldd(os.path.join(plugins, name)))
            help_texts = os.path.join(pmix_prefix, "share", "pmix")
            if os.path.isdir(help_texts):
                shutil.copytree(help_texts, os.path.join(root, os.path.relpath(help_texts, "/")),
                                dirs_exist_ok=True)
    # The libraries, and theirs, until nothing new is needed.
    pending = dict(libs)
    done = set()
    while pending:
        soname, path = pending.popitem()
        if soname in done or SYSTEM_LIBS.match(soname):
            continue
        done.add(soname)
        if path is None:
            fail(f"{soname}, which Open MPI needs, is not found here")
        copy_lib(path, libdir, soname)
        for k, v in ldd(path).items():
            if k not in done:
                pending[k] = v
    for f in os.listdir(libdir):
        p = os.path.join(libdir, f)
        if os.path.isfile(p) and not os.path.islink(p):
            run(["strip", "--strip-debug", p])
    # What gpu-check sets to run it: paths relative to mpi/.
    launch = under_root(os.path.join(paths["bindir"], os.path.basename(real_launcher)))
    env = {"LAUNCHER": launch, "OPAL_PREFIX": under_root(prefix)}
    if pmix_prefix:
        # PMIx relocates its help texts by PMIX_PREFIX, but looks for its plugins where it was
        # installed unless told.
        env["PMIX_PREFIX"] = os.path.join(root, os.path.relpath(pmix_prefix, "/"))
        env["PMIX_MCA_mca_base_component_path"] = os.path.join(env["PMIX_PREFIX"], "lib", "pmix")
    with open(os.path.join(dest, "mpi", "env"), "w") as f:
        for k, v in env.items():
            f.write(f"{k}={os.path.relpath(v, os.path.join(dest, 'mpi'))}\n")
    return {"implementation": "Open MPI", "version": version, "prefix": prefix,
            "pmix_prefix": pmix_prefix, "launcher": os.path.basename(real_launcher),
            "plugins_left_out": skipped}


def vendor_headers(build, dest):
    vendor = os.path.join(dest, "vendor")
    inc = os.path.join(vendor, "include")
    os.makedirs(inc)
    doctest_dir = cache_value(build, "doctest_DIR")
    doctest_inc = ""
    for candidate in ("/usr/include", os.path.join(doctest_dir, "..", "..", "..", "include")):
        if os.path.isfile(os.path.join(candidate, "doctest", "doctest.h")):
            doctest_inc = candidate
            break
    if not doctest_inc:
        fail("doctest's headers not found")
    shutil.copytree(os.path.join(doctest_inc, "doctest"), os.path.join(inc, "doctest"))
    cfg = os.path.join(vendor, "lib", "cmake", "doctest")
    os.makedirs(cfg)
    with open(os.path.join(cfg, "doctestConfig.cmake"), "w") as f:
        f.write("# doctest's headers, carried by gpu-check-bundle.\n"
                "if(NOT TARGET doctest::doctest)\n"
                "  add_library(doctest::doctest INTERFACE IMPORTED)\n"
                "  set_target_properties(doctest::doctest PROPERTIES INTERFACE_INCLUDE_DIRECTORIES\n"
                "    \"${CMAKE_CURRENT_LIST_DIR}/../../../include\")\n"
                "endif()\n")
    mp11 = cache_value(build, "STRATA_MP11_INCLUDE_DIR")
    os.makedirs(os.path.join(inc, "boost"))
    shutil.copytree(os.path.join(mp11, "boost", "mp11"), os.path.join(inc, "boost", "mp11"))
    shutil.copy2(os.path.join(mp11, "boost", "mp11.hpp"), os.path.join(inc, "boost"))
    nccl_inc = cache_value(build, "STRATA_NCCL_INCLUDE_DIR")
    if nccl_inc:
        shutil.copy2(os.path.join(nccl_inc, "nccl.h"), inc)
    # Open MPI's C headers, for the multi-process test (its C++ bindings are not used).
    mpi_inc = ""
    for candidate in (cache_value(build, "MPI_CXX_HEADER_DIR"),
                      *cache_value(build, "MPI_CXX_ADDITIONAL_INCLUDE_DIRS").split(";")):
        if candidate and os.path.isfile(os.path.join(candidate, "mpi.h")):
            mpi_inc = candidate
            break
    if mpi_inc:
        dst = os.path.join(vendor, "mpi", "include")
        os.makedirs(dst)
        for name in ("mpi.h", "mpi-ext.h", "mpi_portable_platform.h"):
            if os.path.isfile(os.path.join(mpi_inc, name)):
                shutil.copy2(os.path.join(mpi_inc, name), dst)
        ext = os.path.join(mpi_inc, "openmpi", "mpiext")
        if os.path.isdir(ext):
            shutil.copytree(ext, os.path.join(dst, "openmpi", "mpiext"))
    # Google Benchmark, which CMake requires before it builds anything under bench/: its
    # library, headers and package files, in the same layout (the package finds itself).
    bench_dir = cache_value(build, "benchmark_DIR")
    bench = {}
    if bench_dir and os.path.isdir(bench_dir):
        prefix = os.path.realpath(os.path.join(bench_dir, "..", "..", "..", ".."))
        libdir = os.path.realpath(os.path.join(bench_dir, "..", ".."))
        for name in os.listdir(bench_dir):
            dst = os.path.join(vendor, os.path.relpath(bench_dir, prefix))
            os.makedirs(dst, exist_ok=True)
            shutil.copy2(os.path.join(bench_dir, name), dst)
        for name in os.listdir(libdir):
            if name.startswith("libbenchmark"):
                src = os.path.join(libdir, name)
                dst = os.path.join(vendor, os.path.relpath(libdir, prefix), name)
                if os.path.islink(src):
                    os.symlink(os.readlink(src), dst)
                else:
                    shutil.copy2(src, dst)
        shutil.copytree(os.path.join(prefix, "include", "benchmark"),
                        os.path.join(inc, "benchmark"))
        bench = {"google_benchmark": "vendor/" + os.path.relpath(bench_dir, prefix)}
    thrust = cache_value(build, "STRATA_THRUST_INCLUDE_DIR")
    with open(os.path.join(thrust, "thrust", "version.h")) as f:
        m = re.search(r"#define THRUST_VERSION (\d+)", f.read())
    names = [n for n in ("thrust", "cub", "cuda", "nv") if os.path.isdir(os.path.join(thrust, n))]
    run(["tar", "-C", thrust, "-cJf", os.path.join(vendor, "cccl.tar.xz"), *names])
    return {"doctest": "vendor/include/doctest (doctest_DIR=vendor/lib/cmake/doctest)",
            "boost_mp11": "vendor/include/boost", "nccl_header": "vendor/include/nccl.h",
            "cccl": f"vendor/cccl.tar.xz (Thrust {m.group(1) if m else '?'}, from {thrust})",
            "mpi_headers": "vendor/mpi/include" if mpi_inc else None, **bench}


def describe_files(dest):
    files = []
    for dirpath, _, names in os.walk(dest):
        for n in sorted(names):
            p = os.path.join(dirpath, n)
            if os.path.islink(p):
                continue
            with open(p, "rb") as f:
                digest = hashlib.sha256(f.read()).hexdigest()
            files.append({"path": os.path.relpath(p, dest), "bytes": os.path.getsize(p),
                          "sha256": digest})
    return sorted(files, key=lambda x: x["path"])


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--build", default="build")
    ap.add_argument("--out", default="gpu-bundle")
    ap.add_argument("--jobs", default="2")
    ap.add_argument("--max-mib", type=float, default=48)
    ap.add_argument("--mpi-from", default="",
                    help="a bundle whose MPI runtime to carry instead of this machine's")
    o = ap.parse_args()
    source = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    build = os.path.abspath(o.build)
    out = os.path.abspath(o.out)
    if not os.path.isfile(os.path.join(build, "CMakeCache.txt")):
        fail(f"{build} is not a configured build tree (make configure)")
    if cache_value(build, "CMAKE_CUDA_COMPILER") == "":
        fail("the build tree has no CUDA compiler: the GPU programs cannot be built here")
    run(["cmake", build], stdout=subprocess.DEVNULL)  # new tests and doc examples

    checks = plan_checks(build)
    targets = sorted({os.path.basename(c["exe"]) for c in checks} | {"strata_gpu_versions"})
    print(f"{PROGRAM}: building {len(targets)} programs: {' '.join(targets)}", flush=True)
    run(["cmake", "--build", build, "-j", o.jobs, "--target", *targets])

    tmp = tempfile.mkdtemp(prefix=".gpu-bundle-", dir=os.path.dirname(out))
    os.chmod(tmp, 0o755)
    try:
        bindir = os.path.join(tmp, "bin")
        os.makedirs(bindir)
        needed = {}
        for exe in sorted({c["exe"] for c in checks}
                          | {os.path.join(build, "tests", "strata_gpu_versions")}):
            strip_copy(exe, os.path.join(bindir, os.path.basename(exe)))
            needed.update(ldd(exe))
        for soname, path in needed.items():
            if soname.startswith("libcudart") and path:
                copy_lib(path, os.path.join(tmp, "lib"), soname)
        mpi = None
        mpi_checks = [c for c in checks if c["kind"] in ("mpi", "mpibench")]
        if mpi_checks:
            launcher = os.path.basename(cache_value(build, "MPIEXEC_EXECUTABLE") or "mpiexec")
            if o.mpi_from:
                shutil.copytree(os.path.join(o.mpi_from, "mpi"), os.path.join(tmp, "mpi"),
                                symlinks=True)
                with open(os.path.join(o.mpi_from, "manifest.json")) as f:
                    mpi = json.load(f).get("mpi")
            else:
                mpi = bundle_mpi(tmp, launcher)
        vendored = vendor_headers(build, tmp)

        lines = []
        for c in checks:
            args = []
            for a in c["args"]:
                if a.startswith(build) or a.startswith(source):
                    fail(f"check {c['name']} reads {a}: carry it as data first")
                args.append(a)
            lines.append("\t".join([c["name"], c["kind"], str(c["np"]), str(c["timeout"]),
                                    "bin/" + os.path.basename(c["exe"]), *args]))
        with open(os.path.join(tmp, "checks.tsv"), "w") as f:
            f.write("\n".join(lines) + "\n")

        def git(*args):
            try:
                return output(["git", "-C", source, *args]).strip()
            except (subprocess.CalledProcessError, FileNotFoundError):
                return ""

        nvcc = cache_value(build, "CMAKE_CUDA_COMPILER")
        nvcc_version = ""
        if nvcc:
            nvcc_version = next((l for l in output([nvcc, "--version"]).splitlines()
                                 if "release" in l), "").strip()
        # The machine code and PTX the programs carry: cuobjdump reads them from the programs
        # where it is installed; otherwise the build's own nvcc flags say what was asked for.
        archs = set()
        cuobjdump = shutil.which("cuobjdump") or os.path.join(os.path.dirname(nvcc), "cuobjdump")
        if os.path.exists(cuobjdump):
            for exe in sorted({c["exe"] for c in checks}):
                for flag in ("--list-elf", "--list-ptx"):
                    listing = subprocess.run([cuobjdump, flag, exe], text=True,
                                             capture_output=True).stdout
                    archs.update(re.findall(r"\.(sm_\d+a?|compute_\d+a?)\.", listing))
        else:
            with open(os.path.join(build, "build.ninja")) as f:
                for codes in re.findall(r"--generate-code=arch=\w+,code=\[([\w,]+)\]", f.read()):
                    archs.update(codes.split(","))
        nccl_h = os.path.join(tmp, "vendor", "include", "nccl.h")
        nccl_version = ""
        if os.path.exists(nccl_h):
            with open(nccl_h) as f:
                text = f.read()
            parts = [re.search(rf"#define NCCL_{k} (\d+)", text) for k in ("MAJOR", "MINOR", "PATCH")]
            nccl_version = ".".join(p.group(1) for p in parts if p)
        # The newest C library version any carried file needs: the GPU machine's must be as new.
        glibc = (0,)
        for dirpath, _, names in os.walk(tmp):
            for n in names:
                p = os.path.join(dirpath, n)
                if os.path.islink(p) or not (n.endswith(".so") or ".so." in n or
                                             os.access(p, os.X_OK)):
                    continue
                symbols = subprocess.run(["objdump", "-T", p], text=True,
                                         capture_output=True).stdout
                for v in re.findall(r"GLIBC_(\d+(?:\.\d+)+)", symbols):
                    glibc = max(glibc, tuple(int(x) for x in v.split(".")))
        files = describe_files(tmp)
        total = sum(f["bytes"] for f in files)
        manifest = {
            "made_by": "make gpu-check-bundle",
            "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            "source": {"commit": git("rev-parse", "HEAD"),
                       "modified_files": len([l for l in git("status", "--porcelain").splitlines()
                                              if l.strip()])},
            "build": {"type": cache_value(build, "CMAKE_BUILD_TYPE"),
                      "cuda_code": sorted(archs),
                      "nvcc": nvcc_version, "nccl_headers": nccl_version,
                      "system": output(["uname", "-srm"]).strip(),
                      "glibc": output(["ldd", "--version"]).splitlines()[0]},
            "needs_on_the_gpu_machine": [
                "an NVIDIA driver for CUDA " + (nvcc_version.split("release ")[-1].split(",")[0]
                                                if "release" in nvcc_version else "?") +
                " and a GPU that runs one of " + (", ".join(sorted(archs)) or "?"),
                f"libnccl.so.2 (NCCL 2, built against {nccl_version or '?'}), found by gpu-check",
                "glibc " + ".".join(map(str, glibc)) + " or newer (and libstdc++ as new as "
                "the build machine's)",
                "python3, for the summary"],
            "mpi": mpi,
            "vendored": vendored,
            "checks": [{"name": c["name"], "kind": c["kind"], "processes": c["np"],
                        "timeout_s": c["timeout"], "program": "bin/" + os.path.basename(c["exe"]),
                        "args": c["args"]} for c in checks],
            "bytes": total,
            "files": files,
        }
        with open(os.path.join(tmp, "manifest.json"), "w") as f:
            json.dump(manifest, f, indent=1)
            f.write("\n")
        if total > o.max_mib * 2**20:
            fail(f"the bundle holds {total / 2**20:.1f} MiB, more than --max-mib {o.max_mib}")
        if os.path.exists(out):
            shutil.rmtree(out)
        os.rename(tmp, out)
    finally:
        if os.path.exists(tmp):
            shutil.rmtree(tmp)
    print(f"{PROGRAM}: {os.path.relpath(out)}: {len(checks)} checks, {len(files)} files, "
          f"{total / 2**20:.1f} MiB")
    for c in checks:
        print(f"  {c['kind']:6} {c['name']}" + (f" ({c['np']} processes)" if c["np"] > 1 else ""))


if __name__ == "__main__":
    main()
