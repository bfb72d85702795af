// dlrm_exchange: the embedding exchange of a DLRM-shaped training step under five placements and
// three exchange modes, with the bytes every rank sends and the time of a step.
//
//   dlrm_exchange [--backend local|mpi] [--world N] [--node-size R] [--batch B] [--hotness K]
//                 [--width D] [--max-rows M] [--dp-rows N] [--zipf S] [--seed X] [--warmup W]
//                 [--steps T] [--policies LIST] [--modes LIST] [--json]
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
// block.
//
// Placements (--policies, default all):
//   table      every table whole on one rank, placed by the balancer
//   column     every table in column blocks on 4 ranks (2 if the width or world do not allow 4)
//   row        every table in row blocks over all ranks
//   table-row  every table in row blocks over the ranks of one node (--node-size: 4 by default,
//              or the whole world where it does not divide by 4)
//   mixed      tables of at most --dp-rows rows replicated (data-parallel), the rest row-wise
// Modes (--modes, default all): naive (no de-duplication: the owners pool each sample's rows),
// dedup (each rank sends each row it needs once per owner, and one summed gradient per row), hier
// (dedup over the hierarchical all-to-all, nodes of --node-size ranks).
//
// For every pair it prints the bytes each rank sent to other ranks in one step's exchanges (ids,
// looked-up rows, gradients; the data-parallel all-reduce apart), the maximum and the mean over
// ranks, the de-duplication ratio (ids sent per lookup served by another rank, over the world:
// 1 without de-duplication), the elements each rank sent inside and across nodes and its
// messages across nodes, and the median over --steps timed steps (after --warmup) of the slowest
// rank's forward + backward. --json prints the same as one JSON object.
#include <strata/comm/local.hpp>
#include <strata/embedding/exchange.hpp>
#ifdef STRATA_EXAMPLES_HAVE_MPI
#include <strata/comm/mpi.hpp>
#endif

#include "cli.hpp"

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <numeric>
#include <random>
#include <string>
#include <string_view>
#include <vector>

namespace {

using cli::usage_error;

// Criteo Kaggle's 26 categorical features, in column order: distinct values of each.
constexpr std::size_t criteo_kaggle_rows[26] = {
    1460, 583,   10131227, 2202608, 305,  24,   12517, 633,     3,  93145, 5683,   8351593, 3194,
    27,   14992, 5461306,  10,      5652, 2173, 4,     7046547, 18, 15,    286181, 105,     142572};
constexpr std::size_t criteo_kaggle_largest = 10131227;
// Tables up to this size keep their real row count when the model is scaled down.
constexpr std::size_t keep_real_rows = 1000;

constexpr std::string_view all_policies[] = {"table", "column", "row", "table-row", "mixed"};
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
  double zipf = 1.05;
  std::uint64_t seed = 2024;
  std::size_t warmup = 1;
  std::size_t steps = 5;
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
      o.zipf = cli::parse_real(arg, value(), 0, 10);
    } else if (arg == "--seed") {
      o.seed = cli::parse_integer(arg, value());
    } else if (arg == "--warmup") {
      o.warmup = cli::parse_size(arg, value(), 0, 1000);
    } else if (arg == "--steps") {
      o.steps = cli::parse_size(arg, value(), 1, 1000);
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

std::vector<std::size_t> table_rows(std::size_t max_rows) {
  std::vector<std::size_t> rows;
  const double scale = static_cast<double>(max_rows) / static_cast<double>(criteo_kaggle_largest);
  for (std::size_t real : criteo_kaggle_rows) {
    const auto scaled = static_cast<std::size_t>(std::llround(static_cast<double>(real) * scale));
    rows.push_back(std::max({scaled, std::min(real, keep_real_rows), std::size_t{1}}));
  }
  return rows;
}

// Zipf ids for one table: inverse transform sampling over the cumulative weights of the ranks.
class ZipfTable {
 public:
  ZipfTable(std::size_t rows, double exponent) : cumulative_(rows) {
    double sum = 0;
    for (std::size_t i = 0; i < rows; ++i) {
      sum += std::pow(static_cast<double>(i + 1), -exponent);
      cumulative_[i] = sum;
    }
    // A multiplier prime to the size makes i -> i * m mod rows a permutation of the rows.
    stride_ = std::max<std::size_t>(1, rows * 618 / 1000);
    while (std::gcd(stride_, rows) != 1) ++stride_;
  }

  std::int64_t draw(std::mt19937_64& rng) const {
    const double u = static_cast<double>(rng() >> 11) * 0x1.0p-53 * cumulative_.back();
    auto i = static_cast<std::size_t>(std::upper_bound(cumulative_.begin(), cumulative_.end(), u) -
                                      cumulative_.begin());
    i = std::min(i, cumulative_.size() - 1);
    return static_cast<std::int64_t>(i * stride_ % cumulative_.size());
  }

 private:
  std::vector<double> cumulative_;
  std::size_t stride_ = 1;
};

struct Workload {
  std::vector<std::size_t> rows;
  std::vector<ZipfTable> zipf;

  explicit Workload(const Options& o) : rows(table_rows(o.max_rows)) {
    for (std::size_t r : rows) zipf.emplace_back(r, o.zipf);
  }

  // Rank `rank`'s ids for `steps` steps, each table-major as `SparseBatch` reads them.
  std::vector<std::vector<std::int64_t>> ids(const Options& o, std::size_t rank,
                                             std::size_t steps) const {
    std::mt19937_64 rng(o.seed * 0x9E3779B97F4A7C15ull + rank);
    std::vector<std::vector<std::int64_t>> all(steps);
    for (auto& step : all) {
      step.resize(rows.size() * o.batch * o.hotness);
      for (std::size_t j = 0; j < rows.size(); ++j) {
        for (std::size_t k = 0; k < o.batch * o.hotness; ++k)
          step[j * o.batch * o.hotness + k] = zipf[j].draw(rng);
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
  return std::string(policy);
}

strata::ExchangeOptions mode_options(std::string_view mode) {
  strata::ExchangeOptions e;
  e.dedup = mode != "naive";
  e.hierarchical = mode == "hier";
  return e;
}

struct Row {
  std::string policy, label, mode;
  double bytes_max = 0, bytes_mean = 0;  // per rank per step
  double dedup_ratio = 1;
  double intra = 0, inter = 0, inter_messages = 0;  // per rank per step (mean over ranks)
  double allreduce_bytes = 0;                       // payload of the data-parallel all-reduce
  double ms_per_step = 0;
};

// Per-rank figures, summed over the timed steps.
namespace field {
enum : std::size_t { bytes, ids_sent, lookups, intra, inter, inter_messages, allreduce, count };
}  // namespace field

template <strata::communicator Comm>
void run_rank(Comm& comm, const Options& o, const Workload& w, std::vector<Row>& rows) {
  const auto rank = static_cast<std::size_t>(comm.rank());
  const auto world = static_cast<std::size_t>(comm.size());
  const std::size_t total_steps = o.warmup + o.steps;
  const auto ids = w.ids(o, rank, total_steps);
  const std::size_t J = w.rows.size(), B = o.batch, K = o.hotness;
  std::vector<float> out(B * J * o.width);
  // The upstream gradient's values do not change what is sent or how long it takes.
  const std::vector<float> grad(out.size(), 1e-3f);
  for (const std::string& policy : o.policies) {
    const strata::ShardingPlan plan = make_plan(o, w, policy);
    for (const std::string& mode : o.modes) {
      // The tables start at zero: the values do not change what is sent either.
      strata::EmbeddingExchange<Comm, float> emb(comm, plan, mode_options(mode));
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
      Row r{policy, policy_label(o, policy), mode};
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
      rows.push_back(std::move(r));
    }
  }
}

void print_table(const Options& o, const Workload& w, const std::vector<Row>& rows) {
  std::size_t total_rows = 0;
  for (std::size_t r : w.rows) total_rows += r;
  std::printf(
      "world %d (nodes of %zu), 26 tables of %zu to %zu rows (%zu in all, Criteo Kaggle scaled "
      "to %zu), width %zu, float32\nbatch %zu per rank, hotness %zu, Zipf %.2f, seed %llu; "
      "median of %zu steps after %zu warm-up, slowest rank\n\n",
      o.world, o.node_size, *std::min_element(w.rows.begin(), w.rows.end()),
      *std::max_element(w.rows.begin(), w.rows.end()), total_rows, o.max_rows, o.width, o.batch,
      o.hotness, o.zipf, static_cast<unsigned long long>(o.seed), o.steps, o.warmup);
  std::printf(
      "| policy | mode | MB/rank max | MB/rank mean | ids/remote lookup | intra Melem/rank | "
      "inter Melem/rank | inter msgs/rank | all-reduce MB | ms/step |\n"
      "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |\n");
  for (const Row& r : rows) {
    std::printf("| %s | %s | %.2f | %.2f | %.3f | %.3f | %.3f | %.1f | %.2f | %.1f |\n",
                r.label.c_str(), r.mode.c_str(), r.bytes_max / 1e6, r.bytes_mean / 1e6,
                r.dedup_ratio, r.intra / 1e6, r.inter / 1e6, r.inter_messages,
                r.allreduce_bytes / 1e6, r.ms_per_step);
  }
}

void print_json(const Options& o, const Workload& w, const std::vector<Row>& rows) {
  std::printf(
      "{\"world\":%d,\"node_size\":%zu,\"batch\":%zu,\"hotness\":%zu,\"width\":%zu,"
      "\"zipf\":%.17g,\"seed\":%llu,\"warmup\":%zu,\"steps\":%zu,\"column_shards\":%zu,"
      "\"dp_rows\":%zu,\"table_rows\":[",
      o.world, o.node_size, o.batch, o.hotness, o.width, o.zipf,
      static_cast<unsigned long long>(o.seed), o.warmup, o.steps, column_shards(o), o.dp_rows);
  for (std::size_t j = 0; j < w.rows.size(); ++j) std::printf("%s%zu", j ? "," : "", w.rows[j]);
  std::printf("],\"results\":[");
  for (std::size_t i = 0; i < rows.size(); ++i) {
    const Row& r = rows[i];
    std::printf(
        "%s{\"policy\":\"%s\",\"mode\":\"%s\",\"bytes_per_rank_max\":%.17g,"
        "\"bytes_per_rank_mean\":%.17g,\"dedup_ratio\":%.17g,\"intra_elements\":%.17g,"
        "\"inter_elements\":%.17g,\"inter_messages\":%.17g,\"allreduce_bytes\":%.17g,"
        "\"ms_per_step\":%.17g}",
        i ? "," : "", r.policy.c_str(), r.mode.c_str(), r.bytes_max, r.bytes_mean, r.dedup_ratio,
        r.intra, r.inter, r.inter_messages, r.allreduce_bytes, r.ms_per_step);
  }
  std::printf("]}\n");
}

}  // namespace

int main(int argc, char** argv) {
  if (cli::asks_for_help(argc, argv)) {
    std::printf(
        "usage: dlrm_exchange [--backend local|mpi] [--world N] [--node-size R] [--batch B]\n"
        "                     [--hotness K] [--width D] [--max-rows M] [--dp-rows N] [--zipf S]\n"
        "                     [--seed X] [--warmup W] [--steps T] [--policies LIST]\n"
        "                     [--modes LIST] [--json]\n"
        "26 tables sized after Criteo Kaggle's categorical features (the largest scaled to M\n"
        "rows, default 1000000), width D (64), B samples per rank (2048) with K Zipf ids (1)\n"
        "per table. For each placement in LIST (table, column, row, table-row, mixed; default\n"
        "all) and each mode (naive, dedup, hier; default all) prints the bytes each rank sends\n"
        "per step, ids sent per remote lookup, traffic inside and across nodes of R ranks (4)\n"
        "and the median step time of the slowest rank. --world defaults to 8 on the local\n"
        "backend; with --backend mpi (under mpirun) the world comes from MPI.\n");
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
      const Workload w(o);
      run_rank(comm, o, w, rows);
      if (comm.rank() != 0) return 0;
      o.json ? print_json(o, w, rows) : print_table(o, w, rows);
#endif
      return 0;
    }
    check_world(o);
    const Workload w(o);
    strata::LocalWorld(o.world).run([&](strata::LocalComm& comm) { run_rank(comm, o, w, rows); });
    o.json ? print_json(o, w, rows) : print_table(o, w, rows);
    return 0;
  });
}
