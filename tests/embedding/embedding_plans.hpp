// Random embedding plans, and the blocks of a table recomputed from its resolved placement by the
// placement rules written out again, for the plan and exchange suites.
#pragma once

#include <strata/embedding/sharding.hpp>

#include <algorithm>
#include <cstddef>
#include <random>
#include <vector>

namespace embedding_model {

// A random plan's tables for `world` ranks on nodes of `ranks_per_node`: each of the eight kinds
// of placement (table, table@r, column:S, column:S@r, row, table-row, table-row@n, dp) once, in
// a random order, and up to two more; rows from 1 (fewer than ranks) to a few per rank, widths
// from 1 to 8, column shards a divisor of the width no larger than the world.
inline std::vector<strata::TableSpec> random_tables(std::mt19937_64& rng, std::size_t world,
                                                    std::size_t ranks_per_node) {
  std::vector<int> kinds{0, 1, 2, 3, 4, 5, 6, 7};
  std::shuffle(kinds.begin(), kinds.end(), rng);
  for (std::size_t extra = rng() % 3; extra > 0; --extra)
    kinds.push_back(static_cast<int>(rng() % 8));
  const std::size_t widths[] = {1, 2, 3, 4, 6, 8};
  std::vector<strata::TableSpec> tables;
  for (const int kind : kinds) {
    strata::TableSpec t;
    const std::size_t row_choices[] = {1, std::max<std::size_t>(1, world - 1), world, world + 1,
                                       1 + rng() % (3 * world + 5)};
    t.rows = row_choices[rng() % 5];
    t.width = widths[rng() % 6];
    std::vector<std::size_t> divisors;
    for (std::size_t s = 1; s <= std::min(t.width, world); ++s)
      if (t.width % s == 0) divisors.push_back(s);
    const std::size_t shards =
        divisors[divisors.size() > 1 ? 1 + rng() % (divisors.size() - 1) : 0];
    using strata::Placement;
    switch (kind) {
      case 0: t.placement = {Placement::table_wise, 1, strata::auto_place}; break;
      case 1: t.placement = {Placement::table_wise, 1, rng() % world}; break;
      case 2: t.placement = {Placement::column_wise, shards, strata::auto_place}; break;
      case 3: t.placement = {Placement::column_wise, shards, rng() % (world - shards + 1)}; break;
      case 4: t.placement = {Placement::row_wise, 1, strata::auto_place}; break;
      case 5: t.placement = {Placement::table_row_wise, 1, strata::auto_place}; break;
      case 6: t.placement = {Placement::table_row_wise, 1, rng() % (world / ranks_per_node)}; break;
      default: t.placement = {Placement::data_parallel, 1, strata::auto_place}; break;
    }
    tables.push_back(t);
  }
  return tables;
}

// A block of a table: rank, rows [row_begin, row_end), columns [col_begin, col_end).
struct Block {
  std::size_t rank, row_begin, row_end, col_begin, col_end;
};

// The blocks of a table as its resolved placement (`where` filled in) puts them, by the rules of
// the placements written out again: row blocks of R rows over n ranks hold R / n rows each and
// the first R % n one more. Empty for a data-parallel table.
inline std::vector<Block> blocks_of(const strata::TableSpec& t, std::size_t world,
                                    std::size_t ranks_per_node) {
  std::vector<Block> b;
  const auto& p = t.placement;
  const auto row_blocks = [&](std::size_t first, std::size_t n) {
    std::size_t at = 0;
    for (std::size_t q = 0; q < n; ++q) {
      const std::size_t len = t.rows / n + (q < t.rows % n ? 1 : 0);
      b.push_back({first + q, at, at + len, 0, t.width});
      at += len;
    }
  };
  switch (p.kind) {
    case strata::Placement::table_wise: b.push_back({p.where, 0, t.rows, 0, t.width}); break;
    case strata::Placement::column_wise:
      for (std::size_t c = 0; c < p.shards; ++c) {
        const std::size_t w = t.width / p.shards;
        b.push_back({p.where + c, 0, t.rows, c * w, (c + 1) * w});
      }
      break;
    case strata::Placement::row_wise: row_blocks(0, world); break;
    case strata::Placement::table_row_wise:
      row_blocks(p.where * ranks_per_node, ranks_per_node);
      break;
    case strata::Placement::data_parallel: break;
  }
  return b;
}

}  // namespace embedding_model
