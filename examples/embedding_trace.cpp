// embedding_trace: a deterministic hybrid-parallel embedding workload whose result does not depend
// on the placement, for cross-checking every policy, world size and backend against a serial loop.
//
//   embedding_trace --world N --tables 1000x16,500x16,64x8 --policy table|column:S|row|table-row|dp[,...]
//                   --batch B[,B1,...] --hotness K --steps T --lr LR [--pooling sum|mean]
//                   [--node-size R --hierarchical] [--no-dedup] [--frequent N]
//                   [--backend local|mpi] --out FILE
//   mpirun -np N embedding_trace --backend mpi ... (world size and ranks from MPI)
//
// In float64 on every rank, rank r owning global samples offset_r .. offset_r + B_r - 1:
// x = (t+1)*1000003 + (s+1)*7919 + (k+1)*104729 + (j+1)*31 (unsigned 64-bit), h = splitmix64(x),
// id = (h % R_j) >> (h >> 61); W_j[i][d] = cos(0.001*(i+1)*(d+1) + 0.1*(j+1)); forward
// O[s][j][d] = sum_k W_j[id][d] (mean: / K); upstream G[s][j][d] = sin(0.01*(s+1)*(d+1) +
// 0.1*(j+1) + 0.001*(t+1)) (mean: times 1/K, applied by the layer); W_j[i] -= lr * sum G.
// Rank 0 writes {"tables":[{"rows":R,"width":D,"values":[...]}...],"output_sums":[...],
// "last_outputs":[...]} with 17 significant digits. Built with -ffp-contract=off.
//
// Hybrid tables (`--policy hybrid` or `hybrid:P`) replicate their N most frequent rows, counted
// over the ids of the first min(T, 2) steps on every rank: N = min(--frequent, rows), or, without
// --frequent, the cost model's choice (choose_frequent, printed on standard error). The result
// does not depend on N.
#include <strata/comm/local.hpp>
#include <strata/embedding/exchange.hpp>
#ifdef STRATA_EXAMPLES_HAVE_MPI
#include <strata/comm/mpi.hpp>
#endif

#include "cli.hpp"

#include <cerrno>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <string>
#include <string_view>
#include <vector>

namespace {

using cli::usage_error;

struct Options {
  int world = 0;
  bool mpi = false;
  std::vector<std::pair<std::size_t, std::size_t>> tables;  // rows x width
  std::vector<strata::PlacementSpec> policies;
  std::vector<std::size_t> batch;
  std::size_t hotness = 1;
  std::size_t steps = 0;
  double lr = 0.01;
  strata::Pooling pooling = strata::Pooling::sum;
  std::size_t node_size = 0;
  bool hierarchical = false;
  bool dedup = true;
  std::size_t frequent = strata::auto_place;
  std::string out = "-";
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

Options parse_args(int argc, char** argv) {
  Options o;
  std::string_view policy_text, batch_text;
  bool have_tables = false, have_policy = false, have_batch = false, have_steps = false;
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
    } else if (arg == "--tables") {
      for (std::string_view t : split(value(), ',')) {
        const auto x = t.find('x');
        if (x == std::string_view::npos) {
          throw usage_error("--tables needs ROWSxWIDTH entries, got \"" + std::string(t) + "\"");
        }
        o.tables.emplace_back(cli::parse_size("--tables rows", t.substr(0, x), 1, 1u << 30),
                              cli::parse_size("--tables width", t.substr(x + 1), 1, 1u << 16));
      }
      have_tables = true;
    } else if (arg == "--policy") {
      policy_text = value();
      have_policy = true;
    } else if (arg == "--batch") {
      batch_text = value();
      have_batch = true;
    } else if (arg == "--hotness") {
      o.hotness = cli::parse_size(arg, value(), 1, 1024);
    } else if (arg == "--steps") {
      o.steps = cli::parse_size(arg, value(), 0, 1'000'000);
      have_steps = true;
    } else if (arg == "--lr") {
      o.lr = cli::parse_real(arg, value(), -1e6, 1e6);
    } else if (arg == "--pooling") {
      const std::string_view p = value();
      if (p == "sum") o.pooling = strata::Pooling::sum;
      else if (p == "mean") o.pooling = strata::Pooling::mean;
      else throw usage_error("--pooling must be sum or mean, got \"" + std::string(p) + "\"");
    } else if (arg == "--node-size") {
      o.node_size = cli::parse_size(arg, value(), 1, 1024);
    } else if (arg == "--hierarchical") {
      o.hierarchical = true;
    } else if (arg == "--no-dedup") {
      o.dedup = false;
    } else if (arg == "--frequent") {
      o.frequent = cli::parse_size(arg, value(), 0, std::size_t(1) << 40);
    } else if (arg == "--out") {
      o.out = value();
    } else {
      throw usage_error("unknown argument \"" + std::string(arg) + "\" (try --help)");
    }
  }
  if (!o.mpi && o.world == 0) throw usage_error("--world is required");
  if (!have_tables) throw usage_error("--tables is required");
  if (!have_policy) throw usage_error("--policy is required");
  if (!have_batch) throw usage_error("--batch is required");
  if (!have_steps) throw usage_error("--steps is required");
  const auto policies = split(policy_text, ',');
  if (policies.size() != 1 && policies.size() != o.tables.size()) {
    throw usage_error("--policy needs one placement or one per table (" +
                      std::to_string(o.tables.size()) + "), got " +
                      std::to_string(policies.size()));
  }
  for (std::size_t j = 0; j < o.tables.size(); ++j) {
    o.policies.push_back(strata::parse_placement(policies[policies.size() == 1 ? 0 : j]));
    auto& p = o.policies.back();
    if (p.hybrid && o.frequent != strata::auto_place)
      p.frequent = std::min(o.frequent, o.tables[j].first);
  }
  for (std::string_view b : split(batch_text, ','))
    o.batch.push_back(cli::parse_size("--batch", b, 0, 1u << 20));
  return o;
}

// The checks that need the world size (known late under MPI).
void check_world(Options& o) {
  const auto w = static_cast<std::size_t>(o.world);
  if (o.batch.size() == 1) o.batch.assign(w, o.batch[0]);
  if (o.batch.size() != w) {
    throw usage_error("--batch needs one size or one per rank (" + std::to_string(w) + "), got " +
                      std::to_string(o.batch.size()));
  }
  if (o.node_size == 0) o.node_size = w;
  if (o.hierarchical && w % o.node_size != 0) {
    throw usage_error("--hierarchical needs --node-size to divide the world, got " +
                      std::to_string(o.node_size) + " for " + std::to_string(w) + " ranks");
  }
}

std::uint64_t splitmix64(std::uint64_t x) {
  std::uint64_t z = x + 0x9E3779B97F4A7C15ull;
  z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
  z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
  return z ^ (z >> 31);
}

struct Result {
  std::vector<std::vector<double>> tables;
  std::vector<double> output_sums;
  std::vector<double> last_outputs;
};

// Everything of rank `comm.rank()`'s to rank 0, in rank order (an all-to-all with one receiver).
template <strata::communicator Comm>
std::vector<double> gather_to_root(Comm& comm, const std::vector<double>& mine) {
  const auto w = static_cast<std::size_t>(comm.size());
  std::vector<std::int64_t> sizes(w);
  comm.all_gather(std::span<const std::int64_t>(
                      std::vector<std::int64_t>{static_cast<std::int64_t>(mine.size())}),
                  std::span<std::int64_t>(sizes));
  std::vector<std::size_t> send(w, 0), recv(w, 0);
  send[0] = mine.size();
  std::size_t total = 0;
  if (comm.rank() == 0) {
    for (std::size_t p = 0; p < w; ++p) total += recv[p] = static_cast<std::size_t>(sizes[p]);
  }
  std::vector<double> all(total);
  comm.all_to_all(std::span<const double>(mine), std::span<const std::size_t>(send),
                  std::span<double>(all), std::span<const std::size_t>(recv));
  return all;
}

// The ids of rank `rank`'s samples at step t, table-major.
void make_ids(const Options& o, std::size_t rank, std::size_t t, std::vector<std::int64_t>& ids) {
  std::size_t offset = 0;
  for (std::size_t r = 0; r < rank; ++r) offset += o.batch[r];
  const std::size_t B = o.batch[rank], J = o.tables.size(), K = o.hotness;
  ids.resize(J * B * K);
  for (std::size_t j = 0; j < J; ++j) {
    for (std::size_t s = 0; s < B; ++s) {
      for (std::size_t k = 0; k < K; ++k) {
        const std::uint64_t x = (t + 1) * 1000003ull + (offset + s + 1) * 7919ull +
                                (k + 1) * 104729ull + (j + 1) * 31ull;
        const std::uint64_t h = splitmix64(x);
        ids[(j * B + s) * K + k] = static_cast<std::int64_t>((h % o.tables[j].first) >> (h >> 61));
      }
    }
  }
}

// The frequent rows of the hybrid tables: counted over the first steps' ids of every rank, then
// N as the placement names it or as the cost model chooses it (printed by rank 0).
template <strata::communicator Comm>
strata::FrequentSets frequent_sets(Comm& comm, const Options& o, const strata::ShardingPlan& plan) {
  bool any = false;
  for (std::size_t j = 0; j < plan.num_tables(); ++j) any = any || plan.hybrid(j);
  if (!any) return {};
  const auto rank = static_cast<std::size_t>(comm.rank());
  strata::FrequencyCounts counts(plan);
  std::vector<std::vector<std::int64_t>> ids(std::min<std::size_t>(o.steps, 2));
  std::vector<strata::SparseBatch> sample;
  for (std::size_t t = 0; t < ids.size(); ++t) {
    make_ids(o, rank, t, ids[t]);
    sample.push_back({ids[t], o.tables.size(), o.batch[rank], o.hotness});
    counts.add(sample.back());
  }
  counts.reduce(comm);
  strata::HybridCostModel model;
  model.links.ranks_per_node = plan.ranks_per_node();
  model.element_bytes = sizeof(double);
  model.dedup = o.dedup;
  const auto choice = strata::choose_frequent(comm, plan, counts, sample, model);
  if (rank == 0) std::fprintf(stderr, "%s", choice.describe(plan).c_str());
  return choice.sets;
}

template <strata::communicator Comm>
void run_rank(Comm& comm, const Options& o, const strata::ShardingPlan& plan, Result& result) {
  const auto rank = static_cast<std::size_t>(comm.rank());
  strata::ExchangeOptions eo{o.pooling, o.dedup, o.hierarchical};
  strata::EmbeddingExchange<Comm, double> emb(comm, plan, eo, frequent_sets(comm, o, plan));
  emb.initialize([](std::size_t j, std::size_t i, std::size_t d) {
    return std::cos(0.001 * static_cast<double>(i + 1) * static_cast<double>(d + 1) +
                    0.1 * static_cast<double>(j + 1));
  });
  std::size_t offset = 0;
  for (std::size_t r = 0; r < rank; ++r) offset += o.batch[r];
  const std::size_t B = o.batch[rank], J = o.tables.size(), K = o.hotness;
  const std::size_t width = emb.output_width();
  std::vector<std::int64_t> ids(J * B * K);
  std::vector<double> out(B * width), grad(B * width);
  for (std::size_t t = 0; t < o.steps; ++t) {
    make_ids(o, rank, t, ids);
    emb.forward({ids, J, B, K}, out);
    double local = 0;
    for (double v : out) local += v;
    const std::vector<double> sums = gather_to_root(comm, std::vector<double>{local});
    if (rank == 0) {
      double total = 0;
      for (double v : sums) total += v;
      result.output_sums.push_back(total);
    }
    if (t + 1 == o.steps) {
      std::vector<double> all = gather_to_root(comm, out);
      if (rank == 0) result.last_outputs = std::move(all);
    }
    for (std::size_t s = 0; s < B; ++s) {
      for (std::size_t j = 0; j < J; ++j) {
        for (std::size_t d = 0; d < o.tables[j].second; ++d) {
          grad[s * width + emb.output_offset(j) + d] =
              std::sin(0.01 * static_cast<double>(offset + s + 1) * static_cast<double>(d + 1) +
                       0.1 * static_cast<double>(j + 1) + 0.001 * static_cast<double>(t + 1));
        }
      }
    }
    emb.backward(grad, strata::Sgd{o.lr});
  }
  for (std::size_t j = 0; j < J; ++j) {
    std::vector<double> table = emb.gather_table(j, 0);
    if (rank == 0) result.tables.push_back(std::move(table));
  }
}

void write_number_list(std::FILE* f, const std::vector<double>& v) {
  std::fputc('[', f);
  for (std::size_t i = 0; i < v.size(); ++i) std::fprintf(f, "%s%.17g", i == 0 ? "" : ",", v[i]);
  std::fputc(']', f);
}

void write_json(std::FILE* f, const Options& o, const Result& r) {
  std::fputs("{\"tables\":[", f);
  for (std::size_t j = 0; j < r.tables.size(); ++j) {
    std::fprintf(f, "%s{\"rows\":%zu,\"width\":%zu,\"values\":", j == 0 ? "" : ",",
                 o.tables[j].first, o.tables[j].second);
    write_number_list(f, r.tables[j]);
    std::fputc('}', f);
  }
  std::fputs("],\"output_sums\":", f);
  write_number_list(f, r.output_sums);
  std::fputs(",\"last_outputs\":", f);
  write_number_list(f, r.last_outputs);
  std::fputs("}\n", f);
}

}  // namespace

int main(int argc, char** argv) {
  if (cli::asks_for_help(argc, argv)) {
    std::printf(
        "usage: embedding_trace --world N --tables RxD[,RxD...] --policy P[,P...]\n"
        "                       --batch B[,B1,...] --hotness K --steps T --lr LR\n"
        "                       [--pooling sum|mean] [--node-size R --hierarchical] [--no-dedup]\n"
        "                       [--frequent N]\n"
        "                       [--backend local|mpi] [--out FILE]\n"
        "P is table, column:S, row, table-row or dp, each optionally @N (rank or node), or\n"
        "hybrid[:P][/N] (the N most frequent rows replicated; N from --frequent or the cost "
        "model);\n"
        "one for every table or one per table. --batch is one size for every rank or one per\n"
        "rank. With --backend mpi (under mpirun) the world size and ranks come from MPI.\n"
        "Rank 0 writes {\"tables\":[...],\"output_sums\":[...],\"last_outputs\":[...]} to FILE\n"
        "(default: standard output).\n");
    return 0;
  }
  return cli::run("embedding_trace", [&] {
    Options o = parse_args(argc, argv);
    Result result;
    const auto make_plan = [&] {
      std::vector<strata::TableSpec> specs;
      for (std::size_t j = 0; j < o.tables.size(); ++j)
        specs.push_back({o.tables[j].first, o.tables[j].second, o.policies[j]});
      return strata::ShardingPlan::make(std::move(specs), static_cast<std::size_t>(o.world),
                                        o.node_size);
    };
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
      const auto plan = make_plan();
      run_rank(comm, o, plan, result);
      if (comm.rank() != 0) return 0;
#endif
    } else {
      check_world(o);
      const auto plan = make_plan();
      strata::LocalWorld(o.world).run(
          [&](strata::LocalComm& comm) { run_rank(comm, o, plan, result); });
    }
    std::FILE* f = o.out == "-" ? stdout : std::fopen(o.out.c_str(), "w");
    if (f == nullptr) {
      std::fprintf(stderr, "embedding_trace: cannot write %s: %s\n", o.out.c_str(),
                   std::strerror(errno));
      return 1;
    }
    write_json(f, o, result);
    if (f != stdout && std::fclose(f) != 0) {
      std::fprintf(stderr, "embedding_trace: cannot write %s\n", o.out.c_str());
      return 1;
    }
    return 0;
  });
}
