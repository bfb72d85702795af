#pragma once
// The schedule rule of docs/design.md over a span of levels, shared by Schedule and
// RuntimeSchedule.

#include <cstddef>
#include <optional>
#include <span>

#include "strata/hierarchy/level.hpp"

namespace strata::detail {

// The highest level whose period divides t = step - origin, for steps past warm-up.
constexpr std::optional<std::size_t> level_at(std::span<const LevelSpec> levels, std::size_t warmup,
                                              std::size_t origin, std::size_t step) noexcept {
  if (step < warmup) return std::nullopt;
  const std::size_t t = step - origin;
  for (std::size_t i = levels.size(); i-- > 0;) {
    if (t % levels[i].period == 0) return i;
  }
  return std::nullopt;
}

// Adds to counts[i] how many phases t in [0, x) pick level i. The pattern of levels over t repeats
// with the hyper-period, so whole hyper-periods are counted once and multiplied; the cost is one
// hyper-period of work however many steps are asked for.
template <class Counts>
constexpr void add_phase_counts(std::span<const LevelSpec> levels, std::size_t hyper_period,
                                std::size_t x, Counts& counts) noexcept {
  const std::size_t cycles = x / hyper_period;
  const std::size_t rest = x % hyper_period;
  const std::size_t span_end = cycles != 0 ? hyper_period : rest;
  for (std::size_t t = 0; t < span_end; ++t) {
    if (const auto l = level_at(levels, 0, 0, t)) {
      counts[*l] += cycles + (t < rest ? 1 : 0);
    }
  }
}

// counts[i] = steps s in [0, steps) at which level i runs.
template <class Counts>
constexpr void sync_counts(std::span<const LevelSpec> levels, std::size_t hyper_period,
                           std::size_t warmup, std::size_t origin, std::size_t steps,
                           Counts& counts) noexcept {
  for (auto& c : counts) c = 0;
  if (steps <= warmup) return;
  // Steps [warmup, steps) are phases [warmup - origin, steps - origin): a difference of prefixes.
  add_phase_counts(levels, hyper_period, steps - origin, counts);
  Counts before{counts};
  for (auto& c : before) c = 0;
  add_phase_counts(levels, hyper_period, warmup - origin, before);
  for (std::size_t i = 0; i < levels.size(); ++i) counts[i] -= before[i];
}

}  // namespace strata::detail
