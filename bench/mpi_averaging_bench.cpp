// strata's MPI averaging against hand-written MPI, in one run, with real processes:
//
//   mpirun -np 8 mpi_averaging_bench [--sizes-mb 1,4,16,64] [--tensors 110] [--reps N]
//                                    [--sweep-kb 256,1024,4096] [--json]
//
// For each size (float32 bytes per rank), the same parameters split into ~110 tensors of mixed
// sizes (a ResNet-like layer list) are averaged over all ranks several ways:
//   raw flat     one blocking MPI_Allreduce (in place, sum) over a buffer that is already flat,
//                then x 1/n: the reference of every ratio
//   raw nb       raw flat with the non-blocking MPI_Iallreduce + MPI_Wait, in place
//   raw nb out   the same out of place (into a second buffer): OpenMPI's non-blocking all-reduce
//                picks another algorithm then (reduce-scatter + all-gather instead of a reduce to
//                a root and a broadcast)
//   strata fused RuntimeHierarchicalAverager "1:N" on the tensors: the pack pipelined with the
//                all-reduce in segments (AveragerOptions::pipeline_bytes, default rule), then
//                the unpack with the 1/n scaling fused in
//   one segment  the same averager with one segment: pack, one all-reduce, unpack
//   strata flat  the same averager on the flat buffer (through a staging copy, so that a failed
//                MPI collective cannot leave the parameters half-written)
//   raw loop     one blocking MPI_Allreduce per tensor, each followed by x 1/n
//   unverified   strata fused over a communicator with MpiOptions::verify_arguments off: the
//                price of exchanging the members' calls before each collective shows apart
//
// --sweep-kb adds a table of strata fused with each given segment size (KiB), measured in the
// same rounds, to choose the default rule. --json ends the output with one line of JSON: per size
// in KiB, each variant's median in seconds.
//
// Sizes can also be given in KiB (--sizes-kb 16,256), where the exchange's latency matters most.
// Each measurement is the slowest rank's time of one step, between barriers, starting with cold
// caches (each process first writes 16 MiB of other memory). The variants take turns: each round
// runs every variant once, so that load that comes and goes (other programs on the machine)
// touches them alike; the tables show the median over the rounds and the ratios to raw flat.
#include <strata/averaging/averager.hpp>
#include <strata/comm/mpi.hpp>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <functional>
#include <limits>
#include <memory>
#include <string>
#include <vector>

namespace {

double slowest(MPI_Comm comm, double seconds) {
  double max = 0;
  MPI_Allreduce(&seconds, &max, 1, MPI_DOUBLE, MPI_MAX, comm);
  return max;
}

struct Variant {
  std::string name;
  std::function<void()> step;
  std::vector<double> times;
  [[nodiscard]] double median() {
    std::sort(times.begin(), times.end());
    return times[times.size() / 2];
  }
};

// Writes more memory than the last-level cache holds (16 MiB per process), so that every step
// starts with cold caches, as after a training step that touched more than the cache holds.
// Without it, a variant that runs right after one that touched the same tensors finds them in
// cache, and which variant follows which would decide the ratios at sizes near the cache's.
void evict_caches() {
  static std::vector<unsigned char> junk(std::size_t{16} << 20);
  static unsigned char value = 0;
  std::memset(junk.data(), ++value, junk.size());
}

// Every variant once per round, after one untimed warm-up step each (first-touch pages, plans
// and staging buffers).
void measure(MPI_Comm comm, int rounds, std::vector<Variant>& variants) {
  for (Variant& v : variants) v.step();
  for (int r = 0; r < rounds; ++r) {
    for (Variant& v : variants) {
      evict_caches();
      MPI_Barrier(comm);
      const double start = MPI_Wtime();
      v.step();
      v.times.push_back(slowest(comm, MPI_Wtime() - start));
    }
  }
}

// A layer list: sizes proportional to a repeating pattern of conv weights, norms and biases.
std::vector<std::size_t> layer_sizes(std::size_t total, std::size_t count) {
  std::vector<double> weight(count);
  for (std::size_t i = 0; i < count; ++i) {
    weight[i] = i % 3 == 0 ? 64.0 * (1 + i % 7) : (i % 3 == 1 ? 1.0 : 0.25);
  }
  double sum = 0;
  for (double w : weight) sum += w;
  std::vector<std::size_t> sizes(count);
  std::size_t used = 0;
  for (std::size_t i = 0; i + 1 < count; ++i) {
    sizes[i] = std::max<std::size_t>(1, static_cast<std::size_t>(weight[i] / sum * double(total)));
    used += sizes[i];
  }
  sizes.back() = total > used ? total - used : 1;
  return sizes;
}

std::vector<std::size_t> parse_list(const char* p, std::size_t scale) {
  std::vector<std::size_t> v;
  while (*p != '\0') {
    char* end = nullptr;
    v.push_back(std::strtoull(p, &end, 10) * scale);
    p = *end == ',' ? end + 1 : end;
  }
  return v;
}

using Averager = strata::RuntimeHierarchicalAverager<strata::MpiComm>;

}  // namespace

int main(int argc, char** argv) {
  strata::MpiEnvironment env(argc, argv);
  auto world = strata::MpiComm::world();
  const MPI_Comm raw = world.native();
  const int n = world.size();
  std::vector<std::size_t> sizes_kb{1024, 4096, 16384, 65536};
  std::vector<std::size_t> sweep_kb;
  std::size_t tensor_count = 110;
  int reps = 0;  // 0: by size
  bool json = false;
  for (int i = 1; i < argc; ++i) {
    const bool has_value = i + 1 < argc;
    if (std::strcmp(argv[i], "--json") == 0) {
      json = true;
    } else if (has_value && std::strcmp(argv[i], "--sizes-mb") == 0) {
      sizes_kb = parse_list(argv[++i], 1024);
    } else if (has_value && std::strcmp(argv[i], "--sizes-kb") == 0) {
      sizes_kb = parse_list(argv[++i], 1);
    } else if (has_value && std::strcmp(argv[i], "--sweep-kb") == 0) {
      sweep_kb = parse_list(argv[++i], 1);
    } else if (has_value && std::strcmp(argv[i], "--tensors") == 0) {
      tensor_count = std::strtoull(argv[++i], nullptr, 10);
    } else if (has_value && std::strcmp(argv[i], "--reps") == 0) {
      reps = std::atoi(argv[++i]);
    }
  }

  const strata::RuntimeHierarchy whole({strata::LevelSpec{1, static_cast<std::size_t>(n)}});
  Averager averager(world, whole);
  Averager one_segment(world, whole, 0,
                       {.pipeline_bytes = std::numeric_limits<std::size_t>::max()});
  strata::MpiOptions unverified_options;
  unverified_options.verify_arguments = false;
  strata::MpiComm unverified_world(raw, unverified_options);
  Averager unverified(unverified_world, whole);
  std::vector<std::unique_ptr<Averager>> swept;
  for (std::size_t kb : sweep_kb) {
    swept.push_back(std::make_unique<Averager>(
        world, whole, 0, strata::AveragerOptions{.pipeline_bytes = kb << 10}));
  }

  if (world.rank() == 0) {
    std::printf("%d processes, float32, %zu tensors; median step time of the slowest rank\n\n", n,
                tensor_count);
    std::printf(
        "| KiB/rank | raw flat ms | raw nb ms | nb/raw flat | raw nb out ms | nb out/raw flat | "
        "strata fused ms | fused/raw flat | one segment ms | one segment/raw flat | strata flat ms "
        "| flat/raw flat | raw loop ms | raw loop/raw flat | unverified ms | fused/unverified |\n");
    std::printf(
        "| ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | "
        "---: | ---: | ---: | ---: |\n");
  }
  std::string json_text = "{";
  std::vector<std::string> sweep_rows;
  for (std::size_t kb : sizes_kb) {
    const std::size_t total = kb * (1u << 10) / sizeof(float);
    const auto sizes = layer_sizes(total, tensor_count);
    std::vector<std::vector<float>> tensors;
    std::vector<std::span<float>> spans;
    for (std::size_t s : sizes) {
      tensors.emplace_back(s);
      for (std::size_t i = 0; i < s; ++i) tensors.back()[i] = std::sin(float(i + world.rank()));
    }
    for (auto& t : tensors) spans.emplace_back(t);
    std::vector<float> flat(strata::total_elements(spans));
    std::vector<float> result(flat.size());
    for (std::size_t i = 0; i < flat.size(); ++i) flat[i] = std::sin(float(i + world.rank()));
    const float inv = 1.0f / static_cast<float>(n);
    const int rounds = reps > 0 ? reps : (kb <= 4096 ? 15 : (kb <= 16384 ? 9 : 5));

    std::vector<Variant> v;
    v.push_back({"raw_flat", [&] {
                   MPI_Allreduce(MPI_IN_PLACE, flat.data(), static_cast<int>(flat.size()),
                                 MPI_FLOAT, MPI_SUM, raw);
                   for (float& x : flat) x *= inv;
                 }});
    v.push_back({"raw_nb", [&] {
                   MPI_Request req = MPI_REQUEST_NULL;
                   MPI_Iallreduce(MPI_IN_PLACE, flat.data(), static_cast<int>(flat.size()),
                                  MPI_FLOAT, MPI_SUM, raw, &req);
                   MPI_Wait(&req, MPI_STATUS_IGNORE);
                   for (float& x : flat) x *= inv;
                 }});
    v.push_back({"raw_nb_out", [&] {
                   MPI_Request req = MPI_REQUEST_NULL;
                   MPI_Iallreduce(flat.data(), result.data(), static_cast<int>(flat.size()),
                                  MPI_FLOAT, MPI_SUM, raw, &req);
                   MPI_Wait(&req, MPI_STATUS_IGNORE);
                   for (std::size_t i = 0; i < flat.size(); ++i) flat[i] = result[i] * inv;
                 }});
    v.push_back({"fused", [&] { averager.average(spans); }});
    v.push_back({"one_segment", [&] { one_segment.average(spans); }});
    v.push_back({"strata_flat", [&] { averager.average(std::span<float>(flat)); }});
    v.push_back({"raw_loop", [&] {
                   for (auto& t : tensors) {
                     MPI_Allreduce(MPI_IN_PLACE, t.data(), static_cast<int>(t.size()), MPI_FLOAT,
                                   MPI_SUM, raw);
                     for (float& x : t) x *= inv;
                   }
                 }});
    v.push_back({"unverified", [&] { unverified.average(spans); }});
    for (std::size_t i = 0; i < swept.size(); ++i) {
      v.push_back(
          {"segment_" + std::to_string(sweep_kb[i]) + "k", [&, i] { swept[i]->average(spans); }});
    }
    measure(raw, rounds, v);

    std::vector<double> m;
    for (Variant& x : v) m.push_back(x.median());
    const double base = m[0];
    if (world.rank() == 0) {
      std::printf(
          "| %zu | %.3f | %.3f | %.2f | %.3f | %.2f | %.3f | %.2f | %.3f | %.2f | %.3f | %.2f | "
          "%.3f | %.2f | %.3f | %.2f |\n",
          kb, m[0] * 1e3, m[1] * 1e3, m[1] / base, m[2] * 1e3, m[2] / base, m[3] * 1e3, m[3] / base,
          m[4] * 1e3, m[4] / base, m[5] * 1e3, m[5] / base, m[6] * 1e3, m[6] / base, m[7] * 1e3,
          m[3] / m[7]);
      std::fflush(stdout);
      char first[64];
      std::snprintf(first, sizeof first, "| %zu | %.3f", kb, m[0] * 1e3);
      std::string row = first;
      for (std::size_t i = 8; i < v.size(); ++i) {
        char cell[64];
        std::snprintf(cell, sizeof cell, " | %.3f (%.2f)", m[i] * 1e3, m[i] / base);
        row += cell;
      }
      sweep_rows.push_back(row + " |");
      json_text +=
          std::string(json_text.size() > 1 ? ", " : "") + "\"" + std::to_string(kb) + "\": {";
      for (std::size_t i = 0; i < v.size(); ++i) {
        char cell[96];
        std::snprintf(cell, sizeof cell, "%s\"%s\": %.6g", i == 0 ? "" : ", ", v[i].name.c_str(),
                      m[i]);
        json_text += cell;
      }
      json_text += "}";
    }
  }
  if (world.rank() == 0 && !sweep_kb.empty()) {
    std::printf(
        "\nstrata fused by segment size: ms (ratio to raw flat)\n\n| KiB/rank | raw flat ms");
    for (std::size_t kb : sweep_kb) std::printf(" | %zu KiB", kb);
    std::printf(" |\n| ---: | ---:");
    for (std::size_t i = 0; i < sweep_kb.size(); ++i) std::printf(" | ---:");
    std::printf(" |\n");
    for (const std::string& row : sweep_rows) std::printf("%s\n", row.c_str());
  }
  if (world.rank() == 0 && json) {
    std::printf("{\"processes\": %d, \"seconds\": %s}}\n", n, json_text.c_str());
  }
  return 0;
}
