#pragma once
//! \file
//! Training methods as the simulator sees them: when gradients are all-reduced and which level
//! averages the model at each step.

#include <algorithm>
#include <cstddef>
#include <optional>
#include <span>
#include <stdexcept>
#include <string>
#include <utility>
#include <vector>

#include "strata/hierarchy/level.hpp"
#include "strata/hierarchy/runtime_hierarchy.hpp"
#include "strata/schedule/phase.hpp"
#include "strata/schedule/schedule.hpp"

namespace strata::sim {

//! The three families the simulator compares.
//!
//! \code
//! static_assert(strata::sim::MethodKind::synchronous != strata::sim::MethodKind::local);
//! \endcode
enum class MethodKind {
  synchronous,   //!< gradient all-reduce over the world at every step
  local,         //!< local SGD: the world averages the model every P steps
  hierarchical,  //!< hierarchical SGD: the levels of a `RuntimeHierarchy`
};

//! Who averages with whom at a level of group size g.
//!
//! \code
//! auto a = strata::sim::GroupAssignment::shuffled;
//! assert(a != strata::sim::GroupAssignment::contiguous);
//! \endcode
enum class GroupAssignment {
  //! Contiguous blocks of ranks, as the communicators build them: a persistently slow rank
  //! always holds back the same group.
  contiguous,
  //! A fresh assignment at every averaging step of a level, drawn from the seed. A level whose
  //! groups lie inside a node shuffles the ranks inside each node; a level made of whole nodes
  //! shuffles the nodes; any other level shuffles all ranks. The groups stay node-aligned, so the
  //! cost model prices them as before; only the simulator models this (no communicator does).
  shuffled,
};

//! One training method: synchronous SGD, local SGD or hierarchical SGD, with its warm-up, its
//! optional per-step intra-node gradient all-reduce (post-local SGD) and its group assignment.
//!
//! Local SGD counts its period from the end of warm-up (`WarmupRelativePhase`, as PyTorch's
//! `PeriodicModelAverager`); hierarchical SGD counts from step 0 (`AbsolutePhase`, as
//! `HierarchicalModelAverager`). Which level averages at a step is `RuntimeSchedule::level_at`.
//! During warm-up, and at every step of synchronous SGD, gradients are all-reduced over the world.
//!
//! \code
//! using strata::sim::Method;
//! const auto h = Method::hierarchical(strata::RuntimeHierarchy::parse("2:8,4:32,8:64"), 4)
//!                    .with_intra_node_gradients();
//! assert(h.world_size() == 64 && h.warmup() == 4 && h.intra_node_gradients());
//! assert(h.name() == "hierarchical SGD 2:8,4:32,8:64, warm-up 4, intra-node gradients");
//! const auto levels = h.averaging_levels(9);
//! assert(!levels[0] && !levels[3] && levels[4] == 1u && levels[6] == 0u && levels[8] == 2u);
//! const auto local = Method::local_sgd(64, 8, /*warmup=*/3);
//! assert(local.averaging_levels(12)[3] == 0u && local.averaging_levels(12)[11] == 0u);
//! assert(Method::synchronous(64).name() == "synchronous SGD");
//! \endcode
class Method {
 public:
  //! Gradient all-reduce over `world` ranks at every step.
  [[nodiscard]] static Method synchronous(std::size_t world) {
    check_world(world);
    return Method(MethodKind::synchronous, world, std::nullopt, 0);
  }

  //! The whole world averages the model every `period` steps, counted from the end of warm-up.
  [[nodiscard]] static Method local_sgd(std::size_t world, std::size_t period,
                                        std::size_t warmup = 0) {
    check_world(world);
    if (period == 0) throw std::invalid_argument("Method: local SGD period is 0");
    return Method(MethodKind::local, world, RuntimeHierarchy({LevelSpec{period, world}}), warmup);
  }

  //! The levels of `h`; its last group is the world.
  [[nodiscard]] static Method hierarchical(RuntimeHierarchy h, std::size_t warmup = 0) {
    const std::size_t world = h.world_size();
    return Method(MethodKind::hierarchical, world, std::move(h), warmup);
  }

  //! After warm-up, all-reduce gradients inside each node at every step (post-local SGD).
  [[nodiscard]] Method with_intra_node_gradients(bool on = true) const {
    if (on && kind_ == MethodKind::synchronous) {
      throw std::invalid_argument(
          "Method: synchronous SGD already all-reduces gradients over the world at every step; "
          "an intra-node gradient all-reduce applies to local and hierarchical SGD");
    }
    Method m = *this;
    m.intra_node_ = on;
    return m;
  }

  //! Choose how ranks are assigned to the groups of each level.
  [[nodiscard]] Method with_groups(GroupAssignment groups) const {
    if (groups == GroupAssignment::shuffled && kind_ != MethodKind::hierarchical) {
      throw std::invalid_argument(
          "Method: shuffled groups need a hierarchy; synchronous and local SGD have one group, "
          "the world");
    }
    Method m = *this;
    m.groups_ = groups;
    return m;
  }

  [[nodiscard]] MethodKind kind() const noexcept { return kind_; }
  [[nodiscard]] std::size_t world_size() const noexcept { return world_; }
  //! Steps of synchronous SGD before the method's own schedule starts (0 for synchronous SGD).
  [[nodiscard]] std::size_t warmup() const noexcept { return warmup_; }
  [[nodiscard]] bool intra_node_gradients() const noexcept { return intra_node_; }
  [[nodiscard]] GroupAssignment groups() const noexcept { return groups_; }
  //! The averaging levels; empty for synchronous SGD, one world level for local SGD.
  [[nodiscard]] std::span<const LevelSpec> levels() const noexcept {
    return hierarchy_ ? hierarchy_->levels() : std::span<const LevelSpec>{};
  }

  //! "synchronous SGD", "local SGD (period 8)", "hierarchical SGD 2:8,4:32,8:64"; a warm-up, an
  //! intra-node gradient all-reduce and shuffled groups are appended when present.
  [[nodiscard]] std::string name() const {
    std::string s;
    switch (kind_) {
      case MethodKind::synchronous: s = "synchronous SGD"; break;
      case MethodKind::local:
        s = "local SGD (period " + std::to_string(hierarchy_->level(0).period) + ")";
        break;
      case MethodKind::hierarchical: s = "hierarchical SGD " + hierarchy_->to_string(); break;
    }
    if (warmup_ != 0) s += ", warm-up " + std::to_string(warmup_);
    if (intra_node_) s += ", intra-node gradients";
    if (groups_ == GroupAssignment::shuffled) s += ", shuffled groups";
    return s;
  }

  //! True when gradients are all-reduced over the whole world at `step`.
  [[nodiscard]] bool world_gradients_at(std::size_t step) const noexcept {
    return kind_ == MethodKind::synchronous || step < warmup_;
  }

  //! Entry s: the level that averages the model at step s, for s in [0, steps); the schedule's
  //! rule (`RuntimeSchedule::level_at`), with the phase origin of the method.
  [[nodiscard]] std::vector<std::optional<std::size_t>> averaging_levels(std::size_t steps) const {
    std::vector<std::optional<std::size_t>> out(steps);
    averaging_levels(0, out);
    return out;
  }

  //! `out[i]`: the level that averages the model at step `first + i`; long runs fill a buffer
  //! piece by piece instead of holding one entry per step.
  void averaging_levels(std::size_t first, std::span<std::optional<std::size_t>> out) const {
    if (kind_ == MethodKind::local) {
      fill(RuntimeSchedule<WarmupRelativePhase>(*hierarchy_, warmup_), first, out);
    } else if (kind_ == MethodKind::hierarchical) {
      fill(RuntimeSchedule<AbsolutePhase>(*hierarchy_, warmup_), first, out);
    } else {
      std::fill(out.begin(), out.end(), std::nullopt);
    }
  }

 private:
  Method(MethodKind kind, std::size_t world, std::optional<RuntimeHierarchy> h, std::size_t warmup)
      : kind_(kind), world_(world), hierarchy_(std::move(h)), warmup_(warmup) {}

  static void check_world(std::size_t world) {
    if (world == 0) throw std::invalid_argument("Method: world size is 0");
  }

  template <class Schedule>
  static void fill(const Schedule& s, std::size_t first,
                   std::span<std::optional<std::size_t>> out) {
    for (std::size_t i = 0; i < out.size(); ++i) out[i] = s.level_at(first + i);
  }

  MethodKind kind_;
  std::size_t world_;
  std::optional<RuntimeHierarchy> hierarchy_;
  std::size_t warmup_;
  bool intra_node_ = false;
  GroupAssignment groups_ = GroupAssignment::contiguous;
};

}  // namespace strata::sim
