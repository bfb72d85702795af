#pragma once
//! \file
//! `Hierarchy<Levels...>`: process-group levels as a type, checked when it is used.

#include <array>
#include <boost/mp11/algorithm.hpp>
#include <boost/mp11/list.hpp>
#include <cstddef>
#include <string>

#include "strata/detail/hierarchy_rules.hpp"
#include "strata/hierarchy/level.hpp"

namespace strata {

namespace detail {

template <auto>
inline constexpr bool dependent_false = false;

// One specialisation per rule, so the static_assert text names the rule; the level index and the
// numbers travel in the Message argument, which the compiler prints in the instantiation line.
template <HierarchyRule Rule, Message Detail>
struct hierarchy_rule {
  static constexpr bool holds = true;
};
template <Message Detail>
struct hierarchy_rule<HierarchyRule::empty, Detail> {
  static_assert(dependent_false<Detail>, "Hierarchy: needs at least one level");
  static constexpr bool holds = true;  // true: the static_assert above is the only diagnostic
};
template <Message Detail>
struct hierarchy_rule<HierarchyRule::zero_period, Detail> {
  static_assert(dependent_false<Detail>, "Hierarchy: every period must be positive");
  static constexpr bool holds = true;
};
template <Message Detail>
struct hierarchy_rule<HierarchyRule::zero_group_size, Detail> {
  static_assert(dependent_false<Detail>, "Hierarchy: every group size must be positive");
  static constexpr bool holds = true;
};
template <Message Detail>
struct hierarchy_rule<HierarchyRule::periods_not_increasing, Detail> {
  static_assert(dependent_false<Detail>,
                "Hierarchy: periods must strictly increase from the smallest group to the largest");
  static constexpr bool holds = true;
};
template <Message Detail>
struct hierarchy_rule<HierarchyRule::group_sizes_not_increasing, Detail> {
  static_assert(dependent_false<Detail>, "Hierarchy: group sizes must strictly increase");
  static constexpr bool holds = true;
};
template <Message Detail>
struct hierarchy_rule<HierarchyRule::group_size_not_multiple, Detail> {
  static_assert(dependent_false<Detail>,
                "Hierarchy: each group size must be a multiple of the one before (groups nest)");
  static constexpr bool holds = true;
};
template <Message Detail>
struct hierarchy_rule<HierarchyRule::world_size_mismatch, Detail> {
  static_assert(dependent_false<Detail>,
                "Hierarchy: the last group size must equal the world size");
  static constexpr bool holds = true;
};

template <class... Ls>
inline constexpr std::array<LevelSpec, sizeof...(Ls)> level_specs{
    LevelSpec{static_cast<std::size_t>(Ls::period), static_cast<std::size_t>(Ls::group_size)}...};

template <class... Ls>
inline constexpr RuleCheck hierarchy_check = check_levels(level_specs<Ls...>);

}  // namespace detail

//! Levels listed from the smallest group to the largest. Periods are positive and strictly
//! increase; group sizes strictly increase and each divides the next; the last group spans the
//! world. Using a `Hierarchy` that breaks a rule fails to compile; the diagnostic shows the rule
//! and, in the instantiation line above it, e.g.
//! `"Hierarchy: level 2 group size 30 is not a multiple of level 1 group size 8"`. Levels are
//! numbered from 0.
//!
//! \code
//! using H = strata::Hierarchy<strata::Level<2, 8>, strata::Level<4, 32>, strata::Level<8, 64>>;
//! static_assert(H::num_levels == 3 && H::world_size == 64 && H::hyper_period == 8);
//! static_assert(H::level<1>::group_size == 32 && H::levels[2].period == 8);
//! \endcode
template <level_type... Ls>
struct Hierarchy {
 private:
  static constexpr detail::RuleCheck check_ = detail::hierarchy_check<Ls...>;
  static_assert(detail::hierarchy_rule<check_.rule, check_.message>::holds);

  static constexpr std::size_t compute_hyper_period() {
    std::size_t l = 1;
    for (const LevelSpec& s : detail::level_specs<Ls...>) {
      if (!detail::checked_lcm(l, s.period, l)) {
        throw "Hierarchy: the least common multiple of the periods overflows std::size_t";
      }
    }
    return l;
  }

 public:
  //! The levels as a Boost.MP11 list, for `mp_for_each` and friends.
  using level_list = boost::mp11::mp_list<Ls...>;
  //! The `I`-th level type (0 = smallest group).
  template <std::size_t I>
  using level = boost::mp11::mp_at_c<level_list, I>;

  static constexpr std::size_t num_levels = sizeof...(Ls);
  //! The levels as values, smallest group first.
  static constexpr std::array<LevelSpec, num_levels> levels = detail::level_specs<Ls...>;
  //! The last group spans every rank.
  static constexpr std::size_t world_size = num_levels == 0 ? 0 : levels[num_levels - 1].group_size;
  //! The least common multiple of the periods: the schedule repeats with this period.
  static constexpr std::size_t hyper_period = compute_hyper_period();

  //! The text form `"P:G,P:G,..."` that `RuntimeHierarchy::parse` reads back.
  [[nodiscard]] static std::string to_string() { return detail::format_levels(levels); }
};

//! A type that describes a whole hierarchy: an instance of `Hierarchy` (or a type shaped like one).
//!
//! \code
//! static_assert(strata::hierarchy_type<strata::Hierarchy<strata::Level<1, 4>>>);
//! \endcode
template <class H>
concept hierarchy_type = requires {
  typename H::level_list;
  { H::num_levels } -> std::convertible_to<std::size_t>;
  { H::world_size } -> std::convertible_to<std::size_t>;
  { H::hyper_period } -> std::convertible_to<std::size_t>;
  { H::levels[0] } -> std::convertible_to<LevelSpec>;
};

namespace detail {
template <class H, std::size_t WorldSize>
inline constexpr RuleCheck world_check = check_world_size(H::levels, WorldSize);
}  // namespace detail

//! `H` on a world whose size is known at compile time: fails to compile unless the last group
//! size is `WorldSize`. Code that fixes its world size as a type parameter asks for this.
//!
//! \code
//! using H = strata::Hierarchy<strata::Level<2, 8>, strata::Level<4, 32>>;
//! using OnThirtyTwo = strata::HierarchyForWorld<H, 32>;
//! static_assert(OnThirtyTwo::world_size == 32);
//! \endcode
template <hierarchy_type H, std::size_t WorldSize>
struct HierarchyForWorld : H {
 private:
  static constexpr detail::RuleCheck check_ = detail::world_check<H, WorldSize>;
  static_assert(detail::hierarchy_rule<check_.rule, check_.message>::holds);

 public:
  using hierarchy = H;
};

}  // namespace strata
