#pragma once
//! \file
//! Cost of one all-reduce per algorithm: bytes each rank sends and the number of sequential steps.

#include <bit>
#include <concepts>
#include <cstddef>
#include <string_view>

namespace strata {

//! Ring all-reduce: a reduce-scatter then an all-gather around a ring of g ranks, 2(g-1) steps,
//! each rank sending 2(g-1)/g of the buffer. Bandwidth-optimal; what NCCL uses for large buffers.
//!
//! \code
//! static_assert(strata::RingAllReduce::bytes_per_rank(8.0 * 1024, 8) == 2.0 * 7 / 8 * 8 * 1024);
//! static_assert(strata::RingAllReduce::steps(8) == 14);
//! \endcode
struct RingAllReduce {
  static constexpr std::string_view name = "ring";
  [[nodiscard]] static constexpr double bytes_per_rank(double bytes, std::size_t g) noexcept {
    return g <= 1 ? 0.0 : 2.0 * static_cast<double>(g - 1) / static_cast<double>(g) * bytes;
  }
  [[nodiscard]] static constexpr std::size_t steps(std::size_t g) noexcept {
    return g <= 1 ? 0 : 2 * (g - 1);
  }
};

//! Recursive-doubling all-reduce: log2(g) rounds, each rank exchanging the whole buffer per round;
//! latency-optimal for small buffers. When g is not a power of two, the ranks beyond the largest
//! power of two first fold into partners and get the result back: two more rounds of the whole
//! buffer for those pairs.
//!
//! \code
//! static_assert(strata::RecursiveDoublingAllReduce::bytes_per_rank(100.0, 8) == 300.0);
//! static_assert(strata::RecursiveDoublingAllReduce::steps(6) == 4);
//! \endcode
struct RecursiveDoublingAllReduce {
  static constexpr std::string_view name = "recursive-doubling";
  [[nodiscard]] static constexpr double bytes_per_rank(double bytes, std::size_t g) noexcept {
    if (g <= 1) return 0.0;
    const std::size_t rounds = static_cast<std::size_t>(std::bit_width(g) - 1);
    const bool pow2 = std::has_single_bit(g);
    return static_cast<double>(rounds + (pow2 ? 0 : 1)) * bytes;
  }
  [[nodiscard]] static constexpr std::size_t steps(std::size_t g) noexcept {
    if (g <= 1) return 0;
    const std::size_t rounds = static_cast<std::size_t>(std::bit_width(g) - 1);
    return std::has_single_bit(g) ? rounds : rounds + 2;
  }
};

//! A cost model of one all-reduce over `g` ranks: bytes sent per rank and sequential steps.
//!
//! \code
//! static_assert(strata::wire_algorithm<strata::RingAllReduce>);
//! \endcode
template <class A>
concept wire_algorithm = requires(double bytes, std::size_t g) {
  { A::bytes_per_rank(bytes, g) } -> std::same_as<double>;
  { A::steps(g) } -> std::same_as<std::size_t>;
  { A::name } -> std::convertible_to<std::string_view>;
};

}  // namespace strata
