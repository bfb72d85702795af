// dlrm_exchange: the embedding exchange of a DLRM-shaped training step under six placements and
// three exchange modes, with the bytes every rank sends and the time of a step.
//
//   dlrm_exchange [--backend local|mpi] [--world N] [--node-size R] [--batch B] [--hotness K]
//                 [--width D] [--max-rows M] [--dp-rows N] [--zipf S[,S2,...]] [--seed X]
//                 [--warmup W] [--steps T] [--stats-steps N] [--max-replica-mb C] [--frequent N]
//                 [--policies LIST] [--modes LIST] [--json]
//   mpirun -np N dlrm_exchange --backend mpi ... (world size and ranks from MPI)
//
// The model: 26 float tables of width D, one per categorical feature of the Criteo Kaggle display
// advertising data set, whose cardinalities run from 3 to 10.1 million. Every cardinality is
// multiplied by M / 10131227 (so the largest table has M rows, 1e6 by default), except that a table
// keeps its real size up to 1000 rows: the order and the ratios of the large tables stay those of
// the data set, the tiny features stay tiny, and the default model is 3.3 million rows (855 MB at
// width 64), which fits one process with room to spare. Each rank draws B samples per step with K
// ids per table from a Zipf law of exponent S over the rows (a fixed seed per rank); the id of
// popularity rank i is i times a constant prime to the table size, modulo the size, so the popular
// rows are spread over the table as hashed categorical values are, not piled into the first row
// block. --zipf takes a list: the whole measurement runs once per exponent, on the same seeds.
//
// Placements (--policies, default all):
//   table      every table whole on one rank, placed by the balancer
//   column     every table in column blocks on 4 ranks (2 if the width or world do not allow 4)
//   row        every table in row blocks over all ranks
//   table-row  every table in row blocks over the ranks of one node (--node-size: 4 by default,
//              or the whole world where it does not divide by 4)
//   mixed      tables of at most --dp-rows rows replicated (data-parallel), the rest row-wise
//   hybrid     every table Hybrid<RowWise>: its most frequent rows replicated on every rank, the
//              rest row-wise. How many, per table and mode, is choose_frequent's choice: the ids
//              of --stats-steps batches per rank (2 by default), drawn from the same Zipf laws
//              with other seeds than the timed steps, are counted over the world and priced with
//              the links of sim::CostModel::t4_resnet18() (6 GB/s inside a node, 3.2 GB/s across
//              nodes) with its ranks per node set to --node-size, 4-byte elements, the mode's
//              de-duplication, and at most --max-replica-mb MB (1e6 bytes; 256 by default) of
//              replicas per rank. --frequent N replicates the N most frequent rows of every table
//              instead (all of a table's rows where it has fewer), with no cap.
// Modes (--modes, default all): naive (no de-duplication: the owners pool each sample's rows),
// dedup (each rank sends each row it needs once per owner, and one summed gradient per row), hier
// (dedup over the hierarchical all-to-all, nodes of --node-size ranks).
//
// For every pair it prints the bytes each rank sent to other ranks in one step's exchanges (ids,
// looked-up rows, gradients; the all-reduce of replicated rows apart), the maximum and the mean
// over ranks, the de-duplication ratio (ids sent per lookup served by another rank, over the
// world: 1 without de-duplication), the elements each rank sent inside and across nodes and its
// messages across nodes, the all-reduce's payload per rank, and the median over --steps timed
// steps (after --warmup) of the slowest rank's forward + backward. For the hybrid placement it
// also prints the cost model's choice for each mode (HybridChoice::describe) and, beside its
// predicted bytes per rank and step (exchange and all-reduce), the measured ones (bytes_sent plus
// 4 bytes per all-reduce element, the mean over ranks and timed steps) and their ratio. --json
// prints the same as one JSON object.
#include <strata/comm/local.hpp>
#include <strata/embedding/exchange.hpp>
#ifdef STRATA_EXAMPLES_HAVE_MPI
#include <strata/comm/mpi.hpp>
#endif

#include "cli.hpp"
#include "dlrm_data.hpp"

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <limits>
#include <numeric>
#include <optional>
#include <random>
#include <string>
#include <string_view>
#include <vector>

namespace {

using cli::usage_error;

using dlrm::criteo_kaggle_largest;
using dlrm::table_rows;
using dlrm::ZipfTable;

constexpr std::string_view all_policies[] = {"table",     "column", "row",
                                             "table-row", "mixed",  "hybrid"};
constexpr std::string_view all_modes[] = {"naive", "dedup", "hier"};

struct Options {
  int world = 0;
  bool mpi = false;
  std::size_t node_size = 0;  // 0: 4 where the world divides by 4, else the whole world
  std::size_t batch = 2048;
  std::size_t hotness = 1;
  std::size_t width = 64;
  std::size_t max_rows = 1'000'000;
  std::size_t dp_rows = 2000;
  std::vector<double> zipf{1.05};
  std::uint64_t seed = 2024;
  std::size_t warmup = 1;
  std::size_t steps = 5;
  std::size_t stats_steps = 2;
  double max_replica_mb = 256;
  std::size_t frequent = strata::auto_place;  // auto_place: the cost model chooses
  std::vector<std::string> policies;
  std::vector<std::string> modes;
  bool json = false;
};

std::vector<std::string_view> split(std::string_view s, char sep) {
  std::vector<std::string_view> parts;
  std::size_t pos = 0;
  while (true) {
    const std::size_t end = s.find(sep, pos);
    parts.push_back(
        s.substr(pos, end == std::string_view::npos ? std::string_view::npos : end - pos));
    if (end == std::string_view::npos) return parts;
    pos = end + 1;
  }
}

template <std::size_t N>
std::vector<std::string> parse_list(std::string_view flag, std::string_view text,
                                    const std::string_view (&allowed)[N]) {
  std::vector<std::string> out;
  for (std::string_view item : split(text, ',')) {
    if (std::find(std::begin(allowed), std::end(allowed), item) == std::end(allowed)) {
      std::string names;
      for (std::string_view a : allowed) names += (names.empty() ? "" : ", ") + std::string(a);
      throw usage_error(std::string(flag) + " takes a comma-separated list of " + names +
                        "; got \"" + std::string(item) + "\"");
    }
    if (std::find(out.begin(), out.end(), item) == out.end()) out.emplace_back(item);
  }
  return out;
}

Options parse_args(int argc, char** argv) {
  Options o;
  for (int i = 1; i < argc; ++i) {
    const std::string_view arg = argv[i];
    auto value = [&]() -> std::string_view {
      if (i + 1 >= argc) throw usage_error(std::string(arg) + " needs a value");
      return argv[++i];
    };
    if (arg == "--backend") {
      const std::string_view b = value();
      if (b == "mpi") {
#ifdef STRATA_EXAMPLES_HAVE_MPI
        o.mpi = true;
#else
        throw usage_error("--backend mpi: this build has no MPI");
#endif
      } else if (b != "local") {
        throw usage_error("--backend must be local or mpi, got \"" + std::string(b) + "\"");
      }
    } else if (arg == "--world") {
      o.world = static_cast<int>(cli::parse_integer(arg, value(), 1, 1024));
    } else if (arg == "--node-size") {
      o.node_size = cli::parse_size(arg, value(), 1, 1024);
    } else if (arg == "--batch") {
      o.batch = cli::parse_size(arg, value(), 1, 1u << 20);
    } else if (arg == "--hotness") {
      o.hotness = cli::parse_size(arg, value(), 1, 1024);
    } else if (arg == "--width") {
      o.width = cli::parse_size(arg, value(), 1, 4096);
    } else if (arg == "--max-rows") {
      o.max_rows = cli::parse_size(arg, value(), 1, criteo_kaggle_largest);
    } else if (arg == "--dp-rows") {
      o.dp_rows = cli::parse_size(arg, value(), 0, criteo_kaggle_largest);
    } else if (arg == "--zipf") {
      o.zipf.clear();
      for (std::string_view s : split(value(), ',')) {
        const double z = cli::parse_real(arg, s, 0, 10);
        if (std::find(o.zipf.begin(), o.zipf.end(), z) == o.zipf.end()) o.zipf.push_back(z);
      }
    } else if (arg == "--seed") {
      o.seed = cli::parse_integer(arg, value());
    } else if (arg == "--warmup") {
      o.warmup = cli::parse_size(arg, value(), 0, 1000);
    } else if (arg == "--steps") {
      o.steps = cli::parse_size(arg, value(), 1, 1000);
    } else if (arg == "--stats-steps") {
      o.stats_steps = cli::parse_size(arg, value(), 1, 1000);
    } else if (arg == "--max-replica-mb") {
      o.max_replica_mb = cli::parse_real(arg, value(), 0, 1e9);
    } else if (arg == "--frequent") {
      o.frequent = cli::parse_size(arg, value(), 0, criteo_kaggle_largest);
    } else if (arg == "--policies") {
      o.policies = parse_list(arg, value(), all_policies);
    } else if (arg == "--modes") {
      o.modes = parse_list(arg, value(), all_modes);
    } else if (arg == "--json") {
      o.json = true;
    } else {
      throw usage_error("unknown argument \"" + std::string(arg) + "\" (try --help)");
    }
  }
  if (o.policies.empty()) o.policies.assign(std::begin(all_policies), std::end(all_policies));
  if (o.modes.empty()) o.modes.assign(std::begin(all_modes), std::end(all_modes));
  if (!o.mpi && o.world == 0) o.world = 8;
  return o;
}

// The checks that need the world size (known late under MPI).
void check_world(Options& o) {
  const auto w = static_cast<std::size_t>(o.world);
  if (o.node_size == 0) o.node_size = w % 4 == 0 ? 4 : w;
  if (w % o.node_size != 0) {
    throw usage_error("--node-size must divide the world, got " + std::to_string(o.node_size) +
                      " for " + std::to_string(w) + " ranks");
  }
}

struct Workload {
  double zipf;
  std::vector<std::size_t> rows;
  std::vector<ZipfTable> tables;

  Workload(const Options& o, double exponent) : zipf(exponent), rows(table_rows(o.max_rows)) {
    for (std::size_t r : rows) tables.emplace_back(r, exponent);
  }

  // Rank `rank`'s ids for the warm-up and timed steps, each table-major as `SparseBatch` reads
  // them.
  std::vector<std::vector<std::int64_t>> ids(const Options& o, std::size_t rank,
                                             std::size_t steps) const {
    std::mt19937_64 rng(o.seed * 0x9E3779B97F4A7C15ull + rank);
    return draw(o, rng, steps);
  }

  // Rank `rank`'s ids for the statistics of the hybrid tables: the same laws, another stream, so
  // that the cost model sees a sample of the workload and not the batches it is measured on.
  std::vector<std::vector<std::int64_t>> statistics_ids(const Options& o, std::size_t rank) const {
    std::seed_seq seq{static_cast<std::uint32_t>(o.seed), static_cast<std::uint32_t>(o.seed >> 32),
                      static_cast<std::uint32_t>(rank), 0x57A757u};
    std::mt19937_64 rng(seq);
    return draw(o, rng, o.stats_steps);
  }

 private:
  std::vector<std::vector<std::int64_t>> draw(const Options& o, std::mt19937_64& rng,
                                              std::size_t steps) const {
    std::vector<std::vector<std::int64_t>> all(steps);
    for (auto& step : all) {
      step.resize(rows.size() * o.batch * o.hotness);
      for (std::size_t j = 0; j < rows.size(); ++j) {
        for (std::size_t k = 0; k < o.batch * o.hotness; ++k)
          step[j * o.batch * o.hotness + k] = tables[j].draw(rng);
      }
    }
    return all;
  }
};

// Column blocks per table for the column policy: the most of 4 and 2 the width and world allow.
std::size_t column_shards(const Options& o) {
  for (std::size_t s : {4, 2}) {
    if (o.width % s == 0 && static_cast<std::size_t>(o.world) >= s) return s;
  }
  return 1;
}

strata::ShardingPlan make_plan(const Options& o, const Workload& w, std::string_view policy) {
  std::vector<strata::TableSpec> specs;
  for (std::size_t rows : w.rows) {
    strata::PlacementSpec p;
    if (policy == "table") {
      p = strata::TableWise::spec;
    } else if (policy == "column") {
      const std::size_t s = column_shards(o);
      p = s > 1 ? strata::PlacementSpec{strata::Placement::column_wise, s, strata::auto_place}
                : strata::TableWise::spec;
    } else if (policy == "row") {
      p = strata::RowWise::spec;
    } else if (policy == "table-row") {
      p = strata::TableRowWise::spec;
    } else if (policy == "hybrid") {
      p = strata::Hybrid<strata::RowWise>::spec;
      if (o.frequent != strata::auto_place) p.frequent = std::min(o.frequent, rows);
    } else {
      p = rows <= o.dp_rows ? strata::DataParallel::spec : strata::RowWise::spec;
    }
    specs.push_back({rows, o.width, p});
  }
  return strata::ShardingPlan::make(std::move(specs), static_cast<std::size_t>(o.world),
                                    o.node_size);
}

std::string policy_label(const Options& o, std::string_view policy) {
  if (policy == "column") {
    const std::size_t s = column_shards(o);
    return s > 1 ? "column:" + std::to_string(s) : std::string("column (table)");
  }
  if (policy == "mixed") return "mixed (dp <= " + std::to_string(o.dp_rows) + " rows, row)";
  if (policy == "hybrid" && o.frequent != strata::auto_place)
    return "hybrid (" + std::to_string(o.frequent) + " frequent)";
  return std::string(policy);
}

strata::ExchangeOptions mode_options(std::string_view mode) {
  strata::ExchangeOptions e;
  e.dedup = mode != "naive";
  e.hierarchical = mode == "hier";
  return e;
}

// The frequent rows of the hybrid plan for one mode (collective): the cost model's choice, or
// the counts --frequent names, which the replica cap does not cut.
template <strata::communicator Comm>
strata::HybridChoice choose(Comm& comm, const Options& o, const strata::ShardingPlan& plan,
                            const strata::FrequencyCounts& counts,
                            std::span<const strata::SparseBatch> sample, bool dedup) {
  strata::HybridCostModel model;
  model.links = strata::sim::CostModel::t4_resnet18();
  model.links.ranks_per_node = o.node_size;
  model.element_bytes = sizeof(float);
  model.dedup = dedup;
  model.max_replica_bytes = o.frequent == strata::auto_place
                                ? o.max_replica_mb * 1e6
                                : std::numeric_limits<double>::infinity();
  return strata::choose_frequent(comm, plan, counts, sample, model);
}

struct Row {
  std::string policy, label, mode;
  double zipf = 0;
  double bytes_max = 0, bytes_mean = 0;  // per rank per step
  double dedup_ratio = 1;
  double intra = 0, inter = 0, inter_messages = 0;  // per rank per step (mean over ranks)
  double allreduce_bytes = 0;                       // payload of the replicated rows' all-reduce
  double ms_per_step = 0;
  // The hybrid placement's choice and prediction (per rank per step, exchange and all-reduce).
  bool hybrid = false;
  std::vector<std::size_t> frequent{};
  double predicted_bytes = 0, predicted_seconds = 0;
  std::string choice{};

  [[nodiscard]] double measured_bytes() const { return bytes_mean + allreduce_bytes; }
};

// Per-rank figures, summed over the timed steps.
namespace field {
enum : std::size_t { bytes, ids_sent, lookups, intra, inter, inter_messages, allreduce, count };
}  // namespace field

template <strata::communicator Comm>
void run_rank(Comm& comm, const Options& o, const std::vector<Workload>& workloads,
              std::vector<Row>& rows) {
  const auto rank = static_cast<std::size_t>(comm.rank());
  const auto world = static_cast<std::size_t>(comm.size());
  const std::size_t total_steps = o.warmup + o.steps;
  const std::size_t J = table_rows(o.max_rows).size(), B = o.batch, K = o.hotness;
  std::vector<float> out(B * J * o.width);
  // The upstream gradient's values do not change what is sent or how long it takes.
  const std::vector<float> grad(out.size(), 1e-3f);
  for (const Workload& w : workloads) {
    const auto ids = w.ids(o, rank, total_steps);
    for (const std::string& policy : o.policies) {
      const strata::ShardingPlan plan = make_plan(o, w, policy);
      const bool hybrid = policy == "hybrid";
      // The statistics phase: this rank's sample batches, counted over the world.
      std::vector<std::vector<std::int64_t>> stats_ids;
      std::vector<strata::SparseBatch> sample;
      std::optional<strata::FrequencyCounts> counts;
      if (hybrid) {
        stats_ids = w.statistics_ids(o, rank);
        counts.emplace(plan);
        for (const auto& step : stats_ids) {
          sample.push_back({step, J, B, K});
          counts->add(sample.back());
        }
        counts->reduce(comm);
      }
      for (const std::string& mode : o.modes) {
        strata::HybridChoice choice;
        if (hybrid) choice = choose(comm, o, plan, *counts, sample, mode != "naive");
        // The tables start at zero: the values do not change what is sent either.
        strata::EmbeddingExchange<Comm, float> emb(comm, plan, mode_options(mode), choice.sets);
        std::vector<double> mine(field::count, 0.0), times(o.steps, 0.0);
        for (std::size_t t = 0; t < total_steps; ++t) {
          comm.barrier();
          const auto start = std::chrono::steady_clock::now();
          emb.forward({ids[t], J, B, K}, out);
          emb.backward(grad, strata::Sgd{0.01});
          const std::chrono::duration<double> took = std::chrono::steady_clock::now() - start;
          if (t < o.warmup) continue;
          times[t - o.warmup] = took.count();
          const strata::ExchangeStats& s = emb.stats();
          mine[field::bytes] += static_cast<double>(s.bytes_sent(sizeof(float)));
          mine[field::ids_sent] += static_cast<double>(s.ids_sent);
          mine[field::lookups] += static_cast<double>(s.lookups);
          mine[field::intra] += static_cast<double>(s.traffic.intra);
          mine[field::inter] += static_cast<double>(s.traffic.inter);
          mine[field::inter_messages] += static_cast<double>(s.traffic.inter_messages);
          mine[field::allreduce] += static_cast<double>(s.allreduce_elements * sizeof(float));
        }
        comm.all_reduce(std::span<double>(times), strata::ReduceOp::max);
        std::vector<double> all(field::count * world);
        comm.all_gather(std::span<const double>(mine), std::span<double>(all));
        if (rank != 0) continue;
        const double steps = static_cast<double>(o.steps), n = static_cast<double>(world);
        Row r;
        r.policy = policy;
        r.label = policy_label(o, policy);
        r.mode = mode;
        r.zipf = w.zipf;
        double sum[field::count] = {};
        for (std::size_t q = 0; q < world; ++q) {
          const double* f = &all[q * field::count];
          r.bytes_max = std::max(r.bytes_max, f[field::bytes] / steps);
          for (std::size_t k = 0; k < field::count; ++k) sum[k] += f[k];
        }
        r.bytes_mean = sum[field::bytes] / steps / n;
        r.dedup_ratio = sum[field::lookups] > 0 ? sum[field::ids_sent] / sum[field::lookups] : 1.0;
        r.intra = sum[field::intra] / steps / n;
        r.inter = sum[field::inter] / steps / n;
        r.inter_messages = sum[field::inter_messages] / steps / n;
        r.allreduce_bytes = sum[field::allreduce] / steps / n;
        std::sort(times.begin(), times.end());
        r.ms_per_step = times[times.size() / 2] * 1e3;
        if (hybrid) {
          r.hybrid = true;
          r.frequent = choice.frequent;
          r.predicted_bytes = choice.predicted_bytes;
          r.predicted_seconds = choice.predicted_seconds;
          r.choice = choice.describe(plan);
        }
        rows.push_back(std::move(r));
      }
    }
  }
}

std::string zipf_list(const Options& o) {
  std::string s;
  for (double z : o.zipf) {
    char buf[32];
    std::snprintf(buf, sizeof buf, "%s%.2f", s.empty() ? "" : ", ", z);
    s += buf;
  }
  return s;
}

void print_table(const Options& o, const Workload& w, const std::vector<Row>& rows) {
  std::size_t total_rows = 0;
  for (std::size_t r : w.rows) total_rows += r;
  std::printf(
      "world %d (nodes of %zu), 26 tables of %zu to %zu rows (%zu in all, Criteo Kaggle scaled "
      "to %zu), width %zu, float32\nbatch %zu per rank, hotness %zu, Zipf %s, seed %llu; "
      "median of %zu steps after %zu warm-up, slowest rank\n",
      o.world, o.node_size, *std::min_element(w.rows.begin(), w.rows.end()),
      *std::max_element(w.rows.begin(), w.rows.end()), total_rows, o.max_rows, o.width, o.batch,
      o.hotness, zipf_list(o).c_str(), static_cast<unsigned long long>(o.seed), o.steps, o.warmup);
  bool any_hybrid = false;
  for (const Row& r : rows) any_hybrid = any_hybrid || r.hybrid;
  if (any_hybrid) {
    if (o.frequent == strata::auto_place) {
      std::printf(
          "hybrid: frequent rows chosen by the cost model from %zu statistics batches per rank "
          "(other seeds), links of t4_resnet18 with nodes of %zu, replicas at most %g MB per "
          "rank\n",
          o.stats_steps, o.node_size, o.max_replica_mb);
    } else {
      std::printf(
          "hybrid: the %zu most frequent rows of each table (all of a smaller one) replicated, "
          "counted over %zu statistics batches per rank (other seeds)\n",
          o.frequent, o.stats_steps);
    }
  }
  // The cost model's choice per mode; modes with the same choice share one listing.
  for (std::size_t i = 0; i < rows.size(); ++i) {
    if (!rows[i].hybrid) continue;
    bool seen = false;
    for (std::size_t k = 0; k < i; ++k) {
      seen = seen ||
             (rows[k].hybrid && rows[k].zipf == rows[i].zipf && rows[k].choice == rows[i].choice);
    }
    if (seen) continue;
    std::string modes;
    for (std::size_t k = i; k < rows.size(); ++k) {
      if (rows[k].hybrid && rows[k].zipf == rows[i].zipf && rows[k].choice == rows[i].choice)
        modes += modes.empty() ? rows[k].mode : ", " + rows[k].mode;
    }
    std::printf("\ncost model's choice, Zipf %.2f, %s:\n%s", rows[i].zipf, modes.c_str(),
                rows[i].choice.c_str());
  }
  std::printf(
      "\n| Zipf | policy | mode | MB/rank max | MB/rank mean | ids/remote lookup | "
      "intra Melem/rank | inter Melem/rank | inter msgs/rank | all-reduce MB | ms/step | "
      "predicted MB | measured MB | measured/predicted |\n"
      "| ---: | --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | "
      "---: |\n");
  for (const Row& r : rows) {
    std::printf("| %.2f | %s | %s | %.2f | %.2f | %.3f | %.3f | %.3f | %.1f | %.2f | %.1f |",
                r.zipf, r.label.c_str(), r.mode.c_str(), r.bytes_max / 1e6, r.bytes_mean / 1e6,
                r.dedup_ratio, r.intra / 1e6, r.inter / 1e6, r.inter_messages,
                r.allreduce_bytes / 1e6, r.ms_per_step);
    if (r.hybrid) {
      std::printf(" %.2f | %.2f | %.3f |\n", r.predicted_bytes / 1e6, r.measured_bytes() / 1e6,
                  r.predicted_bytes > 0 ? r.measured_bytes() / r.predicted_bytes : 0.0);
    } else {
      std::printf(" - | %.2f | - |\n", r.measured_bytes() / 1e6);
    }
  }
}

void print_json(const Options& o, const Workload& w, const std::vector<Row>& rows) {
  std::printf(
      "{\"world\":%d,\"node_size\":%zu,\"batch\":%zu,\"hotness\":%zu,\"width\":%zu,\"zipf\":[",
      o.world, o.node_size, o.batch, o.hotness, o.width);
  for (std::size_t i = 0; i < o.zipf.size(); ++i) std::printf("%s%.17g", i ? "," : "", o.zipf[i]);
  std::printf(
      "],\"seed\":%llu,\"warmup\":%zu,\"steps\":%zu,\"stats_steps\":%zu,"
      "\"max_replica_mb\":%.17g,\"column_shards\":%zu,\"dp_rows\":%zu,",
      static_cast<unsigned long long>(o.seed), o.warmup, o.steps, o.stats_steps, o.max_replica_mb,
      column_shards(o), o.dp_rows);
  if (o.frequent == strata::auto_place) {
    std::printf("\"frequent\":null,\"table_rows\":[");
  } else {
    std::printf("\"frequent\":%zu,\"table_rows\":[", o.frequent);
  }
  for (std::size_t j = 0; j < w.rows.size(); ++j) std::printf("%s%zu", j ? "," : "", w.rows[j]);
  std::printf("],\"results\":[");
  for (std::size_t i = 0; i < rows.size(); ++i) {
    const Row& r = rows[i];
    std::printf(
        "%s{\"policy\":\"%s\",\"mode\":\"%s\",\"zipf\":%.17g,\"bytes_per_rank_max\":%.17g,"
        "\"bytes_per_rank_mean\":%.17g,\"dedup_ratio\":%.17g,\"intra_elements\":%.17g,"
        "\"inter_elements\":%.17g,\"inter_messages\":%.17g,\"allreduce_bytes\":%.17g,"
        "\"ms_per_step\":%.17g",
        i ? "," : "", r.policy.c_str(), r.mode.c_str(), r.zipf, r.bytes_max, r.bytes_mean,
        r.dedup_ratio, r.intra, r.inter, r.inter_messages, r.allreduce_bytes, r.ms_per_step);
    if (r.hybrid) {
      std::printf(",\"frequent\":[");
      for (std::size_t j = 0; j < r.frequent.size(); ++j)
        std::printf("%s%zu", j ? "," : "", r.frequent[j]);
      std::printf("],\"predicted_bytes\":%.17g,\"measured_bytes\":%.17g,\"predicted_ms\":%.17g",
                  r.predicted_bytes, r.measured_bytes(), r.predicted_seconds * 1e3);
    }
    std::printf("}");
  }
  std::printf("]}\n");
}

std::vector<Workload> make_workloads(const Options& o) {
  std::vector<Workload> all;
  for (double z : o.zipf) all.emplace_back(o, z);
  return all;
}

}  // namespace

int main(int argc, char** argv) {
  if (cli::asks_for_help(argc, argv)) {
    std::printf(
        "usage: dlrm_exchange [--backend local|mpi] [--world N] [--node-size R] [--batch B]\n"
        "                     [--hotness K] [--width D] [--max-rows M] [--dp-rows N]\n"
        "                     [--zipf S[,S2,...]] [--seed X] [--warmup W] [--steps T]\n"
        "                     [--stats-steps N] [--max-replica-mb C] [--frequent N]\n"
        "                     [--policies LIST] [--modes LIST] [--json]\n"
        "26 tables sized after Criteo Kaggle's categorical features (the largest scaled to M\n"
        "rows, default 1000000), width D (64), B samples per rank (2048) with K Zipf ids (1)\n"
        "per table, for each exponent S (1.05). For each placement in LIST (table, column,\n"
        "row, table-row, mixed, hybrid; default all) and each mode (naive, dedup, hier;\n"
        "default all) prints the bytes each rank sends per step, ids sent per remote lookup,\n"
        "traffic inside and across nodes of R ranks (4) and the median step time of the\n"
        "slowest rank. hybrid replicates the most frequent rows of every table (the rest\n"
        "row-wise): as many as the cost model chooses from N statistics batches per rank (2),\n"
        "with at most C MB of replicas per rank (256), or the N of --frequent; it prints the\n"
        "choice and the predicted bytes beside the measured. --world defaults to 8 on the\n"
        "local backend; with --backend mpi (under mpirun) the world comes from MPI.\n");
    return 0;
  }
  return cli::run("dlrm_exchange", [&] {
    Options o = parse_args(argc, argv);
    std::vector<Row> rows;
    if (o.mpi) {
#ifdef STRATA_EXAMPLES_HAVE_MPI
      strata::MpiEnvironment env(argc, argv);
      auto comm = strata::MpiComm::world();
      if (o.world != 0 && o.world != comm.size()) {
        throw usage_error("--world " + std::to_string(o.world) + " but MPI runs " +
                          std::to_string(comm.size()) + " processes");
      }
      o.world = comm.size();
      check_world(o);
      const auto workloads = make_workloads(o);
      run_rank(comm, o, workloads, rows);
      if (comm.rank() != 0) return 0;
      o.json ? print_json(o, workloads[0], rows) : print_table(o, workloads[0], rows);
#endif
      return 0;
    }
    check_world(o);
    const auto workloads = make_workloads(o);
    strata::LocalWorld(o.world).run(
        [&](strata::LocalComm& comm) { run_rank(comm, o, workloads, rows); });
    o.json ? print_json(o, workloads[0], rows) : print_table(o, workloads[0], rows);
    return 0;
  });
}
