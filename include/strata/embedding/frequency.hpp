#pragma once
//! \file
//! How often each row of the hybrid tables is looked up, over a sample of batches and over the
//! whole world, and the frequent rows that follow from it.

#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <numeric>
#include <span>
#include <stdexcept>
#include <string>
#include <vector>

#include "strata/comm/communicator.hpp"
#include "strata/embedding/batch.hpp"
#include "strata/embedding/sharding.hpp"

namespace strata {

//! The frequent rows of each table, most frequent first: `rows[j][k]` is the row held in slot k
//! of table j's replica. Empty for tables that are not hybrid (and for a hybrid table that
//! replicates nothing). Every rank must hold the same sets.
//!
//! \code
//! strata::FrequentSets f;
//! f.rows = {{}, {7, 2}};  // table 1 replicates rows 7 and 2
//! assert(f.count(1) == 2 && f.count(0) == 0 && f.count(5) == 0);
//! \endcode
struct FrequentSets {
  std::vector<std::vector<std::int64_t>> rows{};

  [[nodiscard]] std::size_t count(std::size_t j) const noexcept {
    return j < rows.size() ? rows[j].size() : 0;
  }
};

//! Exact counts of the lookups of every hybrid table of a plan, from the batches given to `add`
//! (this rank's), then summed over the world by `reduce` (collective). `ranked(j)` orders table
//! j's rows by count, the most frequent first (ties: the smaller row first), so that the frequent
//! set of any size is a prefix of it, the same on every rank.
//!
//! \code
//! auto plan = strata::ShardingPlan::parse("0: 10x4 hybrid", 1);
//! strata::FrequencyCounts counts(plan);
//! const std::vector<std::int64_t> ids{3, 3, 5, 3};
//! counts.add({ids, 1, 4, 1});
//! assert(counts.count(0, 3) == 3 && counts.ranked(0)[0] == 3 && counts.ranked(0)[1] == 5);
//! assert(counts.frequent(0, 2) == (std::vector<std::int64_t>{3, 5}));
//! \endcode
class FrequencyCounts {
 public:
  explicit FrequencyCounts(const ShardingPlan& plan) : plan_(&plan) {
    counts_.resize(plan.num_tables());
    for (std::size_t j = 0; j < plan.num_tables(); ++j) {
      if (plan.hybrid(j)) counts_[j].assign(plan.table(j).rows, 0);
    }
  }

  //! Counts one batch's lookups of the hybrid tables. Throws `std::invalid_argument` for a batch
  //! that does not fit the plan, or an id outside its table, before counting anything.
  void add(const SparseBatch& batch) {
    if (batch.tables != plan_->num_tables() ||
        batch.ids.size() != batch.tables * batch.samples * batch.hotness) {
      throw std::invalid_argument("FrequencyCounts::add: the batch holds " +
                                  std::to_string(batch.ids.size()) + " ids for " +
                                  std::to_string(batch.tables) + " tables; the plan has " +
                                  std::to_string(plan_->num_tables()));
    }
    for (std::size_t j = 0; j < batch.tables; ++j) {
      for (std::size_t x = 0; x < batch.samples * batch.hotness; ++x) {
        const std::int64_t id = batch.ids[j * batch.samples * batch.hotness + x];
        if (id < 0 || static_cast<std::size_t>(id) >= plan_->table(j).rows) {
          throw std::invalid_argument("FrequencyCounts::add: table " + std::to_string(j) +
                                      ", lookup " + std::to_string(x) + ": id " +
                                      std::to_string(id) + " is outside the table's " +
                                      std::to_string(plan_->table(j).rows) + " rows");
        }
      }
    }
    for (std::size_t j = 0; j < batch.tables; ++j) {
      if (counts_[j].empty()) continue;
      for (std::size_t x = 0; x < batch.samples * batch.hotness; ++x)
        ++counts_[j][static_cast<std::size_t>(batch.ids[j * batch.samples * batch.hotness + x])];
    }
    ranked_.clear();
  }

  //! Adds counts computed elsewhere (on a device, by `count_lookups_on_device`): row `rows[i]`
  //! of table j was looked up `times[i]` more times. Throws `std::invalid_argument` before
  //! counting anything if table j is not hybrid, the spans differ in size, or a row is outside
  //! the table.
  void add_counts(std::size_t j, std::span<const std::int64_t> rows,
                  std::span<const std::int64_t> times) {
    if (j >= counts_.size() || counts_[j].empty() || rows.size() != times.size()) {
      throw std::invalid_argument("FrequencyCounts::add_counts: table " + std::to_string(j) +
                                  " is not a hybrid table of the plan, or " +
                                  std::to_string(rows.size()) + " rows come with " +
                                  std::to_string(times.size()) + " counts");
    }
    for (std::int64_t r : rows) {
      if (r < 0 || static_cast<std::size_t>(r) >= counts_[j].size()) {
        throw std::invalid_argument("FrequencyCounts::add_counts: table " + std::to_string(j) +
                                    ": id " + std::to_string(r) + " is outside the table's " +
                                    std::to_string(counts_[j].size()) + " rows");
      }
    }
    for (std::size_t i = 0; i < rows.size(); ++i) counts_[j][std::size_t(rows[i])] += times[i];
    ranked_.clear();
  }

  //! Collective: every rank's counts become the sum over the world (one all-reduce).
  template <communicator Comm>
  void reduce(Comm& comm) {
    std::vector<std::int64_t> all;
    for (const auto& c : counts_) all.insert(all.end(), c.begin(), c.end());
    comm.all_reduce(std::span<std::int64_t>(all), ReduceOp::sum);
    std::size_t at = 0;
    for (auto& c : counts_) {
      for (auto& x : c) x = all[at++];
    }
    ranked_.clear();
  }

  [[nodiscard]] const ShardingPlan& plan() const noexcept { return *plan_; }
  [[nodiscard]] std::int64_t count(std::size_t j, std::size_t row) const {
    return counts_.at(j).at(row);
  }
  //! Table j's rows, most frequent first (empty unless the table is hybrid).
  [[nodiscard]] const std::vector<std::int64_t>& ranked(std::size_t j) const {
    if (ranked_.empty()) {
      ranked_.resize(counts_.size());
      for (std::size_t t = 0; t < counts_.size(); ++t) {
        auto& r = ranked_[t];
        r.resize(counts_[t].size());
        std::iota(r.begin(), r.end(), std::int64_t(0));
        const auto& c = counts_[t];
        std::stable_sort(r.begin(), r.end(), [&](std::int64_t a, std::int64_t b) {
          return c[static_cast<std::size_t>(a)] > c[static_cast<std::size_t>(b)];
        });
      }
    }
    return ranked_.at(j);
  }
  //! The `n` most frequent rows of table j (at most all of them).
  [[nodiscard]] std::vector<std::int64_t> frequent(std::size_t j, std::size_t n) const {
    const auto& r = ranked(j);
    return {r.begin(), r.begin() + static_cast<std::ptrdiff_t>(std::min(n, r.size()))};
  }

 private:
  const ShardingPlan* plan_;
  std::vector<std::vector<std::int64_t>> counts_;
  mutable std::vector<std::vector<std::int64_t>> ranked_;
};

}  // namespace strata
