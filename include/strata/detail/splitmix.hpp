#pragma once
// splitmix64's output function, the one hash of a 64-bit word the library uses (the simulator's
// counter-based random numbers, digests that members compare).

#include <cstdint>

namespace strata::detail {

// A bijection of 64-bit words whose every output bit depends on every input bit.
[[nodiscard]] constexpr std::uint64_t splitmix64(std::uint64_t x) noexcept {
  x += 0x9e3779b97f4a7c15ULL;
  x = (x ^ (x >> 30U)) * 0xbf58476d1ce4e5b9ULL;
  x = (x ^ (x >> 27U)) * 0x94d049bb133111ebULL;
  return x ^ (x >> 31U);
}

}  // namespace strata::detail
