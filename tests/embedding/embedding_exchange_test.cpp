// EmbeddingExchange on the local backend against the serial model of embedding_model.hpp: random
// plans of every placement on worlds 1 to 16, uneven and empty batches, both poolings, with and
// without de-duplication and the hierarchical all-to-all; the update called once per looked-up
// row and shard; replicas bitwise equal on every rank; bad input refused alike on every rank
// without touching a table; and the ids each rank sends.
#include <doctest/doctest.h>

#include <strata/comm/local.hpp>
#include <strata/embedding/exchange.hpp>

#include <algorithm>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <random>
#include <set>
#include <stdexcept>
#include <string>
#include <utility>
#include <vector>

#include "../comm/conformance.hpp"
#include "embedding_model.hpp"

namespace {

namespace em = embedding_model;
using strata::ExchangeOptions;
using strata::LocalComm;
using strata::Pooling;
using strata::ShardingPlan;
using Exchange = strata::EmbeddingExchange<LocalComm, double>;

constexpr double lr = 0.1;

std::string option_name(const ExchangeOptions& o) {
  return std::string(o.pooling == Pooling::mean ? "mean" : "sum") +
         (o.dedup ? ", dedup" : ", no dedup") + (o.hierarchical ? ", hierarchical" : ", flat");
}

// Runs `w` on a world of the plan's size; every rank's observations, in rank order.
std::vector<em::RankResult> run_local(const ShardingPlan& plan, const em::Workload& w,
                                      const ExchangeOptions& o) {
  const std::size_t n = plan.world_size();
  std::vector<em::RankResult> results(n);
  strata::LocalWorld(static_cast<int>(n)).run([&](LocalComm& world) {
    const auto me = static_cast<std::size_t>(world.rank());
    Exchange emb(world, plan, o);
    results[me] = em::run_rank(emb, w, me, lr);
  });
  return results;
}

// Every rank against the model, and the replicas of every rank bitwise equal to rank 0's.
void check_results(const ShardingPlan& plan, const em::Workload& w, const em::Expected& e,
                   const std::vector<em::RankResult>& results, const ExchangeOptions& o,
                   const std::string& tag) {
  for (std::size_t r = 0; r < results.size(); ++r) {
    const auto bad = em::compare(plan, w, e, r, results[r], o.dedup, tag);
    std::string all;
    for (const auto& line : bad) all += line + "\n";
    CAPTURE(all);
    CHECK(bad.empty());
    REQUIRE(results[r].replicas.size() == results[0].replicas.size());
    for (std::size_t k = 0; k < results[0].replicas.size(); ++k) {
      const auto& a = results[r].replicas[k];
      const auto& b = results[0].replicas[k];
      CAPTURE(tag);
      CAPTURE(r);
      CAPTURE(k);
      REQUIRE(a.size() == b.size());
      CHECK(std::memcmp(a.data(), b.data(), a.size() * sizeof(double)) == 0);
    }
  }
}

// A fixed plan of every placement for a world of n, some tables with fewer rows than ranks.
ShardingPlan mixed_plan(std::size_t n) {
  const std::string column = n >= 3 ? "column:3" : n == 2 ? "column:2" : "column:1";
  return ShardingPlan::parse("0: 13x4 table; 1: 9x6 " + column +
                                 "; 2: 11x3 row; 3: 2x2 row; 4: 7x4 table-row; 5: 6x2 dp; 6: 5x1 "
                                 "table@" +
                                 std::to_string(n - 1),
                             n);
}

// Every buffer this rank holds.
std::vector<std::vector<double>> snapshot(const Exchange& emb) {
  std::vector<std::vector<double>> s;
  for (std::size_t g = 0; g < emb.tables().num_groups(); ++g) {
    const auto d = emb.tables().group_data(g);
    s.emplace_back(d.begin(), d.end());
  }
  return s;
}

}  // namespace

TEST_CASE("EmbeddingExchange: the serial model on random plans and batches, worlds 1 to 16") {
  for (const int world : conformance::sizes_up_to(16)) {
    const std::string name = conformance::case_name("local", world);
    SUBCASE(name.c_str()) {
      const auto n = static_cast<std::size_t>(world);
      std::vector<std::size_t> node_sizes;
      for (std::size_t g = 1; g <= n; ++g)
        if (n % g == 0) node_sizes.push_back(g);
      std::mt19937_64 rng(1000 + n);
      // Every node size that divides the world, worlds with few of them twice.
      std::vector<std::size_t> trials;
      for (std::size_t g : node_sizes)
        trials.insert(trials.end(), node_sizes.size() < 3 ? 2 : 1, g);
      for (std::size_t trial = 0; trial < trials.size(); ++trial) {
        const std::size_t g = trials[trial];
        const auto plan = ShardingPlan::make(em::random_tables(rng, n, g), n, g);
        const auto w = em::random_workload(rng, plan.tables(), n, 3);
        for (const Pooling pooling : {Pooling::sum, Pooling::mean}) {
          const auto e = em::serial(w, pooling == Pooling::mean, lr);
          for (const bool dedup : {true, false}) {
            std::vector<em::RankResult> by_mode[2];
            for (const bool hierarchical : {false, true}) {
              const ExchangeOptions o{pooling, dedup, hierarchical};
              const std::string tag = name + ", trial " + std::to_string(trial) + ", nodes of " +
                                      std::to_string(g) + ", " + option_name(o) + ", plan " +
                                      plan.describe();
              by_mode[hierarchical] = run_local(plan, w, o);
              check_results(plan, w, e, by_mode[hierarchical], o, tag);
            }
            // The same elements cross nodes either way; the flat exchange's link traffic is
            // everything each rank sent to another.
            CAPTURE(trial);
            CAPTURE(dedup);
            for (std::size_t t = 0; t < w.steps.size(); ++t) {
              std::size_t flat_inter = 0, hier_inter = 0, bad = 0;
              for (std::size_t r = 0; r < n; ++r) {
                const auto& f = by_mode[0][r].stats.at(t);
                const auto& h = by_mode[1][r].stats.at(t);
                flat_inter += f.traffic.inter;
                hier_inter += h.traffic.inter;
                bad += f.traffic.intra + f.traffic.inter !=
                       f.request_words + f.response_elements + f.gradient_elements;
                bad += h.traffic.inter_messages > 3 * (n / g - 1);  // three exchanges a step
                bad += f.ids_sent != h.ids_sent || f.request_words != h.request_words ||
                       f.response_elements != h.response_elements ||
                       f.gradient_elements != h.gradient_elements;
              }
              CHECK(bad == 0);
              CHECK(flat_inter == hier_inter);
            }
          }
        }
      }
    }
  }
}

TEST_CASE("EmbeddingExchange: data-parallel replicas stay bitwise equal over many steps") {
  const std::size_t n = 7;
  const auto plan = ShardingPlan::parse("0: 5x3 dp; 1: 40x8 dp; 2: 9x2 row; 3: 3x4 dp", n);
  std::mt19937_64 rng(3);
  const auto w = em::random_workload(rng, plan.tables(), n, 12);
  const ExchangeOptions o{Pooling::mean, true, false};
  check_results(plan, w, em::serial(w, true, lr), run_local(plan, w, o), o, "dp, world 7");
}

TEST_CASE("EmbeddingExchange: bad input fails alike on every rank and touches no table") {
  for (const int world : {1, 2, 3, 5, 8}) {
    const std::string name = conformance::case_name("local", world);
    SUBCASE(name.c_str()) {
      const auto n = static_cast<std::size_t>(world);
      const auto plan = mixed_plan(n);
      const std::size_t J = plan.num_tables(), W = 4 + 6 + 3 + 2 + 4 + 2 + 1;
      // The good step: every rank 2 samples of hotness 2, but rank 1 has none in worlds of 3 and
      // more (the last rank, which has bad input below, always has samples).
      em::Workload w;
      for (std::size_t j = 0; j < J; ++j) {
        w.rows.push_back(plan.table(j).rows);
        w.widths.push_back(plan.table(j).width);
      }
      std::mt19937_64 rng(n);
      w.steps.resize(1);
      for (std::size_t r = 0; r < n; ++r) {
        em::RankStep b;
        b.samples = n >= 3 && r == 1 ? 0 : 2;
        b.hotness = 2;
        for (std::size_t j = 0; j < J; ++j)
          for (std::size_t x = 0; x < b.samples * b.hotness; ++x)
            b.ids.push_back(static_cast<std::int64_t>(rng() % w.rows[j]));
        for (std::size_t x = 0; x < b.samples * W; ++x)
          b.grad.push_back(static_cast<double>(rng() % 1000) / 500.0 - 1.0);
        w.steps[0].push_back(b);
      }
      const auto e = em::serial(w, false, lr);
      const std::size_t last = n - 1, other = n > 1 ? 1 : 0;
      std::vector<em::RankResult> results(n);
      strata::LocalWorld(world).run([&](LocalComm& comm) {
        const auto me = static_cast<std::size_t>(comm.rank());
        const int rank = comm.rank();
        Exchange emb(comm, plan);
        CHECK(emb.output_width() == W);
        CHECK(emb.output_offset(2) == 10);
        emb.initialize(em::initial_value);
        const auto before = snapshot(emb);
        const em::RankStep& good = w.steps[0][me];
        std::vector<double> out(good.samples * W);
        const char* fwd = "EmbeddingExchange::forward";
        const char* bwd = "EmbeddingExchange::backward";
        const auto no_forward = [&] {
          conformance::expect_usage_error(
              rank, bwd, "rank 0: backward needs a forward of the same step first",
              [&] { emb.backward(std::span<const double>(good.grad), strata::Sgd{lr}); });
          CHECK(snapshot(emb) == before);
        };

        // An id past the end of the row-wise table 2, on the last rank only: lookup 3 of table 2
        // is sample 1's second lookup.
        std::vector<std::int64_t> ids = good.ids;
        if (me == last) ids[2 * 4 + 3] = 11;
        conformance::expect_usage_error(
            rank, fwd,
            "rank " + std::to_string(last) +
                ": table 2, lookup 3: id 11 is outside the table's 11 rows",
            [&] {
              emb.forward({ids, J, good.samples, 2}, out);
            });
        CHECK(snapshot(emb) == before);
        no_forward();

        // A negative id in the data-parallel table on rank 0 and a bad id on the last rank: the
        // lowest rank is named.
        ids = good.ids;
        if (me == 0) ids[5 * 4 + 1] = -1;
        if (me == last && last != 0) ids[0] = 13;
        conformance::expect_usage_error(
            rank, fwd, "rank 0: table 5, lookup 1: id -1 is outside the table's 6 rows", [&] {
              emb.forward({ids, J, good.samples, 2}, out);
            });
        CHECK(snapshot(emb) == before);

        // A batch for another number of tables.
        const std::size_t tables = me == other ? J - 1 : J;
        const std::vector<std::int64_t> short_ids(tables * good.samples * 2, 0);
        conformance::expect_usage_error(
            rank, fwd,
            "rank " + std::to_string(other) + ": the batch has ids for 6 tables, the plan has 7",
            [&] {
              emb.forward({short_ids, tables, good.samples, 2}, out);
            });
        CHECK(snapshot(emb) == before);

        // Fewer ids than tables x samples x hotness; then samples without hotness.
        ids = good.ids;
        if (me == last) ids.pop_back();
        conformance::expect_usage_error(
            rank, fwd,
            "rank " + std::to_string(last) +
                ": the batch holds 27 ids, its tables x samples x hotness need 28",
            [&] {
              emb.forward({ids, J, good.samples, 2}, out);
            });
        const std::vector<std::int64_t> none;
        const strata::SparseBatch no_hotness{none, J, good.samples, 0};
        const strata::SparseBatch fine{good.ids, J, good.samples, 2};
        conformance::expect_usage_error(
            rank, fwd,
            "rank " + std::to_string(last) + ": a batch with samples needs a hotness of at least 1",
            [&] { emb.forward(me == last ? no_hotness : fine, out); });
        CHECK(snapshot(emb) == before);

        // An output of the wrong size.
        std::vector<double> wide(good.samples * W + (me == last ? 1 : 0));
        conformance::expect_usage_error(rank, fwd,
                                        "rank " + std::to_string(last) + ": the output holds " +
                                            std::to_string(2 * W + 1) + " elements, samples x " +
                                            std::to_string(W) + " columns need " +
                                            std::to_string(2 * W),
                                        [&] {
                                          emb.forward({good.ids, J, good.samples, 2}, wide);
                                        });
        CHECK(snapshot(emb) == before);
        no_forward();

        // A good forward, then a gradient of the wrong size on the last rank.
        emb.forward({good.ids, J, good.samples, 2}, out);
        std::vector<double> grad = good.grad;
        if (me == last) grad.push_back(0.0);
        conformance::expect_usage_error(
            rank, bwd,
            "rank " + std::to_string(last) + ": the gradient holds " + std::to_string(2 * W + 1) +
                " elements, the last forward's output " + std::to_string(2 * W),
            [&] { emb.backward(std::span<const double>(grad), strata::Sgd{lr}); });
        CHECK(snapshot(emb) == before);
        // That forward is spent.
        no_forward();

        // Still usable: the good step, from the initial tables.
        results[me] = em::run_rank(emb, w, me, lr, /*initialize=*/false);
        // One backward per forward.
        const auto after = snapshot(emb);
        conformance::expect_usage_error(
            rank, bwd, "rank 0: backward needs a forward of the same step first",
            [&] { emb.backward(std::span<const double>(good.grad), strata::Sgd{lr}); });
        CHECK(snapshot(emb) == after);
      });
      check_results(plan, w, e, results, ExchangeOptions{}, name + ", after the errors");
    }
  }
}

TEST_CASE("EmbeddingExchange: float tables follow the model to float precision") {
  const std::size_t n = 4;
  const auto plan = mixed_plan(n);
  std::mt19937_64 rng(21);
  const auto w = em::random_workload(rng, plan.tables(), n, 3);
  const auto e = em::serial(w, true, lr);
  std::vector<std::size_t> bad(n, 0);
  strata::LocalWorld(4).run([&](LocalComm& comm) {
    const auto me = static_cast<std::size_t>(comm.rank());
    strata::EmbeddingExchange<LocalComm, float> emb(comm, plan, {Pooling::mean, true, true});
    emb.initialize(em::initial_value);
    const auto near = [](float a, double b) {
      return std::abs(static_cast<double>(a) - b) <= 1e-5 * std::max(1.0, std::abs(b));
    };
    for (std::size_t t = 0; t < w.steps.size(); ++t) {
      const auto& b = w.steps[t][me];
      std::vector<float> out(b.samples * emb.output_width());
      emb.forward({b.ids, plan.num_tables(), b.samples, b.hotness}, out);
      for (std::size_t x = 0; x < out.size(); ++x) bad[me] += !near(out[x], e.out[t][me][x]);
      const std::vector<float> grad(b.grad.begin(), b.grad.end());
      emb.backward(std::span<const float>(grad), strata::Sgd{lr});
    }
    for (std::size_t j = 0; j < plan.num_tables(); ++j) {
      const auto full = emb.gather_table(j, 0);
      if (me != 0) continue;
      bad[me] += full.size() != e.tables[j].size();
      for (std::size_t x = 0; x < full.size(); ++x) bad[me] += !near(full[x], e.tables[j][x]);
    }
  });
  CHECK(bad == std::vector<std::size_t>(n, 0));
}

TEST_CASE("EmbeddingExchange: a plan for another world is refused") {
  const auto plan = ShardingPlan::parse("0: 10x4 row", 3);
  std::vector<std::string> messages(2);
  strata::LocalWorld(2).run([&](LocalComm& comm) {
    try {
      Exchange emb(comm, plan);
    } catch (const std::invalid_argument& e) {
      messages[static_cast<std::size_t>(comm.rank())] = e.what();
    }
  });
  for (const auto& m : messages)
    CHECK(m == "EmbeddingExchange: the plan is made for 3 ranks, the world has 2");
}

TEST_CASE("ExchangeStats: de-duplication sends fewer ids; without it, every lookup sent away") {
  const std::size_t n = 4;
  const auto plan =
      ShardingPlan::parse("0: 8x4 table@1; 1: 6x4 column:2@2; 2: 10x2 row; 3: 5x2 dp", n);
  // Every rank 3 samples of 3 lookups, each table's ids from {0, 1, 4}: many repeats.
  em::Workload w;
  for (std::size_t j = 0; j < plan.num_tables(); ++j) {
    w.rows.push_back(plan.table(j).rows);
    w.widths.push_back(plan.table(j).width);
  }
  w.steps.resize(1);
  const std::int64_t pool[] = {0, 1, 4};
  for (std::size_t r = 0; r < n; ++r) {
    em::RankStep b;
    b.samples = 3;
    b.hotness = 3;
    for (std::size_t x = 0; x < 4 * 9; ++x) b.ids.push_back(pool[(x * 7 + r) % 3]);
    b.grad.assign(3 * w.total_width(), 0.5);
    w.steps[0].push_back(b);
  }
  std::vector<strata::ExchangeStats> with(n), without(n);
  for (const bool dedup : {true, false}) {
    const auto results = run_local(plan, w, ExchangeOptions{Pooling::sum, dedup, false});
    for (std::size_t r = 0; r < n; ++r) (dedup ? with : without)[r] = results[r].stats.at(0);
  }
  for (std::size_t r = 0; r < n; ++r) {
    CAPTURE(r);
    // By hand: table 0 lives on rank 1, table 1's column blocks on ranks 2 and 3, and table 2's
    // rows 0-2 on rank 0, 3-5 on rank 1; every lookup to another rank is one id.
    std::size_t away = 0;
    std::set<std::pair<std::size_t, std::int64_t>> distinct;  // (table and block, row)
    for (std::size_t x = 0; x < 9; ++x) {
      const std::int64_t id0 = w.steps[0][r].ids[x], id1 = w.steps[0][r].ids[9 + x],
                         id2 = w.steps[0][r].ids[18 + x];
      const std::size_t owner2 = id2 < 3 ? 0 : 1;
      away += (r != 1) + (r != 2) + (r != 3) + (owner2 != r);
      if (r != 1) distinct.insert({0, id0});
      if (r != 2) distinct.insert({1, id1});
      if (r != 3) distinct.insert({2, id1});
      if (owner2 != r) distinct.insert({3, id2});
    }
    // Lookups owned by another rank, once per column block: each is one id without de-dup.
    CHECK(with[r].lookups == away);
    CHECK(without[r].lookups == away);
    CHECK(without[r].ids_sent == away);
    CHECK(with[r].ids_sent == distinct.size());
    CHECK(without[r].ids_sent == em::expected_ids_sent(plan, w.steps[0][r], r, false));
    CHECK(with[r].ids_sent == em::expected_ids_sent(plan, w.steps[0][r], r, true));
    CHECK(with[r].ids_sent < without[r].ids_sent);
    CHECK(with[r].dedup_ratio() < without[r].dedup_ratio());
    CHECK(without[r].dedup_ratio() == 1.0);
    CHECK(with[r].dedup_ratio() ==
          doctest::Approx(static_cast<double>(distinct.size()) / static_cast<double>(away)));
    // The data-parallel table: its 5x2 gradient and a count per row, in one all-reduce.
    CHECK(with[r].allreduce_elements == 5 * 3);
  }
}

TEST_CASE("EmbeddingExchange: sizes whose products wrap, and a root outside the world") {
  const auto plan = strata::ShardingPlan::parse("0: 4x2 table@0", 2);
  strata::LocalWorld(2).run([&](LocalComm& world) {
    strata::EmbeddingExchange<LocalComm, double> emb(world, plan);
    // 2^63 samples of hotness 2: tables x samples x hotness wraps to 0, which the empty id span
    // would match; the check must see through it, on every rank.
    const std::size_t huge = std::size_t(1) << 63;
    std::string what;
    try {
      emb.forward({{}, 1, world.rank() == 1 ? huge : 0, 2}, {});
    } catch (const strata::usage_error& e) {
      what = e.cause();
    }
    CHECK(what.starts_with("rank 1: the batch holds 0 ids"));
    for (const int root : {-1, 2}) {
      CHECK_THROWS_WITH_AS((void)emb.gather_table(0, root),
                           ("EmbeddingExchange::gather_table: root " + std::to_string(root) +
                            " is outside the world of 2")
                               .c_str(),
                           std::invalid_argument);
    }
    CHECK(emb.gather_table(0, 1).size() == (world.rank() == 1 ? 8u : 0u));  // still usable
  });
}
