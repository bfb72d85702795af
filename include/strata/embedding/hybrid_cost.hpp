#pragma once
//! \file
//! The cost model of hybrid tables: what the exchange sends for a batch with given frequent
//! sets (counted exactly as `EmbeddingExchange` counts it), what the replicas add to the
//! all-reduce, and the choice of the frequent sets that makes a step cheapest.

#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <limits>
#include <span>
#include <stdexcept>
#include <string>
#include <utility>
#include <vector>

#include "strata/comm/communicator.hpp"
#include "strata/embedding/batch.hpp"
#include "strata/embedding/frequency.hpp"
#include "strata/embedding/sharding.hpp"
#include "strata/error.hpp"
#include "strata/sim/cost.hpp"

namespace strata {

//! What one rank sends in one step's exchanges, as `ExchangeStats` counts it: 64-bit request
//! words, response and gradient elements, to other ranks; and the same as bytes over links inside
//! its node and across nodes.
//!
//! \code
//! strata::ExchangeBytes b{.request_words = 10, .response_elements = 40, .gradient_elements = 40};
//! assert(b.bytes(4) == 10 * 8 + 80 * 4);
//! \endcode
struct ExchangeBytes {
  double request_words = 0;
  double response_elements = 0;
  double gradient_elements = 0;
  double intra_bytes = 0;
  double inter_bytes = 0;

  [[nodiscard]] double bytes(std::size_t element_bytes) const noexcept {
    return request_words * 8 + (response_elements + gradient_elements) * double(element_bytes);
  }
  ExchangeBytes& operator+=(const ExchangeBytes& o) noexcept {
    request_words += o.request_words;
    response_elements += o.response_elements;
    gradient_elements += o.gradient_elements;
    intra_bytes += o.intra_bytes;
    inter_bytes += o.inter_bytes;
    return *this;
  }
};

//! The membership map of frequent sets: `slot[j][row]` is the row's slot in table j's replica,
//! or -1 (an empty map for a table without replica).
//!
//! \code
//! strata::FrequentSets f{{{}, {7, 2}}};
//! const std::vector<std::size_t> rows{5, 10};
//! const auto slots = strata::frequent_slots(f, rows);
//! assert(slots[1][7] == 0 && slots[1][2] == 1 && slots[1][3] == -1 && slots[0].empty());
//! \endcode
inline std::vector<std::vector<std::int64_t>> frequent_slots(const FrequentSets& sets,
                                                             std::span<const std::size_t> rows) {
  std::vector<std::vector<std::int64_t>> slot(rows.size());
  for (std::size_t j = 0; j < rows.size() && j < sets.rows.size(); ++j) {
    if (sets.rows[j].empty()) continue;
    slot[j].assign(rows[j], -1);
    for (std::size_t k = 0; k < sets.rows[j].size(); ++k) {
      const std::int64_t r = sets.rows[j][k];
      if (r < 0 || static_cast<std::size_t>(r) >= rows[j] || slot[j][std::size_t(r)] != -1) {
        throw std::invalid_argument("FrequentSets: table " + std::to_string(j) + " slot " +
                                    std::to_string(k) + ": row " + std::to_string(r) +
                                    " is outside the table's " + std::to_string(rows[j]) +
                                    " rows or repeated");
      }
      slot[j][std::size_t(r)] = static_cast<std::int64_t>(k);
    }
  }
  return slot;
}

//! Checks `sets` against `plan` for an exchange (`who` names it in messages): no more tables
//! than the plan, no rows for a table that is not hybrid, as many rows as a hybrid table's
//! placement names (when it names a count), rows inside the table and not repeated. Pads `sets`
//! to one entry per table and returns its membership map (`frequent_slots`). Throws
//! `std::invalid_argument` otherwise.
//!
//! \code
//! auto plan = strata::ShardingPlan::parse("0: 10x4 hybrid/2; 1: 5x4 row", 1);
//! strata::FrequentSets sets{{{4, 1}}};
//! const auto slots = strata::check_frequent_sets(plan, sets, "example");
//! assert(sets.rows.size() == 2 && slots[0][1] == 1 && slots[1].empty());
//! \endcode
inline std::vector<std::vector<std::int64_t>> check_frequent_sets(const ShardingPlan& plan,
                                                                  FrequentSets& sets,
                                                                  const std::string& who) {
  const std::size_t nt = plan.num_tables();
  if (sets.rows.size() > nt) {
    throw std::invalid_argument(who + ": frequent sets for " + std::to_string(sets.rows.size()) +
                                " tables, the plan has " + std::to_string(nt));
  }
  sets.rows.resize(nt);
  std::vector<std::size_t> rows(nt);
  for (std::size_t j = 0; j < nt; ++j) {
    rows[j] = plan.table(j).rows;
    const PlacementSpec& p = plan.table(j).placement;
    const std::size_t n = sets.count(j);
    if (!p.hybrid && n != 0) {
      throw std::invalid_argument(who + ": table " + std::to_string(j) + " is not hybrid but has " +
                                  std::to_string(n) + " frequent rows");
    }
    if (p.hybrid && p.frequent != auto_place && n != std::min(p.frequent, rows[j])) {
      throw std::invalid_argument(who + ": table " + std::to_string(j) + " replicates " +
                                  std::to_string(p.frequent) + " rows by its placement, " +
                                  std::to_string(n) + " frequent rows given");
    }
  }
  return frequent_slots(sets, rows);
}

namespace detail {

// The part of rank `me`'s exchange that table j's lookups cause, with `frequent(id)` telling
// which rows stay local; the per-shard words every request carries are added by the caller.
template <class IsFrequent>
ExchangeBytes table_exchange_bytes(const ShardingPlan& plan, std::size_t j,
                                   const SparseBatch& batch, std::size_t me, bool dedup,
                                   std::size_t element_bytes, const IsFrequent& frequent) {
  ExchangeBytes b;
  if (plan.replicated(j)) return b;
  const std::size_t node = plan.ranks_per_node();
  const std::size_t B = batch.samples, K = batch.hotness;
  std::vector<std::pair<std::size_t, std::int64_t>> keys;  // (shard, row) of remote lookups
  std::vector<std::pair<std::size_t, std::size_t>> pairs;  // (shard, sample), naive
  for (std::size_t c = 0; c < plan.column_blocks(j); ++c) {
    for (std::size_t s = 0; s < B; ++s) {
      for (std::size_t k = 0; k < K; ++k) {
        const std::int64_t id = batch.id(j, s, k);
        if (frequent(id)) continue;
        const std::size_t sh = plan.owner_index(j, static_cast<std::size_t>(id), c);
        if (plan.shards()[sh].rank == me) continue;
        keys.emplace_back(sh, id);
        pairs.emplace_back(sh, s);
      }
    }
  }
  const auto add = [&](std::size_t sh, double ids, double rows) {
    const Shard& shard = plan.shards()[sh];
    const double w = double(shard.width());
    b.request_words += ids;
    b.response_elements += rows * w;
    b.gradient_elements += rows * w;
    const double bytes = ids * 8 + 2 * rows * w * double(element_bytes);
    (shard.rank / node == me / node ? b.intra_bytes : b.inter_bytes) += bytes;
  };
  if (dedup) {
    std::sort(keys.begin(), keys.end());
    keys.erase(std::unique(keys.begin(), keys.end()), keys.end());
    for (const auto& [sh, id] : keys) add(sh, 1, 1);
  } else {
    for (const auto& [sh, id] : keys) add(sh, 1, 0);
    std::sort(pairs.begin(), pairs.end());
    pairs.erase(std::unique(pairs.begin(), pairs.end()), pairs.end());
    for (const auto& [sh, s] : pairs) add(sh, 0, 1);
  }
  return b;
}

// A batch the cost model reads must fit the plan: its shape, and every id inside its table.
inline void check_sample(const ShardingPlan& plan, const SparseBatch& batch, const char* who) {
  const std::size_t per = batch.samples * batch.hotness;
  if (batch.tables != plan.num_tables() || batch.ids.size() != batch.tables * per ||
      (per != 0 && batch.ids.size() / per != batch.tables)) {
    throw std::invalid_argument(
        std::string(who) + ": a batch of " + std::to_string(batch.ids.size()) + " ids for " +
        std::to_string(batch.tables) + " tables x " + std::to_string(batch.samples) +
        " samples x " + std::to_string(batch.hotness) + " lookups; the plan has " +
        std::to_string(plan.num_tables()) + " tables");
  }
  for (std::size_t j = 0; j < batch.tables; ++j) {
    for (std::size_t x = 0; x < per; ++x) {
      const std::int64_t id = batch.ids[j * per + x];
      if (id < 0 || static_cast<std::size_t>(id) >= plan.table(j).rows) {
        throw std::invalid_argument(std::string(who) + ": table " + std::to_string(j) +
                                    ", lookup " + std::to_string(x) + ": id " + std::to_string(id) +
                                    " is outside the table's " +
                                    std::to_string(plan.table(j).rows) + " rows");
      }
    }
  }
}

// The words every request to another rank carries whatever the ids: one count per shard with
// de-duplication; the batch size and one count per shard and sample without.
inline ExchangeBytes request_overhead(const ShardingPlan& plan, std::size_t me, std::size_t samples,
                                      bool dedup) {
  ExchangeBytes b;
  for (std::size_t p = 0; p < plan.world_size(); ++p) {
    if (p == me) continue;
    const double words =
        dedup ? double(plan.shards_on(p).size()) : 1.0 + double(plan.shards_on(p).size() * samples);
    b.request_words += words;
    (p / plan.ranks_per_node() == me / plan.ranks_per_node() ? b.intra_bytes : b.inter_bytes) +=
        8 * words;
  }
  return b;
}

}  // namespace detail

//! What rank `me`'s lookups in `batch` make the exchange move when the frequent rows of each
//! hybrid table (`slots`, as `frequent_slots` makes them) stay local: the requests and gradients
//! it sends, exactly as its `ExchangeStats` counts them, and the responses to its requests, which
//! the owners send (an owner's `ExchangeStats` counts those). Summed over the ranks, every figure
//! is the world's `ExchangeStats` total, so the mean over ranks is the mean `bytes_sent`. Link
//! bytes split the same way by the node of the owner. Throws `std::invalid_argument` for a batch
//! that does not fit the plan or an id outside its table.
//!
//! \code
//! auto plan = strata::ShardingPlan::parse("0: 8x2 hybrid:row", 2);
//! const std::vector<std::int64_t> ids{6, 6, 1};  // rank 0: rows 6 (rank 1's) twice, 1 (its own)
//! const std::vector<std::vector<std::int64_t>> none(1);
//! const auto b = strata::predict_exchange(plan, none, {ids, 1, 3, 1}, 0, true, 4);
//! assert(b.request_words == 1 + 1 && b.response_elements == 2);  // a count and one id; one row
//! \endcode
inline ExchangeBytes predict_exchange(const ShardingPlan& plan,
                                      const std::vector<std::vector<std::int64_t>>& slots,
                                      const SparseBatch& batch, std::size_t me, bool dedup,
                                      std::size_t element_bytes) {
  detail::check_sample(plan, batch, "predict_exchange");
  ExchangeBytes total = detail::request_overhead(plan, me, batch.samples, dedup);
  for (std::size_t j = 0; j < plan.num_tables(); ++j) {
    const auto& slot = j < slots.size() ? slots[j] : std::vector<std::int64_t>{};
    total += detail::table_exchange_bytes(
        plan, j, batch, me, dedup, element_bytes,
        [&](std::int64_t id) { return !slot.empty() && slot[static_cast<std::size_t>(id)] >= 0; });
  }
  return total;
}

//! What `choose_frequent` weighs: the links (from the straggler simulator's `sim::CostModel`:
//! bandwidth and latency inside a node and across nodes, and the ranks per node of the plan),
//! the bytes of an element, the exchange's de-duplication, and a cap on the replicated bytes per
//! rank (every hybrid table's replica together).
//!
//! \code
//! strata::HybridCostModel m;
//! m.links = strata::sim::CostModel::t4_resnet18();
//! m.max_replica_bytes = 64e6;
//! assert(m.element_bytes == 4 && m.dedup);
//! \endcode
struct HybridCostModel {
  sim::CostModel links = sim::CostModel::t4_resnet18();
  std::size_t element_bytes = 4;
  bool dedup = true;
  double max_replica_bytes = std::numeric_limits<double>::infinity();
};

//! The chosen frequent sets, and what the cost model predicts for a step with them, per rank
//! (the mean over ranks of the sample): the exchange's bytes (as `ExchangeStats::bytes_sent`
//! counts them), the replicas' all-reduce elements (gradients and one count per row, as
//! `ExchangeStats::allreduce_elements`) and the seconds of both.
//!
//! \code
//! strata::HybridChoice c;
//! c.frequent = {0, 128};
//! assert(c.frequent[1] == 128);
//! \endcode
struct HybridChoice {
  std::vector<std::size_t> frequent{};
  FrequentSets sets{};
  ExchangeBytes exchange{};
  double allreduce_elements = 0;
  double predicted_bytes = 0;
  double predicted_seconds = 0;

  //! One line per hybrid table, then the totals.
  [[nodiscard]] std::string describe(const ShardingPlan& plan) const {
    std::string s;
    for (std::size_t j = 0; j < plan.num_tables(); ++j) {
      if (!plan.hybrid(j)) continue;
      s += "table " + std::to_string(j) + ": " + std::to_string(frequent[j]) + " of " +
           std::to_string(plan.table(j).rows) + " rows replicated\n";
    }
    s += "predicted per rank and step: " + std::to_string(static_cast<long long>(predicted_bytes)) +
         " bytes (exchange " +
         std::to_string(static_cast<long long>(predicted_bytes - allreduce_bytes_)) +
         ", all-reduce " + std::to_string(static_cast<long long>(allreduce_bytes_)) + "), " +
         std::to_string(predicted_seconds * 1e3) + " ms\n";
    return s;
  }

  double allreduce_bytes_ = 0;
};

//! Collective: chooses each hybrid table's frequent rows from `counts` (reduced over the world)
//! and this rank's `sample` of batches. A table whose placement names its count keeps it (and
//! uses up the replica cap for the tables after it); for the others the candidates are 0, every
//! power of two below the row count, and all rows, within the replica cap (tables in order, each
//! taking what the ones before left). A sample batch that does not fit the plan is a
//! `strata::usage_error` on every rank, naming the rank. For each candidate the
//! exchange bytes of the table's lookups are counted exactly on the sample (as
//! `predict_exchange`), averaged over the ranks (one all-reduce), and priced with the links:
//! `intra / intra bandwidth + inter / inter bandwidth` for the exchange, a ring all-reduce of the
//! replica's gradients and counts (`2(W-1)/W · N·(D+1)·e` bytes over the slowest link the world
//! spans) for the replica. The cheapest candidate wins (ties: fewer rows). The frequent rows are
//! the most frequent of `counts` (`FrequencyCounts::ranked`).
template <communicator Comm>
HybridChoice choose_frequent(Comm& comm, const ShardingPlan& plan, const FrequencyCounts& counts,
                             std::span<const SparseBatch> sample, const HybridCostModel& model) {
  model.links.validate();
  const std::size_t me = static_cast<std::size_t>(comm.rank());
  // Every rank's sample is checked, and a bad one reported on every rank, before any work.
  std::string problem;
  for (const SparseBatch& batch : sample) {
    try {
      detail::check_sample(plan, batch, "choose_frequent");
    } catch (const std::invalid_argument& e) {
      problem = e.what();
      break;
    }
  }
  std::vector<std::int64_t> bad{problem.empty() ? std::int64_t(0) : std::int64_t(me) + 1};
  comm.all_reduce(std::span<std::int64_t>(bad), ReduceOp::max);
  if (bad[0] != 0) {
    const std::string who = "rank " + std::to_string(bad[0] - 1);
    throw usage_error(
        "choose_frequent", static_cast<int>(me),
        problem.empty() ? who + ": a sample batch does not fit the plan" : who + ": " + problem);
  }
  const std::size_t world = plan.world_size(), e = model.element_bytes;
  const double steps = double(std::max<std::size_t>(sample.size(), 1));
  const bool spans_nodes = world > plan.ranks_per_node();
  const sim::Link& ring_link = spans_nodes ? model.links.inter_node : model.links.intra_node;
  const double ring = world > 1 ? 2.0 * double(world - 1) / double(world) : 0.0;

  // Candidates per hybrid table, and the bytes of each on this rank's sample.
  std::vector<std::vector<std::size_t>> candidates(plan.num_tables());
  std::vector<double> words;  // (intra, inter, request, response, gradient) per candidate
  for (std::size_t j = 0; j < plan.num_tables(); ++j) {
    if (!plan.hybrid(j)) continue;
    const std::size_t rows = plan.table(j).rows;
    const std::size_t fixed = plan.table(j).placement.frequent;
    auto& c = candidates[j];
    if (fixed != auto_place) {
      c.push_back(std::min(fixed, rows));
    } else {
      c.push_back(0);
      for (std::size_t n = 1; n < rows; n *= 2) c.push_back(n);
      c.push_back(rows);
    }
    std::vector<std::int64_t> rank_of(rows);
    const auto& ranked = counts.ranked(j);
    for (std::size_t k = 0; k < ranked.size(); ++k)
      rank_of[std::size_t(ranked[k])] = std::int64_t(k);
    for (std::size_t n : c) {
      ExchangeBytes b;
      for (const SparseBatch& batch : sample) {
        b += detail::table_exchange_bytes(plan, j, batch, me, model.dedup, e, [&](std::int64_t id) {
          return rank_of[std::size_t(id)] < std::int64_t(n);
        });
      }
      words.insert(words.end(), {b.intra_bytes, b.inter_bytes, b.request_words, b.response_elements,
                                 b.gradient_elements});
    }
  }
  comm.all_reduce(std::span<double>(words), ReduceOp::sum);
  for (double& w : words) w /= steps * double(world);

  HybridChoice choice;
  choice.frequent.assign(plan.num_tables(), 0);
  choice.sets.rows.assign(plan.num_tables(), {});
  double budget = model.max_replica_bytes;
  std::size_t at = 0;
  for (std::size_t j = 0; j < plan.num_tables(); ++j) {
    if (!plan.hybrid(j)) continue;
    const double width = double(plan.table(j).width);
    double best = std::numeric_limits<double>::infinity();
    std::size_t best_n = 0;
    for (std::size_t n : candidates[j]) {
      const double* w = &words[at];
      at += 5;
      const double replica = double(n) * width * double(e);
      // A count the placement names is kept whatever the cap; it still uses the cap up.
      const bool fixed = plan.table(j).placement.frequent != auto_place;
      if (replica > budget && n != 0 && !fixed) continue;
      const double seconds =
          w[0] / model.links.intra_node.bandwidth_bytes_per_s +
          w[1] / model.links.inter_node.bandwidth_bytes_per_s +
          ring * double(n) * (width + 1) * double(e) / ring_link.bandwidth_bytes_per_s;
      if (seconds < best) best = seconds, best_n = n;
    }
    budget -= double(best_n) * width * double(e);
    choice.frequent[j] = best_n;
    choice.sets.rows[j] = counts.frequent(j, best_n);
  }

  // The prediction for the chosen sets, over every table: the same counting, averaged.
  std::vector<std::size_t> rows(plan.num_tables());
  for (std::size_t j = 0; j < rows.size(); ++j) rows[j] = plan.table(j).rows;
  const auto slots = frequent_slots(choice.sets, rows);
  ExchangeBytes mine;
  for (const SparseBatch& batch : sample)
    mine += predict_exchange(plan, slots, batch, me, model.dedup, e);
  std::vector<double> v{mine.request_words, mine.response_elements, mine.gradient_elements,
                        mine.intra_bytes, mine.inter_bytes};
  comm.all_reduce(std::span<double>(v), ReduceOp::sum);
  for (double& x : v) x /= steps * double(world);
  choice.exchange = {v[0], v[1], v[2], v[3], v[4]};
  for (std::size_t j = 0; j < plan.num_tables(); ++j) {
    const double width = double(plan.table(j).width);
    if (plan.replicated(j)) choice.allreduce_elements += double(plan.table(j).rows) * (width + 1);
    choice.allreduce_elements += double(choice.frequent[j]) * (width + 1);
  }
  choice.allreduce_bytes_ = choice.allreduce_elements * double(e);
  choice.predicted_bytes = choice.exchange.bytes(e) + choice.allreduce_bytes_;
  choice.predicted_seconds =
      choice.exchange.intra_bytes / model.links.intra_node.bandwidth_bytes_per_s +
      choice.exchange.inter_bytes / model.links.inter_node.bandwidth_bytes_per_s +
      ring * choice.allreduce_bytes_ / ring_link.bandwidth_bytes_per_s;
  return choice;
}

}  // namespace strata
