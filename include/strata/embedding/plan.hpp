#pragma once
//! \file
//! `EmbeddingPlan<Cluster<World, RanksPerNode>, Table<...>...>`: an embedding plan as a type,
//! checked when it is used.

#include <array>
#include <cstddef>

#include "strata/detail/message.hpp"
#include "strata/embedding/balancer.hpp"
#include "strata/embedding/detail/plan_rules.hpp"
#include "strata/embedding/sharding.hpp"
#include "strata/embedding/table.hpp"

namespace strata {

//! The world an `EmbeddingPlan` is made for: `World` ranks on nodes of `RanksPerNode`.
//!
//! \code
//! static_assert(strata::Cluster<16, 4>::num_nodes == 4);
//! \endcode
template <std::size_t World, std::size_t RanksPerNode = World>
struct Cluster {
  static constexpr std::size_t world_size = World;
  static constexpr std::size_t ranks_per_node = RanksPerNode;
  static constexpr std::size_t num_nodes = RanksPerNode == 0 ? 0 : World / RanksPerNode;
};

namespace detail {

template <auto>
inline constexpr bool plan_false = false;

// One specialisation per rule, so that the static_assert text names the rule; the table, its
// shape and placement and the numbers travel in the Message argument, which compilers print in
// the "in instantiation of" line above it.
template <PlanRule Rule, Message Detail>
struct plan_rule {
  static constexpr bool holds = true;
};
template <Message Detail>
struct plan_rule<PlanRule::no_tables, Detail> {
  static_assert(plan_false<Detail>, "EmbeddingPlan: needs at least one table");
  static constexpr bool holds = true;
};
template <Message Detail>
struct plan_rule<PlanRule::bad_world, Detail> {
  static_assert(plan_false<Detail>,
                "EmbeddingPlan: the world must be a positive multiple of the ranks per node");
  static constexpr bool holds = true;
};
template <Message Detail>
struct plan_rule<PlanRule::empty_table, Detail> {
  static_assert(plan_false<Detail>, "EmbeddingPlan: every table needs rows and columns");
  static constexpr bool holds = true;
};
template <Message Detail>
struct plan_rule<PlanRule::too_large, Detail> {
  static_assert(plan_false<Detail>, "EmbeddingPlan: a table must fit in memory addresses");
  static constexpr bool holds = true;
};
template <Message Detail>
struct plan_rule<PlanRule::zero_shards, Detail> {
  static_assert(plan_false<Detail>,
                "EmbeddingPlan: a column-wise table needs at least one shard, others exactly one");
  static constexpr bool holds = true;
};
template <Message Detail>
struct plan_rule<PlanRule::not_pinnable, Detail> {
  static_assert(plan_false<Detail>,
                "EmbeddingPlan: only table-wise, column-wise and table-row-wise tables can be "
                "pinned");
  static constexpr bool holds = true;
};
template <Message Detail>
struct plan_rule<PlanRule::width_not_divisible, Detail> {
  static_assert(plan_false<Detail>,
                "EmbeddingPlan: a column-wise table's width must divide by its shard count");
  static constexpr bool holds = true;
};
template <Message Detail>
struct plan_rule<PlanRule::too_many_shards, Detail> {
  static_assert(plan_false<Detail>,
                "EmbeddingPlan: a column-wise table cannot have more shards than the world has "
                "ranks");
  static constexpr bool holds = true;
};
template <Message Detail>
struct plan_rule<PlanRule::rank_outside_world, Detail> {
  static_assert(plan_false<Detail>, "EmbeddingPlan: a pinned table must lie inside the world");
  static constexpr bool holds = true;
};
template <Message Detail>
struct plan_rule<PlanRule::node_outside_world, Detail> {
  static_assert(plan_false<Detail>,
                "EmbeddingPlan: a pinned table-row-wise table must name an existing node");
  static constexpr bool holds = true;
};

template <Message Detail>
struct plan_rule<PlanRule::bad_hybrid, Detail> {
  static_assert(plan_false<Detail>,
                "EmbeddingPlan: a hybrid table replicates at most all its rows and places the "
                "rest table-, column-, row- or table-row-wise");
  static constexpr bool holds = true;
};

template <class C, class... Tables>
inline constexpr std::array<TableSpec, sizeof...(Tables)> plan_specs{Tables::spec...};

template <class C, class... Tables>
inline constexpr PlanCheck plan_check = check_plan(plan_specs<C, Tables...>, C::world_size,
                                                   C::ranks_per_node);

}  // namespace detail

//! A list of embedding tables and their placements for a `Cluster`, checked at compile time:
//! every rule of docs/embeddings.md ("Rules") is a `static_assert` whose text names the rule,
//! printed below the instantiation that names the table, its shape, its placement and the
//! numbers. `sharding()` resolves it into the `ShardingPlan` the exchange runs on, with the
//! balancer placing what names no rank.
//!
//! \code
//! using Plan = strata::EmbeddingPlan<strata::Cluster<8, 4>,
//!                                    strata::Table<1000, 16, strata::TableWise>,
//!                                    strata::Table<500, 16, strata::ColumnWise<4>>,
//!                                    strata::Table<64, 8, strata::RowWise>,
//!                                    strata::Table<100, 8, strata::TableRowWise>,
//!                                    strata::Table<10, 8, strata::DataParallel>>;
//! static_assert(Plan::num_tables == 5 && Plan::tables[1].width == 16);
//! auto plan = Plan::sharding();
//! assert(plan.shards_of(1).size() == 4 && plan.shards_of(3).size() == 4);
//! \endcode
template <class C, class... Tables>
struct EmbeddingPlan {
  static constexpr std::size_t num_tables = sizeof...(Tables);
  static constexpr std::size_t world_size = C::world_size;
  static constexpr std::size_t ranks_per_node = C::ranks_per_node;
  static constexpr const std::array<TableSpec, sizeof...(Tables)>& tables =
      detail::plan_specs<C, Tables...>;

 private:
  static constexpr detail::PlanCheck check_ = detail::plan_check<C, Tables...>;
  static_assert(detail::plan_rule<check_.rule, check_.message>::holds);

 public:
  //! The plan resolved for its cluster (see `ShardingPlan::make`).
  [[nodiscard]] static ShardingPlan sharding(const LoadModel& model = {}) {
    return ShardingPlan::make(std::vector<TableSpec>(tables.begin(), tables.end()), world_size,
                              ranks_per_node, model);
  }
};

}  // namespace strata
