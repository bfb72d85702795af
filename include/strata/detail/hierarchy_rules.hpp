#pragma once
// The hierarchy rules of docs/design.md, written once as a constant expression. The compile-time
// Hierarchy turns a violation into a static_assert, RuntimeHierarchy into std::invalid_argument;
// both use the message built here, so the wording cannot drift apart.

#include <cstddef>
#include <limits>
#include <span>

#include "strata/detail/message.hpp"
#include "strata/hierarchy/level.hpp"

namespace strata::detail {

enum class HierarchyRule {
  ok,
  empty,
  zero_period,
  zero_group_size,
  periods_not_increasing,
  group_sizes_not_increasing,
  group_size_not_multiple,
  world_size_mismatch,
};

struct RuleCheck {
  HierarchyRule rule = HierarchyRule::ok;
  std::size_t level = 0;  // the level that breaks the rule
  Message message{};

  [[nodiscard]] constexpr bool ok() const noexcept { return rule == HierarchyRule::ok; }
};

constexpr RuleCheck violation(HierarchyRule rule, std::size_t level) noexcept {
  RuleCheck r{rule, level, {}};
  r.message << "Hierarchy: ";
  return r;
}

// Checks level by level, so the message names the first level that breaks a rule.
constexpr RuleCheck check_levels(std::span<const LevelSpec> levels) noexcept {
  if (levels.empty()) {
    RuleCheck r = violation(HierarchyRule::empty, 0);
    r.message << "needs at least one level";
    return r;
  }
  for (std::size_t i = 0; i < levels.size(); ++i) {
    const LevelSpec& l = levels[i];
    if (l.period == 0) {
      RuleCheck r = violation(HierarchyRule::zero_period, i);
      r.message << "level " << i << " period is 0; periods must be positive";
      return r;
    }
    if (l.group_size == 0) {
      RuleCheck r = violation(HierarchyRule::zero_group_size, i);
      r.message << "level " << i << " group size is 0; group sizes must be positive";
      return r;
    }
    if (i == 0) continue;
    const LevelSpec& prev = levels[i - 1];
    if (l.period <= prev.period) {
      RuleCheck r = violation(HierarchyRule::periods_not_increasing, i);
      r.message << "level " << i << " period " << l.period << " is not greater than level "
                << (i - 1) << " period " << prev.period << "; periods must strictly increase";
      return r;
    }
    if (l.group_size <= prev.group_size) {
      RuleCheck r = violation(HierarchyRule::group_sizes_not_increasing, i);
      r.message << "level " << i << " group size " << l.group_size << " is not greater than level "
                << (i - 1) << " group size " << prev.group_size
                << "; group sizes must strictly increase";
      return r;
    }
    if (l.group_size % prev.group_size != 0) {
      RuleCheck r = violation(HierarchyRule::group_size_not_multiple, i);
      r.message << "level " << i << " group size " << l.group_size << " is not a multiple of level "
                << (i - 1) << " group size " << prev.group_size;
      return r;
    }
  }
  return {};
}

constexpr RuleCheck check_world_size(std::span<const LevelSpec> levels,
                                     std::size_t world_size) noexcept {
  RuleCheck r = check_levels(levels);
  if (!r.ok()) return r;
  const std::size_t last = levels.size() - 1;
  if (levels[last].group_size != world_size) {
    r = violation(HierarchyRule::world_size_mismatch, last);
    r.message << "level " << last << " group size " << levels[last].group_size
              << " is not the world size " << world_size
              << "; the largest group must span the whole world";
  }
  return r;
}

// Least common multiple; false when it does not fit in std::size_t.
constexpr bool checked_lcm(std::size_t a, std::size_t b, std::size_t& out) noexcept {
  std::size_t x = a, y = b;
  while (y != 0) {
    const std::size_t t = x % y;
    x = y;
    y = t;
  }
  const std::size_t q = a / x;
  if (q != 0 && b > std::numeric_limits<std::size_t>::max() / q) return false;
  out = q * b;
  return true;
}

}  // namespace strata::detail
