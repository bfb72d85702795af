#pragma once
//! \file
//! Phase origins: from which step a level's period is counted.

#include <concepts>
#include <cstddef>
#include <string_view>

namespace strata {

//! Periods count from step 0, and warm-up only masks the steps before it: after warm-up W a level
//! of period P runs at the steps `s >= W` with `s % P == 0`. This is hierarchical SGD as in
//! PyTorch's `HierarchicalModelAverager`, and the default of every hierarchical schedule.
//!
//! \code
//! static_assert(strata::AbsolutePhase::origin(/*warmup=*/3) == 0);
//! \endcode
struct AbsolutePhase {
  static constexpr std::string_view name = "absolute";
  [[nodiscard]] static constexpr std::size_t origin(std::size_t /*warmup*/) noexcept { return 0; }
};

//! Periods count from the end of warm-up: a level of period P runs at the steps `s >= W` with
//! `(s - W) % P == 0`, so the first step after warm-up always averages. This is plain local SGD
//! as in PyTorch's `PeriodicModelAverager`.
//!
//! \code
//! static_assert(strata::WarmupRelativePhase::origin(/*warmup=*/3) == 3);
//! \endcode
struct WarmupRelativePhase {
  static constexpr std::string_view name = "warm-up relative";
  [[nodiscard]] static constexpr std::size_t origin(std::size_t warmup) noexcept { return warmup; }
};

//! A phase-origin policy: `P::origin(warmup)` is the step from which periods are counted.
//!
//! \code
//! static_assert(strata::phase_policy<strata::AbsolutePhase>);
//! static_assert(strata::phase_policy<strata::WarmupRelativePhase>);
//! \endcode
template <class P>
concept phase_policy = requires(std::size_t warmup) {
  { P::origin(warmup) } -> std::same_as<std::size_t>;
  { P::name } -> std::convertible_to<std::string_view>;
};

}  // namespace strata
