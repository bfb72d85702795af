// An independent serial model of the hybrid-parallel embedding layer, shared by the local and the
// MPI suites. Every rank's batch of every step is derived from a seed, so that each rank (thread
// or process) can build the whole world's workload and compute the expected outputs, gradients
// and tables with plain loops over every sample of the world, without any of the code under test:
// the placement of a table does not change the result, so the model knows nothing of shards. The
// owner of a row is recomputed here from the resolved placement with its own formula. Nor do the
// frequent rows of hybrid tables change it: they only decide where each row's update runs and
// which ids travel, which `compare` takes into account.
#pragma once

#include <strata/embedding/exchange.hpp>

#include <algorithm>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <map>
#include <random>
#include <set>
#include <span>
#include <string>
#include <tuple>
#include <vector>

#include "embedding_plans.hpp"

namespace embedding_model {

// The initial value of element (table, row, column): smooth, distinct, of order 1.
inline double initial_value(std::size_t j, std::size_t i, std::size_t d) {
  return std::sin(0.37 * static_cast<double>(i + 1) + 0.11 * static_cast<double>(d + 1)) +
         0.5 * std::cos(0.7 * static_cast<double>((j + 1) * (d + 1)));
}

// One rank's input of one step: its ids (table-major, as SparseBatch reads them) and the upstream
// gradient of its output.
struct RankStep {
  std::size_t samples = 0;
  std::size_t hotness = 1;
  std::vector<std::int64_t> ids;
  std::vector<double> grad;

  [[nodiscard]] std::int64_t id(std::size_t j, std::size_t s, std::size_t k) const {
    return ids[(j * samples + s) * hotness + k];
  }
};

// A whole workload: the tables' shapes (rows, width), and steps[t][rank].
struct Workload {
  std::vector<std::size_t> rows;
  std::vector<std::size_t> widths;
  std::vector<std::vector<RankStep>> steps;

  [[nodiscard]] std::size_t num_tables() const { return rows.size(); }
  [[nodiscard]] std::size_t total_width() const {
    std::size_t w = 0;
    for (std::size_t x : widths) w += x;
    return w;
  }
  [[nodiscard]] std::size_t offset(std::size_t j) const {
    std::size_t w = 0;
    for (std::size_t i = 0; i < j; ++i) w += widths[i];
    return w;
  }
};

// Random uneven batches: 0 to 3 samples per rank, hotness 1 to 3, one rank without samples in
// every step of a world larger than one (it may then have hotness 0). Ids are drawn from a small
// hot set of each table half of the time, so that duplicates are common.
inline Workload random_workload(std::mt19937_64& rng, std::span<const strata::TableSpec> tables,
                                std::size_t world, std::size_t steps) {
  Workload w;
  for (const auto& t : tables) {
    w.rows.push_back(t.rows);
    w.widths.push_back(t.width);
  }
  const std::size_t J = tables.size(), width = w.total_width();
  std::uniform_real_distribution<double> unit(-1.0, 1.0);
  for (std::size_t t = 0; t < steps; ++t) {
    std::vector<RankStep> step(world);
    const std::size_t empty = world > 1 ? (t * 7 + 3) % world : world;
    for (std::size_t r = 0; r < world; ++r) {
      RankStep& b = step[r];
      b.samples = r == empty ? 0 : static_cast<std::size_t>(rng() % 4);
      b.hotness = 1 + static_cast<std::size_t>(rng() % 3);
      if (b.samples == 0 && rng() % 2 == 0) b.hotness = 0;
      b.ids.resize(J * b.samples * b.hotness);
      for (std::size_t j = 0; j < J; ++j) {
        const std::size_t hot = std::min<std::size_t>(w.rows[j], 3);
        for (std::size_t x = 0; x < b.samples * b.hotness; ++x) {
          const std::size_t range = rng() % 2 == 0 ? hot : w.rows[j];
          b.ids[j * b.samples * b.hotness + x] = static_cast<std::int64_t>(rng() % range);
        }
      }
      b.grad.resize(b.samples * width);
      for (double& g : b.grad) g = unit(rng);
    }
    w.steps.push_back(std::move(step));
  }
  return w;
}

// What the serial model predicts: out[t][rank] (samples x total width), grad[t][j] (rows x width,
// the sum over the world of the gradients that reach each row), touched[t][j][row] (some sample
// of the world looked the row up in step t), and the tables after the last step.
struct Expected {
  std::vector<std::vector<std::vector<double>>> out;
  std::vector<std::vector<std::vector<double>>> grad;
  std::vector<std::vector<std::vector<char>>> touched;
  std::vector<std::vector<double>> tables;
};

inline std::vector<std::vector<double>> initial_tables(const Workload& w) {
  std::vector<std::vector<double>> tables(w.num_tables());
  for (std::size_t j = 0; j < w.num_tables(); ++j) {
    tables[j].resize(w.rows[j] * w.widths[j]);
    for (std::size_t i = 0; i < w.rows[j]; ++i)
      for (std::size_t d = 0; d < w.widths[j]; ++d)
        tables[j][i * w.widths[j] + d] = initial_value(j, i, d);
  }
  return tables;
}

inline Expected serial(const Workload& w, bool mean, double lr) {
  Expected e;
  std::vector<std::vector<double>> W = initial_tables(w);
  const std::size_t J = w.num_tables(), width = w.total_width();
  for (const auto& step : w.steps) {
    std::vector<std::vector<double>> outs(step.size());
    std::vector<std::vector<double>> G(J);
    std::vector<std::vector<char>> touched(J);
    for (std::size_t j = 0; j < J; ++j) {
      G[j].assign(w.rows[j] * w.widths[j], 0.0);
      touched[j].assign(w.rows[j], 0);
    }
    for (std::size_t r = 0; r < step.size(); ++r) {
      const RankStep& b = step[r];
      std::vector<double>& out = outs[r];
      out.assign(b.samples * width, 0.0);
      for (std::size_t s = 0; s < b.samples; ++s) {
        for (std::size_t j = 0; j < J; ++j) {
          const std::size_t off = w.offset(j), wd = w.widths[j];
          for (std::size_t k = 0; k < b.hotness; ++k) {
            const auto id = static_cast<std::size_t>(b.id(j, s, k));
            touched[j][id] = 1;
            for (std::size_t d = 0; d < wd; ++d) {
              out[s * width + off + d] += W[j][id * wd + d];
              const double g = b.grad[s * width + off + d];
              G[j][id * wd + d] += mean ? g / static_cast<double>(b.hotness) : g;
            }
          }
          if (mean) {
            for (std::size_t d = 0; d < wd; ++d)
              out[s * width + off + d] /= static_cast<double>(b.hotness);
          }
        }
      }
    }
    for (std::size_t j = 0; j < J; ++j)
      for (std::size_t x = 0; x < W[j].size(); ++x) W[j][x] -= lr * G[j][x];
    e.out.push_back(std::move(outs));
    e.grad.push_back(std::move(G));
    e.touched.push_back(std::move(touched));
  }
  e.tables = std::move(W);
  return e;
}

// A random plan's tables with hybrid ones among them: `random_tables`, each table that may be
// hybrid (all but data-parallel ones) made hybrid at random, then a hybrid copy of each inner
// placement (table, table@r, column:S, column:S@r, row, table-row, table-row@n) that none is yet.
// A quarter of the hybrid tables name their count of frequent rows (0 to all rows).
inline std::vector<strata::TableSpec> random_hybrid_tables(std::mt19937_64& rng, std::size_t world,
                                                           std::size_t ranks_per_node) {
  auto tables = random_tables(rng, world, ranks_per_node);
  const auto inner = [](const strata::PlacementSpec& p) {
    return 2 * static_cast<int>(p.kind) + (p.where != strata::auto_place ? 1 : 0);
  };
  std::set<int> hybrid_kinds;
  const std::size_t drawn = tables.size();
  for (std::size_t j = 0; j < drawn; ++j) {
    if (tables[j].placement.kind == strata::Placement::data_parallel || rng() % 3 == 0) continue;
    tables[j].placement.hybrid = true;
    hybrid_kinds.insert(inner(tables[j].placement));
  }
  for (std::size_t j = 0; j < drawn; ++j) {
    strata::TableSpec t = tables[j];
    if (t.placement.kind == strata::Placement::data_parallel) continue;
    if (!hybrid_kinds.insert(inner(t.placement)).second) continue;
    t.placement.hybrid = true;
    tables.push_back(t);
  }
  for (auto& t : tables) {
    if (t.placement.hybrid && rng() % 4 == 0) t.placement.frequent = rng() % (t.rows + 1);
  }
  return tables;
}

// Frequent sets for the hybrid tables of `plan`, in an arbitrary order (not by frequency). The
// size of table j's set follows `modes[j % modes.size()]`: 0 none, 1 one row, 2 a random number,
// 3 every row, 4 the rows `random_workload` draws often (0 to 2), last first. A placement that
// names its count gets that many random rows whatever the mode.
inline strata::FrequentSets random_frequent(std::mt19937_64& rng, const strata::ShardingPlan& plan,
                                            std::span<const int> modes) {
  strata::FrequentSets f;
  f.rows.resize(plan.num_tables());
  for (std::size_t j = 0; j < plan.num_tables(); ++j) {
    const auto& t = plan.table(j);
    if (!t.placement.hybrid) continue;
    std::vector<std::int64_t> order(t.rows);
    for (std::size_t i = 0; i < t.rows; ++i) order[i] = static_cast<std::int64_t>(i);
    std::shuffle(order.begin(), order.end(), rng);
    std::size_t n = 0;
    if (t.placement.frequent != strata::auto_place) {
      n = t.placement.frequent;
    } else {
      switch (modes[j % modes.size()]) {
        case 0: n = 0; break;
        case 1: n = 1; break;
        case 2: n = static_cast<std::size_t>(rng() % (t.rows + 1)); break;
        case 3: n = t.rows; break;
        default:
          order.clear();
          for (std::size_t i = std::min<std::size_t>(t.rows, 3); i > 0; --i)
            order.push_back(static_cast<std::int64_t>(i - 1));
          n = order.size();
          break;
      }
    }
    f.rows[j].assign(order.begin(), order.begin() + static_cast<std::ptrdiff_t>(n));
  }
  return f;
}

// A number with every digit, for the messages.
inline std::string num(double x) {
  char buf[32];
  std::snprintf(buf, sizeof buf, "%.17g", x);
  return buf;
}

// |a - b| within 1e-12 of max(1, |b|): relative for the values of order 1 and more that the
// model produces, absolute near zero where sums in another order may cancel differently.
inline bool close(double a, double b) {
  return std::abs(a - b) <= 1e-12 * std::max(1.0, std::abs(b));
}

// Whether row i of table j lives in a replica: every row of a data-parallel table, the frequent
// rows of a hybrid one.
inline bool in_replica(const strata::TableSpec& t, std::size_t j, std::size_t i,
                       const strata::FrequentSets& frequent) {
  if (t.placement.kind == strata::Placement::data_parallel) return true;
  if (!t.placement.hybrid || j >= frequent.rows.size()) return false;
  const auto& f = frequent.rows[j];
  return std::find(f.begin(), f.end(), static_cast<std::int64_t>(i)) != f.end();
}

// Whether table j keeps a replica block: data-parallel and hybrid tables (the latter even when
// they replicate nothing).
inline bool has_replica(const strata::TableSpec& t) {
  return t.placement.kind == strata::Placement::data_parallel || t.placement.hybrid;
}

// One call of the update: (table, row, first column) and the gradient it was handed.
struct Call {
  std::size_t step, table, row, col_begin;
  std::vector<double> grad;
  bool values_match;  // the values span has the gradient's width
};

// Records every call of the update, then hands it to the library's plain SGD.
struct Recorder {
  std::vector<Call>* calls;
  std::size_t step;
  double lr;

  void operator()(const strata::RowGradient<double>& r) const {
    calls->push_back({step, r.table, r.row, r.col_begin,
                      std::vector<double>(r.grad.begin(), r.grad.end()),
                      r.values.size() == r.grad.size()});
    strata::Sgd{lr}(r);
  }
};

// What one rank observed in a run.
struct RankResult {
  std::vector<std::vector<double>> out;       // per step
  std::vector<Call> calls;                    // every update call, in order
  std::vector<strata::ExchangeStats> stats;   // per step, after backward
  std::vector<std::vector<double>> blocks;    // this rank's blocks after the run, in block order
  std::vector<std::vector<double>> replicas;  // this rank's replica of each table that has one
  std::vector<std::vector<double>> gathered;  // gather_table(j, j % world), where this is the root
};

// Runs the workload on this rank (after `initialize(initial_value)` unless the tables already hold
// the initial values): forward and backward with a Recorder each step, then copies its blocks and
// replicas out and gathers every table, table j on rank j % world.
template <class Comm>
RankResult run_rank(strata::EmbeddingExchange<Comm, double>& emb, const Workload& w,
                    std::size_t rank, double lr, bool initialize = true) {
  RankResult res;
  if (initialize) emb.initialize(initial_value);
  const std::size_t J = w.num_tables();
  for (std::size_t t = 0; t < w.steps.size(); ++t) {
    const RankStep& b = w.steps[t][rank];
    std::vector<double> out(b.samples * emb.output_width(), -1.0);
    emb.forward({b.ids, J, b.samples, b.hotness}, out);
    emb.backward(std::span<const double>(b.grad), Recorder{&res.calls, t, lr});
    res.out.push_back(std::move(out));
    res.stats.push_back(emb.stats());
  }
  const auto& tables = emb.tables();
  for (std::size_t b = 0; b < tables.num_blocks(); ++b) {
    std::vector<double> v;
    for (std::size_t i = 0; i < tables.block(b).rows; ++i) {
      const auto row = tables.row(b, i);
      v.insert(v.end(), row.begin(), row.end());
    }
    res.blocks.push_back(std::move(v));
  }
  // Replicas follow the shards, in table order: data-parallel tables and hybrid ones.
  std::size_t b = emb.plan().shards_on(rank).size();
  for (std::size_t j = 0; j < J; ++j) {
    if (!has_replica(emb.plan().table(j))) continue;
    res.replicas.push_back(res.blocks.at(b++));
  }
  for (std::size_t j = 0; j < J; ++j) {
    const std::size_t root = j % emb.plan().world_size();
    auto full = emb.gather_table(j, static_cast<int>(root));
    res.gathered.push_back(root == rank ? std::move(full) : std::vector<double>{});
  }
  return res;
}

// The ids this rank sends to owners on other ranks in one step: every lookup of a sharded table
// once per column block whose owner is another rank, or, with de-duplication, every distinct
// (table, column block, row) among them. Lookups of a hybrid table's frequent rows stay local.
inline std::size_t expected_ids_sent(const strata::ShardingPlan& plan, const RankStep& b,
                                     std::size_t rank, bool dedup,
                                     const strata::FrequentSets& frequent = {}) {
  std::size_t n = 0;
  std::set<std::tuple<std::size_t, std::size_t, std::int64_t>> distinct;
  for (std::size_t j = 0; j < plan.num_tables(); ++j) {
    const auto blocks = blocks_of(plan.table(j), plan.world_size(), plan.ranks_per_node());
    for (std::size_t s = 0; s < b.samples; ++s) {
      for (std::size_t k = 0; k < b.hotness; ++k) {
        const auto id = b.id(j, s, k);
        if (in_replica(plan.table(j), j, static_cast<std::size_t>(id), frequent)) continue;
        std::size_t block = 0;  // the column block counts up over the blocks that hold the row
        for (const Block& x : blocks) {
          if (static_cast<std::size_t>(id) < x.row_begin ||
              static_cast<std::size_t>(id) >= x.row_end)
            continue;
          if (x.rank != rank) {
            ++n;
            distinct.insert({j, block, id});
          }
          ++block;
        }
      }
    }
  }
  return dedup ? distinct.size() : n;
}

// Checks one rank's result against the model; returns the problems found, one line each (empty
// when everything matches). `tag` names the case in every line; `frequent` holds the rows the
// hybrid tables replicate (the exchange's).
inline std::vector<std::string> compare(const strata::ShardingPlan& plan, const Workload& w,
                                        const Expected& e, std::size_t rank, const RankResult& res,
                                        bool dedup, const std::string& tag,
                                        const strata::FrequentSets& frequent = {}) {
  std::vector<std::string> bad;
  const auto fail = [&](const std::string& what) {
    if (bad.size() < 8) bad.push_back(tag + ", rank " + std::to_string(rank) + ": " + what);
  };
  const std::size_t J = plan.num_tables(), steps = w.steps.size();
  // Outputs.
  for (std::size_t t = 0; t < steps; ++t) {
    const auto& want = e.out[t][rank];
    const auto& got = res.out.at(t);
    if (got.size() != want.size()) {
      fail("step " + std::to_string(t) + ": output size " + std::to_string(got.size()));
      continue;
    }
    for (std::size_t x = 0; x < want.size(); ++x) {
      if (!close(got[x], want[x])) {
        fail("step " + std::to_string(t) + ": output[" + std::to_string(x) + "] = " + num(got[x]) +
             ", expected " + num(want[x]));
        break;
      }
    }
  }
  // Update calls: exactly those (step, table, row, first column) that this rank owns and some
  // sample of the world looked up, each once, with the world's summed gradient; every rank owns
  // the rows of its replicas, whole.
  std::map<std::tuple<std::size_t, std::size_t, std::size_t, std::size_t>, int> want_calls;
  std::vector<std::vector<Block>> blocks(J);
  for (std::size_t j = 0; j < J; ++j)
    blocks[j] = blocks_of(plan.table(j), plan.world_size(), plan.ranks_per_node());
  for (std::size_t t = 0; t < steps; ++t) {
    for (std::size_t j = 0; j < J; ++j) {
      for (std::size_t i = 0; i < w.rows[j]; ++i) {
        if (!e.touched[t][j][i]) continue;
        if (in_replica(plan.table(j), j, i, frequent)) {
          want_calls[{t, j, i, 0}] = 0;
          continue;
        }
        for (const Block& b : blocks[j]) {
          if (b.rank == rank && i >= b.row_begin && i < b.row_end)
            want_calls[{t, j, i, b.col_begin}] = 0;
        }
      }
    }
  }
  for (const Call& c : res.calls) {
    const auto key = std::tuple{c.step, c.table, c.row, c.col_begin};
    const std::string name = "step " + std::to_string(c.step) + ", table " +
                             std::to_string(c.table) + ", row " + std::to_string(c.row) +
                             ", column " + std::to_string(c.col_begin);
    const auto it = want_calls.find(key);
    if (it == want_calls.end()) {
      fail("unexpected update call: " + name);
      continue;
    }
    if (++it->second > 1) fail("update called twice: " + name);
    if (!c.values_match) fail("values and gradient differ in width: " + name);
    const std::size_t wd = w.widths[c.table];
    const auto& G = e.grad[c.step][c.table];
    for (std::size_t d = 0; d < c.grad.size(); ++d) {
      if (c.col_begin + d >= wd || !close(c.grad[d], G[c.row * wd + c.col_begin + d])) {
        fail("gradient of " + name + " differs at column " + std::to_string(c.col_begin + d));
        break;
      }
    }
  }
  for (const auto& [key, count] : want_calls) {
    if (count == 0) {
      const auto [t, j, i, c] = key;
      fail("no update call for step " + std::to_string(t) + ", table " + std::to_string(j) +
           ", row " + std::to_string(i) + ", column " + std::to_string(c));
    }
  }
  // The tables after the last step: this rank's shards (but the rows a hybrid table replicates,
  // which live in the replica), then its replicas.
  const auto on = plan.shards_on(rank);
  if (res.blocks.size() != on.size() + res.replicas.size()) {
    fail("holds " + std::to_string(res.blocks.size()) + " blocks");
    return bad;
  }
  for (std::size_t b = 0; b < on.size(); ++b) {
    const strata::Shard& s = plan.shards()[on[b]];
    const std::size_t wd = w.widths[s.table];
    const auto& want = e.tables[s.table];
    const auto& got = res.blocks[b];
    if (got.size() != s.rows() * s.width()) {
      fail("block " + std::to_string(b) + " has " + std::to_string(got.size()) + " elements");
      continue;
    }
    for (std::size_t i = 0; i < s.rows(); ++i) {
      if (in_replica(plan.table(s.table), s.table, s.row_begin + i, frequent)) continue;
      for (std::size_t d = 0; d < s.width(); ++d) {
        const double x = got[i * s.width() + d];
        const double y = want[(s.row_begin + i) * wd + s.col_begin + d];
        if (!close(x, y)) {
          fail("table " + std::to_string(s.table) + " row " + std::to_string(s.row_begin + i) +
               " column " + std::to_string(s.col_begin + d) + " = " + num(x) + ", expected " +
               num(y));
          i = s.rows();
          break;
        }
      }
    }
  }
  std::size_t r = 0;
  for (std::size_t j = 0; j < J; ++j) {
    if (!has_replica(plan.table(j))) continue;
    const auto& got = res.replicas.at(r++);
    // A data-parallel table whole; a hybrid table's frequent rows, slot by slot.
    std::vector<double> want = e.tables[j];
    if (plan.table(j).placement.hybrid) {
      const std::size_t wd = w.widths[j];
      want.clear();
      if (j < frequent.rows.size()) {
        for (const std::int64_t row : frequent.rows[j]) {
          const auto at = e.tables[j].begin() +
                          static_cast<std::ptrdiff_t>(row) * static_cast<std::ptrdiff_t>(wd);
          want.insert(want.end(), at, at + static_cast<std::ptrdiff_t>(wd));
        }
      }
    }
    bool same = got.size() == want.size();
    for (std::size_t x = 0; same && x < want.size(); ++x) same = close(got[x], want[x]);
    if (!same) fail("replica of table " + std::to_string(j) + " differs from the model");
  }
  for (std::size_t j = 0; j < J; ++j) {
    const auto& got = res.gathered.at(j);
    if (j % plan.world_size() != rank) {
      if (!got.empty()) fail("gather_table(" + std::to_string(j) + ") returned data off its root");
      continue;
    }
    bool same = got.size() == e.tables[j].size();
    for (std::size_t x = 0; same && x < got.size(); ++x) same = close(got[x], e.tables[j][x]);
    if (!same) fail("gather_table(" + std::to_string(j) + ") differs from the model");
  }
  // The ids sent to other ranks, step by step.
  for (std::size_t t = 0; t < steps; ++t) {
    const std::size_t want = expected_ids_sent(plan, w.steps[t][rank], rank, dedup, frequent);
    if (res.stats.at(t).ids_sent != want) {
      fail("step " + std::to_string(t) + ": ids_sent " + std::to_string(res.stats[t].ids_sent) +
           ", expected " + std::to_string(want));
    }
  }
  return bad;
}

}  // namespace embedding_model
