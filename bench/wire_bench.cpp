// Averaging with compressed wires against the native float32 average, in one run:
//
//   wire_bench [Google Benchmark flags]           8 ranks of the local backend, and the host codec
//   mpirun -np 8 wire_bench --mpi [--sizes-mb 1,4,16] [--reps N]      8 MPI processes
//
// For 1, 4 and 16 MB of float32 values per rank (a pseudo-gradient a - p, flat), one averaging
// over all ranks, in place, as the averagers run it on a level that keeps an anchor:
//
//   fp32   all_reduce(ReduceOp::average): the native wire; its bytes are counted as a ring
//          all-reduce's, 2 (g - 1) / g x 4n per rank
//   bf16, fp16, int8
//          compressed_average in that wire format: an all-to-all of the encoded chunks to their
//          owners, the owners' decode-sum-encode, an all-gather; bytes per rank are
//          compressed_average_bytes
//
// and, on one thread, the host codec alone: wire_encode and wire_decode of the same sizes, in
// GB/s of float32 values (4 bytes per value).
//
// The Google Benchmark mode reports per benchmark the time per averaging (manual time: rank 0's
// clock from the end of its previous step, a barrier after the last one, as in
// bench/averaging_bench.cpp), bytes_per_second of values averaged per rank, and the counters
// bytes_sent (per rank per averaging) and bytes_ratio (to fp32); after the run it prints a
// markdown summary with the time ratio to fp32 of the same size (on stdout; on stderr when the
// display format is JSON). The MPI mode times each variant as bench/mpi_averaging_bench.cpp does
// (the slowest rank's step between barriers, cold caches, variants in turns, the median over the
// rounds) and prints the same summary.
//
// In the MPI mode, sizes and the rep count are whole numbers above 0, and any other flag is
// refused: one line on stderr and exit status 2.
//
// Bytes are what a network would carry. On one machine the transfers are memory copies, so the
// time also pays for encoding and decoding on the CPU, which a fast link may not repay.
#include <benchmark/benchmark.h>
#include <strata/comm/compressed_average.hpp>
#include <strata/comm/local.hpp>
#include <strata/kernels/wire_codec.hpp>

#ifdef STRATA_BENCH_HAVE_MPI
#include <strata/comm/mpi.hpp>
#endif

#include <algorithm>
#include <charconv>
#include <chrono>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <functional>
#include <map>
#include <stdexcept>
#include <string>
#include <string_view>
#include <type_traits>
#include <vector>

namespace {

constexpr std::size_t MiB = std::size_t{1} << 20;
constexpr int local_ranks = 8;
constexpr std::size_t sizes_mb[] = {1, 4, 16};

// The wires compared, fp32 (native) first: the reference of every ratio.
constexpr strata::WireFormat wires[] = {strata::WireFormat::native, strata::WireFormat::bf16,
                                        strata::WireFormat::fp16, strata::WireFormat::int8};

std::string wire_label(strata::WireFormat f) {
  return f == strata::WireFormat::native ? "fp32" : std::string(strata::wire_name(f));
}

// Bytes one rank sends in one averaging of n values over g ranks: a ring all-reduce's for the
// native wire, what compressed_average sends otherwise.
double bytes_sent(strata::WireFormat f, std::size_t n, int g) {
  if (f == strata::WireFormat::native) {
    return 2.0 * (g - 1) / g * 4.0 * static_cast<double>(n);
  }
  return static_cast<double>(strata::compressed_average_bytes(f, n, static_cast<std::size_t>(g)));
}

// Rank r's value i: a pseudo-gradient of magnitude ~0.01 whose sign and size vary along the
// vector and between ranks, so that every int8 block has its own scale.
inline float value(int r, std::size_t i) {
  return 0.01f * std::sin(0.001f * static_cast<float>(i) + static_cast<float>(r)) +
         0.0005f * static_cast<float>(r % 3);
}

void fill(std::vector<float>& x, int rank) {
  for (std::size_t i = 0; i < x.size(); ++i) x[i] = value(rank, i);
}

// Throws unless `got` is the mean over g ranks within the wire's rounding: each value rounded
// twice, by at most wire_unit times the largest magnitude in (a looser bound than the per-block
// one of compressed_average, but one that catches a broken average).
void check_mean(const std::vector<float>& got, int g, strata::WireFormat f) {
  double largest_in = 0, largest_out = 0;
  for (std::size_t i = 0; i < got.size(); ++i) {
    for (int r = 0; r < g; ++r) largest_in = std::max(largest_in, std::fabs(double(value(r, i))));
    largest_out = std::max(largest_out, std::fabs(double(got[i])));
  }
  const double tolerance = strata::wire_unit(f) * (largest_in + largest_out) * 1.001 + 1e-6;
  for (std::size_t i = 0; i < got.size(); ++i) {
    double mean = 0;
    for (int r = 0; r < g; ++r) mean += value(r, i);
    mean /= g;
    if (std::fabs(got[i] - mean) > tolerance) {
      throw std::runtime_error(wire_label(f) + ": value " + std::to_string(i) + " is " +
                               std::to_string(got[i]) + ", the mean " + std::to_string(mean));
    }
  }
}

// One averaging in place, as the averagers run it on their difference buffer.
template <class Comm>
void average(Comm& comm, std::vector<float>& x, strata::WireFormat f) {
  if (f == strata::WireFormat::native) {
    comm.all_reduce(std::span<float>(x), strata::ReduceOp::average);
  } else {
    strata::compressed_average(comm, std::span<const float>(x), std::span<float>(x), f);
  }
}

// --- the summary ------------------------------------------------------------------------------

struct Row {
  double seconds = 0;  // per averaging
  double bytes = 0;    // sent per rank per averaging
};

struct CodecRow {
  double encode_seconds = 0;
  double decode_seconds = 0;
};

std::string summary(const std::vector<std::size_t>& mbs,
                    const std::map<std::pair<std::size_t, int>, Row>& rows,
                    const std::map<std::pair<std::size_t, int>, CodecRow>& codec, int ranks,
                    const char* backend) {
  std::string out;
  char line[256];
  std::snprintf(line, sizeof line,
                "\nAveraging over %d ranks (%s), float32 values, in place\n\n"
                "| MB/rank | wire | ms per average | time / fp32 | bytes sent per rank | "
                "bytes / fp32 |\n| ---: | --- | ---: | ---: | ---: | ---: |\n",
                ranks, backend);
  out += line;
  for (const std::size_t mb : mbs) {
    const auto base = rows.find({mb, 0});
    for (int w = 0; w < 4; ++w) {
      const auto it = rows.find({mb, w});
      if (it == rows.end()) continue;
      const double t_ratio = base != rows.end() ? it->second.seconds / base->second.seconds : 0;
      const double b_ratio = base != rows.end() ? it->second.bytes / base->second.bytes : 0;
      std::snprintf(line, sizeof line, "| %zu | %s | %.3f | %.2f | %.0f | %.3f |\n", mb,
                    wire_label(wires[w]).c_str(), it->second.seconds * 1e3, t_ratio,
                    it->second.bytes, b_ratio);
      out += line;
    }
  }
  if (codec.empty()) return out;
  out +=
      "\nHost codec, one thread (GB/s of float32 values)\n\n"
      "| MB | wire | encode GB/s | decode GB/s | encode + decode GB/s |\n"
      "| ---: | --- | ---: | ---: | ---: |\n";
  for (const std::size_t mb : mbs) {
    for (int w = 1; w < 4; ++w) {
      const auto it = codec.find({mb, w});
      if (it == codec.end() || it->second.encode_seconds <= 0 || it->second.decode_seconds <= 0) {
        continue;
      }
      const double bytes = static_cast<double>(mb * MiB);
      std::snprintf(line, sizeof line, "| %zu | %s | %.2f | %.2f | %.2f |\n", mb,
                    wire_label(wires[w]).c_str(), bytes / it->second.encode_seconds / 1e9,
                    bytes / it->second.decode_seconds / 1e9,
                    bytes / (it->second.encode_seconds + it->second.decode_seconds) / 1e9);
      out += line;
    }
  }
  return out;
}

// --- Google Benchmark: the local backend and the codec ------------------------------------------

using Clock = std::chrono::steady_clock;

// One averaging per iteration on every rank of a fresh LocalWorld, after one checked warm-up
// averaging; rank 0 drives the state, the others run the same count.
void average_bench(benchmark::State& state, strata::WireFormat f, std::size_t mb) {
  const std::size_t n = mb * MiB / sizeof(float);
  const benchmark::IterationCount iterations = state.max_iterations;
  strata::LocalWorld world(local_ranks);
  try {
    world.run([&](strata::LocalComm& comm) {
      std::vector<float> x(n);
      fill(x, comm.rank());
      average(comm, x, f);
      if (comm.rank() == 0) check_mean(x, comm.size(), f);
      comm.barrier();
      if (comm.rank() == 0) {
        benchmark::IterationCount i = 0;
        auto last = Clock::now();
        for (auto _ : state) {
          average(comm, x, f);
          if (++i == iterations) comm.barrier();
          const auto now = Clock::now();
          state.SetIterationTime(std::chrono::duration<double>(now - last).count());
          last = now;
        }
      } else {
        for (benchmark::IterationCount i = 0; i < iterations; ++i) average(comm, x, f);
        comm.barrier();
      }
    });
  } catch (const std::exception& e) {
    state.SkipWithError(e.what());
    return;
  }
  state.SetBytesProcessed(state.iterations() * static_cast<std::int64_t>(mb * MiB));
  state.counters["ranks"] = local_ranks;
  state.counters["MB"] = static_cast<double>(mb);
  state.counters["bytes_sent"] = bytes_sent(f, n, local_ranks);
  state.counters["bytes_ratio"] =
      bytes_sent(f, n, local_ranks) / bytes_sent(strata::WireFormat::native, n, local_ranks);
}

// wire_encode or wire_decode of `mb` MB of float32 values on one thread.
void codec_bench(benchmark::State& state, strata::WireFormat f, std::size_t mb, bool encode) {
  const std::size_t n = mb * MiB / sizeof(float);
  std::vector<float> x(n);
  fill(x, 1);
  std::vector<std::uint8_t> wire(strata::wire_bytes(f, n));
  strata::wire_encode(f, x.data(), n, wire.data());
  for (auto _ : state) {
    if (encode) {
      strata::wire_encode(f, x.data(), n, wire.data());
      benchmark::DoNotOptimize(wire.data());
    } else {
      strata::wire_decode(f, wire.data(), n, x.data());
      benchmark::DoNotOptimize(x.data());
    }
    benchmark::ClobberMemory();
  }
  state.SetBytesProcessed(state.iterations() * static_cast<std::int64_t>(mb * MiB));
  state.counters["MB"] = static_cast<double>(mb);
}

// Names: "average/<wire>/MB:<mb>", "encode/<wire>/MB:<mb>", "decode/<wire>/MB:<mb>".
void register_all() {
  for (const std::size_t mb : sizes_mb) {
    const std::string size = "/MB:" + std::to_string(mb);
    for (const strata::WireFormat f : wires) {
      // About 0.5 s of averaging per benchmark on 2 cores (a guess from the local backend's
      // figures and the codec's), never fewer than 5 averagings.
      const auto iterations =
          static_cast<benchmark::IterationCount>(std::max<std::size_t>(5, 64 / mb));
      benchmark::RegisterBenchmark(("average/" + wire_label(f) + size).c_str(),
                                   [f, mb](benchmark::State& s) { average_bench(s, f, mb); })
          ->Iterations(iterations)
          ->UseManualTime()
          ->Unit(benchmark::kMillisecond);
    }
    for (const strata::WireFormat f : wires) {
      if (f == strata::WireFormat::native) continue;
      for (const bool encode : {true, false}) {
        benchmark::RegisterBenchmark(
            ((encode ? "encode/" : "decode/") + wire_label(f) + size).c_str(),
            [f, mb, encode](benchmark::State& s) { codec_bench(s, f, mb, encode); })
            ->MinTime(0.3)
            ->UseRealTime()
            ->Unit(benchmark::kMillisecond);
      }
    }
  }
}

// Keeps what the summary needs of each run while the display reporter prints it.
template <class Base>
class Recorder : public Base {
 public:
  void ReportRuns(const std::vector<benchmark::BenchmarkReporter::Run>& runs) override {
    for (const auto& run : runs) {
      if (run.run_type != benchmark::BenchmarkReporter::Run::RT_Iteration || run.error_occurred) {
        continue;
      }
      const double seconds =
          run.GetAdjustedRealTime() / benchmark::GetTimeUnitMultiplier(run.time_unit);
      times_[run.benchmark_name()].push_back(seconds);
    }
    Base::ReportRuns(runs);
  }

  // The median over repetitions of the run whose name starts with `prefix`, or 0.
  [[nodiscard]] double seconds(const std::string& prefix) const {
    for (const auto& [name, values] : times_) {
      if (name.rfind(prefix, 0) != 0) continue;
      std::vector<double> v = values;
      std::sort(v.begin(), v.end());
      return v[v.size() / 2];
    }
    return 0;
  }

 private:
  std::map<std::string, std::vector<double>> times_;
};

template <class Base>
int run_local() {
  register_all();
  Recorder<Base> recorder;
  benchmark::RunSpecifiedBenchmarks(&recorder);
  std::map<std::pair<std::size_t, int>, Row> rows;
  std::map<std::pair<std::size_t, int>, CodecRow> codec;
  for (const std::size_t mb : sizes_mb) {
    const std::size_t n = mb * MiB / sizeof(float);
    for (int w = 0; w < 4; ++w) {
      const std::string tail = wire_label(wires[w]) + "/MB:" + std::to_string(mb) + "/";
      const double t = recorder.seconds("average/" + tail);
      if (t > 0) rows[{mb, w}] = {t, bytes_sent(wires[w], n, local_ranks)};
      if (w == 0) continue;
      const double e = recorder.seconds("encode/" + tail);
      const double d = recorder.seconds("decode/" + tail);
      if (e > 0 && d > 0) codec[{mb, w}] = {e, d};
    }
  }
  const std::string text =
      summary(std::vector<std::size_t>(std::begin(sizes_mb), std::end(sizes_mb)), rows, codec,
              local_ranks, "local backend, threads");
  std::fputs(text.c_str(), std::is_same_v<Base, benchmark::JSONReporter> ? stderr : stdout);
  benchmark::Shutdown();
  return 0;
}

// --- MPI --------------------------------------------------------------------------------------

#ifdef STRATA_BENCH_HAVE_MPI

// Writes more memory than the last-level cache holds, so that every step starts with cold
// caches, whichever variant ran before.
void evict_caches() {
  static std::vector<unsigned char> junk(std::size_t{16} << 20);
  static unsigned char fill_value = 0;
  std::memset(junk.data(), ++fill_value, junk.size());
}

// Bad flags of the MPI mode: one line on stderr (rank 0's) and exit status 2 on every rank.
struct MpiUsageError : std::runtime_error {
  using std::runtime_error::runtime_error;
};

// A whole decimal number in [1, hi]: no sign, no spaces, no fraction, nothing after it.
std::size_t parse_positive(const std::string& flag, std::string_view text, std::size_t hi) {
  std::size_t v = 0;
  const auto [end, ec] = std::from_chars(text.data(), text.data() + text.size(), v);
  if (text.empty() || ec != std::errc{} || end != text.data() + text.size() || v < 1 || v > hi) {
    throw MpiUsageError(flag + " needs a whole number in 1.." + std::to_string(hi) + ", got \"" +
                        std::string(text) + "\"");
  }
  return v;
}

struct MpiArgs {
  std::vector<std::size_t> mbs{std::begin(sizes_mb), std::end(sizes_mb)};
  int reps = 0;  // 0: by size
};

// The largest size: a float32 buffer of it fits any 64-bit allocation; the largest rep count
// keeps a run finite.
constexpr std::size_t max_size_mb = 65536;
constexpr std::size_t max_reps = 1'000'000;

MpiArgs parse_mpi_args(int argc, char** argv) {
  MpiArgs a;
  for (int i = 1; i < argc; ++i) {
    const std::string arg = argv[i];
    if (arg == "--mpi") continue;
    if (arg != "--sizes-mb" && arg != "--reps") {
      throw MpiUsageError("unknown argument \"" + arg +
                          "\" (the MPI mode takes --sizes-mb LIST and --reps N)");
    }
    if (i + 1 >= argc) throw MpiUsageError(arg + " needs a value");
    const std::string_view value = argv[++i];
    if (arg == "--reps") {
      a.reps = static_cast<int>(parse_positive(arg, value, max_reps));
      continue;
    }
    // Comma-separated sizes; an empty item ("1,,4", "4,") is refused like any other.
    a.mbs.clear();
    std::size_t begin = 0;
    while (true) {
      const std::size_t comma = value.find(',', begin);
      const std::string_view item =
          value.substr(begin, comma == std::string_view::npos ? value.npos : comma - begin);
      try {
        a.mbs.push_back(parse_positive(arg, item, max_size_mb));
      } catch (const MpiUsageError&) {
        throw MpiUsageError(arg + " needs whole numbers in 1.." + std::to_string(max_size_mb) +
                            ", comma-separated, got \"" + std::string(value) + "\"");
      }
      if (comma == std::string_view::npos) break;
      begin = comma + 1;
    }
  }
  return a;
}

int run_mpi(int argc, char** argv) {
  strata::MpiEnvironment env(argc, argv);
  auto world = strata::MpiComm::world();
  const MPI_Comm raw = world.native();
  const int g = world.size();
  MpiArgs args;
  try {
    args = parse_mpi_args(argc, argv);
  } catch (const MpiUsageError& e) {
    if (world.rank() == 0) std::fprintf(stderr, "wire_bench: %s\n", e.what());
    return 2;
  }
  const std::vector<std::size_t>& mbs = args.mbs;
  const int reps = args.reps;
  std::map<std::pair<std::size_t, int>, Row> rows;
  for (const std::size_t mb : mbs) {
    const std::size_t n = mb * MiB / sizeof(float);
    std::vector<float> x(n);
    // A checked warm-up of each wire, then rounds of every wire in turn.
    for (const strata::WireFormat f : wires) {
      fill(x, world.rank());
      average(world, x, f);
      if (world.rank() == 0) check_mean(x, g, f);
    }
    const int rounds = reps > 0 ? reps : (mb <= 4 ? 15 : 9);
    std::vector<std::vector<double>> times(4);
    for (int r = 0; r < rounds; ++r) {
      for (int w = 0; w < 4; ++w) {
        evict_caches();
        MPI_Barrier(raw);
        const double start = MPI_Wtime();
        average(world, x, wires[w]);
        double mine = MPI_Wtime() - start, slowest = 0;
        MPI_Allreduce(&mine, &slowest, 1, MPI_DOUBLE, MPI_MAX, raw);
        times[w].push_back(slowest);
      }
    }
    for (int w = 0; w < 4; ++w) {
      std::sort(times[w].begin(), times[w].end());
      rows[{mb, w}] = {times[w][times[w].size() / 2], bytes_sent(wires[w], n, g)};
    }
  }
  if (world.rank() == 0) {
    std::fputs(summary(mbs, rows, {}, g, "MPI processes").c_str(), stdout);
  }
  return 0;
}

#endif

}  // namespace

int main(int argc, char** argv) {
  for (int i = 1; i < argc; ++i) {
    if (std::strcmp(argv[i], "--mpi") == 0) {
#ifdef STRATA_BENCH_HAVE_MPI
      return run_mpi(argc, argv);
#else
      std::fprintf(stderr, "wire_bench: this build has no MPI\n");
      return 2;
#endif
    }
  }
  bool json = false;
  for (int i = 1; i < argc; ++i)
    json = json || std::strcmp(argv[i], "--benchmark_format=json") == 0;
  benchmark::Initialize(&argc, argv);
  if (benchmark::ReportUnrecognizedArguments(argc, argv)) return 1;
  return json ? run_local<benchmark::JSONReporter>() : run_local<benchmark::ConsoleReporter>();
}
