// strata's MPI averaging against hand-written MPI, in one run, with real processes:
//
//   mpirun -np 8 mpi_averaging_bench [--sizes-mb 1,4,16,64] [--tensors 110]
//
// For each size (float32 bytes per rank), the same parameters split into ~110 tensors of mixed
// sizes (a ResNet-like layer list) are averaged over all ranks four ways:
//   raw flat     one MPI_Allreduce (in place, sum) over a buffer that is already flat, then x 1/n
//   raw loop     one MPI_Allreduce per tensor, each followed by x 1/n
//   raw nb       raw flat with the non-blocking MPI_Iallreduce + MPI_Wait: the form strata polls
//                against its deadline, so that the price of "never hang" shows apart from strata's
//   strata fused RuntimeHierarchicalAverager "1:N" on the tensors: pack, one all-reduce, unpack
//                with the 1/n scaling fused in
//   strata flat  the same averager on the flat buffer (through a staging copy, so that a failed
//                MPI collective cannot leave the parameters half-written)
//   unverified   strata fused over a communicator with MpiOptions::verify_arguments off: the
//                price of exchanging the members' calls before each collective shows apart
//
// Sizes can also be given in KiB (--sizes-kb 16,256), where the exchange's latency matters most.
// Each measurement is the slowest rank's time of one step, between barriers; the table shows
// the median over the repetitions and the ratios to raw flat.
#include <strata/averaging/averager.hpp>
#include <strata/comm/mpi.hpp>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <functional>
#include <string>
#include <vector>

namespace {

double slowest(MPI_Comm comm, double seconds) {
  double max = 0;
  MPI_Allreduce(&seconds, &max, 1, MPI_DOUBLE, MPI_MAX, comm);
  return max;
}

double median_time(MPI_Comm comm, int reps, const std::function<void()>& step) {
  step();  // warm-up: first-touch pages, plan and staging buffers
  std::vector<double> t;
  for (int i = 0; i < reps; ++i) {
    MPI_Barrier(comm);
    const double start = MPI_Wtime();
    step();
    t.push_back(slowest(comm, MPI_Wtime() - start));
  }
  std::sort(t.begin(), t.end());
  return t[t.size() / 2];
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

}  // namespace

int main(int argc, char** argv) {
  strata::MpiEnvironment env(argc, argv);
  auto world = strata::MpiComm::world();
  const MPI_Comm raw = world.native();
  const int n = world.size();
  std::vector<std::size_t> sizes_kb{1024, 4096, 16384, 65536};
  std::size_t tensor_count = 110;
  for (int i = 1; i + 1 < argc; i += 2) {
    const bool mb = std::strcmp(argv[i], "--sizes-mb") == 0;
    if (mb || std::strcmp(argv[i], "--sizes-kb") == 0) {
      sizes_kb.clear();
      for (const char* p = argv[i + 1]; *p != '\0';) {
        char* end = nullptr;
        sizes_kb.push_back(std::strtoull(p, &end, 10) * (mb ? 1024 : 1));
        p = *end == ',' ? end + 1 : end;
      }
    } else if (std::strcmp(argv[i], "--tensors") == 0) {
      tensor_count = std::strtoull(argv[i + 1], nullptr, 10);
    }
  }

  if (world.rank() == 0) {
    std::printf("%d processes, float32, %zu tensors; median step time of the slowest rank\n\n", n,
                tensor_count);
    std::printf(
        "| KiB/rank | raw flat ms | raw nb ms | nb/raw flat | strata fused ms | "
        "fused/raw flat | fused/raw nb | strata flat ms | flat/raw flat | raw loop ms | "
        "raw loop/raw flat | unverified ms | fused/unverified |\n");
    std::printf(
        "| ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | "
        "---: | ---: |\n");
  }
  strata::RuntimeHierarchicalAverager<strata::MpiComm> averager(
      world, strata::RuntimeHierarchy({strata::LevelSpec{1, static_cast<std::size_t>(n)}}));
  strata::MpiOptions unverified_options;
  unverified_options.verify_arguments = false;
  strata::MpiComm unverified_world(raw, unverified_options);
  strata::RuntimeHierarchicalAverager<strata::MpiComm> unverified(
      unverified_world,
      strata::RuntimeHierarchy({strata::LevelSpec{1, static_cast<std::size_t>(n)}}));
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
    for (std::size_t i = 0; i < flat.size(); ++i) flat[i] = std::sin(float(i + world.rank()));
    const float inv = 1.0f / static_cast<float>(n);
    const int reps = kb <= 4096 ? 15 : (kb <= 16384 ? 7 : 5);

    const double raw_flat = median_time(raw, reps, [&] {
      MPI_Allreduce(MPI_IN_PLACE, flat.data(), static_cast<int>(flat.size()), MPI_FLOAT, MPI_SUM,
                    raw);
      for (float& x : flat) x *= inv;
    });
    const double raw_loop = median_time(raw, reps, [&] {
      for (auto& t : tensors) {
        MPI_Allreduce(MPI_IN_PLACE, t.data(), static_cast<int>(t.size()), MPI_FLOAT, MPI_SUM, raw);
        for (float& x : t) x *= inv;
      }
    });
    const double raw_nb = median_time(raw, reps, [&] {
      MPI_Request req = MPI_REQUEST_NULL;
      MPI_Iallreduce(MPI_IN_PLACE, flat.data(), static_cast<int>(flat.size()), MPI_FLOAT, MPI_SUM,
                     raw, &req);
      MPI_Wait(&req, MPI_STATUS_IGNORE);
      for (float& x : flat) x *= inv;
    });
    const double fused = median_time(raw, reps, [&] { averager.average(spans); });
    const double strata_flat =
        median_time(raw, reps, [&] { averager.average(std::span<float>(flat)); });
    const double fused_unverified = median_time(raw, reps, [&] { unverified.average(spans); });
    if (world.rank() == 0) {
      std::printf(
          "| %zu | %.3f | %.3f | %.2f | %.3f | %.2f | %.2f | %.3f | %.2f | %.3f | %.2f | "
          "%.3f | %.2f |\n",
          kb, raw_flat * 1e3, raw_nb * 1e3, raw_nb / raw_flat, fused * 1e3, fused / raw_flat,
          fused / raw_nb, strata_flat * 1e3, strata_flat / raw_flat, raw_loop * 1e3,
          raw_loop / raw_flat, fused_unverified * 1e3, fused / fused_unverified);
    }
  }
  return 0;
}
