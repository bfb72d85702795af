#pragma once
//! \file
//! `ShardingPlan`: the run-time embedding plan, every table resolved into shards on ranks.

#include <algorithm>
#include <cstddef>
#include <limits>
#include <map>
#include <numeric>
#include <span>
#include <stdexcept>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "strata/embedding/balancer.hpp"
#include "strata/embedding/detail/plan_rules.hpp"
#include "strata/embedding/placement.hpp"
#include "strata/embedding/table.hpp"

namespace strata {

//! A block of one table on one rank: rows `[row_begin, row_end)` and columns
//! `[col_begin, col_end)`. A table-wise table is one shard, a column-wise one `S` shards of all
//! rows, a row-wise one a shard per rank of its group (possibly without rows). Data-parallel
//! tables have no shards: every rank holds a replica.
//!
//! \code
//! strata::Shard s{.table = 2, .rank = 5, .row_begin = 0, .row_end = 100, .col_begin = 8, .col_end = 16};
//! assert(s.rows() == 100 && s.width() == 8 && s.holds(99) && !s.holds(100));
//! \endcode
struct Shard {
  std::size_t table = 0;
  std::size_t rank = 0;
  std::size_t row_begin = 0;
  std::size_t row_end = 0;
  std::size_t col_begin = 0;
  std::size_t col_end = 0;

  [[nodiscard]] constexpr std::size_t rows() const noexcept { return row_end - row_begin; }
  [[nodiscard]] constexpr std::size_t width() const noexcept { return col_end - col_begin; }
  [[nodiscard]] constexpr bool holds(std::size_t row) const noexcept {
    return row >= row_begin && row < row_end;
  }
};

//! The first row of block `q` of `n` contiguous blocks of `rows` rows: the first `rows % n`
//! blocks hold one row more.
//!
//! \code
//! static_assert(strata::row_block_begin(10, 4, 1) == 3 && strata::row_block_begin(10, 4, 4) == 10);
//! static_assert(strata::row_block_begin(2, 4, 3) == 2);  // fewer rows than blocks
//! \endcode
constexpr std::size_t row_block_begin(std::size_t rows, std::size_t n, std::size_t q) noexcept {
  return q * (rows / n) + std::min(q, rows % n);
}

//! An embedding plan resolved for one world: every table's placement fixed (the balancer chooses
//! where a placement names no rank or node), every shard listed in table order, and the shards
//! of each rank in that order. The same object on every rank, so that every rank knows who owns
//! which row. Built from `TableSpec`s (`make`), from text (`parse`) or from a compile-time
//! `EmbeddingPlan`; all three apply the same rules with the same messages.
//!
//! \code
//! auto plan = strata::ShardingPlan::parse("0: 1000x16 table; 1: 500x16 column:2; 2: 64x8 row", 4);
//! assert(plan.num_tables() == 3 && plan.shards_of(1).size() == 2 && plan.shards_of(2).size() == 4);
//! assert(plan.owner(2, 63).rank == 3);
//! \endcode
class ShardingPlan {
 public:
  ShardingPlan() = default;

  //! Checks the rules (docs/embeddings.md, "Rules"), then places every table that names no rank
  //! or node greedily: the largest share of `model`'s load first, each on the least loaded rank
  //! (node for table-row-wise tables), column shards of one table on distinct ranks, ties to the
  //! lowest rank. Throws `std::invalid_argument` naming the table and the rule.
  static ShardingPlan make(std::vector<TableSpec> tables, std::size_t world_size,
                           std::size_t ranks_per_node = 0, const LoadModel& model = {}) {
    if (ranks_per_node == 0) ranks_per_node = world_size;
    if (const auto r = detail::check_plan(tables, world_size, ranks_per_node); !r.ok()) {
      throw std::invalid_argument(std::string(r.message.view()));
    }
    model.check(tables.size());
    ShardingPlan p;
    p.world_ = world_size;
    p.node_ = ranks_per_node;
    p.tables_ = std::move(tables);
    p.place(model);
    return p;
  }

  //! Reads one entry per table, separated by `;` or new lines: `INDEX: ROWSxWIDTH PLACEMENT`,
  //! PLACEMENT as `parse_placement` reads it (`table@3`, `column:2`, `row`, `table-row@1`, `dp`).
  //! Every table index from 0 to the largest must appear exactly once. Errors are one line:
  //! `ShardingPlan: entry 2 ("...")`: the rule.
  static ShardingPlan parse(std::string_view text, std::size_t world_size,
                            std::size_t ranks_per_node = 0, const LoadModel& model = {}) {
    // By index, so that a huge index sizes nothing; each with the entry that placed it.
    std::map<std::size_t, std::pair<std::size_t, TableSpec>> placed;
    std::size_t entry = 0;
    std::size_t pos = 0;
    while (pos <= text.size()) {
      std::size_t end = text.find_first_of(";\n", pos);
      if (end == std::string_view::npos) end = text.size();
      const std::string_view raw = trim(text.substr(pos, end - pos));
      pos = end + 1;
      if (raw.empty()) continue;
      const auto fail = [&](const std::string& why) {
        throw std::invalid_argument("ShardingPlan: entry " + std::to_string(entry) + " (\"" +
                                    std::string(raw) + "\"): " + why);
      };
      const auto colon = raw.find(':');
      if (colon == std::string_view::npos) fail("expected INDEX: ROWSxWIDTH PLACEMENT");
      const std::size_t j = whole(trim(raw.substr(0, colon)), "the table index", fail);
      std::string_view rest = trim(raw.substr(colon + 1));
      const auto space = rest.find_first_of(" \t");
      if (space == std::string_view::npos) fail("expected ROWSxWIDTH and a placement");
      const std::string_view shape = rest.substr(0, space);
      const auto x = shape.find('x');
      if (x == std::string_view::npos) fail("the shape must read ROWSxWIDTH");
      TableSpec t;
      t.rows = whole(shape.substr(0, x), "the row count", fail);
      t.width = whole(shape.substr(x + 1), "the width", fail);
      try {
        t.placement = parse_placement(trim(rest.substr(space + 1)));
      } catch (const std::invalid_argument& e) {
        fail(e.what());
      }
      if (const auto it = placed.find(j); it != placed.end()) {
        fail("table " + std::to_string(j) + " is placed twice (first by entry " +
             std::to_string(it->second.first) + ")");
      }
      placed.emplace(j, std::pair{entry, t});
      ++entry;
    }
    std::vector<TableSpec> specs;
    for (const auto& [j, e] : placed) {
      if (j != specs.size()) {
        throw std::invalid_argument("ShardingPlan: table " + std::to_string(specs.size()) +
                                    " is placed nowhere (entries name tables 0.." +
                                    std::to_string(placed.rbegin()->first) + ")");
      }
      specs.push_back(e.second);
    }
    return make(std::move(specs), world_size, ranks_per_node, model);
  }

  [[nodiscard]] std::size_t world_size() const noexcept { return world_; }
  [[nodiscard]] std::size_t ranks_per_node() const noexcept { return node_; }
  [[nodiscard]] std::size_t num_tables() const noexcept { return tables_.size(); }
  //! Table j as placed: `where` is filled in for table-wise, column-wise and table-row tables.
  //! Every accessor that takes a table or a rank throws `std::invalid_argument` for one that
  //! does not exist.
  [[nodiscard]] const TableSpec& table(std::size_t j) const { return tables_[check_table(j)]; }
  [[nodiscard]] std::span<const TableSpec> tables() const noexcept { return tables_; }
  [[nodiscard]] bool replicated(std::size_t j) const {
    return table(j).placement.kind == Placement::data_parallel;
  }
  //! True when table j replicates its frequent rows (`Hybrid`).
  [[nodiscard]] bool hybrid(std::size_t j) const { return table(j).placement.hybrid; }

  //! Every shard, in table order, each table's shards by column block, then by row block.
  [[nodiscard]] std::span<const Shard> shards() const noexcept { return shards_; }
  //! Table j's shards (none for a data-parallel table).
  [[nodiscard]] std::span<const Shard> shards_of(std::size_t j) const {
    check_table(j);
    return std::span<const Shard>(shards_).subspan(first_shard_[j],
                                                   first_shard_[j + 1] - first_shard_[j]);
  }
  //! The global indices of the shards on `rank`, in the order of `shards()`.
  [[nodiscard]] std::span<const std::size_t> shards_on(std::size_t rank) const {
    if (rank >= world_) {
      throw std::invalid_argument("ShardingPlan::shards_on: rank " + std::to_string(rank) +
                                  " is outside the world of " + std::to_string(world_));
    }
    return on_rank_[rank];
  }
  //! The index in `shards()` of table j's first shard.
  [[nodiscard]] std::size_t first_shard(std::size_t j) const {
    return first_shard_[check_table(j)];
  }

  //! The shard of table j's column block `column_block` that holds `row` (row-wise tables: the
  //! row block; others: the only one). Not for data-parallel tables.
  [[nodiscard]] const Shard& owner(std::size_t j, std::size_t row,
                                   std::size_t column_block = 0) const {
    return shards_[owner_index(j, row, column_block)];
  }
  //! The global index of `owner(j, row, column_block)`.
  [[nodiscard]] std::size_t owner_index(std::size_t j, std::size_t row,
                                        std::size_t column_block = 0) const {
    const TableSpec& t = tables_[check_table(j)];
    if (row >= t.rows || column_block >= column_blocks(j)) {
      throw std::invalid_argument(
          "ShardingPlan::owner: table " + std::to_string(j) + " has " + std::to_string(t.rows) +
          " rows and " + std::to_string(column_blocks(j)) + " column blocks; row " +
          std::to_string(row) + ", block " + std::to_string(column_block) + " asked");
    }
    const std::size_t first = first_shard_[j];
    switch (t.placement.kind) {
      case Placement::table_wise: return first;
      case Placement::column_wise: return first + column_block;
      case Placement::row_wise:
      case Placement::table_row_wise: {
        const std::size_t n = first_shard_[j + 1] - first;
        // Inverse of row_block_begin: the blocks of the first R % n ranks are one row longer.
        const std::size_t q = t.rows / n, extra = t.rows % n;
        const std::size_t long_rows = extra * (q + 1);
        return first + (row < long_rows ? row / (q + 1) : extra + (row - long_rows) / q);
      }
      case Placement::data_parallel: break;
    }
    throw std::invalid_argument("ShardingPlan::owner: table " + std::to_string(j) +
                                " is data-parallel: every rank holds it");
  }
  //! How many column blocks table j's rows are split into (1 unless column-wise).
  [[nodiscard]] std::size_t column_blocks(std::size_t j) const {
    return tables_[check_table(j)].placement.kind == Placement::column_wise
               ? tables_[j].placement.shards
               : 1;
  }

  //! The balance of the plan under the load model it was made with.
  [[nodiscard]] const BalanceReport& balance() const noexcept { return report_; }

  //! The plan in the text `parse` reads, every placement resolved (`@rank`, `@node`).
  [[nodiscard]] std::string describe() const {
    std::string s;
    for (std::size_t j = 0; j < tables_.size(); ++j) {
      if (j) s += "; ";
      s += std::to_string(j) + ": " + std::to_string(tables_[j].rows) + "x" +
           std::to_string(tables_[j].width) + " " + to_string(tables_[j].placement);
    }
    return s;
  }

 private:
  std::size_t check_table(std::size_t j) const {
    if (j >= tables_.size()) {
      throw std::invalid_argument("ShardingPlan: table " + std::to_string(j) +
                                  " does not exist; the plan has " +
                                  std::to_string(tables_.size()) + " tables");
    }
    return j;
  }
  static std::string_view trim(std::string_view s) {
    while (!s.empty() && (s.front() == ' ' || s.front() == '\t' || s.front() == '\r'))
      s.remove_prefix(1);
    while (!s.empty() && (s.back() == ' ' || s.back() == '\t' || s.back() == '\r'))
      s.remove_suffix(1);
    return s;
  }
  template <class Fail>
  static std::size_t whole(std::string_view digits, const char* what, const Fail& fail) {
    if (digits.empty() || digits.size() > 15) fail(std::string(what) + " needs 1 to 15 digits");
    std::size_t v = 0;
    for (char c : digits) {
      if (c < '0' || c > '9') fail(std::string(what) + " is not a whole number");
      v = v * 10 + static_cast<std::size_t>(c - '0');
    }
    return v;
  }

  void place(const LoadModel& model) {
    const std::size_t n_tables = tables_.size();
    double total_bytes = 0, total_traffic = 0;
    for (std::size_t j = 0; j < n_tables; ++j) {
      const TableSpec& t = tables_[j];
      const double copies = t.placement.kind == Placement::data_parallel ? double(world_) : 1.0;
      total_bytes += copies * double(t.rows) * double(t.width) * double(model.element_bytes);
      total_traffic += model.lookups_of(j) * double(t.width);
    }
    report_.memory_bytes.assign(world_, 0.0);
    report_.traffic.assign(world_, 0.0);
    report_.load.assign(world_, 0.0);
    const auto share = [&](double bytes, double traffic) {
      return (total_bytes > 0 ? model.memory_weight * bytes / total_bytes : 0.0) +
             (total_traffic > 0 ? (1 - model.memory_weight) * traffic / total_traffic : 0.0);
    };
    const auto add = [&](std::size_t rank, double bytes, double traffic) {
      report_.memory_bytes[rank] += bytes;
      report_.traffic[rank] += traffic;
      report_.load[rank] += share(bytes, traffic);
    };
    const auto block_load = [&](std::size_t j, std::size_t rows, std::size_t width) {
      const TableSpec& t = tables_[j];
      return std::pair{double(rows) * double(width) * double(model.element_bytes),
                       model.lookups_of(j) * double(width) * double(rows) / double(t.rows)};
    };

    // Fixed loads first: row-wise and data-parallel tables, and everything placed by hand.
    for (std::size_t j = 0; j < n_tables; ++j) {
      const TableSpec& t = tables_[j];
      const PlacementSpec& p = t.placement;
      if (p.kind == Placement::data_parallel) {
        for (std::size_t r = 0; r < world_; ++r) {
          add(r, double(t.rows) * double(t.width) * double(model.element_bytes),
              model.lookups_of(j) * double(t.width) / double(world_));
        }
      } else if (p.kind == Placement::row_wise ||
                 (p.kind == Placement::table_row_wise && p.where != auto_place)) {
        const std::size_t first = p.kind == Placement::row_wise ? 0 : p.where * node_;
        const std::size_t n = p.kind == Placement::row_wise ? world_ : node_;
        for (std::size_t q = 0; q < n; ++q) {
          const auto [b, tr] = block_load(
              j, row_block_begin(t.rows, n, q + 1) - row_block_begin(t.rows, n, q), t.width);
          add(first + q, b, tr);
        }
      } else if (p.where != auto_place) {
        const std::size_t w = t.width / p.shards;
        for (std::size_t c = 0; c < p.shards; ++c) {
          const auto [b, tr] = block_load(j, t.rows, w);
          add(p.where + c, b, tr);
        }
      }
    }
    // Then the tables the balancer places, the largest share first (ties: lower table index).
    std::vector<std::size_t> order;
    for (std::size_t j = 0; j < n_tables; ++j) {
      const PlacementSpec& p = tables_[j].placement;
      if (p.where == auto_place && p.kind != Placement::row_wise &&
          p.kind != Placement::data_parallel) {
        order.push_back(j);
      }
    }
    const auto table_share = [&](std::size_t j) {
      const auto [b, tr] = block_load(j, tables_[j].rows, tables_[j].width);
      return share(b, tr);
    };
    std::stable_sort(order.begin(), order.end(),
                     [&](std::size_t a, std::size_t b) { return table_share(a) > table_share(b); });
    for (std::size_t j : order) {
      TableSpec& t = tables_[j];
      PlacementSpec& p = t.placement;
      if (p.kind == Placement::table_row_wise) {
        std::size_t best = 0;
        double best_load = std::numeric_limits<double>::infinity();
        for (std::size_t node = 0; node < world_ / node_; ++node) {
          double l = 0;
          for (std::size_t q = 0; q < node_; ++q) l += report_.load[node * node_ + q];
          if (l < best_load) best_load = l, best = node;
        }
        p.where = best;
        for (std::size_t q = 0; q < node_; ++q) {
          const auto [b, tr] = block_load(
              j, row_block_begin(t.rows, node_, q + 1) - row_block_begin(t.rows, node_, q),
              t.width);
          add(best * node_ + q, b, tr);
        }
        continue;
      }
      // Table-wise: one block; column-wise: S blocks that must land on S distinct consecutive
      // ranks (so the plan stays expressible as `column:S@first`): the window of S ranks whose
      // most loaded member is least loaded.
      const std::size_t s = p.shards;
      std::size_t best = 0;
      double best_load = std::numeric_limits<double>::infinity();
      for (std::size_t first = 0; first + s <= world_; ++first) {
        double l = 0;
        for (std::size_t c = 0; c < s; ++c) l = std::max(l, report_.load[first + c]);
        if (l < best_load) best_load = l, best = first;
      }
      p.where = best;
      for (std::size_t c = 0; c < s; ++c) {
        const auto [b, tr] = block_load(j, t.rows, t.width / s);
        add(best + c, b, tr);
      }
    }
    build_shards();
  }

  void build_shards() {
    shards_.clear();
    first_shard_.assign(1, 0);
    for (std::size_t j = 0; j < tables_.size(); ++j) {
      const TableSpec& t = tables_[j];
      const PlacementSpec& p = t.placement;
      switch (p.kind) {
        case Placement::table_wise: shards_.push_back({j, p.where, 0, t.rows, 0, t.width}); break;
        case Placement::column_wise: {
          const std::size_t w = t.width / p.shards;
          for (std::size_t c = 0; c < p.shards; ++c)
            shards_.push_back({j, p.where + c, 0, t.rows, c * w, (c + 1) * w});
          break;
        }
        case Placement::row_wise:
        case Placement::table_row_wise: {
          const bool row = p.kind == Placement::row_wise;
          const std::size_t n = row ? world_ : node_;
          const std::size_t first = row ? 0 : p.where * node_;
          for (std::size_t q = 0; q < n; ++q) {
            shards_.push_back({j, first + q, row_block_begin(t.rows, n, q),
                               row_block_begin(t.rows, n, q + 1), 0, t.width});
          }
          break;
        }
        case Placement::data_parallel: break;
      }
      first_shard_.push_back(shards_.size());
    }
    on_rank_.assign(world_, {});
    for (std::size_t i = 0; i < shards_.size(); ++i) on_rank_[shards_[i].rank].push_back(i);
  }

  std::size_t world_ = 0;
  std::size_t node_ = 0;
  std::vector<TableSpec> tables_;
  std::vector<Shard> shards_;
  std::vector<std::size_t> first_shard_{0};
  std::vector<std::vector<std::size_t>> on_rank_;
  BalanceReport report_;
};

}  // namespace strata
