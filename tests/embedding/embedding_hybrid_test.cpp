// Hybrid embedding tables on the local backend: the exchange with frequent rows served from a
// replica against the serial model of embedding_model.hpp (whose result does not depend on the
// frequent sets), replicas bitwise equal on every rank after every step, the one fused all-reduce
// of the replicas' and the caller's dense gradients (counted by a communicator that wraps the
// local one), predict_exchange against the exchange's own counts, FrequencyCounts and
// choose_frequent, and the frequent sets the exchange refuses. Expected values come from plain
// serial loops over every rank's input.
#include <doctest/doctest.h>

#include <strata/comm/local.hpp>
#include <strata/embedding/exchange.hpp>
#include <strata/embedding/frequency.hpp>
#include <strata/embedding/hybrid_cost.hpp>

#include <algorithm>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <map>
#include <numeric>
#include <random>
#include <span>
#include <stdexcept>
#include <string>
#include <tuple>
#include <utility>
#include <vector>

#include "../comm/conformance.hpp"
#include "embedding_model.hpp"

namespace {

namespace em = embedding_model;
using strata::ExchangeOptions;
using strata::FrequentSets;
using strata::LocalComm;
using strata::Pooling;
using strata::ReduceOp;
using strata::ShardingPlan;
using strata::SparseBatch;

constexpr double lr = 0.1;

// ---- a communicator that counts what it forwards ---------------------------------------------

// The collectives one rank called, with the elements of every all-reduce. Shared by the
// communicators split from the same one, so that the hierarchical all-to-all's are counted too.
struct CallLog {
  std::vector<std::size_t> all_reduce;
  std::size_t all_to_all = 0;
  std::size_t all_gather = 0;
  std::size_t other = 0;
};

// Models strata::communicator by forwarding every call to a LocalComm.
class CountingComm {
 public:
  CountingComm(LocalComm inner, CallLog* log) : inner_(std::move(inner)), log_(log) {}

  [[nodiscard]] int rank() const { return inner_.rank(); }
  [[nodiscard]] int size() const { return inner_.size(); }
  void barrier() {
    ++log_->other;
    inner_.barrier();
  }
  CountingComm split(int color, int key) {
    ++log_->other;
    return CountingComm(inner_.split(color, key), log_);
  }

  template <strata::comm_value T>
  void all_reduce(std::span<T> buf, ReduceOp op) {
    log_->all_reduce.push_back(buf.size());
    inner_.all_reduce(buf, op);
  }
  template <strata::comm_value T>
  void all_reduce(std::span<const T> in, std::span<T> out, ReduceOp op) {
    log_->all_reduce.push_back(in.size());
    inner_.all_reduce(in, out, op);
  }
  template <strata::comm_value T>
  void broadcast(std::span<T> buf, int root) {
    ++log_->other;
    inner_.broadcast(buf, root);
  }
  template <strata::comm_value T>
  void all_gather(std::span<const T> in, std::span<T> out) {
    ++log_->all_gather;
    inner_.all_gather(in, out);
  }
  template <strata::comm_value T>
  void reduce_scatter(std::span<const T> in, std::span<T> out, ReduceOp op) {
    ++log_->other;
    inner_.reduce_scatter(in, out, op);
  }
  template <strata::comm_value T>
  void all_to_all(std::span<const T> in, std::span<T> out) {
    ++log_->all_to_all;
    inner_.all_to_all(in, out);
  }
  template <strata::comm_value T>
  void all_to_all(std::span<const T> in, std::span<const std::size_t> send, std::span<T> out,
                  std::span<const std::size_t> recv) {
    ++log_->all_to_all;
    inner_.all_to_all(in, send, out, recv);
  }

 private:
  LocalComm inner_;
  CallLog* log_;
};

static_assert(strata::communicator<CountingComm>);

// ---- helpers ------------------------------------------------------------------------------------

std::string option_name(const ExchangeOptions& o) {
  return std::string(o.pooling == Pooling::mean ? "mean" : "sum") +
         (o.dedup ? ", dedup" : ", no dedup") + (o.hierarchical ? ", hierarchical" : ", flat");
}

std::string sets_name(const FrequentSets& f) {
  std::string s;
  for (std::size_t j = 0; j < f.rows.size(); ++j) {
    if (f.rows[j].empty()) continue;
    s += " " + std::to_string(j) + ":{";
    for (std::size_t k = 0; k < f.rows[j].size(); ++k)
      s += (k ? "," : "") + std::to_string(f.rows[j][k]);
    s += "}";
  }
  return s.empty() ? " none" : s;
}

std::vector<std::size_t> table_rows(const ShardingPlan& plan) {
  std::vector<std::size_t> rows;
  for (const auto& t : plan.tables()) rows.push_back(t.rows);
  return rows;
}

// The elements the replicas add to the all-reduce: a gradient row and a count per replicated row.
std::size_t replica_elements(const ShardingPlan& plan, const FrequentSets& f) {
  std::size_t n = 0;
  for (std::size_t j = 0; j < plan.num_tables(); ++j) {
    const auto& t = plan.table(j);
    const std::size_t rows = plan.replicated(j) ? t.rows : f.count(j);
    n += rows * (t.width + 1);
  }
  return n;
}

bool same_bits(const std::vector<double>& a, const std::vector<double>& b) {
  return a.size() == b.size() &&
         (a.empty() || std::memcmp(a.data(), b.data(), a.size() * sizeof(double)) == 0);
}

// This rank's replica blocks (after its shard blocks), each flattened.
template <class Comm>
std::vector<std::vector<double>> replica_blocks(const strata::EmbeddingExchange<Comm, double>& emb,
                                                std::size_t rank) {
  std::vector<std::vector<double>> out;
  const auto& t = emb.tables();
  for (std::size_t b = emb.plan().shards_on(rank).size(); b < t.num_blocks(); ++b) {
    std::vector<double> v;
    for (std::size_t i = 0; i < t.block(b).rows; ++i) {
      const auto row = t.row(b, i);
      v.insert(v.end(), row.begin(), row.end());
    }
    out.push_back(std::move(v));
  }
  return out;
}

// Records this rank's blocks and replicas in `res`, as em::run_rank does.
template <class Comm>
void record_blocks(const strata::EmbeddingExchange<Comm, double>& emb, std::size_t rank,
                   em::RankResult& res) {
  const auto& tables = emb.tables();
  for (std::size_t b = 0; b < tables.num_blocks(); ++b) {
    std::vector<double> v;
    for (std::size_t i = 0; i < tables.block(b).rows; ++i) {
      const auto row = tables.row(b, i);
      v.insert(v.end(), row.begin(), row.end());
    }
    res.blocks.push_back(std::move(v));
  }
  res.replicas = replica_blocks(emb, rank);
}

// Runs `w` with frequent sets `f`; every rank's observations, in rank order.
std::vector<em::RankResult> run_local(const ShardingPlan& plan, const em::Workload& w,
                                      const ExchangeOptions& o, const FrequentSets& f) {
  const std::size_t n = plan.world_size();
  std::vector<em::RankResult> results(n);
  strata::LocalWorld(static_cast<int>(n)).run([&](LocalComm& world) {
    const auto me = static_cast<std::size_t>(world.rank());
    strata::EmbeddingExchange<LocalComm, double> emb(world, plan, o, f);
    results[me] = em::run_rank(emb, w, me, lr);
  });
  return results;
}

// Every rank against the model; the replicas of every rank bitwise equal to rank 0's; the
// all-reduce's size in every step.
void check_results(const ShardingPlan& plan, const em::Workload& w, const em::Expected& e,
                   const std::vector<em::RankResult>& results, const ExchangeOptions& o,
                   const FrequentSets& f, const std::string& tag) {
  const std::size_t replicated = replica_elements(plan, f);
  for (std::size_t r = 0; r < results.size(); ++r) {
    const auto bad = em::compare(plan, w, e, r, results[r], o.dedup, tag, f);
    std::string all;
    for (const auto& line : bad) all += line + "\n";
    CAPTURE(all);
    CHECK(bad.empty());
    std::size_t wrong = 0;
    REQUIRE(results[r].replicas.size() == results[0].replicas.size());
    for (std::size_t k = 0; k < results[0].replicas.size(); ++k)
      wrong += !same_bits(results[r].replicas[k], results[0].replicas[k]);
    for (const auto& s : results[r].stats)
      wrong += s.allreduce_elements != replicated || s.dense_elements != 0;
    CAPTURE(tag);
    CAPTURE(r);
    CHECK(wrong == 0);
  }
}

// Every node size that divides n, at most three: 1, a middle one, n.
std::vector<std::size_t> some_node_sizes(std::size_t n) {
  std::vector<std::size_t> g{1};
  for (std::size_t d = 2; d < n; ++d) {
    if (n % d == 0) {
      g.push_back(d);
      break;
    }
  }
  if (n > 1) g.push_back(n);
  return g;
}

}  // namespace

// ---- 1. the exchange against the model ----------------------------------------------------------

TEST_CASE("hybrid exchange: the serial model on random hybrid plans and frequent sets") {
  for (const int world : conformance::sizes_up_to(16)) {
    const std::string name = conformance::case_name("local", world);
    SUBCASE(name.c_str()) {
      const auto n = static_cast<std::size_t>(world);
      std::mt19937_64 rng(7000 + n);
      // Two trials per node size, each with plan, batches and frequent sets of its own.
      std::vector<std::size_t> trials;
      for (const std::size_t g : some_node_sizes(n)) trials.insert(trials.end(), 2, g);
      std::size_t trial = 0;
      for (const std::size_t g : trials) {
        const auto plan = ShardingPlan::make(em::random_hybrid_tables(rng, n, g), n, g);
        const auto w = em::random_workload(rng, plan.tables(), n, 3);
        // Each frequent-set size on some table in every trial, shifted from trial to trial.
        std::vector<int> modes{0, 1, 2, 3, 4};
        std::rotate(modes.begin(), modes.begin() + static_cast<std::ptrdiff_t>(trial % 5),
                    modes.end());
        const auto f = em::random_frequent(rng, plan, modes);
        for (const Pooling pooling : {Pooling::sum, Pooling::mean}) {
          const auto e = em::serial(w, pooling == Pooling::mean, lr);
          for (const bool dedup : {true, false}) {
            for (const bool hierarchical : {false, true}) {
              const ExchangeOptions o{pooling, dedup, hierarchical};
              const std::string tag = name + ", trial " + std::to_string(trial) + ", nodes of " +
                                      std::to_string(g) + ", " + option_name(o) + ", plan " +
                                      plan.describe() + ", frequent" + sets_name(f);
              check_results(plan, w, e, run_local(plan, w, o, f), o, f, tag);
            }
          }
        }
        ++trial;
      }
    }
  }
}

TEST_CASE("hybrid exchange: every size of frequent set on one table, world 4") {
  // The same plan and batches with 0, 1, ..., all rows of each hybrid table replicated (a
  // placement's fixed count aside): the result never changes.
  const std::size_t n = 4;
  const auto plan = ShardingPlan::parse(
      "0: 9x4 hybrid:row; 1: 6x6 hybrid:column:3; 2: 5x2 hybrid:table@1; 3: 8x2 hybrid:table-row; "
      "4: 4x2 dp; 5: 7x3 row; 6: 10x2 hybrid:row/4",
      n, 2);
  std::mt19937_64 rng(99);
  const auto w = em::random_workload(rng, plan.tables(), n, 3);
  const auto e = em::serial(w, false, lr);
  for (std::size_t size = 0; size <= 10; ++size) {
    FrequentSets f;
    f.rows.resize(plan.num_tables());
    for (std::size_t j = 0; j < plan.num_tables(); ++j) {
      if (!plan.hybrid(j)) continue;
      const std::size_t rows = plan.table(j).rows;
      // Rows from the last backwards: not the order of any frequency count.
      for (std::size_t k = 0; k < std::min(size, rows); ++k)
        f.rows[j].push_back(static_cast<std::int64_t>(rows - 1 - k));
    }
    f.rows[6] = {9, 0, 5, 2};  // the placement names 4
    const ExchangeOptions o{Pooling::sum, size % 2 == 0, size % 3 == 0};
    const std::string tag =
        "size " + std::to_string(size) + ", " + option_name(o) + ", frequent" + sets_name(f);
    check_results(plan, w, e, run_local(plan, w, o, f), o, f, tag);
  }
}

// ---- 2. replicas bitwise equal, step after step --------------------------------------------------

TEST_CASE("hybrid exchange: replicas bitwise equal on every rank after every step") {
  const std::size_t n = 6, steps = 10;
  const auto plan = ShardingPlan::parse(
      "0: 20x4 hybrid:row; 1: 12x6 hybrid:column:3; 2: 9x2 hybrid:table; 3: 15x3 hybrid:table-row; "
      "4: 5x2 dp; 5: 11x2 hybrid:table-row@1/11; 6: 8x4 hybrid:column:2@4/2; 7: 30x1 row",
      n, 3);
  std::mt19937_64 rng(123);
  const auto w = em::random_workload(rng, plan.tables(), n, steps);
  const std::vector<int> modes{2, 3, 4, 1};
  const auto f = em::random_frequent(rng, plan, modes);
  CAPTURE(sets_name(f));
  const ExchangeOptions o{Pooling::mean, true, true};
  const auto e = em::serial(w, true, lr);
  // replicas[rank][step]: every replica block after that step.
  std::vector<std::vector<std::vector<std::vector<double>>>> replicas(n);
  std::vector<std::vector<std::vector<double>>> gathered(n);  // [root][table]
  std::vector<em::RankResult> results(n);
  strata::LocalWorld(static_cast<int>(n)).run([&](LocalComm& world) {
    const auto me = static_cast<std::size_t>(world.rank());
    strata::EmbeddingExchange<LocalComm, double> emb(world, plan, o, f);
    CHECK(emb.frequent().rows == f.rows);
    emb.initialize(em::initial_value);
    replicas[me].push_back(replica_blocks(emb, me));  // after initialize
    em::RankResult& res = results[me];
    for (std::size_t t = 0; t < steps; ++t) {
      const em::RankStep& b = w.steps[t][me];
      std::vector<double> out(b.samples * emb.output_width());
      emb.forward({b.ids, plan.num_tables(), b.samples, b.hotness}, out);
      emb.backward(std::span<const double>(b.grad), em::Recorder{&res.calls, t, lr});
      res.out.push_back(std::move(out));
      res.stats.push_back(emb.stats());
      replicas[me].push_back(replica_blocks(emb, me));
    }
    // Every table gathered on every root: each root builds it from its own replica.
    gathered[me].resize(plan.num_tables());
    for (std::size_t root = 0; root < n; ++root) {
      for (std::size_t j = 0; j < plan.num_tables(); ++j) {
        auto full = emb.gather_table(j, static_cast<int>(root));
        if (root == me) gathered[me][j] = std::move(full);
      }
    }
    record_blocks(emb, me, res);
    for (std::size_t j = 0; j < plan.num_tables(); ++j)
      res.gathered.push_back(j % n == me ? gathered[me][j] : std::vector<double>{});
  });
  std::size_t differ = 0, far = 0;
  for (std::size_t r = 0; r < n; ++r) {
    REQUIRE(replicas[r].size() == steps + 1);
    for (std::size_t t = 0; t <= steps; ++t) {
      REQUIRE(replicas[r][t].size() == replicas[0][t].size());
      for (std::size_t k = 0; k < replicas[0][t].size(); ++k)
        differ += !same_bits(replicas[r][t][k], replicas[0][t][k]);
    }
    for (std::size_t j = 0; j < plan.num_tables(); ++j) {
      differ += !same_bits(gathered[r][j], gathered[0][j]);
      REQUIRE(gathered[r][j].size() == e.tables[j].size());
      for (std::size_t x = 0; x < e.tables[j].size(); ++x)
        far += !em::close(gathered[r][j][x], e.tables[j][x]);
    }
  }
  CHECK(differ == 0);
  CHECK(far == 0);
  // Outputs, updates, blocks and replicas after the last step: the model's.
  check_results(plan, w, e, results, o, f, "world 6, ten steps");
}

TEST_CASE("hybrid exchange: no frequent rows is the inner placement, all rows data-parallel") {
  // Bitwise: the same outputs, update gradients and tables.
  const std::size_t n = 5;
  // Pinned, so that the table-wise rest of table 1 does not move the balancer's placements.
  const auto plain = ShardingPlan::parse(
      "0: 12x4 row; 1: 7x3 dp; 2: 9x2 column:2@3; 3: 6x2 dp; 4: 5x2 table@2", n);
  const auto hybrid = ShardingPlan::parse(
      "0: 12x4 hybrid:row/0; 1: 7x3 hybrid:table@0/7; 2: 9x2 hybrid:column:2@3; 3: 6x2 "
      "hybrid:row; 4: 5x2 table@2",
      n);
  FrequentSets f;
  f.rows = {{}, {3, 6, 0, 2, 5, 1, 4}, {}, {5, 4, 3, 2, 1, 0}, {}};
  std::mt19937_64 rng(5);
  const auto w = em::random_workload(rng, plain.tables(), n, 4);
  for (const bool dedup : {true, false}) {
    const ExchangeOptions o{Pooling::mean, dedup, false};
    const auto a = run_local(plain, w, o, {});
    const auto b = run_local(hybrid, w, o, f);
    for (std::size_t r = 0; r < n; ++r) {
      CAPTURE(r);
      CAPTURE(dedup);
      std::size_t differ = 0;
      for (std::size_t t = 0; t < w.steps.size(); ++t)
        differ += !same_bits(a[r].out[t], b[r].out[t]);
      for (std::size_t j = 0; j < plain.num_tables(); ++j)
        differ += !same_bits(a[r].gathered[j], b[r].gathered[j]);
      // The update calls, keyed by (step, table, row, column): the same gradients.
      std::map<std::tuple<std::size_t, std::size_t, std::size_t, std::size_t>, std::vector<double>>
          ca, cb;
      for (const auto& c : a[r].calls) ca[{c.step, c.table, c.row, c.col_begin}] = c.grad;
      for (const auto& c : b[r].calls) cb[{c.step, c.table, c.row, c.col_begin}] = c.grad;
      CHECK(a[r].calls.size() == b[r].calls.size());
      CHECK(ca.size() == b[r].calls.size());
      for (const auto& [key, grad] : ca) {
        const auto it = cb.find(key);
        differ += it == cb.end() || !same_bits(grad, it->second);
      }
      CHECK(differ == 0);
    }
  }
}

// ---- 3. the fused all-reduce ----------------------------------------------------------------------

namespace {

// Rank r's dense tensor k, element i, at step t.
double dense_value(std::size_t r, std::size_t k, std::size_t i, std::size_t t) {
  return std::sin(0.3 * static_cast<double>(r + 1) + 0.7 * static_cast<double>(k + 1) +
                  0.013 * static_cast<double>(i + 1) * static_cast<double>(t + 2));
}

struct FusedCase {
  std::string plan;
  FrequentSets frequent;
  std::vector<std::size_t> dense;  // the sizes of the dense tensors
};

// Runs three steps of `c` on a world of n with backward(grad, update, dense): one all-reduce of
// dense + replicated rows x (width + 1) elements per backward (none when both are empty), the
// dense tensors averaged, the update against the model.
void check_fused(std::size_t n, const FusedCase& c, bool hierarchical) {
  const auto plan = ShardingPlan::parse(c.plan, n, n % 2 == 0 ? n / 2 : n);
  std::mt19937_64 rng(n * 31 + c.dense.size());
  const auto w = em::random_workload(rng, plan.tables(), n, 3);
  const ExchangeOptions o{Pooling::sum, true, hierarchical};
  const auto e = em::serial(w, false, lr);
  const std::size_t dense_total = std::accumulate(c.dense.begin(), c.dense.end(), std::size_t{0});
  const std::size_t replicated = replica_elements(plan, c.frequent);
  const std::size_t want_reduces = dense_total + replicated == 0 ? 0 : 1;
  const std::string tag = "world " + std::to_string(n) + ", plan " + c.plan + ", frequent" +
                          sets_name(c.frequent) + ", dense " + std::to_string(dense_total) +
                          (hierarchical ? ", hierarchical" : ", flat");
  CAPTURE(tag);
  std::vector<em::RankResult> results(n);
  // dense_after[rank][step][tensor]; what each backward's all-reduces carried.
  std::vector<std::vector<std::vector<std::vector<double>>>> dense_after(n);
  std::vector<std::vector<std::vector<std::size_t>>> reduces(n);
  std::vector<std::size_t> forward_reduces(n, 0);
  strata::LocalWorld(static_cast<int>(n)).run([&](LocalComm& local) {
    const auto me = static_cast<std::size_t>(local.rank());
    CallLog log;
    CountingComm world(local, &log);
    strata::EmbeddingExchange<CountingComm, double> emb(world, plan, o, c.frequent);
    emb.initialize(em::initial_value);
    em::RankResult& res = results[me];
    for (std::size_t t = 0; t < w.steps.size(); ++t) {
      const em::RankStep& b = w.steps[t][me];
      std::vector<double> out(b.samples * emb.output_width());
      const std::size_t before_forward = log.all_reduce.size();
      emb.forward({b.ids, plan.num_tables(), b.samples, b.hotness}, out);
      forward_reduces[me] += log.all_reduce.size() - before_forward;
      std::vector<std::vector<double>> dense(c.dense.size());
      std::vector<std::span<double>> spans;
      for (std::size_t k = 0; k < c.dense.size(); ++k) {
        for (std::size_t i = 0; i < c.dense[k]; ++i) dense[k].push_back(dense_value(me, k, i, t));
        spans.emplace_back(dense[k]);
      }
      const std::size_t before = log.all_reduce.size();
      emb.backward(std::span<const double>(b.grad), em::Recorder{&res.calls, t, lr},
                   std::span<const std::span<double>>(spans));
      reduces[me].emplace_back(log.all_reduce.begin() + static_cast<std::ptrdiff_t>(before),
                               log.all_reduce.end());
      res.out.push_back(std::move(out));
      res.stats.push_back(emb.stats());
      dense_after[me].push_back(std::move(dense));
    }
    for (std::size_t j = 0; j < plan.num_tables(); ++j) {
      const std::size_t root = j % n;
      auto full = emb.gather_table(j, static_cast<int>(root));
      res.gathered.push_back(root == me ? std::move(full) : std::vector<double>{});
    }
    record_blocks(emb, me, res);
  });
  for (std::size_t r = 0; r < n; ++r) {
    CAPTURE(r);
    const auto bad = em::compare(plan, w, e, r, results[r], true, tag, c.frequent);
    std::string all;
    for (const auto& line : bad) all += line + "\n";
    CAPTURE(all);
    CHECK(bad.empty());
    CHECK(forward_reduces[r] == 0);
    for (std::size_t t = 0; t < w.steps.size(); ++t) {
      CAPTURE(t);
      REQUIRE(reduces[r][t].size() == want_reduces);
      if (want_reduces == 1) CHECK(reduces[r][t][0] == dense_total + replicated);
      CHECK(results[r].stats[t].dense_elements == dense_total);
      CHECK(results[r].stats[t].allreduce_elements == replicated);
      // The dense tensors: the mean over the world of every rank's values.
      std::size_t far = 0;
      for (std::size_t k = 0; k < c.dense.size(); ++k) {
        REQUIRE(dense_after[r][t][k].size() == c.dense[k]);
        for (std::size_t i = 0; i < c.dense[k]; ++i) {
          double sum = 0;
          for (std::size_t q = 0; q < n; ++q) sum += dense_value(q, k, i, t);
          far += std::abs(dense_after[r][t][k][i] - sum / static_cast<double>(n)) > 1e-14;
        }
      }
      CHECK(far == 0);
    }
  }
}

}  // namespace

TEST_CASE("hybrid exchange: one all-reduce for the dense gradients and the replicated rows") {
  const std::vector<FusedCase> cases{
      // Replicas of both kinds and dense tensors, some empty, at both ends and between.
      {"0: 10x4 hybrid:row; 1: 6x2 dp; 2: 8x3 hybrid:table; 3: 9x2 column:1",
       {{{7, 0, 2}, {}, {5}}},
       {0, 13, 1, 0, 40, 0}},
      // Dense only: no replicated rows at all.
      {"0: 10x4 row; 1: 8x3 table; 2: 5x2 hybrid:row/0", {}, {3, 100}},
      // Replicas only, the caller passing no dense tensor.
      {"0: 10x4 hybrid:row; 1: 5x2 dp", {{{1, 2, 3, 4, 5, 6, 7, 8, 9, 0}}}, {}},
      // Neither: a hybrid table replicating nothing and empty dense tensors: no all-reduce.
      {"0: 10x4 hybrid:row; 1: 8x3 table", {}, {0, 0}},
      {"0: 10x4 row", {}, {}},
  };
  for (const std::size_t n : {1, 2, 3, 4, 7}) {
    for (const auto& c : cases) {
      check_fused(n, c, false);
      if (n % 2 == 0) check_fused(n, c, true);
    }
  }
}

// ---- 4. predict_exchange against the exchange's counts -----------------------------------------

TEST_CASE("predict_exchange: what the exchange counts, rank by rank") {
  // With elements of 8 bytes (double), the predicted link bytes are 8 x the flat exchange's
  // traffic in elements and words.
  for (const int world : {1, 2, 3, 4, 5, 6, 7, 8}) {
    const std::string name = conformance::case_name("local", world);
    SUBCASE(name.c_str()) {
      const auto n = static_cast<std::size_t>(world);
      std::mt19937_64 rng(4000 + n);
      for (const std::size_t g : some_node_sizes(n)) {
        const auto plan = ShardingPlan::make(em::random_hybrid_tables(rng, n, g), n, g);
        const auto w = em::random_workload(rng, plan.tables(), n, 3);
        const std::vector<int> modes{4, 2, 1, 3, 0};
        const auto f = em::random_frequent(rng, plan, modes);
        const auto slots = strata::frequent_slots(f, table_rows(plan));
        for (const bool dedup : {true, false}) {
          const auto results = run_local(plan, w, {Pooling::sum, dedup, false}, f);
          CAPTURE(g);
          CAPTURE(dedup);
          CAPTURE(plan.describe());
          CAPTURE(sets_name(f));
          std::size_t bad = 0;
          double predicted_responses = 0, sent_responses = 0;
          double predicted_intra = 0, predicted_inter = 0, intra = 0, inter = 0;
          for (std::size_t t = 0; t < w.steps.size(); ++t) {
            for (std::size_t r = 0; r < n; ++r) {
              const em::RankStep& b = w.steps[t][r];
              const SparseBatch batch{b.ids, plan.num_tables(), b.samples, b.hotness};
              const auto p = strata::predict_exchange(plan, slots, batch, r, dedup, 8);
              const auto& s = results[r].stats[t];
              bad += p.request_words != static_cast<double>(s.request_words);
              bad += p.gradient_elements != static_cast<double>(s.gradient_elements);
              predicted_responses += p.response_elements;
              sent_responses += static_cast<double>(s.response_elements);
              predicted_intra += p.intra_bytes;
              predicted_inter += p.inter_bytes;
              intra += 8.0 * static_cast<double>(s.traffic.intra);
              inter += 8.0 * static_cast<double>(s.traffic.inter);
            }
          }
          CHECK(bad == 0);
          // Responses come back over the same kind of link the request went: over the world, the
          // responses and link bytes agree.
          CHECK(predicted_responses == sent_responses);
          CHECK(predicted_intra == intra);
          CHECK(predicted_inter == inter);
        }
      }
    }
  }
}

TEST_CASE("predict_exchange: responses are counted on the rank that asks, so world sums agree") {
  // ExchangeStats counts what a rank sent: the responses it served as an owner. The prediction
  // counts a rank's requests and gradients as it sends them and the responses to its requests as
  // it receives them: rank by rank they differ, summed over the world (and so on average) they are
  // the exchange's.
  const std::size_t n = 3;
  const auto plan = ShardingPlan::parse("0: 9x2 hybrid:row; 1: 6x4 table@2", n);
  // Rank 0 asks rank 1 for row 3 and rank 2 for table 1's row 0, rank 1 asks rank 2 for that row
  // too, rank 2 asks nobody: rank 0 receives 2 + 4 response elements and sends none, rank 2
  // sends 4 + 4.
  const std::vector<std::vector<std::int64_t>> ids{{3, 0}, {4, 0}, {6, 0}};
  const FrequentSets none;
  const auto slots = strata::frequent_slots(none, table_rows(plan));
  std::vector<strata::ExchangeStats> stats(n);
  strata::LocalWorld(static_cast<int>(n)).run([&](LocalComm& world) {
    const auto me = static_cast<std::size_t>(world.rank());
    strata::EmbeddingExchange<LocalComm, double> emb(world, plan);
    std::vector<double> out(emb.output_width());
    emb.forward({ids[me], 2, 1, 1}, out);
    emb.backward(std::span<const double>(out), strata::Sgd{0.0});
    stats[me] = emb.stats();
  });
  double predicted_responses = 0, sent_responses = 0, predicted_bytes = 0, sent_bytes = 0;
  const std::vector<double> asked{6, 4, 0};
  for (std::size_t r = 0; r < n; ++r) {
    CAPTURE(r);
    const auto p = strata::predict_exchange(plan, slots, {ids[r], 2, 1, 1}, r, true, 8);
    CHECK(p.request_words == static_cast<double>(stats[r].request_words));
    CHECK(p.gradient_elements == static_cast<double>(stats[r].gradient_elements));
    CHECK(p.response_elements == asked[r]);
    predicted_responses += p.response_elements;
    sent_responses += static_cast<double>(stats[r].response_elements);
    predicted_bytes += p.bytes(8);
    sent_bytes += static_cast<double>(stats[r].bytes_sent(8));
  }
  CHECK(predicted_responses == sent_responses);
  CHECK(predicted_bytes == sent_bytes);
}

TEST_CASE("predict_exchange and frequent_slots: by hand") {
  // Rank 0 of 2 (nodes of one rank) looks up row 6 (rank 1's) twice and row 1 (its own) in
  // table 0, and row 2 three times in table 1, whose second column block is rank 1's.
  const auto plan = ShardingPlan::parse("0: 8x2 hybrid:row; 1: 4x4 column:2@0", 2, 1);
  const std::vector<std::int64_t> ids{6, 6, 1, 2, 2, 2};
  const SparseBatch batch{ids, 2, 1, 3};
  std::vector<std::vector<std::int64_t>> slots(2);
  // Requests: one count per shard of rank 1 (table 0's second row block, table 1's second column
  // block), row 6 once and row 2 once; responses and gradients of 2 + 2 elements.
  const auto none = strata::predict_exchange(plan, slots, batch, 0, true, 4);
  CHECK(none.request_words == 2 + 2);
  CHECK(none.response_elements == 2 + 2);
  CHECK(none.gradient_elements == 2 + 2);
  CHECK(none.intra_bytes == 0);
  CHECK(none.inter_bytes == 4 * 8 + 2 * 4 * 4);
  CHECK(none.bytes(4) == 4 * 8 + 8 * 4);
  // Without de-duplication: the batch size, a count per shard and sample, every id; a row per
  // shard and sample.
  const auto naive = strata::predict_exchange(plan, slots, batch, 0, false, 4);
  CHECK(naive.request_words == 1 + 2 + 2 + 3);
  CHECK(naive.response_elements == 2 + 2);
  CHECK(naive.gradient_elements == 2 + 2);
  // Rank 1 asks rank 0 for row 1 and table 1's first column block.
  const auto other = strata::predict_exchange(plan, slots, batch, 1, true, 4);
  CHECK(other.request_words == 2 + 2);
  CHECK(other.response_elements == 2 + 2);
  // Row 6 replicated: only table 1's lookups leave.
  const FrequentSets f{{{6}}};
  slots = strata::frequent_slots(f, std::vector<std::size_t>{8, 4});
  CHECK(slots[0][6] == 0);
  CHECK(slots[1].empty());
  const auto hot = strata::predict_exchange(plan, slots, batch, 0, true, 4);
  CHECK(hot.request_words == 2 + 1);
  CHECK(hot.response_elements == 2);
  CHECK(hot.bytes(4) == 3 * 8 + 4 * 4);

  // frequent_slots: slot by slot, and its refusals.
  const FrequentSets g{{{}, {7, 2, 0}}};
  const auto s = strata::frequent_slots(g, std::vector<std::size_t>{5, 10});
  CHECK(s[0].empty());
  CHECK(s[1] == std::vector<std::int64_t>{2, -1, 1, -1, -1, -1, -1, 0, -1, -1});
  const auto refuse = [](std::vector<std::int64_t> rows) {
    try {
      (void)strata::frequent_slots(FrequentSets{{rows}}, std::vector<std::size_t>{10});
    } catch (const std::invalid_argument& e) {
      return std::string(e.what());
    }
    return std::string("no error");
  };
  CHECK(refuse({3, 1, 3}) ==
        "FrequentSets: table 0 slot 2: row 3 is outside the table's 10 rows or repeated");
  CHECK(refuse({10}) ==
        "FrequentSets: table 0 slot 0: row 10 is outside the table's 10 rows or repeated");
  CHECK(refuse({0, -1}) ==
        "FrequentSets: table 0 slot 1: row -1 is outside the table's 10 rows or repeated");
}

// ---- 5. FrequencyCounts and choose_frequent -----------------------------------------------------

TEST_CASE("FrequencyCounts: counts, the sum over the world, the ranking and bad batches") {
  const auto plan = ShardingPlan::parse("0: 10x2 hybrid; 1: 5x2 row; 2: 7x3 hybrid:table/2", 4);
  for (const int world : {1, 2, 3, 4}) {
    const auto n = static_cast<std::size_t>(world);
    const auto p = ShardingPlan::parse("0: 10x2 hybrid; 1: 5x2 row; 2: 7x3 hybrid:table/2", n);
    // ids[rank][batch]: two batches per rank, of different shapes.
    std::mt19937_64 rng(n);
    std::vector<std::vector<std::vector<std::int64_t>>> ids(n);
    std::vector<std::vector<std::pair<std::size_t, std::size_t>>> shape(n);
    for (std::size_t r = 0; r < n; ++r) {
      for (std::size_t b = 0; b < 2; ++b) {
        const std::size_t samples = (r + b) % 3, hotness = 1 + (r * 2 + b) % 3;
        std::vector<std::int64_t> v;
        const std::size_t rows[] = {10, 5, 7};
        for (std::size_t j = 0; j < 3; ++j)
          for (std::size_t x = 0; x < samples * hotness; ++x)
            v.push_back(static_cast<std::int64_t>(rng() % (rng() % 2 ? 3 : rows[j])));
        ids[r].push_back(std::move(v));
        shape[r].emplace_back(samples, hotness);
      }
    }
    // The serial counts: this rank's, and the world's.
    const auto count_of = [&](std::size_t r, std::size_t j, std::size_t rows) {
      std::vector<std::int64_t> c(rows, 0);
      for (std::size_t b = 0; b < 2; ++b) {
        const auto [samples, hotness] = shape[r][b];
        for (std::size_t x = 0; x < samples * hotness; ++x)
          ++c[static_cast<std::size_t>(ids[r][b][j * samples * hotness + x])];
      }
      return c;
    };
    std::vector<std::size_t> bad(n, 0);
    strata::LocalWorld(world).run([&](LocalComm& comm) {
      const auto me = static_cast<std::size_t>(comm.rank());
      strata::FrequencyCounts counts(p);
      CHECK(&counts.plan() == &p);
      for (std::size_t b = 0; b < 2; ++b)
        counts.add({ids[me][b], 3, shape[me][b].first, shape[me][b].second});
      for (const std::size_t j : {std::size_t{0}, std::size_t{2}}) {
        const std::size_t rows = p.table(j).rows;
        const auto mine = count_of(me, j, rows);
        for (std::size_t i = 0; i < rows; ++i) bad[me] += counts.count(j, i) != mine[i];
      }
      counts.reduce(comm);
      for (const std::size_t j : {std::size_t{0}, std::size_t{2}}) {
        const std::size_t rows = p.table(j).rows;
        std::vector<std::int64_t> all(rows, 0);
        for (std::size_t r = 0; r < n; ++r) {
          const auto c = count_of(r, j, rows);
          for (std::size_t i = 0; i < rows; ++i) all[i] += c[i];
        }
        for (std::size_t i = 0; i < rows; ++i) bad[me] += counts.count(j, i) != all[i];
        // Ranked: count descending, ties by row ascending.
        std::vector<std::int64_t> want(rows);
        std::iota(want.begin(), want.end(), std::int64_t{0});
        std::sort(want.begin(), want.end(), [&](std::int64_t a, std::int64_t b) {
          const auto ca = all[static_cast<std::size_t>(a)], cb = all[static_cast<std::size_t>(b)];
          return ca != cb ? ca > cb : a < b;
        });
        bad[me] += counts.ranked(j) != want;
        for (std::size_t k = 0; k <= rows + 2; ++k) {
          const std::vector<std::int64_t> prefix(
              want.begin(), want.begin() + static_cast<std::ptrdiff_t>(std::min(k, rows)));
          bad[me] += counts.frequent(j, k) != prefix;
        }
      }
      bad[me] += !counts.ranked(1).empty();
      bad[me] += !counts.frequent(1, 3).empty();
    });
    CAPTURE(n);
    CHECK(bad == std::vector<std::size_t>(n, 0));
  }

  // By hand, and the ranking follows later batches.
  strata::FrequencyCounts counts(plan);
  const std::vector<std::int64_t> first{4, 4, 1, 1, 0, 0};  // 1 sample of hotness 2
  counts.add({first, 3, 1, 2});
  CHECK(counts.count(0, 4) == 2);
  CHECK(counts.count(0, 9) == 0);
  CHECK(counts.count(2, 0) == 2);
  CHECK(counts.ranked(0).front() == 4);
  CHECK(counts.frequent(0, 3) == std::vector<std::int64_t>{4, 0, 1});
  const std::vector<std::int64_t> second{9, 9, 9, 0, 1, 2, 6, 6, 6};  // 3 samples of hotness 1
  counts.add({second, 3, 3, 1});
  CHECK(counts.frequent(0, 3) == std::vector<std::int64_t>{9, 4, 0});
  CHECK(counts.frequent(2, 2) == std::vector<std::int64_t>{6, 0});

  // Bad batches: refused before anything is counted.
  const auto refuse = [&](const SparseBatch& b) {
    try {
      counts.add(b);
    } catch (const std::invalid_argument& e) {
      return std::string(e.what());
    }
    return std::string("no error");
  };
  const std::vector<std::int64_t> two_tables{1, 2};
  CHECK(refuse({two_tables, 2, 1, 1}) ==
        "FrequencyCounts::add: the batch holds 2 ids for 2 tables; the plan has 3");
  CHECK(refuse({two_tables, 3, 1, 1}) ==
        "FrequencyCounts::add: the batch holds 2 ids for 3 tables; the plan has 3");
  // An id outside the row-wise table 1 (which is not counted, but checked): table 0's ids before
  // it must not be counted either.
  const std::vector<std::int64_t> bad_row{9, 9, 5, 0, 6, 6};
  CHECK(refuse({bad_row, 3, 1, 2}) ==
        "FrequencyCounts::add: table 1, lookup 0: id 5 is outside the table's 5 rows");
  const std::vector<std::int64_t> negative{9, 9, 0, 0, 6, -1};
  CHECK(refuse({negative, 3, 1, 2}) ==
        "FrequencyCounts::add: table 2, lookup 1: id -1 is outside the table's 7 rows");
  CHECK(counts.count(0, 9) == 3);
  CHECK(counts.count(2, 6) == 3);
  // An empty batch counts nothing.
  CHECK(refuse({{}, 3, 0, 0}) == "no error");
  CHECK(counts.frequent(0, 3) == std::vector<std::int64_t>{9, 4, 0});
}

namespace {

// One rank's sample for choose_frequent: `samples` samples of hotness 1, table 0 only, ids given
// per rank by `id(rank, sample)`.
struct Sample {
  std::vector<std::vector<std::int64_t>> ids;  // per rank
  std::size_t samples;
};

template <class Id>
Sample one_table_sample(std::size_t n, std::size_t samples, Id id) {
  Sample s{std::vector<std::vector<std::int64_t>>(n), samples};
  for (std::size_t r = 0; r < n; ++r)
    for (std::size_t x = 0; x < samples; ++x) s.ids[r].push_back(id(r, x));
  return s;
}

// choose_frequent on every rank of a world of the plan's size, with the counts of the sample.
std::vector<strata::HybridChoice> choose(const ShardingPlan& plan, const Sample& s,
                                         const strata::HybridCostModel& model) {
  const std::size_t n = plan.world_size();
  std::vector<strata::HybridChoice> choices(n);
  strata::LocalWorld(static_cast<int>(n)).run([&](LocalComm& comm) {
    const auto me = static_cast<std::size_t>(comm.rank());
    strata::FrequencyCounts counts(plan);
    const std::vector<SparseBatch> sample{{s.ids[me], plan.num_tables(), s.samples, 1}};
    counts.add(sample[0]);
    counts.reduce(comm);
    choices[me] = strata::choose_frequent(comm, plan, counts, sample, model);
  });
  return choices;
}

}  // namespace

TEST_CASE("choose_frequent: obvious choices") {
  // (a) Every lookup of every rank hits row 5 (rank 0's) and, without de-duplication, each
  // sample's lookup costs an id and two rows of 16: replicating that one row is cheapest.
  {
    const auto plan = ShardingPlan::parse("0: 64x16 hybrid:row", 4);
    const auto s = one_table_sample(4, 8, [](std::size_t, std::size_t) { return 5; });
    strata::HybridCostModel model;
    model.dedup = false;
    const auto c = choose(plan, s, model);
    for (const auto& x : c) {
      CHECK(x.frequent == std::vector<std::size_t>{1});
      CHECK(x.sets.rows == std::vector<std::vector<std::int64_t>>{{5}});
      CHECK(x.exchange.response_elements == 0);
      CHECK(x.allreduce_elements == 1 * (16 + 1));
    }
  }
  // (b) Each rank looks up one row of its node-mate: with a fast link inside nodes and a slow one
  // across them (which the replicas' all-reduce of a world of two nodes must cross), nothing is
  // replicated; with the links the other way round, exactly the four rows looked up are.
  {
    const auto plan = ShardingPlan::parse("0: 64x16 hybrid:row", 4, 2);
    const auto s = one_table_sample(4, 8, [](std::size_t r, std::size_t) {
      return static_cast<std::int64_t>((r ^ 1) * 16 + 1);
    });
    strata::HybridCostModel model;
    model.links.intra_node = {1e15, 0.0};
    model.links.inter_node = {1e3, 0.0};
    for (const auto& x : choose(plan, s, model)) {
      CHECK(x.frequent == std::vector<std::size_t>{0});
      CHECK(x.sets.rows[0].empty());
      CHECK(x.exchange.response_elements > 0);
    }
    std::swap(model.links.intra_node, model.links.inter_node);
    for (const auto& x : choose(plan, s, model)) {
      CHECK(x.frequent == std::vector<std::size_t>{4});
      CHECK(x.sets.rows[0] == std::vector<std::int64_t>{1, 17, 33, 49});
      CHECK(x.exchange.response_elements == 0);
      CHECK(x.exchange.gradient_elements == 0);
    }
    // A cap of two rows: the best that fits.
    model.max_replica_bytes = 2 * 16 * 4;
    for (const auto& x : choose(plan, s, model)) {
      CHECK(x.frequent == std::vector<std::size_t>{2});
      CHECK(x.sets.rows[0] == std::vector<std::int64_t>{1, 17});
    }
    // A cap of nothing: nothing replicated.
    model.max_replica_bytes = 0;
    for (const auto& x : choose(plan, s, model)) CHECK(x.frequent == std::vector<std::size_t>{0});
  }
  // A world of one: the exchange is free, and so nothing is replicated.
  {
    const auto plan = ShardingPlan::parse("0: 64x16 hybrid:row", 1);
    const auto s = one_table_sample(
        1, 8, [](std::size_t, std::size_t x) { return static_cast<std::int64_t>(x % 2); });
    for (const auto& x : choose(plan, s, {})) {
      CHECK(x.frequent == std::vector<std::size_t>{0});
      CHECK(x.predicted_bytes == 0);
    }
  }
}

TEST_CASE("choose_frequent: a placement's count is kept") {
  const auto plan = ShardingPlan::parse("0: 64x16 hybrid:row/3", 4, 2);
  const auto s = one_table_sample(4, 8, [](std::size_t r, std::size_t x) {
    return static_cast<std::int64_t>((r * 7 + x * 13) % 64);
  });
  strata::HybridCostModel model;
  model.links.intra_node = {1e15, 0.0};
  model.links.inter_node = {1e3, 0.0};  // replicas very expensive: the model alone would say 0
  for (const auto& x : choose(plan, s, model)) CHECK(x.frequent == std::vector<std::size_t>{3});
}

TEST_CASE(
    "choose_frequent: a placement's count is kept under a replica cap, and the exchange "
    "accepts the sets") {
  // The placement names 3 rows and the cap leaves room for none: choose_frequent is documented
  // to keep a placement's count, and the exchange refuses sets of another count.
  const auto plan = ShardingPlan::parse("0: 16x4 hybrid:row/3; 1: 16x4 hybrid", 2);
  std::vector<std::size_t> chosen(2, 0);
  std::vector<std::string> refused(2);
  strata::LocalWorld(2).run([&](LocalComm& comm) {
    const auto me = static_cast<std::size_t>(comm.rank());
    strata::FrequencyCounts counts(plan);
    const std::vector<std::int64_t> ids{1, 2, 3, 1, 9, 9, 9, 9};
    const std::vector<SparseBatch> sample{{ids, 2, 4, 1}};
    counts.add(sample[0]);
    counts.reduce(comm);
    strata::HybridCostModel model;
    model.max_replica_bytes = 0;
    const auto c = strata::choose_frequent(comm, plan, counts, sample, model);
    chosen[me] = c.frequent[0];
    try {
      strata::EmbeddingExchange<LocalComm, double> emb(comm, plan, {}, c.sets);
    } catch (const std::invalid_argument& e) {
      refused[me] = e.what();
    }
  });
  CHECK(chosen == std::vector<std::size_t>{3, 3});
  CHECK(refused == std::vector<std::string>{"", ""});
}

TEST_CASE("choose_frequent: the same on every rank, within the cap, its prediction exact") {
  for (const std::size_t n : {1, 2, 3, 4, 6, 8}) {
    for (const std::size_t g : some_node_sizes(n)) {
      std::mt19937_64 rng(600 + n * 7 + g);
      const auto plan = ShardingPlan::make(em::random_hybrid_tables(rng, n, g), n, g);
      const auto w = em::random_workload(rng, plan.tables(), n, 3);
      strata::HybridCostModel model;
      model.dedup = rng() % 2 == 0;
      model.element_bytes = 4 + 4 * (rng() % 2);
      // Slow links, so that replicas pay off somewhere; a cap in half the cases.
      model.links.intra_node = {1e6 * static_cast<double>(1 + rng() % 100), 0.0};
      model.links.inter_node = {1e5 * static_cast<double>(1 + rng() % 100), 0.0};
      // A cap in half the cases, but not with a placement's own count, which the cap must not
      // touch (see "a placement's count is kept under a replica cap").
      bool fixed = false;
      for (const auto& t : plan.tables())
        fixed = fixed || (t.placement.hybrid && t.placement.frequent != strata::auto_place);
      if (rng() % 2 == 0 && !fixed) model.max_replica_bytes = static_cast<double>(rng() % 200);
      CAPTURE(n);
      CAPTURE(g);
      CAPTURE(plan.describe());
      CAPTURE(model.dedup);
      CAPTURE(model.max_replica_bytes);
      // The sample: every rank's batches of all three steps.
      std::vector<std::vector<strata::HybridChoice>> runs(2, std::vector<strata::HybridChoice>(n));
      std::vector<std::string> accepted(n);
      for (auto& choices : runs) {
        strata::LocalWorld(static_cast<int>(n)).run([&](LocalComm& comm) {
          const auto me = static_cast<std::size_t>(comm.rank());
          std::vector<SparseBatch> sample;
          strata::FrequencyCounts counts(plan);
          for (const auto& step : w.steps) {
            sample.push_back({step[me].ids, plan.num_tables(), step[me].samples, step[me].hotness});
            counts.add(sample.back());
          }
          counts.reduce(comm);
          choices[me] = strata::choose_frequent(comm, plan, counts, sample, model);
          for (std::size_t j = 0; j < plan.num_tables(); ++j) {
            if (choices[me].sets.rows[j] != counts.frequent(j, choices[me].frequent[j]))
              accepted[me] = "table " + std::to_string(j) + ": not the most frequent rows";
          }
          try {
            strata::EmbeddingExchange<LocalComm, double> emb(comm, plan, {}, choices[me].sets);
          } catch (const std::invalid_argument& e) {
            accepted[me] = e.what();
          }
        });
      }
      CHECK(accepted == std::vector<std::string>(n));
      const auto& c = runs[0][0];
      double replica_bytes = 0, fixed_bytes = 0;
      for (std::size_t j = 0; j < plan.num_tables(); ++j) {
        const auto& t = plan.table(j);
        if (!t.placement.hybrid) {
          CHECK(c.frequent[j] == 0);
          continue;
        }
        const double bytes = static_cast<double>(c.frequent[j] * t.width * model.element_bytes);
        if (t.placement.frequent != strata::auto_place) {
          CHECK(c.frequent[j] == t.placement.frequent);
          fixed_bytes += bytes;
        } else {
          replica_bytes += bytes;
        }
      }
      CHECK(replica_bytes + fixed_bytes <= model.max_replica_bytes);
      for (const auto& run : runs) {
        for (const auto& x : run) {
          CHECK(x.frequent == c.frequent);
          CHECK(x.sets.rows == c.sets.rows);
          CHECK(x.predicted_bytes == c.predicted_bytes);
          CHECK(x.predicted_seconds == c.predicted_seconds);
        }
      }
      // The prediction: predict_exchange of every rank's sample with the chosen sets, averaged
      // over the batches and the ranks.
      const auto slots = strata::frequent_slots(c.sets, table_rows(plan));
      strata::ExchangeBytes sum;
      for (std::size_t r = 0; r < n; ++r) {
        for (const auto& step : w.steps) {
          sum += strata::predict_exchange(
              plan, slots, {step[r].ids, plan.num_tables(), step[r].samples, step[r].hotness}, r,
              model.dedup, model.element_bytes);
        }
      }
      const double runs_of = static_cast<double>(w.steps.size()) * static_cast<double>(n);
      CHECK(c.exchange.request_words == doctest::Approx(sum.request_words / runs_of));
      CHECK(c.exchange.response_elements == doctest::Approx(sum.response_elements / runs_of));
      CHECK(c.exchange.gradient_elements == doctest::Approx(sum.gradient_elements / runs_of));
      CHECK(c.exchange.intra_bytes == doctest::Approx(sum.intra_bytes / runs_of));
      CHECK(c.exchange.inter_bytes == doctest::Approx(sum.inter_bytes / runs_of));
      FrequentSets chosen = c.sets;
      CHECK(c.allreduce_elements == static_cast<double>(replica_elements(plan, chosen)));
      CHECK(c.predicted_bytes ==
            doctest::Approx(c.exchange.bytes(model.element_bytes) +
                            c.allreduce_elements * static_cast<double>(model.element_bytes)));
      CHECK(c.describe(plan).find("predicted per rank and step") != std::string::npos);
    }
  }
}

TEST_CASE("choose_frequent: a sample id outside its table is refused") {
  // choose_frequent reads its sample without checking it (an out-of-bounds read of its row ranks
  // for the id 16 of a table of 16 rows); it should refuse the batch as the exchange does.
  const auto plan = ShardingPlan::parse("0: 16x4 hybrid:row", 1);
  strata::LocalWorld(1).run([&](LocalComm& comm) {
    strata::FrequencyCounts counts(plan);
    const std::vector<std::int64_t> ids{1, 16};
    const std::vector<SparseBatch> sample{{ids, 1, 2, 1}};
    std::string what;
    try {
      (void)strata::choose_frequent(comm, plan, counts, sample, {});
    } catch (const std::exception& e) {
      what = e.what();
    }
    CHECK(what.find("choose_frequent") != std::string::npos);
  });
}

// ---- 7. frequent sets the exchange refuses ------------------------------------------------------

TEST_CASE("hybrid exchange: frequent sets that do not fit the plan are refused on every rank") {
  const auto plan = ShardingPlan::parse("0: 10x2 hybrid; 1: 5x2 row; 2: 7x3 hybrid:table/2", 2);
  const auto refusal = [&](std::vector<std::vector<std::int64_t>> rows) {
    std::vector<std::string> what(2);
    strata::LocalWorld(2).run([&](LocalComm& comm) {
      try {
        strata::EmbeddingExchange<LocalComm, double> emb(comm, plan, {Pooling::sum, true, true},
                                                         FrequentSets{rows});
      } catch (const std::invalid_argument& e) {
        what[static_cast<std::size_t>(comm.rank())] = e.what();
      }
    });
    CHECK(what[0] == what[1]);
    return what[0];
  };
  CHECK(refusal({{1}, {}, {3, 4}, {}}) ==
        "EmbeddingExchange: frequent sets for 4 tables, the plan has 3");
  CHECK(refusal({{1}, {2}, {3, 4}}) ==
        "EmbeddingExchange: table 1 is not hybrid but has 1 frequent rows");
  CHECK(refusal({{3, 1, 3}, {}, {3, 4}}) ==
        "FrequentSets: table 0 slot 2: row 3 is outside the table's 10 rows or repeated");
  CHECK(refusal({{10}, {}, {3, 4}}) ==
        "FrequentSets: table 0 slot 0: row 10 is outside the table's 10 rows or repeated");
  CHECK(refusal({{-1}, {}, {3, 4}}) ==
        "FrequentSets: table 0 slot 0: row -1 is outside the table's 10 rows or repeated");
  CHECK(refusal({{}, {}, {4}}) ==
        "EmbeddingExchange: table 2 replicates 2 rows by its placement, 1 frequent rows given");
  CHECK(refusal({{}, {}, {4, 5, 6}}) ==
        "EmbeddingExchange: table 2 replicates 2 rows by its placement, 3 frequent rows given");
  CHECK(refusal({}) ==
        "EmbeddingExchange: table 2 replicates 2 rows by its placement, 0 frequent rows given");
  // Fine: fewer sets than tables, an empty set for a table that is not hybrid, all rows.
  CHECK(refusal({{9, 8, 7, 6, 5, 4, 3, 2, 1, 0}, {}, {6, 0}}).empty());
  CHECK(refusal({{}, {}, {6, 0}}).empty());
}
