// The embedding exchange of a DLRM-like model under three plans and three exchanges, for two
// skews of the ids, on the local backend and over MPI, in one run:
//
//   embedding_bench [--batch 2048] [--steps 11] [--warmup 2] [--max-rows 1000000]
//   OMPI_MCA_mpi_yield_when_idle=1 mpirun -np 8 embedding_bench [...]
//
//   naive  model-parallel all-to-all without de-duplication: every lookup's id goes to the owner,
//          which returns one pooled vector per sample and receives one gradient per sample
//   dedup  each rank sends each distinct row it needs once per owner, gets the row back once and
//          returns one summed gradient per row
//   hier   dedup over the hierarchical all-to-all (nodes of 4 ranks): an exchange inside the node,
//          then one among the ranks of the same local index across nodes
//
// The workload of examples/dlrm_exchange.cpp (which measures more placements): 26 float tables of
// width 64 sized after Criteo Kaggle's categorical features, in three plans: "row", every table
// row-wise over all ranks; "mixed", tables of at most 2000 rows data-parallel and the rest
// row-wise; "hybrid", every table Hybrid<RowWise> with the frequent rows choose_frequent picks for
// the exchange it runs with (naive or dedup). Ids are Zipf-distributed with exponent 1.05, then
// 1.2 (fixed seed per rank), batch per rank 2048, one id per table per sample. A step is one
// forward and one backward (sparse SGD); its time is the slowest rank's, between barriers, and
// each figure is the median over --steps steps after --warmup. Bytes are what a rank sends to
// other ranks in the exchanges (ids, rows, gradients), per step; the all-reduce of replicated
// rows is reported apart, as its payload.
//
// The cost model's statistics are 2 batches per rank drawn from the same laws with other seeds
// (as dlrm_exchange draws them): their ids are counted over the world (FrequencyCounts), and
// choose_frequent prices them with the links of sim::CostModel::t4_resnet18() (nodes of 4),
// 4-byte elements and replicas of at most 256 MB per rank. For every row of the tables the
// prediction on that sample (predict_exchange's exchange bytes, averaged over the ranks, plus
// the all-reduce payload; for hybrid, the choice's predicted_bytes) stands beside the measured
// bytes (exchange plus all-reduce payload, mean over ranks and timed steps), and so does the same
// predictor run on the timed batches themselves ("exact"): measured/exact is 1 where the
// predictor counts what the exchange sends, and measured/predicted then differs from 1 only by
// what the sample does not tell about the timed batches. bytes/naive and time/naive compare
// with the row-wise naive exchange of the same skew. A whole run takes under a minute.
//
// The local backend always runs with 8 ranks (threads) in this process. Built with MPI and
// started by mpirun, the benchmark first measures the same over the MPI world (its size must
// divide by 4), finalizes MPI, and then rank 0 alone runs the local part, so the two never share
// the cores; rank 0 prints both.
#include <strata/comm/local.hpp>
#include <strata/embedding/exchange.hpp>
#ifdef STRATA_BENCH_HAVE_MPI
#include <strata/comm/mpi.hpp>
#endif

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <numeric>
#include <random>
#include <string>
#include <vector>

#include "../examples/dlrm_data.hpp"

namespace {

using dlrm::criteo_kaggle_largest;
using dlrm::criteo_kaggle_rows;
using dlrm::ZipfTable;

constexpr std::size_t width = 64;
constexpr std::size_t node_size = 4;
constexpr std::size_t dp_rows = 2000;
constexpr int local_ranks = 8;
constexpr std::uint64_t seed = 2024;
constexpr std::size_t stats_steps = 2;
constexpr double max_replica_bytes = 256e6;
constexpr double exponents[] = {1.05, 1.2};
struct Case {
  const char* plan;
  const char* mode;
};
constexpr Case cases[] = {{"row", "naive"},    {"row", "dedup"},   {"row", "hier"},
                          {"mixed", "naive"},  {"mixed", "dedup"}, {"mixed", "hier"},
                          {"hybrid", "naive"}, {"hybrid", "dedup"}};

struct Config {
  std::size_t batch = 2048;
  std::size_t steps = 11;
  std::size_t warmup = 2;
  std::size_t max_rows = 1'000'000;
};

struct Workload {
  double exponent;
  std::vector<std::size_t> rows;
  std::vector<ZipfTable> zipf;

  Workload(const Config& c, double s) : exponent(s), rows(dlrm::table_rows(c.max_rows)) {
    for (std::size_t r : rows) zipf.emplace_back(r, s);
  }

  strata::ShardingPlan plan(const std::string& name, std::size_t world) const {
    std::vector<strata::TableSpec> specs;
    for (std::size_t r : rows) {
      strata::PlacementSpec p = strata::RowWise::spec;
      if (name == "mixed" && r <= dp_rows) p = strata::DataParallel::spec;
      if (name == "hybrid") p = strata::Hybrid<strata::RowWise>::spec;
      specs.push_back({r, width, p});
    }
    return strata::ShardingPlan::make(std::move(specs), world, node_size);
  }

  // `steps` batches of ids, table-major.
  std::vector<std::vector<std::int64_t>> draw(const Config& c, std::mt19937_64& rng,
                                              std::size_t steps) const {
    std::vector<std::vector<std::int64_t>> ids(steps,
                                               std::vector<std::int64_t>(rows.size() * c.batch));
    for (auto& step : ids) {
      for (std::size_t j = 0; j < rows.size(); ++j) {
        for (std::size_t s = 0; s < c.batch; ++s) step[j * c.batch + s] = zipf[j].draw(rng);
      }
    }
    return ids;
  }
};

struct Result {
  double exponent = 0;
  std::string plan, mode;
  double bytes_max = 0, bytes_mean = 0, inter_messages = 0, allreduce_bytes = 0, ms = 0;
  double predicted = 0;  // on the statistics sample
  double exact = 0;      // the same predictor on the timed batches
  std::vector<std::size_t> frequent{};

  [[nodiscard]] double measured() const { return bytes_mean + allreduce_bytes; }
};

// What the cost model predicts per rank and step for `plan` with `sets` on the statistics sample:
// predict_exchange's bytes averaged over ranks and batches, plus the all-reduce payload of the
// replicated rows (collective).
template <strata::communicator Comm>
double predict_bytes(Comm& comm, const strata::ShardingPlan& plan, const strata::FrequentSets& sets,
                     const std::vector<strata::SparseBatch>& sample, bool dedup) {
  std::vector<std::size_t> rows(plan.num_tables());
  for (std::size_t j = 0; j < rows.size(); ++j) rows[j] = plan.table(j).rows;
  const auto slots = strata::frequent_slots(sets, rows);
  const auto me = static_cast<std::size_t>(comm.rank());
  std::vector<double> bytes{0.0};
  for (const auto& batch : sample)
    bytes[0] +=
        strata::predict_exchange(plan, slots, batch, me, dedup, sizeof(float)).bytes(sizeof(float));
  comm.all_reduce(std::span<double>(bytes), strata::ReduceOp::sum);
  double total = bytes[0] / static_cast<double>(sample.size() * plan.world_size());
  for (std::size_t j = 0; j < rows.size(); ++j) {
    const std::size_t n = plan.replicated(j) ? rows[j] : sets.count(j);
    total += static_cast<double>(n * (plan.table(j).width + 1) * sizeof(float));
  }
  return total;
}

template <strata::communicator Comm>
std::vector<Result> measure(Comm& comm, const Config& c, const std::vector<Workload>& workloads) {
  const auto rank = static_cast<std::size_t>(comm.rank());
  const auto world = static_cast<std::size_t>(comm.size());
  std::vector<float> out(c.batch * std::size(criteo_kaggle_rows) * width);
  const std::vector<float> grad(out.size(), 1e-3f);
  std::vector<Result> results;
  for (const Workload& w : workloads) {
    const std::size_t J = w.rows.size(), total = c.warmup + c.steps;
    std::mt19937_64 rng(seed * 0x9E3779B97F4A7C15ull + rank);
    const auto ids = w.draw(c, rng, total);
    // The statistics: other seeds than the timed steps' (the same stream as dlrm_exchange's).
    std::seed_seq seq{static_cast<std::uint32_t>(seed), static_cast<std::uint32_t>(seed >> 32),
                      static_cast<std::uint32_t>(rank), 0x57A757u};
    std::mt19937_64 stats_rng(seq);
    const auto stats_ids = w.draw(c, stats_rng, stats_steps);
    std::vector<strata::SparseBatch> sample;
    for (const auto& step : stats_ids) sample.push_back({step, J, c.batch, 1});
    const strata::ShardingPlan hybrid_plan = w.plan("hybrid", world);
    strata::FrequencyCounts counts(hybrid_plan);
    for (const auto& batch : sample) counts.add(batch);
    counts.reduce(comm);

    for (const Case& k : cases) {
      const std::string plan_name = k.plan, mode = k.mode;
      const strata::ShardingPlan plan =
          plan_name == "hybrid" ? hybrid_plan : w.plan(plan_name, world);
      strata::ExchangeOptions o;
      o.dedup = mode != "naive";
      o.hierarchical = mode == "hier";
      strata::HybridChoice choice;
      double predicted = 0;
      if (plan_name == "hybrid") {
        strata::HybridCostModel model;
        model.links = strata::sim::CostModel::t4_resnet18();
        model.links.ranks_per_node = node_size;
        model.element_bytes = sizeof(float);
        model.dedup = o.dedup;
        model.max_replica_bytes = max_replica_bytes;
        choice = strata::choose_frequent(comm, plan, counts, sample, model);
        predicted = choice.predicted_bytes;
      } else {
        predicted = predict_bytes(comm, plan, {}, sample, o.dedup);
      }
      strata::EmbeddingExchange<Comm, float> emb(comm, plan, o, choice.sets);
      std::vector<double> times(c.steps, 0.0), mine(3, 0.0);
      for (std::size_t t = 0; t < total; ++t) {
        comm.barrier();
        const auto start = std::chrono::steady_clock::now();
        emb.forward({ids[t], J, c.batch, 1}, out);
        emb.backward(grad, strata::Sgd{0.01});
        const std::chrono::duration<double> took = std::chrono::steady_clock::now() - start;
        if (t < c.warmup) continue;
        times[t - c.warmup] = took.count();
        mine[0] += static_cast<double>(emb.stats().bytes_sent(sizeof(float)));
        mine[1] += static_cast<double>(emb.stats().traffic.inter_messages);
        mine[2] += static_cast<double>(emb.stats().allreduce_elements * sizeof(float));
      }
      // The predictor run on the very batches that were timed: where it agrees with the
      // measurement, what separates the prediction from it is the sample alone.
      std::vector<strata::SparseBatch> timed;
      for (std::size_t t = c.warmup; t < total; ++t) timed.push_back({ids[t], J, c.batch, 1});
      const double exact = predict_bytes(comm, plan, choice.sets, timed, o.dedup);
      comm.all_reduce(std::span<double>(times), strata::ReduceOp::max);
      std::vector<double> all(3 * world);
      comm.all_gather(std::span<const double>(mine), std::span<double>(all));
      const double steps = static_cast<double>(c.steps), n = static_cast<double>(world);
      Result r;
      r.exponent = w.exponent;
      r.plan = plan_name;
      r.mode = mode;
      r.predicted = predicted;
      r.exact = exact;
      r.frequent = choice.frequent;
      for (std::size_t q = 0; q < world; ++q) {
        r.bytes_max = std::max(r.bytes_max, all[q * 3] / steps);
        r.bytes_mean += all[q * 3] / steps / n;
        r.inter_messages += all[q * 3 + 1] / steps / n;
        r.allreduce_bytes += all[q * 3 + 2] / steps / n;
      }
      std::sort(times.begin(), times.end());
      r.ms = times[times.size() / 2] * 1e3;
      results.push_back(r);
    }
  }
  return results;
}

void print(const char* title, const std::vector<Result>& results) {
  std::printf("%s\n\n", title);
  std::printf(
      "| Zipf | plan | exchange | MB/rank max | MB/rank mean | inter msgs/rank | all-reduce MB | "
      "ms/step | predicted MB | measured MB | measured/predicted | measured/exact | bytes/naive | "
      "time/naive |\n");
  std::printf("| ---: | --- | --- |");
  for (int k = 0; k < 11; ++k) std::printf(" ---: |");
  std::printf("\n");
  // Ratios are to the row-wise naive exchange of the same skew.
  const Result* naive = nullptr;
  for (const Result& r : results) {
    if (r.plan == "row" && r.mode == "naive") naive = &r;
    std::printf("| %.2f | %s | %s | %.2f | %.2f | %.1f | %.2f | %.1f |", r.exponent, r.plan.c_str(),
                r.mode.c_str(), r.bytes_max / 1e6, r.bytes_mean / 1e6, r.inter_messages,
                r.allreduce_bytes / 1e6, r.ms);
    std::printf(" %.2f | %.2f | %.3f | %.4f | %.2f | %.2f |\n", r.predicted / 1e6,
                r.measured() / 1e6, r.measured() / r.predicted, r.measured() / r.exact,
                r.measured() / naive->measured(), r.ms / naive->ms);
  }
  std::printf("\nhybrid frequent rows per table (choose_frequent):\n");
  for (const Result& r : results) {
    if (r.plan != "hybrid") continue;
    std::size_t sum = 0;
    std::string list;
    for (std::size_t n : r.frequent) {
      sum += n;
      if (!list.empty()) list += ',';
      list += std::to_string(n);
    }
    std::printf("  Zipf %.2f, %s: %zu rows (%.2f MB per rank): %s\n", r.exponent, r.mode.c_str(),
                sum, static_cast<double>(sum * width * sizeof(float)) / 1e6, list.c_str());
  }
  std::printf("\n");
}

std::size_t flag(int argc, char** argv, const char* name, std::size_t fallback) {
  for (int i = 1; i + 1 < argc; ++i) {
    if (std::strcmp(argv[i], name) == 0) return std::strtoull(argv[i + 1], nullptr, 10);
  }
  return fallback;
}

[[maybe_unused]] bool under_mpirun() {
  return std::getenv("OMPI_COMM_WORLD_SIZE") != nullptr || std::getenv("PMI_SIZE") != nullptr ||
         std::getenv("PMIX_RANK") != nullptr;
}

}  // namespace

int main(int argc, char** argv) {
  const auto begin = std::chrono::steady_clock::now();
  Config c;
  c.batch = std::max<std::size_t>(1, flag(argc, argv, "--batch", c.batch));
  c.steps = std::max<std::size_t>(1, flag(argc, argv, "--steps", c.steps));
  c.warmup = flag(argc, argv, "--warmup", c.warmup);
  c.max_rows =
      std::clamp<std::size_t>(flag(argc, argv, "--max-rows", c.max_rows), 1, criteo_kaggle_largest);
  std::vector<Workload> workloads;
  for (double s : exponents) workloads.emplace_back(c, s);
  std::size_t total_rows = 0;
  for (std::size_t r : workloads[0].rows) total_rows += r;
  char head[320];
  std::snprintf(head, sizeof head,
                "26 tables, %zu rows in all (largest %zu), width %zu, float32, batch %zu per "
                "rank, hotness 1, Zipf 1.05 and 1.2; median of %zu steps after %zu; cost model: "
                "%zu statistics batches per rank, t4_resnet18 links, nodes of %zu",
                total_rows, c.max_rows, width, c.batch, c.steps, c.warmup, stats_steps, node_size);

  std::vector<Result> mpi_results;
  int mpi_world = 0;
  bool mpi_ran = false;
#ifdef STRATA_BENCH_HAVE_MPI
  if (under_mpirun()) {
    strata::MpiEnvironment env(argc, argv);
    {
      auto comm = strata::MpiComm::world();
      mpi_world = comm.size();
      if (mpi_world % static_cast<int>(node_size) != 0) {
        if (comm.rank() == 0) {
          std::fprintf(stderr, "embedding_bench: the MPI world (%d) must divide by %zu\n",
                       mpi_world, node_size);
        }
        return 2;
      }
      mpi_results = measure(comm, c, workloads);
      if (comm.rank() != 0) return 0;
    }
    mpi_ran = true;
  }
#endif
  // MPI is finalized here: the other processes have gone, and the local ranks get the cores.
  std::vector<Result> local_results;
  strata::LocalWorld(local_ranks).run([&](strata::LocalComm& comm) {
    auto r = measure(comm, c, workloads);
    if (comm.rank() == 0) local_results = std::move(r);
  });

  std::printf("%s\n\n", head);
  print("local backend, 8 ranks (threads), nodes of 4", local_results);
  if (mpi_ran) {
    char title[96];
    std::snprintf(title, sizeof title, "MPI, %d processes, nodes of 4", mpi_world);
    print(title, mpi_results);
  } else {
#ifdef STRATA_BENCH_HAVE_MPI
    std::printf("MPI: start under mpirun (e.g. mpirun -np 8) for the MPI figures\n");
#else
    std::printf("MPI: this build has no MPI\n");
#endif
  }
  const std::chrono::duration<double> took = std::chrono::steady_clock::now() - begin;
  std::printf("whole run: %.0f s\n", took.count());
  return 0;
}
