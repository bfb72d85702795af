// A random valid hierarchy for a world of n, shared by the averager conformance suites and the
// fault campaign: a chain of divisors of n ending at n, with strictly increasing periods (each
// 1 to `max_step` more than the one before). The same seed gives the same hierarchy on every
// process.
#pragma once

#include <strata/hierarchy/level.hpp>

#include <cstddef>
#include <random>
#include <vector>

namespace test_tools {

inline std::vector<strata::LevelSpec> random_levels(std::mt19937_64& rng, std::size_t n,
                                                    std::size_t max_step) {
  std::vector<std::size_t> sizes{n};
  while (sizes.front() > 1 && rng() % 3 != 0) {
    std::vector<std::size_t> divisors;
    for (std::size_t d = 1; d < sizes.front(); ++d) {
      if (sizes.front() % d == 0) divisors.push_back(d);
    }
    sizes.insert(sizes.begin(), divisors[rng() % divisors.size()]);
  }
  std::vector<strata::LevelSpec> levels;
  std::size_t period = 1 + rng() % 3;
  for (std::size_t g : sizes) {
    levels.push_back({period, g});
    period += 1 + rng() % max_step;
  }
  return levels;
}

}  // namespace test_tools
