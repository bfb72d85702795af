#pragma once
//! \file
//! Node topology: how ranks sit on machines, and whether a hierarchy's groups respect it.

#include <cstddef>
#include <span>
#include <stdexcept>
#include <string>

#include "strata/detail/hierarchy_rules.hpp"
#include "strata/hierarchy/hierarchy.hpp"
#include "strata/hierarchy/level.hpp"
#include "strata/hierarchy/runtime_hierarchy.hpp"

namespace strata {

//! `world_size` ranks placed on nodes of `ranks_per_node` each, in contiguous blocks (the
//! placement of `mpirun --map-by core` and of one process per GPU on GPU machines).
//!
//! \code
//! constexpr strata::NodeTopology topo(64, 4);
//! static_assert(topo.num_nodes() == 16 && topo.node_index(9) == 2 && topo.local_rank(9) == 1);
//! static_assert(topo.rank_of(2, 1) == 9);
//! \endcode
class NodeTopology {
 public:
  //! Throws `std::invalid_argument` when a size is 0 or the nodes are not all full.
  constexpr NodeTopology(std::size_t world_size, std::size_t ranks_per_node)
      : world_size_(world_size), ranks_per_node_(ranks_per_node) {
    if (world_size == 0) throw std::invalid_argument("NodeTopology: world size is 0");
    if (ranks_per_node == 0) throw std::invalid_argument("NodeTopology: ranks per node is 0");
    if (world_size % ranks_per_node != 0) {
      throw std::invalid_argument("NodeTopology: world size " + std::to_string(world_size) +
                                  " is not a multiple of " + std::to_string(ranks_per_node) +
                                  " ranks per node");
    }
  }

  [[nodiscard]] constexpr std::size_t world_size() const noexcept { return world_size_; }
  [[nodiscard]] constexpr std::size_t ranks_per_node() const noexcept { return ranks_per_node_; }
  [[nodiscard]] constexpr std::size_t num_nodes() const noexcept {
    return world_size_ / ranks_per_node_;
  }
  //! The node that holds `rank`.
  [[nodiscard]] constexpr std::size_t node_index(std::size_t rank) const noexcept {
    return rank / ranks_per_node_;
  }
  //! `rank`'s index inside its node (its GPU index on a GPU machine).
  [[nodiscard]] constexpr std::size_t local_rank(std::size_t rank) const noexcept {
    return rank % ranks_per_node_;
  }
  //! The global rank of local rank `local` on node `node`.
  [[nodiscard]] constexpr std::size_t rank_of(std::size_t node, std::size_t local) const noexcept {
    return node * ranks_per_node_ + local;
  }
  //! True when groups of `group_size` contiguous ranks never straddle a node boundary: each group
  //! lies inside one node, or is made of whole nodes.
  [[nodiscard]] constexpr bool aligns(std::size_t group_size) const noexcept {
    return group_size != 0 &&
           (ranks_per_node_ % group_size == 0 || group_size % ranks_per_node_ == 0);
  }

 private:
  std::size_t world_size_;
  std::size_t ranks_per_node_;
};

namespace detail {
inline void check_node_aligned(std::span<const LevelSpec> levels, const NodeTopology& topo) {
  if (const RuleCheck r = check_world_size(levels, topo.world_size()); !r.ok()) {
    throw std::invalid_argument(std::string(r.message.view()));
  }
  // Groups nest, so if the smallest level respects node boundaries every larger one does too
  // unless it is itself smaller than a node; check each level to name the offender.
  for (std::size_t i = 0; i < levels.size(); ++i) {
    if (!topo.aligns(levels[i].group_size)) {
      throw std::invalid_argument(
          "Hierarchy: level " + std::to_string(i) + " group size " +
          std::to_string(levels[i].group_size) + " does not fit nodes of " +
          std::to_string(topo.ranks_per_node()) +
          " ranks; node-aligned groups lie inside one node or span whole nodes");
    }
  }
}
}  // namespace detail

//! For users who ask for node alignment: throws `std::invalid_argument` unless every group of
//! every level lies inside one node or spans whole nodes, and the last level spans the world.
//!
//! \code
//! auto h = strata::RuntimeHierarchy::parse("1:4,2:16,4:64");
//! strata::check_node_aligned(h, strata::NodeTopology(64, 4));  // fine
//! // with 8 ranks per node, groups of 4 and 16 are still aligned; with 6 they are not
//! \endcode
inline void check_node_aligned(const RuntimeHierarchy& h, const NodeTopology& topo) {
  detail::check_node_aligned(h.levels(), topo);
}

//! The compile-time form of `check_node_aligned`.
template <hierarchy_type H>
void check_node_aligned(const NodeTopology& topo) {
  detail::check_node_aligned(H::levels, topo);
}

//! The index of the largest level whose groups fit inside one node, or `num_levels` when even the
//! smallest group spans several nodes. Post-local SGD all-reduces gradients within this level.
//!
//! \code
//! auto h = strata::RuntimeHierarchy::parse("2:8,4:32,8:64");
//! assert(strata::largest_intra_node_level(h, strata::NodeTopology(64, 8)) == 0);
//! \endcode
inline std::size_t largest_intra_node_level(const RuntimeHierarchy& h, const NodeTopology& topo) {
  std::size_t found = h.num_levels();
  for (std::size_t i = 0; i < h.num_levels(); ++i) {
    const std::size_t g = h.level(i).group_size;
    if (g <= topo.ranks_per_node() && topo.ranks_per_node() % g == 0) found = i;
  }
  return found;
}

}  // namespace strata
