#pragma once
//! \file
//! One sub-communicator per hierarchy level, built once, up front; and the strided and per-node
//! communicators that sharded optimizers and post-local SGD need.

#include <cstddef>
#include <optional>
#include <span>
#include <stdexcept>
#include <string>
#include <vector>

#include "strata/comm/communicator.hpp"
#include "strata/detail/hierarchy_rules.hpp"
#include "strata/hierarchy/hierarchy.hpp"
#include "strata/hierarchy/level.hpp"

namespace strata {

//! The communicators of a hierarchy's levels. Level i groups the contiguous ranks
//! `[g*floor(r/g), g*floor(r/g)+g)`; the last level spans the world and reuses the parent
//! communicator instead of splitting it. Construction is collective (every rank builds the same
//! levels in the same order) and checks that the last group size is the world size, throwing
//! `std::invalid_argument` with the hierarchy's wording when it is not. The parent communicator
//! must outlive this object.
//!
//! \code
//! #include <strata/comm/local.hpp>
//! strata::LocalWorld(8).run([](strata::LocalComm& world) {
//!   const strata::LevelSpec levels[] = {{1, 2}, {2, 8}};
//!   strata::LevelComms comms(world, levels);
//!   assert(comms.level(0).size() == 2 && &comms.level(1) == &world);
//! });
//! \endcode
template <communicator Comm>
class LevelComms {
 public:
  LevelComms(Comm& world, std::span<const LevelSpec> levels) : world_(&world) {
    const detail::RuleCheck r =
        detail::check_world_size(levels, static_cast<std::size_t>(world.size()));
    if (!r.ok()) throw std::invalid_argument(std::string(r.message.view()));
    const auto rank = static_cast<std::size_t>(world.rank());
    own_.reserve(levels.size());
    for (const LevelSpec& l : levels) {
      if (l.group_size == static_cast<std::size_t>(world.size())) {
        own_.emplace_back(std::nullopt);
      } else {
        own_.emplace_back(world.split(static_cast<int>(l.group_index(rank)),
                                      static_cast<int>(l.rank_in_group(rank))));
      }
    }
  }

  //! The level communicators of a compile-time hierarchy.
  template <hierarchy_type H>
  [[nodiscard]] static LevelComms from(Comm& world) {
    return LevelComms(world, H::levels);
  }

  LevelComms(LevelComms&&) noexcept = default;
  LevelComms& operator=(LevelComms&&) noexcept = default;
  LevelComms(const LevelComms&) = delete;
  LevelComms& operator=(const LevelComms&) = delete;

  [[nodiscard]] std::size_t num_levels() const noexcept { return own_.size(); }
  //! Level i's communicator: this rank's group at that level.
  [[nodiscard]] Comm& level(std::size_t i) {
    auto& c = own_.at(i);
    return c ? *c : *world_;
  }
  [[nodiscard]] Comm& world() noexcept { return *world_; }

 private:
  Comm* world_;
  std::vector<std::optional<Comm>> own_;
};

//! Collective: the communicator of this rank's node, with nodes of `ranks_per_node` consecutive
//! ranks (`contiguous_groups`).
//!
//! \code
//! #include <strata/comm/local.hpp>
//! strata::LocalWorld(6).run([](strata::LocalComm& world) {
//!   auto node = strata::split_node(world, 3);
//!   assert(node.size() == 3 && node.rank() == world.rank() % 3);
//! });
//! \endcode
template <communicator Comm>
Comm split_node(Comm& world, int ranks_per_node) {
  if (ranks_per_node <= 0 || world.size() % ranks_per_node != 0) {
    throw std::invalid_argument("split_node: world size " + std::to_string(world.size()) +
                                " is not a positive multiple of " + std::to_string(ranks_per_node) +
                                " ranks per node");
  }
  return world.split(world.rank() / ranks_per_node, world.rank() % ranks_per_node);
}

//! Collective: the communicator of the ranks that share this rank's local index across nodes
//! (`strided_groups`), ordered by node.
//!
//! \code
//! #include <strata/comm/local.hpp>
//! strata::LocalWorld(6).run([](strata::LocalComm& world) {
//!   auto across = strata::split_strided(world, 3);
//!   assert(across.size() == 2 && across.rank() == world.rank() / 3);
//! });
//! \endcode
template <communicator Comm>
Comm split_strided(Comm& world, int ranks_per_node) {
  if (ranks_per_node <= 0 || world.size() % ranks_per_node != 0) {
    throw std::invalid_argument("split_strided: world size " + std::to_string(world.size()) +
                                " is not a positive multiple of " + std::to_string(ranks_per_node) +
                                " ranks per node");
  }
  return world.split(world.rank() % ranks_per_node, world.rank() / ranks_per_node);
}

}  // namespace strata
