#pragma once
//! \file
//! Counter-based random numbers for the simulator: every draw is a pure function of
//! (seed, stream, a, b), so a rank's delay at a step does not depend on the order in which the
//! simulator visits ranks, and two schedules simulated with one seed see the same stragglers.

#include <cmath>
#include <cstdint>

#include "strata/detail/splitmix.hpp"

namespace strata::detail {

// splitmix64 (strata/detail/splitmix.hpp) serves as a hash of a counter, not as a sequential
// generator.

// Streams keep the draws for different purposes independent of each other.
enum class SimStream : std::uint64_t {
  straggler = 1,
  normal_radius = 2,
  normal_angle = 3,
  shuffle = 4,
};

// 64 random bits for (seed, stream, a, b). Each key word goes through its own round of mixing, so
// keys that differ in any word give unrelated outputs (xor-ing them together first would not).
[[nodiscard]] constexpr std::uint64_t counter_bits(std::uint64_t seed, SimStream stream,
                                                   std::uint64_t a, std::uint64_t b) noexcept {
  std::uint64_t h = splitmix64(seed);
  h = splitmix64(h ^ static_cast<std::uint64_t>(stream));
  h = splitmix64(h ^ a);
  return splitmix64(h ^ b);
}

// A double in [0, 1) with 53 random bits, as exact as a double allows.
[[nodiscard]] constexpr double unit_interval(std::uint64_t bits) noexcept {
  return static_cast<double>(bits >> 11U) * 0x1.0p-53;
}

// A standard normal deviate for (seed, a, b) by the Box-Muller transform; 1 - u keeps the
// logarithm's argument in (0, 1]. Uses the C library's log, sqrt and cos: libraries that round
// those differently may differ in the last bits.
[[nodiscard]] inline double standard_normal(std::uint64_t seed, std::uint64_t a,
                                            std::uint64_t b) noexcept {
  const double u = 1.0 - unit_interval(counter_bits(seed, SimStream::normal_radius, a, b));
  const double v = unit_interval(counter_bits(seed, SimStream::normal_angle, a, b));
  return std::sqrt(-2.0 * std::log(u)) * std::cos(6.283185307179586 * v);
}

}  // namespace strata::detail
