#pragma once
// The rules of an embedding plan, written once as a constant expression: EmbeddingPlan turns a
// violation into a static_assert, ShardingPlan into std::invalid_argument, both with the message
// built here, so that the two forms cannot drift apart.

#include <cstddef>
#include <span>

#include "strata/detail/message.hpp"
#include "strata/embedding/placement.hpp"
#include "strata/embedding/table.hpp"

namespace strata::detail {

enum class PlanRule {
  ok,
  no_tables,
  bad_world,
  empty_table,
  too_large,
  zero_shards,
  not_pinnable,
  width_not_divisible,
  too_many_shards,
  rank_outside_world,
  node_outside_world,
  bad_hybrid,
};

struct PlanCheck {
  PlanRule rule = PlanRule::ok;
  std::size_t table = 0;
  Message message{};

  [[nodiscard]] constexpr bool ok() const noexcept { return rule == PlanRule::ok; }
};

constexpr PlanCheck plan_violation(PlanRule rule, std::size_t j, const TableSpec* t) noexcept {
  PlanCheck r{rule, j, {}};
  r.message << "EmbeddingPlan: ";
  if (t != nullptr) {
    r.message << "table " << j << " (" << t->rows << "x" << t->width << ", ";
    describe_placement(r.message, t->placement);
    r.message << "): ";
  }
  return r;
}

// Table by table, so that the message names the first table that breaks a rule.
constexpr PlanCheck check_plan(std::span<const TableSpec> tables, std::size_t world,
                               std::size_t ranks_per_node) noexcept {
  if (world == 0 || ranks_per_node == 0 || world % ranks_per_node != 0) {
    PlanCheck r = plan_violation(PlanRule::bad_world, 0, nullptr);
    r.message << "a world of " << world << " ranks does not divide into nodes of " << ranks_per_node
              << " ranks";
    return r;
  }
  if (tables.empty()) {
    PlanCheck r = plan_violation(PlanRule::no_tables, 0, nullptr);
    r.message << "needs at least one table";
    return r;
  }
  for (std::size_t j = 0; j < tables.size(); ++j) {
    const TableSpec& t = tables[j];
    const PlacementSpec& p = t.placement;
    if (t.rows == 0 || t.width == 0) {
      PlanCheck r = plan_violation(PlanRule::empty_table, j, &t);
      r.message << "rows and width must be positive";
      return r;
    }
    // Ids are 64-bit signed and a table's elements must be addressable, 16 bytes each at most.
    if (t.rows > (std::size_t(1) << 62) || t.width > (std::size_t(1) << 32) ||
        t.rows > (std::size_t(-1) / 16) / t.width) {
      PlanCheck r = plan_violation(PlanRule::too_large, j, &t);
      r.message << "rows x width elements do not fit in memory addresses";
      return r;
    }
    if (p.kind == Placement::column_wise ? p.shards == 0 : p.shards != 1) {
      PlanCheck r = plan_violation(PlanRule::zero_shards, j, &t);
      if (p.kind == Placement::column_wise) r.message << "needs at least one column shard";
      else r.message << "only a column-wise table has column shards (" << p.shards << " given)";
      return r;
    }
    if (p.where != auto_place &&
        (p.kind == Placement::row_wise || p.kind == Placement::data_parallel)) {
      PlanCheck r = plan_violation(PlanRule::not_pinnable, j, &t);
      r.message << "a row-wise or data-parallel table spans every rank and cannot be pinned";
      return r;
    }
    if (p.kind == Placement::column_wise && t.width % p.shards != 0) {
      PlanCheck r = plan_violation(PlanRule::width_not_divisible, j, &t);
      r.message << "width " << t.width << " does not divide into " << p.shards << " column shards";
      return r;
    }
    if (p.kind == Placement::column_wise && p.shards > world) {
      PlanCheck r = plan_violation(PlanRule::too_many_shards, j, &t);
      r.message << p.shards << " column shards need " << p.shards
                << " distinct ranks, the world has " << world;
      return r;
    }
    if (p.hybrid &&
        (p.kind == Placement::data_parallel || (p.frequent != auto_place && p.frequent > t.rows))) {
      PlanCheck r = plan_violation(PlanRule::bad_hybrid, j, &t);
      if (p.kind == Placement::data_parallel) {
        r.message << "the rest of a hybrid table cannot be data-parallel";
      } else {
        r.message << p.frequent << " frequent rows exceed the " << t.rows << " rows of the table";
      }
      return r;
    }
    const bool by_rank = p.kind == Placement::table_wise || p.kind == Placement::column_wise;
    if (by_rank && p.where != auto_place && p.where + p.shards > world) {
      PlanCheck r = plan_violation(PlanRule::rank_outside_world, j, &t);
      r.message << "rank " << (p.where + p.shards - 1) << " is outside the world of " << world
                << " ranks";
      return r;
    }
    if (p.kind == Placement::table_row_wise && p.where != auto_place &&
        p.where >= world / ranks_per_node) {
      PlanCheck r = plan_violation(PlanRule::node_outside_world, j, &t);
      r.message << "node " << p.where << " is outside the " << world / ranks_per_node
                << " nodes of " << ranks_per_node << " ranks";
      return r;
    }
  }
  return {};
}

}  // namespace strata::detail
