// Throughput of one averaging step over the whole world on the local backend (ranks as threads),
// against memcpy of the same bytes measured in the same run. For 8 and 16 ranks and 1 MB to
// 256 MB of float32 parameters per rank:
//
//   avg_flat        RuntimeHierarchicalAverager "1:N" on a ParameterArena: one in-place all-reduce
//   avg_fused       ~110 separately allocated tensors (ResNet-34's parameter list, scaled) through
//                   a staging buffer: pack, one all-reduce, unpack with the 1/N scale (what the
//                   averagers do on a backend without a tensor-list all-reduce)
//   avg_zero_copy   the same tensors, LocalComm::all_reduce_tensors(ReduceOp::average): the fused
//                   average without a staging buffer, each rank reducing its slice of the
//                   concatenation straight from every rank's tensors (what the averagers call on
//                   the local backend)
//   avg_per_tensor  the same tensors, one all_reduce(ReduceOp::average) per tensor
//   memcpy          one thread copies the same bytes (the reference of every ratio)
//   memcpy_all_cores one memcpy of the same bytes per hardware thread at once: the machine's copy
//                   bandwidth; an all-reduce moves as many bytes per rank as a memcpy (reads c,
//                   writes c), so N ranks at best reach this bandwidth / N each
//   barrier         one rendezvous of N ranks: the fixed cost inside every collective
//
// Every benchmark reports bytes_per_second as bytes per rank per second (memcpy_all_cores: all
// threads together) plus the counters `ranks` and `MB`; bench/ratios.py turns the JSON output
// (--benchmark_format=json) into markdown tables of ratios.
//
// Each collective benchmark builds one LocalWorld and runs a fixed number of iterations (chosen
// from the size, so the whole run stays within minutes), on every rank: rank 0 drives the
// benchmark::State, the others run the same count (State::max_iterations). An iteration is one
// averaging step, timed on rank 0 (manual time) from the end of its previous step, so the times
// add up to the wall time of back-to-back steps, as in a training loop; one barrier after the
// last step waits for the slowest rank. One untimed step before the loop warms the caches and
// the averager's staging buffer and checks the result. Iterations are few at large sizes (3 at
// 256 MB): use --benchmark_repetitions for a median.
//
// Memory: parameters are allocated per benchmark and freed after it; the peak is avg_fused at
// 16 ranks x 256 MB, parameters plus staging, about 8 GB. Run a subset with --benchmark_filter.
#include <benchmark/benchmark.h>
#include <strata/averaging/averager.hpp>
#include <strata/comm/local.hpp>
#include <strata/hierarchy/runtime_hierarchy.hpp>
#include <strata/kernels/arena.hpp>
#include <strata/kernels/fused.hpp>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstddef>
#include <cstring>
#include <memory>
#include <span>
#include <stdexcept>
#include <string>
#include <thread>
#include <vector>

namespace {

constexpr std::size_t MiB = std::size_t{1} << 20;
constexpr int rank_counts[] = {8, 16};
constexpr std::size_t sizes_mb[] = {1, 4, 16, 64, 256};

// --- the parameter list ---------------------------------------------------------------------

// ResNet-34's parameter tensors in order (stem conv, 16 basic blocks of two 3x3 convs, 3
// downsampling 1x1 convs, a batch norm scale and shift after every conv, the classifier):
// 110 tensors. The conv and fc weights are scaled so that the list holds exactly `elements`;
// the batch norm vectors and the fc bias keep their real sizes (64 to 1000 elements), so the
// mix of a few large and many tiny tensors is a real model's.
std::vector<std::size_t> resnet_like_sizes(std::size_t elements) {
  struct Shape {
    std::size_t size;
    bool scaled;
  };
  std::vector<Shape> shapes;
  auto conv = [&](std::size_t in, std::size_t out, std::size_t k) {
    shapes.push_back({in * out * k * k, true});
    shapes.push_back({out, false});  // batch norm scale
    shapes.push_back({out, false});  // batch norm shift
  };
  conv(3, 64, 7);
  std::size_t in = 64;
  const std::size_t widths[] = {64, 128, 256, 512};
  const int blocks[] = {3, 4, 6, 3};
  for (int s = 0; s < 4; ++s) {
    for (int b = 0; b < blocks[s]; ++b) {
      conv(in, widths[s], 3);
      conv(widths[s], widths[s], 3);
      if (b == 0 && in != widths[s]) conv(in, widths[s], 1);
      in = widths[s];
    }
  }
  shapes.push_back({512 * 1000, true});  // fc weight
  shapes.push_back({1000, false});       // fc bias

  std::size_t fixed = 0;
  std::size_t scalable = 0;
  for (const Shape& s : shapes) (s.scaled ? scalable : fixed) += s.size;
  if (elements < fixed + shapes.size()) throw std::invalid_argument("resnet_like_sizes: too small");
  const double factor = static_cast<double>(elements - fixed) / static_cast<double>(scalable);
  std::vector<std::size_t> sizes;
  std::size_t total = 0;
  for (const Shape& s : shapes) {
    std::size_t n = s.size;
    if (s.scaled)
      n = std::max<std::size_t>(
          1, static_cast<std::size_t>(std::floor(static_cast<double>(n) * factor)));
    sizes.push_back(n);
    total += n;
  }
  if (total > elements) throw std::logic_error("resnet_like_sizes: rounding overshot");
  *std::max_element(sizes.begin(), sizes.end()) += elements - total;  // what floor left over
  return sizes;
}

// Rank r's initial value of element i of tensor t: multiples of 1/1024 below 16 in magnitude,
// so sums over up to 16 ranks, and their mean over a power-of-two count, are exact in float.
inline float initial(int r, std::size_t t, std::size_t i) {
  return static_cast<float>((i * 7 + t * 13) % 1024) * (1.0f / 1024) - 0.5f +
         0.03125f * static_cast<float>(r);
}
inline float expected_mean(int n, std::size_t t, std::size_t i) {
  return static_cast<float>((i * 7 + t * 13) % 1024) * (1.0f / 1024) - 0.5f +
         0.03125f * static_cast<float>(n - 1) / 2;
}

void fill(std::span<float> tensor, int rank, std::size_t t) {
  for (std::size_t i = 0; i < tensor.size(); ++i) tensor[i] = initial(rank, t, i);
}

// Throws unless every tensor holds the mean at its first, middle and last element.
void check_mean(const std::vector<std::span<float>>& tensors, int n, const char* what) {
  for (std::size_t t = 0; t < tensors.size(); ++t) {
    const std::span<float> x = tensors[t];
    if (x.empty()) continue;
    for (const std::size_t i : {std::size_t{0}, x.size() / 2, x.size() - 1}) {
      const float want = expected_mean(n, t, i);
      if (std::fabs(x[i] - want) > 1e-5f) {
        throw std::runtime_error(std::string(what) + ": tensor " + std::to_string(t) + " element " +
                                 std::to_string(i) + " is " + std::to_string(x[i]) + ", expected " +
                                 std::to_string(want));
      }
    }
  }
}

// --- the averaging variants (one object per rank) ---------------------------------------------

using Averager = strata::RuntimeHierarchicalAverager<strata::LocalComm>;

strata::RuntimeHierarchy whole_world(int ranks) {
  return strata::RuntimeHierarchy::parse("1:" + std::to_string(ranks));
}

// The tensors in one ParameterArena, averaged in place with one all-reduce.
class Flat {
 public:
  Flat(strata::LocalComm& comm, const std::vector<std::size_t>& sizes)
      : avg_(comm, whole_world(comm.size())), arena_(arena_capacity(sizes)) {
    for (std::size_t t = 0; t < sizes.size(); ++t) {
      tensors_.push_back(arena_.allocate(sizes[t]));
      fill(tensors_.back(), comm.rank(), t);
    }
  }
  void step() { avg_.average(arena_); }
  void check(int n) const { check_mean(tensors_, n, "avg_flat"); }

 private:
  static std::size_t arena_capacity(const std::vector<std::size_t>& sizes) {
    std::size_t n = 0;
    for (const std::size_t s : sizes) n += (s + 15) / 16 * 16;  // each tensor on 64 bytes
    return n;
  }
  Averager avg_;
  strata::ParameterArena<float> arena_;
  std::vector<std::span<float>> tensors_;
};

// Separately allocated tensors, as a model that was not built in an arena holds them.
class Tensors {
 public:
  Tensors(int rank, const std::vector<std::size_t>& sizes) {
    storage_.reserve(sizes.size());
    for (std::size_t t = 0; t < sizes.size(); ++t) {
      storage_.emplace_back(sizes[t]);
      tensors_.push_back(storage_.back());
      fill(tensors_.back(), rank, t);
    }
  }
  [[nodiscard]] const std::vector<std::span<float>>& spans() const { return tensors_; }

 private:
  std::vector<std::vector<float>> storage_;
  std::vector<std::span<float>> tensors_;
};

// The fused average through a staging buffer: pack, one all-reduce, unpack with the scale.
class Fused {
 public:
  Fused(strata::LocalComm& comm, const std::vector<std::size_t>& sizes)
      : comm_(&comm),
        tensors_(comm.rank(), sizes),
        plan_(tensors_.spans()),
        staging_(plan_.total_elements()) {}
  void step() {
    const std::span<float> flat(staging_);
    strata::pack(thrust::host, plan_, flat);
    comm_->all_reduce(flat, strata::ReduceOp::sum);
    strata::unpack(thrust::host, std::span<const float>(flat), plan_,
                   1.0f / static_cast<float>(comm_->size()));
  }
  void check(int n) const { check_mean(tensors_.spans(), n, "avg_fused"); }

 private:
  strata::LocalComm* comm_;
  Tensors tensors_;
  strata::FusedPlan<float> plan_;
  std::vector<float> staging_;
};

// The fused average in place: one collective reads and writes the tensors themselves.
class ZeroCopy {
 public:
  ZeroCopy(strata::LocalComm& comm, const std::vector<std::size_t>& sizes)
      : comm_(&comm), tensors_(comm.rank(), sizes) {}
  void step() {
    comm_->all_reduce_tensors(std::span<const std::span<float>>(tensors_.spans()),
                              strata::ReduceOp::average);
  }
  void check(int n) const { check_mean(tensors_.spans(), n, "avg_zero_copy"); }

 private:
  strata::LocalComm* comm_;
  Tensors tensors_;
};

// The unfused baseline: one collective per tensor, the 1/N scale inside the reduction.
class PerTensor {
 public:
  PerTensor(strata::LocalComm& comm, const std::vector<std::size_t>& sizes)
      : comm_(&comm), tensors_(comm.rank(), sizes) {}
  void step() {
    for (const std::span<float> t : tensors_.spans())
      comm_->all_reduce(t, strata::ReduceOp::average);
  }
  void check(int n) const { check_mean(tensors_.spans(), n, "avg_per_tensor"); }

 private:
  strata::LocalComm* comm_;
  Tensors tensors_;
};

// A bare rendezvous.
class Barrier {
 public:
  Barrier(strata::LocalComm& comm, const std::vector<std::size_t>&) : comm_(&comm) {}
  void step() { comm_->barrier(); }
  void check(int) const {}

 private:
  strata::LocalComm* comm_;
};

// --- the harness --------------------------------------------------------------------------------

using Clock = std::chrono::steady_clock;

void set_counters(benchmark::State& state, int ranks, std::size_t mb) {
  state.counters["ranks"] = ranks;
  state.counters["MB"] = static_cast<double>(mb);
}

// Runs `Variant::step` on every rank of a fresh LocalWorld, state.max_iterations times after one
// checked warm-up step. Rank 0 reads the clock after each of its steps, so the iteration times
// add up to the wall time of the whole loop with nothing between steps; a barrier after the last
// step (counted in the last iteration) waits for the slowest rank.
template <class Variant>
void collective_bench(benchmark::State& state, int ranks, std::size_t mb) {
  const std::size_t bytes = mb * MiB;
  const std::vector<std::size_t> sizes =
      bytes == 0 ? std::vector<std::size_t>{} : resnet_like_sizes(bytes / sizeof(float));
  const benchmark::IterationCount iterations = state.max_iterations;
  strata::LocalWorld world(ranks);
  try {
    world.run([&](strata::LocalComm& comm) {
      Variant v(comm, sizes);
      v.step();
      v.check(comm.size());
      comm.barrier();
      if (comm.rank() == 0) {
        benchmark::IterationCount i = 0;
        auto last = Clock::now();
        for (auto _ : state) {
          v.step();
          if (++i == iterations) comm.barrier();
          const auto now = Clock::now();
          state.SetIterationTime(std::chrono::duration<double>(now - last).count());
          last = now;
        }
      } else {
        for (benchmark::IterationCount i = 0; i < iterations; ++i) v.step();
        comm.barrier();
      }
    });
  } catch (const std::exception& e) {
    state.SkipWithError(e.what());
    return;
  }
  state.SetBytesProcessed(state.iterations() * static_cast<std::int64_t>(bytes));
  set_counters(state, ranks, mb);
}

// One thread copies `mb` MB between two buffers it has touched before.
void memcpy_bench(benchmark::State& state, std::size_t mb) {
  const std::size_t bytes = mb * MiB;
  std::vector<float> src(bytes / sizeof(float));
  std::vector<float> dst(src.size());
  fill(src, 0, 0);
  std::memcpy(dst.data(), src.data(), bytes);
  for (auto _ : state) {
    std::memcpy(dst.data(), src.data(), bytes);
    benchmark::DoNotOptimize(dst.data());
    benchmark::ClobberMemory();
  }
  state.SetBytesProcessed(state.iterations() * static_cast<std::int64_t>(bytes));
  set_counters(state, 1, mb);
}

// Every hardware thread copies `mb` MB of its own at once, timed as collective_bench times a
// step; an iteration is enough copies for at least 16 MB per thread, so that small sizes measure
// copies, not thread skew. bytes_per_second is the total of all threads.
void memcpy_all_cores_bench(benchmark::State& state, std::size_t mb) {
  const std::size_t bytes = mb * MiB;
  const std::size_t repeats = std::max<std::size_t>(1, 16 / mb);
  const int threads = static_cast<int>(std::max(1u, std::thread::hardware_concurrency()));
  const benchmark::IterationCount iterations = state.max_iterations;
  strata::LocalWorld world(threads);
  world.run([&](strata::LocalComm& comm) {
    std::vector<float> src(bytes / sizeof(float));
    std::vector<float> dst(src.size());
    fill(src, comm.rank(), 0);
    std::memcpy(dst.data(), src.data(), bytes);
    comm.barrier();
    auto copy = [&] {
      for (std::size_t k = 0; k < repeats; ++k) {
        std::memcpy(dst.data(), src.data(), bytes);
        benchmark::DoNotOptimize(dst.data());
        benchmark::ClobberMemory();
      }
    };
    if (comm.rank() == 0) {
      benchmark::IterationCount i = 0;
      auto last = Clock::now();
      for (auto _ : state) {
        copy();
        if (++i == iterations) comm.barrier();
        const auto now = Clock::now();
        state.SetIterationTime(std::chrono::duration<double>(now - last).count());
        last = now;
      }
    } else {
      for (benchmark::IterationCount i = 0; i < iterations; ++i) copy();
      comm.barrier();
    }
  });
  state.SetBytesProcessed(state.iterations() * threads *
                          static_cast<std::int64_t>(repeats * bytes));
  set_counters(state, threads, mb);
}

// Iterations for about `seconds` of work at `bytes_per_second` (a rough guess for this kind of
// step on a small machine), at least `lo`: enough to average out scheduling noise, few enough
// that the largest sizes take seconds, not minutes.
benchmark::IterationCount iterations_for(double bytes, double bytes_per_second, double seconds,
                                         benchmark::IterationCount lo,
                                         benchmark::IterationCount hi) {
  const auto n = static_cast<benchmark::IterationCount>(seconds * bytes_per_second / bytes);
  return std::clamp(n, lo, hi);
}

void register_all() {
  for (const int ranks : rank_counts) {
    const std::string name = "barrier/ranks:" + std::to_string(ranks);
    benchmark::RegisterBenchmark(
        name.c_str(), [ranks](benchmark::State& s) { collective_bench<Barrier>(s, ranks, 0); })
        ->Iterations(2000)
        ->UseManualTime()
        ->Unit(benchmark::kMicrosecond);
  }
  for (const std::size_t mb : sizes_mb) {
    const double bytes = static_cast<double>(mb * MiB);
    const std::string size = "MB:" + std::to_string(mb);
    benchmark::RegisterBenchmark(("memcpy/" + size).c_str(),
                                 [mb](benchmark::State& s) { memcpy_bench(s, mb); })
        ->Iterations(iterations_for(bytes, 10e9, 0.3, 5, 5000))
        ->UseRealTime()
        ->Unit(benchmark::kMillisecond);
    benchmark::RegisterBenchmark(("memcpy_all_cores/" + size).c_str(),
                                 [mb](benchmark::State& s) { memcpy_all_cores_bench(s, mb); })
        ->Iterations(iterations_for(std::max(bytes, 16.0 * MiB), 10e9, 0.3, 5, 5000))
        ->UseManualTime()
        ->Unit(benchmark::kMillisecond);
    for (const int ranks : rank_counts) {
      // Guessed rank-bytes per second of a step: the flat and zero-copy all-reduces move each
      // rank's bytes about once on a shared pair of cores, the fused one about three times (pack,
      // reduce, unpack); one collective per tensor costs ~220 rendezvous (ms) at any size, hence its cap.
      const double world_bytes = bytes * ranks;
      const std::string suffix = "/ranks:" + std::to_string(ranks) + "/" + size;
      benchmark::RegisterBenchmark(
          ("avg_flat" + suffix).c_str(),
          [ranks, mb](benchmark::State& s) { collective_bench<Flat>(s, ranks, mb); })
          ->Iterations(iterations_for(world_bytes, 8e9, 0.5, 3, 1000))
          ->UseManualTime()
          ->Unit(benchmark::kMillisecond);
      benchmark::RegisterBenchmark(
          ("avg_fused" + suffix).c_str(),
          [ranks, mb](benchmark::State& s) { collective_bench<Fused>(s, ranks, mb); })
          ->Iterations(iterations_for(world_bytes, 3e9, 0.5, 3, 1000))
          ->UseManualTime()
          ->Unit(benchmark::kMillisecond);
      benchmark::RegisterBenchmark(
          ("avg_zero_copy" + suffix).c_str(),
          [ranks, mb](benchmark::State& s) { collective_bench<ZeroCopy>(s, ranks, mb); })
          ->Iterations(iterations_for(world_bytes, 8e9, 0.5, 3, 1000))
          ->UseManualTime()
          ->Unit(benchmark::kMillisecond);
      benchmark::RegisterBenchmark(
          ("avg_per_tensor" + suffix).c_str(),
          [ranks, mb](benchmark::State& s) { collective_bench<PerTensor>(s, ranks, mb); })
          ->Iterations(iterations_for(world_bytes, 8e9, 0.5, 3, 30))
          ->UseManualTime()
          ->Unit(benchmark::kMillisecond);
    }
  }
}

}  // namespace

int main(int argc, char** argv) {
  benchmark::Initialize(&argc, argv);
  if (benchmark::ReportUnrecognizedArguments(argc, argv)) return 1;
  register_all();
  benchmark::RunSpecifiedBenchmarks();
  benchmark::Shutdown();
  return 0;
}
