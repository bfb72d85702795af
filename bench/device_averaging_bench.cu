// The device side of a fused averaging step against the copy it must beat, in one run on one
// stream:
//
//   device_averaging_bench [--min-bytes 1M] [--max-bytes 1G] [--tensors 64] [--reps 20] [--json]
//
// For each size, from --min-bytes to --max-bytes by factors of 4, the parameters (float32, split
// into --tensors tensors of equal size, each in its own 256-byte aligned slot) are moved three
// ways:
//   memcpy  one cudaMemcpyAsync device-to-device of the same bytes: the floor for moving them once
//   fused   strata::cuda::pack into the flat buffer, then strata::cuda::unpack back with the 1/g of
//           the mean fused in: all of an averaging's device traffic except the collective itself
//   graph   the same two kernels captured once in a CUDA graph and replayed, which removes the
//           host's launch overhead from the small sizes
// Each is timed with CUDA events around every repetition; the table shows the median. The fused
// step moves the bytes twice (in and out of the flat buffer), so besides the ratio to memcpy each
// row gives the bandwidth of each form counted as bytes read plus bytes written: memcpy 2x size,
// fused 4x size. Exits 77 without a GPU; sizes that do not fit in free device memory are skipped.
#include <strata/kernels/multi_tensor.cuh>

#include "cli.hpp"

#include <cuda_runtime.h>

#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <exception>
#include <functional>
#include <span>
#include <string>
#include <string_view>
#include <vector>

namespace {

constexpr const char* program = "device_averaging_bench";
constexpr std::size_t mib = std::size_t{1} << 20;

struct Options {
  std::size_t min_bytes = mib;
  std::size_t max_bytes = 1024 * mib;
  std::size_t tensors = 64;
  int reps = 20;
  bool json = false;
};

void print_help() {
  std::printf(
      "usage: %s [--min-bytes N] [--max-bytes N] [--tensors N] [--reps N] [--json]\n"
      "  Times, on the current GPU, a device-to-device cudaMemcpyAsync of each size against the\n"
      "  fused pack + unpack of the same bytes split into --tensors float tensors, launched\n"
      "  directly and replayed as a CUDA graph. Sizes go from --min-bytes (default 1M) to\n"
      "  --max-bytes (default 1G) by factors of 4; K, M and G are binary suffixes.\n"
      "  --tensors N  tensors per size (default 64)\n"
      "  --reps N     timed repetitions per measurement; the median is shown (default 20)\n"
      "  --json       one JSON object on stdout instead of the table\n"
      "  Exits 77 when no CUDA device is present.\n",
      program);
}

Options parse(int argc, char** argv) {
  Options o;
  for (int i = 1; i < argc; ++i) {
    const std::string_view arg = argv[i];
    const auto value = [&]() -> std::string_view {
      if (i + 1 >= argc) throw cli::usage_error(std::string(arg) + " needs a value");
      return argv[++i];
    };
    if (arg == "--min-bytes") o.min_bytes = cli::parse_bytes(arg, value());
    else if (arg == "--max-bytes") o.max_bytes = cli::parse_bytes(arg, value());
    else if (arg == "--tensors") o.tensors = cli::parse_size(arg, value(), 1, 1'000'000);
    else if (arg == "--reps") o.reps = static_cast<int>(cli::parse_size(arg, value(), 1, 100'000));
    else if (arg == "--json") o.json = true;
    else throw cli::usage_error("unknown argument \"" + std::string(arg) + "\" (try --help)");
  }
  if (o.min_bytes > o.max_bytes) {
    throw cli::usage_error("--min-bytes " + std::to_string(o.min_bytes) + " exceeds --max-bytes " +
                           std::to_string(o.max_bytes));
  }
  return o;
}

void check(const char* call, cudaError_t e) { strata::cuda_check(call, -1, e); }

// Owners, so that every exit path frees what it made.
struct DeviceMemory {
  void* p = nullptr;
  explicit DeviceMemory(std::size_t bytes) { check("cudaMalloc", cudaMalloc(&p, bytes)); }
  DeviceMemory(const DeviceMemory&) = delete;
  DeviceMemory& operator=(const DeviceMemory&) = delete;
  ~DeviceMemory() { (void)cudaFree(p); }
};

struct Event {
  cudaEvent_t e = nullptr;
  Event() { check("cudaEventCreate", cudaEventCreate(&e)); }
  Event(const Event&) = delete;
  Event& operator=(const Event&) = delete;
  ~Event() { (void)cudaEventDestroy(e); }
};

struct Graph {
  cudaGraph_t graph = nullptr;
  cudaGraphExec_t exec = nullptr;
  Graph() = default;
  Graph(const Graph&) = delete;
  Graph& operator=(const Graph&) = delete;
  ~Graph() {
    if (exec != nullptr) (void)cudaGraphExecDestroy(exec);
    if (graph != nullptr) (void)cudaGraphDestroy(graph);
  }
};

// Median milliseconds of `reps` runs of `enqueue` on `stream`, after two untimed ones. Each run
// has its own pair of events, so one slow run shifts the median by one place, not the mean.
double median_ms(cudaStream_t stream, int reps, const std::function<void()>& enqueue) {
  for (int i = 0; i < 2; ++i) enqueue();
  std::vector<Event> starts(static_cast<std::size_t>(reps));
  std::vector<Event> stops(static_cast<std::size_t>(reps));
  for (std::size_t i = 0; i < starts.size(); ++i) {
    check("cudaEventRecord", cudaEventRecord(starts[i].e, stream));
    enqueue();
    check("cudaEventRecord", cudaEventRecord(stops[i].e, stream));
  }
  check("cudaStreamSynchronize", cudaStreamSynchronize(stream));
  std::vector<double> ms;
  for (std::size_t i = 0; i < starts.size(); ++i) {
    float t = 0;
    check("cudaEventElapsedTime", cudaEventElapsedTime(&t, starts[i].e, stops[i].e));
    ms.push_back(t);
  }
  std::sort(ms.begin(), ms.end());
  return ms[ms.size() / 2];
}

struct Row {
  std::size_t bytes = 0;
  double memcpy_ms = 0;
  double fused_ms = 0;
  double graph_ms = 0;
  int launches = 0;
};

double gb_per_s(double bytes, double ms) { return ms > 0 ? bytes / (ms * 1e6) : 0; }

Row measure(std::size_t bytes, const Options& o, cudaStream_t stream) {
  constexpr std::size_t slot_align = 256 / sizeof(float);  // as cudaMalloc would place them
  const std::size_t elements = bytes / sizeof(float);
  const std::size_t count = std::min(o.tensors, elements);
  std::vector<std::size_t> sizes(count, elements / count);
  sizes.back() += elements % count;
  std::vector<std::size_t> starts;
  std::size_t cursor = 0;
  for (const std::size_t n : sizes) {
    starts.push_back(cursor);
    cursor = (cursor + n + slot_align - 1) / slot_align * slot_align;
  }

  DeviceMemory model(cursor * sizeof(float));
  DeviceMemory flat_memory(elements * sizeof(float));
  auto* base = static_cast<float*>(model.p);
  auto* flat = static_cast<float*>(flat_memory.p);
  check("cudaMemsetAsync", cudaMemsetAsync(base, 0, cursor * sizeof(float), stream));
  std::vector<std::span<float>> tensors;
  for (std::size_t k = 0; k < count; ++k) tensors.emplace_back(base + starts[k], sizes[k]);
  const strata::FusedPlan<float> plan(tensors);
  const strata::DeviceChunkTable<float> table(plan, stream);
  const strata::ChunkTable<float> view = table.view();
  constexpr float mean = 1.0f / 8;  // an averaging over 8 ranks

  Row row;
  row.bytes = elements * sizeof(float);
  row.launches = 2 * strata::cuda::launches_for(elements);
  row.memcpy_ms = median_ms(stream, o.reps, [&] {
    check("cudaMemcpyAsync",
          cudaMemcpyAsync(flat, base, row.bytes, cudaMemcpyDeviceToDevice, stream));
  });
  const auto step = [&] {
    check("strata::cuda::pack", strata::cuda::pack(view, flat, 1.0f, stream));
    check("strata::cuda::unpack", strata::cuda::unpack<float>(flat, view, mean, stream));
  };
  row.fused_ms = median_ms(stream, o.reps, step);

  Graph g;
  check("cudaStreamBeginCapture", cudaStreamBeginCapture(stream, cudaStreamCaptureModeGlobal));
  const cudaError_t packed = strata::cuda::pack(view, flat, 1.0f, stream);
  const cudaError_t unpacked = strata::cuda::unpack<float>(flat, view, mean, stream);
  const cudaError_t ended = cudaStreamEndCapture(stream, &g.graph);  // ends it, even on failure
  check("strata::cuda::pack (captured)", packed);
  check("strata::cuda::unpack (captured)", unpacked);
  check("cudaStreamEndCapture", ended);
  check("cudaGraphInstantiate", cudaGraphInstantiate(&g.exec, g.graph, 0));
  row.graph_ms =
      median_ms(stream, o.reps, [&] { check("cudaGraphLaunch", cudaGraphLaunch(g.exec, stream)); });
  check("cudaStreamSynchronize", cudaStreamSynchronize(stream));
  return row;
}

std::string json_string(std::string_view s) {
  std::string out = "\"";
  for (const char c : s) {
    if (c == '"' || c == '\\') {
      out += '\\';
      out += c;
    } else if (static_cast<unsigned char>(c) < 0x20) {
      char buf[8];
      std::snprintf(buf, sizeof buf, "\\u%04x", static_cast<unsigned>(c));
      out += buf;
    } else {
      out += c;
    }
  }
  return out + "\"";
}

int run(const Options& o) {
  if (!strata::cuda_device_present()) {
    std::fprintf(stderr, "%s: skipped: no CUDA device\n", program);
    return 77;
  }
  int device = 0;
  check("cudaGetDevice", cudaGetDevice(&device));
  cudaDeviceProp prop{};
  check("cudaGetDeviceProperties", cudaGetDeviceProperties(&prop, device));
  cudaStream_t stream = nullptr;
  check("cudaStreamCreateWithFlags", cudaStreamCreateWithFlags(&stream, cudaStreamNonBlocking));

  std::vector<Row> rows;
  std::vector<std::size_t> skipped;
  try {
    for (std::size_t bytes = o.min_bytes; bytes <= o.max_bytes;) {
      std::size_t free_bytes = 0;
      std::size_t total_bytes = 0;
      check("cudaMemGetInfo", cudaMemGetInfo(&free_bytes, &total_bytes));
      // Parameters and flat buffer, the slots' padding, the chunk table, and a margin for the
      // runtime's own allocations.
      const std::size_t padding = o.tensors * 256;
      const std::size_t table_bytes =
          (bytes / sizeof(float) / strata::default_chunk_elements + o.tensors + 1) *
          sizeof(strata::TensorChunk<float>);
      const std::size_t needed = 2 * bytes + padding + table_bytes + 64 * mib;
      if (bytes < sizeof(float) || needed > free_bytes) {
        skipped.push_back(bytes);
        if (!o.json && bytes < sizeof(float)) {
          std::fprintf(stderr, "%s: skipping %zu bytes: less than one float\n", program, bytes);
        } else if (!o.json) {
          std::fprintf(stderr,
                       "%s: skipping %zu bytes: needs %zu bytes of device memory, %zu "
                       "free\n",
                       program, bytes, needed, free_bytes);
        }
      } else {
        rows.push_back(measure(bytes, o, stream));
      }
      if (bytes > o.max_bytes / 4) break;
      bytes *= 4;
    }
  } catch (...) {
    (void)cudaStreamDestroy(stream);
    throw;
  }
  check("cudaStreamDestroy", cudaStreamDestroy(stream));

  if (o.json) {
    std::printf(
        "{\"gpu\":%s,\"sm_count\":%d,\"tensors\":%zu,\"reps\":%d,"
        "\"launches_per_averaging\":%d,\"rows\":[",
        json_string(prop.name).c_str(), prop.multiProcessorCount, o.tensors, o.reps,
        2 * strata::cuda::launches_for(1));
    for (std::size_t i = 0; i < rows.size(); ++i) {
      const Row& r = rows[i];
      const double b = static_cast<double>(r.bytes);
      std::printf(
          "%s{\"bytes\":%zu,\"memcpy_ms\":%.6f,\"fused_ms\":%.6f,\"graph_ms\":%.6f,"
          "\"fused_over_memcpy\":%.4f,\"graph_over_memcpy\":%.4f,\"memcpy_gb_s\":%.2f,"
          "\"fused_gb_s\":%.2f,\"graph_gb_s\":%.2f,\"launches\":%d}",
          i == 0 ? "" : ",", r.bytes, r.memcpy_ms, r.fused_ms, r.graph_ms, r.fused_ms / r.memcpy_ms,
          r.graph_ms / r.memcpy_ms, gb_per_s(2 * b, r.memcpy_ms), gb_per_s(4 * b, r.fused_ms),
          gb_per_s(4 * b, r.graph_ms), r.launches);
    }
    std::printf("],\"skipped_bytes\":[");
    for (std::size_t i = 0; i < skipped.size(); ++i) {
      std::printf("%s%zu", i == 0 ? "" : ",", skipped[i]);
    }
    std::printf("]}\n");
    return 0;
  }

  std::printf("GPU: %s (%d SMs)\n", prop.name, prop.multiProcessorCount);
  std::printf(
      "%zu float tensors per size; median of %d reps; %d kernel launches per averaging "
      "(pack, unpack)\n",
      o.tensors, o.reps, 2 * strata::cuda::launches_for(1));
  std::printf("GB/s counts bytes read + written: memcpy moves 2x the size, pack + unpack 4x\n\n");
  std::printf("%12s %11s %10s %10s %13s %12s %12s %11s %11s %9s\n", "bytes", "memcpy ms",
              "fused ms", "graph ms", "fused/memcpy", "graph/memcpy", "memcpy GB/s", "fused GB/s",
              "graph GB/s", "launches");
  for (const Row& r : rows) {
    const double b = static_cast<double>(r.bytes);
    std::printf("%12zu %11.4f %10.4f %10.4f %13.2f %12.2f %12.1f %11.1f %11.1f %9d\n", r.bytes,
                r.memcpy_ms, r.fused_ms, r.graph_ms, r.fused_ms / r.memcpy_ms,
                r.graph_ms / r.memcpy_ms, gb_per_s(2 * b, r.memcpy_ms), gb_per_s(4 * b, r.fused_ms),
                gb_per_s(4 * b, r.graph_ms), r.launches);
  }
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  try {
    if (cli::asks_for_help(argc, argv)) {
      print_help();
      return 0;
    }
    return run(parse(argc, argv));
  } catch (const cli::usage_error& e) {
    std::fprintf(stderr, "%s: %s\n", program, e.what());
    return 2;
  } catch (const std::exception& e) {
    std::fprintf(stderr, "%s: %s\n", program, e.what());
    return 1;
  }
}
