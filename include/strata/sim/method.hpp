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
#include "strata/kernels/wire_codec.hpp"
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
//! optional per-step intra-node gradient all-reduce (post-local SGD), its group assignment, the
//! wire format of each level and, for a one-level schedule, streaming fragments.
//!
//! Local SGD counts its period from the end of warm-up (`WarmupRelativePhase`, as PyTorch's
//! `PeriodicModelAverager`); hierarchical SGD counts from step 0 (`AbsolutePhase`, as
//! `HierarchicalModelAverager`). Which level averages at a step is `RuntimeSchedule::level_at`.
//! During warm-up, and at every step of synchronous SGD, gradients are all-reduced over the world.
//!
//! With streaming fragments (`with_streaming`) the one level does not average the whole model at
//! once: fragment f of F starts its collective at the steps whose phase is f * P/F modulo P and
//! is applied `delay` steps later (`fragment_at`); `averaging_levels` still describes the plain
//! schedule. The mix of the result into the parameters changes no clock, so it is not modelled.
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
//! const auto streaming = Method::local_sgd(64, 8).with_streaming(4, /*delay=*/1);
//! assert(streaming.fragment_at(2) == 1u && !streaming.fragment_at(3));
//! assert(streaming.name() == "local SGD (period 8), 4 fragments, delay 1");
//! assert(local.with_wire(0, strata::WireFormat::int8).name() ==
//!        "local SGD (period 8), warm-up 3, int8 wire");
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

  //! Split the model of a one-level schedule (local SGD, or a hierarchy P:N) into `fragments` F
  //! fragments that synchronise at staggered steps, each applied `delay` steps after it starts:
  //! fragment f starts at the steps t past warm-up whose phase (t for a hierarchy, t - warm-up
  //! for local SGD) is f * P/F modulo P. That is `StreamingAverager` with
  //! `StreamingOptions::from_warmup = true` for local SGD, and with its default (false) for a
  //! hierarchy P:N. Throws `std::invalid_argument` for any other method, unless F divides P, or
  //! unless delay < P/F (a fragment is applied before the next one starts). With F = 1 and delay 0
  //! the run is the plain method's.
  [[nodiscard]] Method with_streaming(std::size_t fragments, std::size_t delay = 0) const {
    if (kind_ == MethodKind::synchronous || hierarchy_->num_levels() != 1) {
      throw std::invalid_argument(
          "Method: streaming fragments need a one-level schedule (local SGD or a hierarchy "
          "P:N), not " +
          (kind_ == MethodKind::synchronous ? std::string("synchronous SGD")
                                            : hierarchy_->to_string()));
    }
    const std::size_t p = hierarchy_->level(0).period;
    if (fragments == 0 || p % fragments != 0) {
      throw std::invalid_argument("Method: the fragment count F = " + std::to_string(fragments) +
                                  " must divide the period P = " + std::to_string(p));
    }
    if (delay >= p / fragments) {
      throw std::invalid_argument("Method: the fragment delay " + std::to_string(delay) +
                                  " must be below P/F = " + std::to_string(p / fragments));
    }
    Method m = *this;
    m.fragments_ = fragments;
    m.fragment_delay_ = delay;
    return m;
  }

  //! Level `level` sends its averages in wire format `wire` (`compressed_average`): the simulator
  //! prices the bytes that it sends (`compressed_average_bytes`, the model taken as 4-byte
  //! values) over the ring's sequential steps. `native` restores the ring all-reduce. Throws
  //! `std::invalid_argument` for synchronous SGD (it averages gradients, not the model) and for a
  //! level the method does not have.
  [[nodiscard]] Method with_wire(std::size_t level, WireFormat wire) const {
    if (kind_ == MethodKind::synchronous) {
      throw std::invalid_argument(
          "Method: a wire format applies to a level that averages the model; synchronous SGD has "
          "none");
    }
    if (level >= hierarchy_->num_levels()) {
      throw std::invalid_argument("Method: level " + std::to_string(level) +
                                  " is beyond the method's " +
                                  std::to_string(hierarchy_->num_levels()) + " levels");
    }
    Method m = *this;
    m.wires_[level] = wire;
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
  //! True after `with_streaming`.
  [[nodiscard]] bool streaming() const noexcept { return fragments_ != 0; }
  //! The fragment count F (1 without streaming).
  [[nodiscard]] std::size_t fragments() const noexcept { return fragments_ == 0 ? 1 : fragments_; }
  //! Steps between a fragment's start and its application (0 without streaming).
  [[nodiscard]] std::size_t fragment_delay() const noexcept { return fragment_delay_; }
  //! The wire format of `level` (`native` for a level the method does not have).
  [[nodiscard]] WireFormat wire(std::size_t level) const noexcept {
    return level < wires_.size() ? wires_[level] : WireFormat::native;
  }
  //! The averaging levels; empty for synchronous SGD, one world level for local SGD.
  [[nodiscard]] std::span<const LevelSpec> levels() const noexcept {
    return hierarchy_ ? hierarchy_->levels() : std::span<const LevelSpec>{};
  }

  //! "synchronous SGD", "local SGD (period 8)", "hierarchical SGD 2:8,4:32,8:64"; a warm-up, an
  //! intra-node gradient all-reduce, shuffled groups, streaming fragments ("4 fragments, delay
  //! 1") and compressed wires ("bf16 wire", or "bf16 wire at level 2" with several levels) are
  //! appended when present.
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
    if (streaming()) {
      s += ", " + std::to_string(fragments_) + (fragments_ == 1 ? " fragment" : " fragments") +
           ", delay " + std::to_string(fragment_delay_);
    }
    for (std::size_t l = 0; l < wires_.size(); ++l) {
      if (wires_[l] == WireFormat::native) continue;
      s += ", " + std::string(wire_name(wires_[l])) + " wire";
      if (wires_.size() > 1) s += " at level " + std::to_string(l);
    }
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

  //! With streaming, the fragment that starts its collective at `step`, if any (see
  //! `with_streaming`); none without streaming.
  [[nodiscard]] std::optional<std::size_t> fragment_at(std::size_t step) const noexcept {
    if (!streaming() || step < warmup_) return std::nullopt;
    const std::size_t p = hierarchy_->level(0).period;
    const std::size_t stride = p / fragments_;
    const std::size_t phase = (kind_ == MethodKind::local ? step - warmup_ : step) % p;
    if (phase % stride != 0) return std::nullopt;
    return phase / stride;
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
      : kind_(kind),
        world_(world),
        hierarchy_(std::move(h)),
        warmup_(warmup),
        wires_(hierarchy_ ? hierarchy_->num_levels() : 0, WireFormat::native) {}

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
  std::vector<WireFormat> wires_;  // one per level
  std::size_t fragments_ = 0;      // 0: no streaming
  std::size_t fragment_delay_ = 0;
};

}  // namespace strata::sim
