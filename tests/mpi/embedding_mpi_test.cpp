// The embedding exchange over MPI with real processes, against the serial model the local suite
// uses: each process builds the whole world's workload from the same seed and checks its own
// outputs, update calls and blocks; replicas are compared bitwise across processes. The world
// size is the process count. Hybrid tables replicate the frequent rows that FrequencyCounts and
// choose_frequent find over MPI.
#include <doctest/doctest.h>

#include <strata/comm/mpi.hpp>
#include <strata/embedding/exchange.hpp>
#include <strata/embedding/frequency.hpp>
#include <strata/embedding/hybrid_cost.hpp>

#include <algorithm>
#include <chrono>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <random>
#include <string>
#include <vector>

#include "../comm/conformance.hpp"
#include "../embedding/embedding_model.hpp"

namespace {

namespace em = embedding_model;
using Exchange = strata::EmbeddingExchange<strata::MpiComm, double>;

constexpr double lr = 0.1;

std::size_t process_count() {
  int n = 0;
  MPI_Comm_size(MPI_COMM_WORLD, &n);
  return static_cast<std::size_t>(n);
}

// A process whose check fails and leaves makes the others fail within a minute, not hang.
strata::MpiComm world_comm() {
  strata::MpiOptions options;
  options.timeout = std::chrono::minutes(1);
  return strata::MpiComm(MPI_COMM_WORLD, options);
}

// Every placement, pinned and not, some tables with fewer rows than processes.
strata::ShardingPlan mixed_plan(std::size_t n, std::size_t g) {
  const std::string column = n >= 2 ? "column:2" : "column:1";
  const std::string pinned_column = n >= 3 ? "column:3@" + std::to_string(n - 3) : "column:1@0";
  return strata::ShardingPlan::parse(
      "0: 37x4 table; 1: 20x6 " + column + "; 2: 50x3 row; 3: 5x2 row; 4: 30x4 table-row; 5: 9x2 " +
          "dp; 6: 12x4 table@" + std::to_string(n - 1) + "; 7: 3x3 table-row@" +
          std::to_string(n / g - 1) + "; 8: 15x6 " + pinned_column,
      n, g);
}

// The run of `w` with `o` (and the frequent rows `f` of the hybrid tables) on this process,
// checked against the model; replicas bitwise equal on every process.
void check_run(strata::MpiComm& world, const strata::ShardingPlan& plan, const em::Workload& w,
               const strata::ExchangeOptions& o, const std::string& tag,
               const strata::FrequentSets& f = {}) {
  const auto me = static_cast<std::size_t>(world.rank());
  const std::size_t n = plan.world_size();
  const auto e = em::serial(w, o.pooling == strata::Pooling::mean, lr);
  Exchange emb(world, plan, o, f);
  const auto res = em::run_rank(emb, w, me, lr);
  const auto bad = em::compare(plan, w, e, me, res, o.dedup, tag, f);
  std::string all;
  for (const auto& line : bad) all += line + "\n";
  CAPTURE(all);
  CHECK(bad.empty());
  for (std::size_t k = 0; k < res.replicas.size(); ++k) {
    const auto& mine = res.replicas[k];
    std::vector<double> every(mine.size() * n);
    world.all_gather(std::span<const double>(mine), std::span<double>(every));
    std::size_t differ = 0;
    for (std::size_t r = 0; r < n; ++r)
      differ += std::memcmp(every.data() + r * mine.size(), mine.data(),
                            mine.size() * sizeof(double)) != 0;
    CAPTURE(tag);
    CAPTURE(k);
    CHECK(differ == 0);
  }
}

}  // namespace

TEST_CASE("embedding exchange: the serial model on a mixed and a random plan (mpi)") {
  const std::size_t n = process_count();
  conformance::for_each_world("mpi", {static_cast<int>(n)}, [&](int) {
    auto world = world_comm();
    std::vector<std::size_t> node_sizes{1};
    if (n % 2 == 0 && n > 2) node_sizes.push_back(2);
    if (n > 1) node_sizes.push_back(n);
    for (std::size_t g : node_sizes) {
      std::mt19937_64 rng(42 + n + g);  // the same on every process
      const auto mixed = mixed_plan(n, g);
      const auto random = strata::ShardingPlan::make(em::random_tables(rng, n, g), n, g);
      for (const auto* plan : {&mixed, &random}) {
        const auto w = em::random_workload(rng, plan->tables(), n, 3);
        for (const strata::ExchangeOptions& o :
             {strata::ExchangeOptions{strata::Pooling::sum, true, false},
              strata::ExchangeOptions{strata::Pooling::mean, false, true},
              strata::ExchangeOptions{strata::Pooling::mean, true, true},
              strata::ExchangeOptions{strata::Pooling::sum, false, false}}) {
          const std::string tag = "mpi, world " + std::to_string(n) + ", nodes of " +
                                  std::to_string(g) + (o.dedup ? ", dedup" : ", no dedup") +
                                  (o.hierarchical ? ", hierarchical" : ", flat") +
                                  (o.pooling == strata::Pooling::mean ? ", mean" : ", sum") +
                                  ", plan " + plan->describe();
          check_run(world, *plan, w, o, tag);
        }
      }
    }
  });
}

TEST_CASE("embedding exchange: a bad id on one process fails on every process alike (mpi)") {
  const std::size_t n = process_count();
  conformance::for_each_world("mpi", {static_cast<int>(n)}, [&](int) {
    auto world = world_comm();
    const auto me = static_cast<std::size_t>(world.rank());
    const auto plan = mixed_plan(n, 1);
    std::mt19937_64 rng(9);
    auto w = em::random_workload(rng, plan.tables(), n, 1);
    // The last process looks up 2 samples of hotness 1, the first of them past the end of the
    // row-wise table 2 (lookup 0 of table 2).
    em::RankStep& last = w.steps[0][n - 1];
    last.samples = 2;
    last.hotness = 1;
    last.ids.assign(plan.num_tables() * 2, 1);
    last.grad.assign(2 * w.total_width(), 0.25);
    std::vector<std::int64_t> bad = last.ids;
    bad[2 * 2] = 50;
    const auto e = em::serial(w, false, lr);

    Exchange emb(world, plan);
    emb.initialize(em::initial_value);
    std::vector<std::vector<double>> before;
    for (std::size_t g = 0; g < emb.tables().num_groups(); ++g) {
      const auto d = emb.tables().group_data(g);
      before.emplace_back(d.begin(), d.end());
    }
    const em::RankStep& mine = w.steps[0][me];
    std::vector<double> out(mine.samples * emb.output_width());
    const std::span<const std::int64_t> ids =
        me == n - 1 ? std::span<const std::int64_t>(bad) : std::span<const std::int64_t>(mine.ids);
    conformance::expect_usage_error(
        world.rank(), "EmbeddingExchange::forward",
        "rank " + std::to_string(n - 1) +
            ": table 2, lookup 0: id 50 is outside the table's 50 rows",
        [&] {
          emb.forward({ids, plan.num_tables(), mine.samples, mine.hotness}, out);
        });
    std::size_t changed = 0;
    for (std::size_t g = 0; g < emb.tables().num_groups(); ++g) {
      const auto d = emb.tables().group_data(g);
      changed += std::vector<double>(d.begin(), d.end()) != before[g];
    }
    CHECK(changed == 0);
    // The exchange stays usable: the good step matches the model.
    const auto res = em::run_rank(emb, w, me, lr, /*initialize=*/false);
    const auto problems = em::compare(plan, w, e, me, res, true, "mpi, after the error");
    std::string all;
    for (const auto& line : problems) all += line + "\n";
    CAPTURE(all);
    CHECK(problems.empty());
  });
}

namespace {

// Every hybrid placement, pinned and not, with a data-parallel and a row-wise table among them.
strata::ShardingPlan hybrid_plan(std::size_t n, std::size_t g) {
  const std::string column = n >= 2 ? "column:2" : "column:1";
  const std::string pinned_column = n >= 3 ? "column:3@" + std::to_string(n - 3) : "column:1@0";
  return strata::ShardingPlan::parse(
      "0: 37x4 hybrid:table; 1: 20x6 hybrid:" + column + "; 2: 50x3 hybrid; 3: 5x2 row; 4: 30x4 " +
          "hybrid:table-row; 5: 9x2 dp; 6: 12x4 hybrid:table@" + std::to_string(n - 1) +
          "/3; 7: 3x3 hybrid:table-row@" + std::to_string(n / g - 1) +
          "; 8: 15x6 hybrid:" + pinned_column + "/15",
      n, g);
}

// The same value on every process: gathers `mine` and compares each process's copy bitwise.
bool same_everywhere(strata::MpiComm& world, const std::vector<std::int64_t>& mine) {
  const auto n = static_cast<std::size_t>(world.size());
  const std::vector<std::int64_t> size{static_cast<std::int64_t>(mine.size())};
  std::vector<std::int64_t> sizes(n);
  world.all_gather(std::span<const std::int64_t>(size), std::span<std::int64_t>(sizes));
  for (const auto s : sizes)
    if (s != size[0]) return false;
  std::vector<std::int64_t> all(mine.size() * n);
  world.all_gather(std::span<const std::int64_t>(mine), std::span<std::int64_t>(all));
  for (std::size_t r = 0; r < n; ++r) {
    if (!std::equal(mine.begin(), mine.end(),
                    all.begin() + static_cast<std::ptrdiff_t>(r * mine.size())))
      return false;
  }
  return true;
}

}  // namespace

TEST_CASE("embedding exchange: hybrid tables, frequent rows chosen over the world (mpi)") {
  const std::size_t n = process_count();
  conformance::for_each_world("mpi", {static_cast<int>(n)}, [&](int) {
    auto world = world_comm();
    const auto me = static_cast<std::size_t>(world.rank());
    std::vector<std::size_t> node_sizes{1};
    if (n % 2 == 0 && n > 2) node_sizes.push_back(2);
    if (n > 1) node_sizes.push_back(n);
    for (std::size_t g : node_sizes) {
      std::mt19937_64 rng(77 + n + g);  // the same on every process
      const auto fixed = hybrid_plan(n, g);
      const auto random = strata::ShardingPlan::make(em::random_hybrid_tables(rng, n, g), n, g);
      for (const auto* plan : {&fixed, &random}) {
        const auto w = em::random_workload(rng, plan->tables(), n, 3);
        // This process's batches of the first two steps are the sample.
        strata::FrequencyCounts counts(*plan);
        std::vector<strata::SparseBatch> sample;
        for (std::size_t t = 0; t < 2; ++t) {
          const em::RankStep& b = w.steps[t][me];
          sample.push_back({b.ids, plan->num_tables(), b.samples, b.hotness});
          counts.add(sample.back());
        }
        counts.reduce(world);
        for (const strata::ExchangeOptions& o :
             {strata::ExchangeOptions{strata::Pooling::sum, true, false},
              strata::ExchangeOptions{strata::Pooling::mean, false, true}}) {
          // The cost model's choice, on slow links so that some rows pay off; and the two most
          // frequent rows of every table that does not name its count.
          strata::HybridCostModel model;
          model.dedup = o.dedup;
          model.element_bytes = sizeof(double);
          model.links.intra_node = {1e6, 0.0};
          model.links.inter_node = {1e6, 0.0};
          const auto choice = strata::choose_frequent(world, *plan, counts, sample, model);
          strata::FrequentSets top2;
          top2.rows.resize(plan->num_tables());
          for (std::size_t j = 0; j < plan->num_tables(); ++j) {
            const auto& p = plan->table(j).placement;
            if (!p.hybrid) continue;
            top2.rows[j] = counts.frequent(j, p.frequent != strata::auto_place ? p.frequent : 2);
          }
          // The counts and the choice are the world's, the same on every process.
          std::vector<std::int64_t> flat;
          for (std::size_t j = 0; j < plan->num_tables(); ++j) {
            flat.push_back(static_cast<std::int64_t>(choice.frequent[j]));
            flat.insert(flat.end(), choice.sets.rows[j].begin(), choice.sets.rows[j].end());
            for (std::size_t i = 0; plan->hybrid(j) && i < plan->table(j).rows; ++i)
              flat.push_back(counts.count(j, i));
          }
          CHECK(same_everywhere(world, flat));
          const strata::FrequentSets* sets[] = {&choice.sets, &top2};
          for (const auto* f : sets) {
            const std::string tag = "mpi, world " + std::to_string(n) + ", nodes of " +
                                    std::to_string(g) + (o.dedup ? ", dedup" : ", no dedup") +
                                    (o.hierarchical ? ", hierarchical" : ", flat") +
                                    (f == &top2 ? ", top two" : ", chosen") + ", plan " +
                                    plan->describe();
            check_run(world, *plan, w, o, tag, *f);
          }
        }
      }
    }
  });
}
