// A program outside strata's tree that uses it as a dependency.
#include <strata/strata.hpp>

#include <cstdio>

using H = strata::Hierarchy<strata::Level<2, 8>, strata::Level<4, 32>, strata::Level<8, 64>>;
static_assert(strata::Schedule<H>{}.level_at(8) == 2);

int main() {
  const auto h = strata::RuntimeHierarchy::parse(H::to_string());
  const strata::RuntimeSchedule<> s(h);
  const auto counts = s.sync_counts(64);
  std::printf("%s over 64 steps: %zu %zu %zu syncs\n", h.to_string().c_str(), counts[0], counts[1],
              counts[2]);
  return counts == std::vector<std::size_t>{16, 8, 8} ? 0 : 1;
}
