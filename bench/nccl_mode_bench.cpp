// NCCL's non-blocking mode (strata's default) against its blocking mode (NcclOptions::blocking)
// on the same all-reduce, in one run, on the GPU(s) of one machine:
//
//   mpirun -n 2 nccl_mode_bench [--min-bytes 4] [--max-bytes 64M] [--reps 200] [--json]
//
// In non-blocking mode NCCL finishes each call on a thread it starts for the call and answers
// ncclInProgress, and strata polls ncclCommGetAsyncError until the call is done; in blocking mode
// the call returns once the work is enqueued. For each size (float32, by factors of 8 from
// --min-bytes to --max-bytes), both communicators run the all-reduce on their stream, the two
// modes alternating from one repetition to the next, and rank 0 reports the medians of:
//   call  host time of the call alone: what the host spends before it can go on
//   step  the call and strata's synchronize(): the latency a trainer waits for
// and the ratios blocking / non-blocking (below 1: the blocking mode is faster).
//
// Processes share the GPUs round-robin; when there are more processes than GPUs, each names
// itself a host of its own (NCCL_HOSTID) so that NCCL accepts several ranks on one GPU and
// connects them through its socket transport on the loopback interface, as the multi-process
// test does. Exits 77 without a GPU.
#include <strata/comm/mpi.hpp>
#include <strata/comm/nccl.hpp>
#include <strata/cuda/device_buffer.hpp>

#include "cli.hpp"

#include <cuda_runtime.h>
#include <mpi.h>

#include <algorithm>
#include <chrono>
#include <cstddef>
#include <cstdio>
#include <cstdlib>
#include <exception>
#include <string>
#include <string_view>
#include <vector>

namespace {

constexpr const char* program = "nccl_mode_bench";

struct Options {
  std::size_t min_bytes = 4;
  std::size_t max_bytes = std::size_t{64} << 20;
  int reps = 200;
  bool json = false;
};

Options parse(int argc, char** argv) {
  constexpr std::size_t most = std::size_t{4} << 30;
  Options o;
  for (int i = 1; i < argc; ++i) {
    const std::string_view arg = argv[i];
    auto value = [&]() -> std::string_view {
      if (i + 1 >= argc) throw cli::usage_error(std::string(arg) + " needs a value");
      return argv[++i];
    };
    if (arg == "--min-bytes") {
      o.min_bytes = cli::parse_bytes(arg, value(), most);
    } else if (arg == "--max-bytes") {
      o.max_bytes = cli::parse_bytes(arg, value(), most);
    } else if (arg == "--reps") {
      o.reps = static_cast<int>(cli::parse_size(arg, value(), 1, 100'000));
    } else if (arg == "--json") {
      o.json = true;
    } else {
      throw cli::usage_error("unknown argument \"" + std::string(arg) + "\" (try --help)");
    }
  }
  if (o.min_bytes > o.max_bytes) {
    throw cli::usage_error("--min-bytes " + std::to_string(o.min_bytes) + " exceeds --max-bytes " +
                           std::to_string(o.max_bytes));
  }
  return o;
}

double median(std::vector<double> v) {
  std::sort(v.begin(), v.end());
  return v[v.size() / 2];
}

struct Row {
  std::size_t bytes = 0;
  double call_us[2] = {0, 0};  // [non-blocking, blocking]
  double step_us[2] = {0, 0};
};

int run(const Options& o, strata::MpiComm& host, int devices) {
  std::vector<strata::NcclComm> comms;
  for (const bool blocking : {false, true}) {
    strata::NcclOptions options;
    options.device = host.rank() % devices;
    options.timeout = std::chrono::seconds(60);  // below gpu-check's limit for the run
    options.blocking = blocking;
    comms.push_back(strata::nccl_bootstrap(host, options));
  }
  std::vector<Row> rows;
  using clock = std::chrono::steady_clock;
  const auto us = [](clock::duration d) {
    return std::chrono::duration<double, std::micro>(d).count();
  };
  for (std::size_t bytes = o.min_bytes; bytes <= o.max_bytes; bytes *= 8) {
    const std::size_t n = std::max<std::size_t>(bytes / sizeof(float), 1);
    std::vector<strata::DeviceBuffer<float>> buffers;
    for (strata::NcclComm& c : comms) {
      const strata::DeviceGuard<strata::NcclRuntime> on(c.device(), c.rank());
      buffers.emplace_back(n, c.rank());
      strata::cuda_check("cudaMemsetAsync", c.rank(),
                         cudaMemsetAsync(buffers.back().data(), 0, n * sizeof(float), c.stream()));
      c.synchronize();
    }
    std::vector<double> call[2], step[2];
    const int warmup = 10;
    for (int rep = 0; rep < warmup + o.reps; ++rep) {
      for (int mode = 0; mode < 2; ++mode) {
        strata::NcclComm& c = comms[static_cast<std::size_t>(mode)];
        host.barrier();
        const auto t0 = clock::now();
        c.all_reduce(buffers[static_cast<std::size_t>(mode)].span(), strata::ReduceOp::sum);
        const auto t1 = clock::now();
        c.synchronize();
        const auto t2 = clock::now();
        if (rep >= warmup) {
          call[mode].push_back(us(t1 - t0));
          step[mode].push_back(us(t2 - t0));
        }
      }
    }
    Row r;
    r.bytes = n * sizeof(float);
    for (int mode = 0; mode < 2; ++mode) {
      r.call_us[mode] = median(call[mode]);
      r.step_us[mode] = median(step[mode]);
    }
    rows.push_back(r);
    if (bytes > o.max_bytes / 8) break;
  }
  if (host.rank() != 0) return 0;
  cudaDeviceProp prop{};
  strata::cuda_check("cudaGetDeviceProperties", 0, cudaGetDeviceProperties(&prop, 0));
  int nccl_version = 0;
  (void)ncclGetVersion(&nccl_version);
  if (o.json) {
    // Processes sharing a GPU take turns on it: their step times measure the time slicing.
    std::printf(
        "{\"gpu\":\"%s\",\"gpus\":%d,\"processes\":%d,\"shared_gpu\":%s,\"nccl\":%d,"
        "\"reps\":%d,\"rows\":[",
        prop.name, devices, host.size(), host.size() > devices ? "true" : "false", nccl_version,
        o.reps);
    for (std::size_t i = 0; i < rows.size(); ++i) {
      const Row& r = rows[i];
      std::printf(
          "%s{\"bytes\":%zu,\"nonblocking_call_us\":%.2f,\"blocking_call_us\":%.2f,"
          "\"nonblocking_step_us\":%.2f,\"blocking_step_us\":%.2f,"
          "\"blocking_over_nonblocking_call\":%.4f,\"blocking_over_nonblocking_step\":%.4f}",
          i == 0 ? "" : ",", r.bytes, r.call_us[0], r.call_us[1], r.step_us[0], r.step_us[1],
          r.call_us[1] / r.call_us[0], r.step_us[1] / r.step_us[0]);
    }
    std::printf("]}\n");
    return 0;
  }
  std::printf("%s: %d processes on %d x %s, NCCL %d, all-reduce of float32, median of %d\n",
              program, host.size(), devices, prop.name, nccl_version, o.reps);
  if (host.size() > devices) {
    std::printf(
        "(processes share a GPU: they take turns on it, so compare the call times; the "
        "step times measure the time slicing)\n");
  }
  std::printf("%12s %14s %14s %14s %14s %12s %12s\n", "bytes", "call nb (us)", "call b (us)",
              "step nb (us)", "step b (us)", "call b/nb", "step b/nb");
  for (const Row& r : rows) {
    std::printf("%12zu %14.2f %14.2f %14.2f %14.2f %12.3f %12.3f\n", r.bytes, r.call_us[0],
                r.call_us[1], r.step_us[0], r.step_us[1], r.call_us[1] / r.call_us[0],
                r.step_us[1] / r.step_us[0]);
  }
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  if (cli::asks_for_help(argc, argv)) {
    std::printf(
        "usage: mpirun -n N %s [--min-bytes N] [--max-bytes N] [--reps N] [--json]\n"
        "  NCCL's non-blocking mode against its blocking mode on one all-reduce per size,\n"
        "  from --min-bytes (default 4) to --max-bytes (default 64M) by factors of 8.\n"
        "  --reps N  timed repetitions per size and mode; medians are shown (default 200)\n"
        "  --json    one JSON object on stdout instead of the table\n",
        program);
    return 0;
  }
  Options options;
  try {
    options = parse(argc, argv);
  } catch (const cli::usage_error& e) {
    std::fprintf(stderr, "%s: %s\n", program, e.what());
    return 2;
  }
  strata::MpiEnvironment env(argc, argv);
  int rank = 0;
  MPI_Comm_rank(MPI_COMM_WORLD, &rank);
  int size = 0;
  MPI_Comm_size(MPI_COMM_WORLD, &size);
  // 0: a device, 1: none (skip), 2: CUDA cannot run. Every rank acts on the worst.
  int state = 0;
  int devices = 0;
  try {
    state = strata::cuda_device_present() ? 0 : 1;
    if (state == 0) {
      strata::cuda_check("cudaGetDeviceCount", rank, cudaGetDeviceCount(&devices));
    }
  } catch (const std::exception& e) {
    std::fprintf(stderr, "%s: rank %d: %s\n", program, rank, e.what());
    state = 2;
  }
  MPI_Allreduce(MPI_IN_PLACE, &state, 1, MPI_INT, MPI_MAX, MPI_COMM_WORLD);
  if (state == 1) {
    if (rank == 0) std::printf("%s: skipped: no CUDA device\n", program);
    return 77;
  }
  if (state == 2) return 1;
  if (size > devices) {
    const std::string host_id = "strata-nccl-mode-bench-" + std::to_string(rank);
    setenv("NCCL_HOSTID", host_id.c_str(), 1);
    setenv("NCCL_SOCKET_IFNAME", "lo", 0);
    setenv("NCCL_IB_DISABLE", "1", 0);
  }
  int rc = 0;
  try {
    strata::MpiComm host = strata::MpiComm::world();
    rc = run(options, host, devices);
  } catch (const std::exception& e) {
    std::fprintf(stderr, "%s: rank %d: %s\n", program, rank, e.what());
    rc = 1;
  }
  MPI_Allreduce(MPI_IN_PLACE, &rc, 1, MPI_INT, MPI_MAX, MPI_COMM_WORLD);
  return rc;
}
