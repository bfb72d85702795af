#pragma once
//! \file
//! Which level averages at each step, and what that costs over a run.

#include <array>
#include <concepts>
#include <cstddef>
#include <optional>
#include <span>
#include <vector>

#include "strata/detail/schedule_math.hpp"
#include "strata/hierarchy/hierarchy.hpp"
#include "strata/hierarchy/runtime_hierarchy.hpp"
#include "strata/schedule/phase.hpp"
#include "strata/schedule/wire.hpp"

namespace strata {

//! The averaging schedule of a compile-time hierarchy; every answer is a constant expression.
//!
//! Steps count from 0, once per averaging call. Before `warmup` nothing runs; afterwards the level
//! that runs is the **highest** level whose period divides the step counted from the phase origin
//! (`AbsolutePhase`: step 0, the default; `WarmupRelativePhase`: the end of warm-up), else none.
//!
//! \code
//! using H = strata::Hierarchy<strata::Level<2, 8>, strata::Level<4, 32>, strata::Level<8, 64>>;
//! constexpr strata::Schedule<H> s;
//! static_assert(s.level_at(0) == 2 && s.level_at(2) == 0 && s.level_at(4) == 1);
//! static_assert(!s.level_at(1).has_value());
//! static_assert(s.sync_counts(16) == std::array<std::size_t, 3>{4, 2, 2});
//! \endcode
template <hierarchy_type H, phase_policy Phase = AbsolutePhase>
class Schedule {
 public:
  using hierarchy = H;
  using phase = Phase;
  static constexpr std::size_t num_levels = H::num_levels;

  constexpr explicit Schedule(std::size_t warmup = 0) noexcept : warmup_(warmup) {}

  [[nodiscard]] constexpr std::size_t warmup() const noexcept { return warmup_; }
  [[nodiscard]] static constexpr std::span<const LevelSpec> levels() noexcept { return H::levels; }
  [[nodiscard]] static constexpr std::size_t hyper_period() noexcept { return H::hyper_period; }

  //! The level that averages at `step`, or none.
  [[nodiscard]] constexpr std::optional<std::size_t> level_at(std::size_t step) const noexcept {
    return detail::level_at(H::levels, warmup_, Phase::origin(warmup_), step);
  }

  //! The steady-state pattern: entry k is the level at every step s past warm-up whose phase
  //! `s - origin` is k modulo the hyper-period.
  [[nodiscard]] static constexpr std::array<std::optional<std::size_t>, H::hyper_period>
  pattern() noexcept {
    std::array<std::optional<std::size_t>, H::hyper_period> p{};
    for (std::size_t k = 0; k < p.size(); ++k) p[k] = detail::level_at(H::levels, 0, 0, k);
    return p;
  }

  //! How many times each level averages during steps [0, steps).
  [[nodiscard]] constexpr std::array<std::size_t, num_levels> sync_counts(
      std::size_t steps) const noexcept {
    std::array<std::size_t, num_levels> c{};
    detail::sync_counts(H::levels, H::hyper_period, warmup_, Phase::origin(warmup_), steps, c);
    return c;
  }

  //! Bytes each rank sends in one averaging at `level` of `param_bytes` of parameters.
  template <wire_algorithm Algo = RingAllReduce>
  [[nodiscard]] static constexpr double bytes_per_sync(std::size_t level,
                                                       std::size_t param_bytes) noexcept {
    return Algo::bytes_per_rank(static_cast<double>(param_bytes), H::levels[level].group_size);
  }

  //! Bytes each rank sends per level during steps [0, steps), averaging `param_bytes` each time.
  template <wire_algorithm Algo = RingAllReduce>
  [[nodiscard]] constexpr std::array<double, num_levels> bytes_per_rank(
      std::size_t steps, std::size_t param_bytes) const noexcept {
    const auto counts = sync_counts(steps);
    std::array<double, num_levels> b{};
    for (std::size_t i = 0; i < num_levels; ++i) {
      b[i] = static_cast<double>(counts[i]) * bytes_per_sync<Algo>(i, param_bytes);
    }
    return b;
  }

 private:
  std::size_t warmup_;
};

//! The same schedule for a `RuntimeHierarchy`: the same answers, computed at run time.
//!
//! \code
//! strata::RuntimeSchedule<> s(strata::RuntimeHierarchy::parse("2:8,4:32,8:64"), /*warmup=*/4);
//! assert(!s.level_at(2).has_value() && s.level_at(4) == 1 && s.level_at(8) == 2);
//! assert((s.sync_counts(16) == std::vector<std::size_t>{3, 2, 1}));
//! \endcode
template <phase_policy Phase = AbsolutePhase>
class RuntimeSchedule {
 public:
  using phase = Phase;

  explicit RuntimeSchedule(RuntimeHierarchy hierarchy, std::size_t warmup = 0)
      : hierarchy_(std::move(hierarchy)), warmup_(warmup) {}

  [[nodiscard]] const RuntimeHierarchy& hierarchy() const noexcept { return hierarchy_; }
  [[nodiscard]] std::size_t num_levels() const noexcept { return hierarchy_.num_levels(); }
  [[nodiscard]] std::size_t warmup() const noexcept { return warmup_; }
  [[nodiscard]] std::span<const LevelSpec> levels() const noexcept { return hierarchy_.levels(); }
  [[nodiscard]] std::size_t hyper_period() const noexcept { return hierarchy_.hyper_period(); }

  [[nodiscard]] std::optional<std::size_t> level_at(std::size_t step) const noexcept {
    return detail::level_at(levels(), warmup_, Phase::origin(warmup_), step);
  }

  [[nodiscard]] std::vector<std::optional<std::size_t>> pattern() const {
    std::vector<std::optional<std::size_t>> p(hyper_period());
    for (std::size_t k = 0; k < p.size(); ++k) p[k] = detail::level_at(levels(), 0, 0, k);
    return p;
  }

  [[nodiscard]] std::vector<std::size_t> sync_counts(std::size_t steps) const {
    std::vector<std::size_t> c(num_levels());
    detail::sync_counts(levels(), hyper_period(), warmup_, Phase::origin(warmup_), steps, c);
    return c;
  }

  template <wire_algorithm Algo = RingAllReduce>
  [[nodiscard]] double bytes_per_sync(std::size_t level, std::size_t param_bytes) const {
    return Algo::bytes_per_rank(static_cast<double>(param_bytes),
                                hierarchy_.level(level).group_size);
  }

  template <wire_algorithm Algo = RingAllReduce>
  [[nodiscard]] std::vector<double> bytes_per_rank(std::size_t steps,
                                                   std::size_t param_bytes) const {
    const auto counts = sync_counts(steps);
    std::vector<double> b(num_levels());
    for (std::size_t i = 0; i < b.size(); ++i) {
      b[i] = static_cast<double>(counts[i]) * bytes_per_sync<Algo>(i, param_bytes);
    }
    return b;
  }

 private:
  RuntimeHierarchy hierarchy_;
  std::size_t warmup_;
};

//! Anything that answers like a schedule: `Schedule<H, P>` and `RuntimeSchedule<P>`.
//!
//! \code
//! static_assert(strata::schedule_type<strata::RuntimeSchedule<>>);
//! \endcode
template <class S>
concept schedule_type = requires(const S& s, std::size_t n) {
  { s.level_at(n) } -> std::same_as<std::optional<std::size_t>>;
  { s.warmup() } -> std::convertible_to<std::size_t>;
  { s.levels() } -> std::convertible_to<std::span<const LevelSpec>>;
  { s.hyper_period() } -> std::convertible_to<std::size_t>;
  s.sync_counts(n);
  typename S::phase;
};

}  // namespace strata
