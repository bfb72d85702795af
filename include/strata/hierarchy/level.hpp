#pragma once
//! \file
//! One level of a hierarchy: how often it averages and how large its groups are.

#include <concepts>
#include <cstddef>
#include <span>
#include <string>

namespace strata {

//! A level as a value: the run-time twin of `Level<Period, GroupSize>`.
//!
//! Rank `r` belongs, at a level of group size `g`, to the contiguous block of ranks
//! `[g*floor(r/g), g*floor(r/g)+g)`.
//!
//! \code
//! constexpr strata::LevelSpec l{4, 32};
//! static_assert(l.group_index(70) == 2 && l.group_begin(70) == 64);
//! \endcode
struct LevelSpec {
  std::size_t period = 0;
  std::size_t group_size = 0;

  //! Which group of this level `rank` is in (0-based, contiguous blocks).
  [[nodiscard]] constexpr std::size_t group_index(std::size_t rank) const noexcept {
    return rank / group_size;
  }
  //! The first rank of `rank`'s group.
  [[nodiscard]] constexpr std::size_t group_begin(std::size_t rank) const noexcept {
    return group_index(rank) * group_size;
  }
  //! `rank`'s position inside its group.
  [[nodiscard]] constexpr std::size_t rank_in_group(std::size_t rank) const noexcept {
    return rank % group_size;
  }

  friend constexpr bool operator==(const LevelSpec&, const LevelSpec&) = default;
};

namespace detail {

// The text form "P:G,P:G,..." of a list of levels, which RuntimeHierarchy::parse reads back.
inline std::string format_levels(std::span<const LevelSpec> levels) {
  std::string s;
  for (const LevelSpec& l : levels) {
    if (!s.empty()) s += ',';
    s += std::to_string(l.period) + ':' + std::to_string(l.group_size);
  }
  return s;
}

}  // namespace detail

//! A level as a type: groups of `GroupSize` ranks average their parameters every `Period` steps.
//! The rules that tie levels together are checked by `Hierarchy`, which knows each level's index.
//!
//! \code
//! using Node = strata::Level<2, 8>;  // groups of 8 ranks average every 2 steps
//! static_assert(Node::period == 2 && Node::group_size == 8);
//! \endcode
template <std::size_t Period, std::size_t GroupSize>
struct Level {
  static constexpr std::size_t period = Period;
  static constexpr std::size_t group_size = GroupSize;
  static constexpr LevelSpec spec{Period, GroupSize};
};

//! A type that describes a level: `T::period` and `T::group_size` as compile-time sizes.
//!
//! \code
//! static_assert(strata::level_type<strata::Level<2, 8>>);
//! static_assert(!strata::level_type<int>);
//! \endcode
template <class T>
concept level_type = requires {
  { T::period } -> std::convertible_to<std::size_t>;
  { T::group_size } -> std::convertible_to<std::size_t>;
  requires std::integral<std::remove_cvref_t<decltype(T::period)>>;
  requires std::integral<std::remove_cvref_t<decltype(T::group_size)>>;
};

}  // namespace strata
