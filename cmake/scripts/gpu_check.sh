#!/usr/bin/env bash
# make gpu-check: everything that needs a GPU, on one GPU, within a time budget (7.5 minutes by
# default), with one JSON summary.
#
#   GPU_CHECK_OUT=dir GPU_BUNDLE=gpu-bundle GPU_CHECK_BUDGET_S=450 bash cmake/scripts/gpu_check.sh
#
# The programs come from the bundle that `make gpu-check-bundle` prepares on a build machine
# (GPU_BUNDLE, default gpu-bundle/: prebuilt programs, the MPI runtime, checks.tsv), or, without
# one, are built here in BUILD (default build) when cmake and nvcc are installed. The check
# prints the GPU, driver, CUDA runtime and NCCL versions, then runs every ctest labelled gpu
# (exit 77, "skipped", is a failure here: a GPU is present), the multi-process NCCL tests, the
# docs' CUDA programs, device_averaging_bench and nccl_mode_bench (two processes), and writes to
# GPU_CHECK_OUT (default BUILD/gpu-check):
#   summary.json   each check (passed or failed, seconds, why), the versions, the benches' ratios
#   checks.log     every check's output
#   versions.json  strata_gpu_versions' report
#   bench.json     device_averaging_bench --json
#   nccl_mode_bench.json  nccl_mode_bench --json: NCCL's blocking mode against the default
# It exits 0 when every check passed, 1 otherwise, and at once without a GPU.
set -uo pipefail

cd "$(dirname "$0")/../.." || exit 1
build=${BUILD:-build}
out=${GPU_CHECK_OUT:-$build/gpu-check}
bundle=${GPU_BUNDLE:-gpu-bundle}
budget=${GPU_CHECK_BUDGET_S:-450}
start=$SECONDS

die() {
  echo "gpu-check: $*" >&2
  exit 1
}
say() { echo "gpu-check: $*"; }

# --- a GPU, before anything else ------------------------------------------------------------
have_gpu=0
if command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1; then have_gpu=1; fi
if compgen -G "/dev/nvidia[0-9]*" >/dev/null; then have_gpu=1; fi
[[ $have_gpu == 1 ]] || die "no GPU: gpu-check needs one (nvidia-smi lists no GPU and there is no /dev/nvidia*)"
command -v python3 >/dev/null 2>&1 || die "python3 is needed for the summary"
command -v timeout >/dev/null 2>&1 || die "timeout (coreutils) is needed to bound each check"

# --- libraries: NCCL from this machine ----------------------------------------------------------
find_nccl() {
  if [[ -n ${NCCL_LIBRARY_DIR:-} ]]; then
    echo "$NCCL_LIBRARY_DIR"
    return 0
  fi
  local d
  for d in /usr/local/cuda/lib64 /usr/local/cuda/lib /usr/lib/x86_64-linux-gnu /usr/local/lib \
    $(python3 -c 'import nvidia.nccl, os; print(os.path.join(list(nvidia.nccl.__path__)[0], "lib"))' 2>/dev/null) \
    /opt/*/.venv/lib/python3*/site-packages/nvidia/nccl/lib \
    /usr/local/lib/python3*/dist-packages/nvidia/nccl/lib; do
    if [[ -e $d/libnccl.so.2 ]]; then
      echo "$d"
      return 0
    fi
  done
  if ldconfig -p 2>/dev/null | grep -q 'libnccl\.so\.2 '; then
    echo ""
    return 0
  fi
  return 1
}
nccl_dir=$(find_nccl) || die "libnccl.so.2 not found (set NCCL_LIBRARY_DIR to the folder that holds it)"
base_ld_path=${LD_LIBRARY_PATH:-}

# The programs of $1 (a bundle) with their libraries: CUDA's runtime and MPI's from the bundle
# when it carries them, NCCL's from this machine. Sets dir, mpirun and LD_LIBRARY_PATH.
use_programs() {
  dir=$(cd "$1" && pwd)
  local paths=("$dir/lib")
  [[ -n $nccl_dir ]] && paths+=("$nccl_dir")
  mpirun=""
  if [[ -f $dir/mpi/env ]]; then
    local key value
    while IFS='=' read -r key value; do
      case $key in
        LAUNCHER) mpirun=$dir/mpi/$value ;;
        ?*) export "$key=$dir/mpi/$value" ;;
      esac
    done <"$dir/mpi/env"
    paths=("$dir/mpi/lib" "${paths[@]}")
  else
    mpirun=$(command -v mpiexec || command -v mpirun || true)
  fi
  LD_LIBRARY_PATH=$(
    IFS=:
    echo "${paths[*]}"
  )${base_ld_path:+:$base_ld_path}
  export LD_LIBRARY_PATH
}

# Builds the GPU programs in $1 and bundles them in $1/gpu-bundle. With $2 (a bundle), the
# headers and the MPI runtime it carries stand in for packages this machine lacks.
build_programs() {
  local b=$1 from=${2:-} nvcc hints=() generator=()
  nvcc=$(command -v nvcc || echo /usr/local/cuda/bin/nvcc)
  if ! command -v cmake >/dev/null 2>&1 || [[ ! -x $nvcc ]]; then
    echo "gpu-check: no cmake and nvcc here to build the programs" >&2
    return 1
  fi
  command -v ninja >/dev/null 2>&1 && generator=(-G Ninja)
  if [[ -n $from && -d $from/vendor ]]; then
    local v cuda_inc
    v=$(cd "$from/vendor" && pwd)
    cuda_inc=$(dirname "$(dirname "$(readlink -f "$nvcc")")")/include
    hints+=(-Ddoctest_DIR="$v/lib/cmake/doctest" -DSTRATA_MP11_INCLUDE_DIR="$v/include")
    if [[ -d $v/lib/x86_64-linux-gnu/cmake/benchmark ]]; then
      hints+=(-Dbenchmark_DIR="$v/lib/x86_64-linux-gnu/cmake/benchmark")
    fi
    if [[ ! -f $cuda_inc/cccl/thrust/version.h && ! -f $cuda_inc/thrust/version.h ]]; then
      mkdir -p "$b/cccl" && tar -C "$b/cccl" -xJf "$v/cccl.tar.xz" || return 1
      hints+=(-DSTRATA_THRUST_INCLUDE_DIR="$(cd "$b/cccl" && pwd)")
    fi
    [[ -f $cuda_inc/nccl.h ]] || hints+=(-DSTRATA_NCCL_INCLUDE_DIR="$v/include")
    [[ -n $nccl_dir ]] && hints+=(-DSTRATA_NCCL_LIBRARY="$nccl_dir/libnccl.so.2")
    if [[ -d $v/mpi/include && -f $from/mpi/env ]] && ! command -v mpicxx >/dev/null 2>&1; then
      use_programs "$from"
      hints+=(-DMPI_CXX_SKIP_MPICXX=ON -DMPI_CXX_HEADER_DIR="$v/mpi/include"
        -DMPI_CXX_LIB_NAMES=mpi -DMPI_mpi_LIBRARY="$dir/mpi/lib/libmpi.so.40"
        -DMPIEXEC_EXECUTABLE="$mpirun")
    fi
  fi
  # Machine code for this machine's GPU alone: the quickest build.
  cmake -S . -B "$b" "${generator[@]}" -DCMAKE_CUDA_COMPILER="$nvcc" \
    -DCMAKE_CUDA_ARCHITECTURES="${GPU_CHECK_CUDA_ARCHITECTURES:-native}" -DCMAKE_BUILD_TYPE=Release "${hints[@]}" >"$b.configure.log" 2>&1 || {
    tail -20 "$b.configure.log" >&2
    return 1
  }
  local mpi_from=()
  [[ -n $from && -f $from/mpi/env ]] && mpi_from=(--mpi-from "$from")
  python3 cmake/scripts/gpu_check_bundle.py --build "$b" --out "$b/gpu-bundle" \
    --jobs "$(nproc)" --max-mib 1024 "${mpi_from[@]}"
}

# --- the programs: the bundle's, or built here --------------------------------------------------
if [[ -f $bundle/checks.tsv ]]; then
  use_programs "$bundle"
  say "programs from $bundle/ (made by make gpu-check-bundle)"
  # Programs built elsewhere may not load here (an older C library, say): then build them here,
  # with what the bundle carries.
  loads=""
  for program in "$dir"/bin/* ${mpirun:+"$mpirun"}; do
    loads+=$(ldd "$program" 2>&1 | grep 'not found' | sed "s|^|$(basename "$program"): |")
  done
  if [[ ${GPU_CHECK_BUILD:-0} == 1 || -n $loads ]]; then
    [[ -z $loads ]] || say "the bundle's programs do not load here: $loads"
    say "building the GPU programs in $build-gpu with the bundle's headers"
    build_programs "$build-gpu" "$bundle" || die "building the GPU programs failed"
    use_programs "$build-gpu/gpu-bundle"
  fi
else
  [[ -f $build/CMakeCache.txt ]] || command -v cmake >/dev/null 2>&1 ||
    die "no $bundle/ here (make gpu-check-bundle prepares it on a build machine) and no cmake to build the programs"
  say "no $bundle/: building the GPU programs in $build"
  if [[ -f $build/CMakeCache.txt ]]; then
    python3 cmake/scripts/gpu_check_bundle.py --build "$build" --out "$build/gpu-bundle" \
      --jobs "$(nproc)" --max-mib 1024 || die "building the GPU programs failed"
  else
    build_programs "$build" || die "building the GPU programs failed"
  fi
  use_programs "$build/gpu-bundle"
fi
# Open MPI as root, several processes on few cores, no kernel-assisted copies (containers often
# refuse them), no warnings about fabrics this machine does not have.
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1
export OMPI_MCA_rmaps_base_oversubscribe=1 OMPI_MCA_btl_vader_single_copy_mechanism=none
export OMPI_MCA_btl_base_warn_component_unused=0

# The budget is for the checks: a build here (without a usable bundle) comes on top of it.
checks_start=$SECONDS
rm -rf "$out"
mkdir -p "$out" || die "cannot write $out"
out=$(cd "$out" && pwd)
log=$out/checks.log
results=$(mktemp)
work=$(mktemp -d)
trap 'rm -rf "$results" "$work"' EXIT
: >"$log"

# --- the machine ------------------------------------------------------------------------------
if command -v nvidia-smi >/dev/null 2>&1; then
  {
    echo "=== nvidia-smi"
    nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm --format=csv 2>&1
  } >>"$log"
fi
versions=$dir/bin/strata_gpu_versions
if ldd "$versions" 2>/dev/null | grep -q 'not found'; then
  ldd "$versions" | grep 'not found' >&2
  die "the programs cannot load their libraries here (above)"
fi
"$versions" >"$out/versions.json" 2>>"$log"
rc=$?
python3 - "$out/versions.json" <<'EOF' || true
import json, sys
try:
    v = json.load(open(sys.argv[1]))
except Exception:
    sys.exit(0)
names = ", ".join(f"{d['name']} (sm {d['compute_capability']}, {d['memory_bytes'] / 2**30:.0f} GiB)"
                  for d in v.get("devices", [])) or "none"
print(f"gpu-check: GPU {names}; driver CUDA {v.get('cuda_driver')}, "
      f"runtime {v.get('cuda_runtime')}, NCCL {v.get('nccl')}")
EOF
case $rc in
  0) ;;
  77) die "no GPU: gpu-check needs one (CUDA sees no device)" ;;
  *) die "CUDA cannot run here (strata_gpu_versions exited $rc): $(cat "$out/versions.json" 2>/dev/null)" ;;
esac

# --- the checks -------------------------------------------------------------------------------
record() { printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\n' "$@" >>"$results"; }
declare -A kinds=()
total=0
failed=0
while IFS=$'\t' read -r -a f; do
  [[ ${#f[@]} -ge 5 ]] || continue
  name=${f[0]} kind=${f[1]} np=${f[2]} limit=${f[3]} prog=$dir/${f[4]}
  args=("${f[@]:5}")
  kinds[$kind]=1
  total=$((total + 1))
  left=$((budget - (SECONDS - checks_start)))
  ((limit > left)) && limit=$left
  if ((left < 10)); then
    record "$name" "$kind" "$np" failed "" 0 "not run: the budget of ${budget} s was spent"
    failed=$((failed + 1))
    printf '  %-7s %7s  %s\n' failed "-" "$name (not run: out of time)"
    continue
  fi
  if [[ $kind == mpi || $kind == mpibench ]]; then
    if [[ -z $mpirun ]]; then
      record "$name" "$kind" "$np" failed "" 0 "no mpirun here and none in the bundle"
      failed=$((failed + 1))
      printf '  %-7s %7s  %s\n' failed "-" "$name (no mpirun)"
      continue
    fi
    cmd=("$mpirun" -n "$np" "$prog" "${args[@]}")
  else
    cmd=("$prog" "${args[@]}")
  fi
  stdout=$work/$name.out
  [[ $kind == bench ]] && stdout=$out/bench.json
  [[ $kind == mpibench ]] && stdout=$out/$name.json
  t0=$(date +%s.%N)
  # No standard input: mpirun would forward the list of checks to its rank 0.
  (cd "$work" && timeout -k 10 "$limit" "${cmd[@]}") </dev/null >"$stdout" 2>"$work/$name.err"
  rc=$?
  seconds=$(python3 -c "import sys; print(f'{float(sys.argv[2]) - float(sys.argv[1]):.1f}')" \
    "$t0" "$(date +%s.%N)")
  case $rc in
    0) status=passed why="" ;;
    77) status=failed why="exited 77 (skipped) although a GPU is present" ;;
    124 | 137) status=failed why="timed out after $limit s" ;;
    *) status=failed why="exited $rc" ;;
  esac
  [[ $status == failed ]] && failed=$((failed + 1))
  record "$name" "$kind" "$np" "$status" "$rc" "$seconds" "$why"
  printf '  %-7s %6s s  %s%s\n' "$status" "$seconds" "$name" "${why:+ ($why)}"
  {
    echo "=== $name: $status${why:+ ($why)}, $seconds s: ${cmd[*]}"
    [[ $kind == bench || $kind == mpibench ]] || head -c 200000 "$stdout"
    head -c 200000 "$work/$name.err"
  } >>"$log"
done <"$dir/checks.tsv"

# Each kind of check must be there: a build without MPI, say, must not pass for lack of them.
for kind in ctest mpi doc bench mpibench; do
  if [[ -z ${kinds[$kind]:-} ]]; then
    record "missing: $kind" "$kind" 0 failed "" 0 "the programs hold no check of kind $kind"
    failed=$((failed + 1))
    total=$((total + 1))
    printf '  %-7s %7s  %s\n' failed "-" "no check of kind $kind in $dir/checks.tsv"
  fi
done

# --- the summary ------------------------------------------------------------------------------
python3 - "$results" "$out" "$dir" "$((SECONDS - start))" "$budget" <<'EOF'
import json, os, sys
results, out, bundle, seconds, budget = sys.argv[1:6]

def load(path):
    try:
        with open(path) as f:
            return json.load(f)
    except (OSError, ValueError):
        return None

checks = []
with open(results) as f:
    for line in f:
        name, kind, np, status, rc, secs, why = line.rstrip("\n").split("\t")
        c = {"name": name, "kind": kind, "status": status, "seconds": float(secs or 0)}
        if int(np) > 1:
            c["processes"] = int(np)
        if rc:
            c["exit_code"] = int(rc)
        if why:
            c["why"] = why
        checks.append(c)

bench = load(os.path.join(out, "bench.json"))
ratios = None
if bench:
    rows = []
    for r in bench.get("rows", []):
        rows.append({
            "bytes": r["bytes"],
            "copy_gb_s": r["memcpy_gb_s"],
            "pack_unpack_gb_s": r["fused_gb_s"],
            "graph_gb_s": r["graph_gb_s"],
            # Bandwidth counts bytes read plus written: 1.0 means the kernels move data as fast
            # as a device-to-device copy.
            "pack_unpack_over_copy_bandwidth": round(r["fused_gb_s"] / r["memcpy_gb_s"], 4)
            if r["memcpy_gb_s"] else None,
            "pack_unpack_over_copy_time": r["fused_over_memcpy"],
            # Below 1.0: the graph replay is faster than launching the two kernels directly.
            "graph_over_eager_time": round(r["graph_ms"] / r["fused_ms"], 4)
            if r["fused_ms"] else None,
        })
    ratios = {"gpu": bench.get("gpu"), "tensors": bench.get("tensors"), "reps": bench.get("reps"),
              "rows": rows, "skipped_bytes": bench.get("skipped_bytes", [])}

modes = load(os.path.join(out, "nccl_mode_bench.json"))
mode_ratios = None
if modes:
    # shared_gpu: the processes take turns on one GPU, so only the call ratio compares the modes.
    mode_ratios = {k: modes.get(k) for k in ("gpu", "gpus", "processes", "shared_gpu", "nccl",
                                             "reps")}
    # Below 1.0: NCCL's blocking mode is faster than the non-blocking default.
    mode_ratios["rows"] = [{k: r[k] for k in ("bytes", "nonblocking_step_us", "blocking_step_us",
                                             "blocking_over_nonblocking_step",
                                             "blocking_over_nonblocking_call")}
                           for r in modes.get("rows", [])]

manifest = load(os.path.join(bundle, "manifest.json")) or {}
summary = {
    "passed": all(c["status"] == "passed" for c in checks) and bool(checks),
    "seconds": int(seconds),
    "budget_seconds": int(budget),
    "machine": load(os.path.join(out, "versions.json")),
    "programs": {"from": bundle, "source": manifest.get("source"), "build": manifest.get("build")},
    "checks": checks,
    "device_averaging_bench": ratios,
    "nccl_mode_bench": mode_ratios,
}
with open(os.path.join(out, "summary.json"), "w") as f:
    json.dump(summary, f, indent=1)
    f.write("\n")
if ratios and ratios["rows"]:
    print("gpu-check: device_averaging_bench (pack + unpack against a device-to-device copy):")
    print(f"  {'bytes':>12} {'copy GB/s':>10} {'p+u GB/s':>9} {'p+u/copy bw':>12} {'graph/eager':>12}")
    for r in ratios["rows"]:
        print(f"  {r['bytes']:>12} {r['copy_gb_s']:>10.1f} {r['pack_unpack_gb_s']:>9.1f} "
              f"{r['pack_unpack_over_copy_bandwidth'] or 0:>12.3f} {r['graph_over_eager_time'] or 0:>12.3f}")
if mode_ratios and mode_ratios["rows"]:
    print(f"gpu-check: nccl_mode_bench (all-reduce, {mode_ratios['processes']} processes, "
          "NCCL's blocking mode against the non-blocking default"
          + ("; one shared GPU: compare the call ratio" if mode_ratios.get("shared_gpu") else "")
          + "):")
    print(f"  {'bytes':>12} {'non-blocking us':>16} {'blocking us':>12} {'step b/nb':>10} {'call b/nb':>10}")
    for r in mode_ratios["rows"]:
        print(f"  {r['bytes']:>12} {r['nonblocking_step_us']:>16.1f} {r['blocking_step_us']:>12.1f} "
              f"{r['blocking_over_nonblocking_step']:>10.3f} {r['blocking_over_nonblocking_call']:>10.3f}")
EOF

passed=$((total - failed))
say "$passed of $total checks passed in $((SECONDS - start)) s; summary in $out/summary.json, output in $out/checks.log"
[[ $failed == 0 ]]
