#pragma once
//! \file
//! Group layouts as lists of ranks: contiguous blocks, strided sets, and the check that a layout
//! partitions the world.

#include <cstddef>
#include <stdexcept>
#include <string>
#include <vector>

namespace strata {

//! Groups of `group_size` consecutive ranks: `{0..g-1}, {g..2g-1}, ...` (docs/design.md,
//! "Groups").
//!
//! \code
//! auto g = strata::contiguous_groups(6, 3);
//! assert((g == std::vector<std::vector<int>>{{0, 1, 2}, {3, 4, 5}}));
//! \endcode
inline std::vector<std::vector<int>> contiguous_groups(int world_size, int group_size) {
  if (world_size <= 0 || group_size <= 0 || world_size % group_size != 0) {
    throw std::invalid_argument("contiguous_groups: world size " + std::to_string(world_size) +
                                " is not a positive multiple of group size " +
                                std::to_string(group_size));
  }
  std::vector<std::vector<int>> groups(static_cast<std::size_t>(world_size / group_size));
  for (int r = 0; r < world_size; ++r)
    groups[static_cast<std::size_t>(r / group_size)].push_back(r);
  return groups;
}

//! The ranks that share a local index across nodes of `ranks_per_node`: group l holds
//! `{l, l + ranks_per_node, l + 2*ranks_per_node, ...}`. Sharded optimizers all-reduce their shard
//! across nodes inside these groups.
//!
//! \code
//! auto g = strata::strided_groups(6, 3);
//! assert((g == std::vector<std::vector<int>>{{0, 3}, {1, 4}, {2, 5}}));
//! \endcode
inline std::vector<std::vector<int>> strided_groups(int world_size, int ranks_per_node) {
  if (world_size <= 0 || ranks_per_node <= 0 || world_size % ranks_per_node != 0) {
    throw std::invalid_argument("strided_groups: world size " + std::to_string(world_size) +
                                " is not a positive multiple of " + std::to_string(ranks_per_node) +
                                " ranks per node");
  }
  std::vector<std::vector<int>> groups(static_cast<std::size_t>(ranks_per_node));
  for (int r = 0; r < world_size; ++r)
    groups[static_cast<std::size_t>(r % ranks_per_node)].push_back(r);
  return groups;
}

//! Throws `std::invalid_argument` unless every rank of `[0, world_size)` is in exactly one group.
//!
//! \code
//! strata::check_partition({{0, 1}, {2, 3}}, 4);  // fine
//! bool threw = false;
//! try { strata::check_partition({{0, 1}, {1, 2}}, 3); } catch (const std::invalid_argument&) { threw = true; }
//! assert(threw);
//! \endcode
inline void check_partition(const std::vector<std::vector<int>>& groups, int world_size) {
  std::vector<int> owner(static_cast<std::size_t>(world_size > 0 ? world_size : 0), -1);
  for (std::size_t g = 0; g < groups.size(); ++g) {
    for (int r : groups[g]) {
      if (r < 0 || r >= world_size) {
        throw std::invalid_argument("check_partition: group " + std::to_string(g) + " holds rank " +
                                    std::to_string(r) + ", outside a world of " +
                                    std::to_string(world_size));
      }
      int& o = owner[static_cast<std::size_t>(r)];
      if (o != -1) {
        throw std::invalid_argument("check_partition: rank " + std::to_string(r) + " is in group " +
                                    std::to_string(o) + " and in group " + std::to_string(g));
      }
      o = static_cast<int>(g);
    }
  }
  for (int r = 0; r < world_size; ++r) {
    if (owner[static_cast<std::size_t>(r)] == -1) {
      throw std::invalid_argument("check_partition: rank " + std::to_string(r) + " is in no group");
    }
  }
}

}  // namespace strata
