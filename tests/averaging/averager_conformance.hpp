// Averager conformance, written once against the communicator concept: every rank simulates the
// whole world serially (all ranks' parameters, the schedule rule, group means as plain loops) and
// checks its own parameters against that model after every step, and that the members of each
// group hold the same bits. Runs on the local backend and over MPI.
#pragma once

#include <doctest/doctest.h>

#include <strata/averaging/averager.hpp>
#include <strata/kernels/arena.hpp>

#include <cmath>
#include <cstdint>
#include <cstring>
#include <optional>
#include <random>
#include <span>
#include <vector>

namespace averager_conformance {

using Params = std::vector<std::vector<double>>;  // one rank's tensors

inline const std::vector<std::size_t>& tensor_sizes() {
  static const std::vector<std::size_t> sizes{1, 17, 40, 3};
  return sizes;
}

inline Params initial(int rank) {
  Params p;
  for (std::size_t t = 0; t < tensor_sizes().size(); ++t) {
    p.emplace_back(tensor_sizes()[t]);
    for (std::size_t i = 0; i < tensor_sizes()[t]; ++i) {
      p[t][i] = std::cos(0.01 * static_cast<double>(i + 1 + 100 * t) * (rank + 1));
    }
  }
  return p;
}

inline double gradient(int rank, std::size_t t, std::size_t i, std::size_t step) {
  return std::sin(0.001 * static_cast<double>(i + 1 + 100 * t) * (rank + 1) *
                  static_cast<double>(step + 1));
}

inline void local_step(Params& p, int rank, std::size_t step) {
  for (std::size_t t = 0; t < p.size(); ++t) {
    for (std::size_t i = 0; i < p[t].size(); ++i) p[t][i] -= 0.05 * gradient(rank, t, i, step);
  }
}

inline std::vector<std::span<double>> spans(Params& p) {
  std::vector<std::span<double>> s;
  for (auto& t : p) s.emplace_back(t);
  return s;
}

// The schedule rule, independently: the highest level whose period divides the step.
inline std::optional<std::size_t> expected_level(std::span<const strata::LevelSpec> levels,
                                                 std::size_t warmup, std::size_t step) {
  if (step < warmup) return std::nullopt;
  std::optional<std::size_t> l;
  for (std::size_t i = 0; i < levels.size(); ++i) {
    if (step % levels[i].period == 0) l = i;
  }
  return l;
}

// Every group of `g` consecutive ranks replaced by its mean, as a plain loop.
inline void serial_average(std::vector<Params>& world, std::size_t g) {
  for (std::size_t first = 0; first < world.size(); first += g) {
    for (std::size_t t = 0; t < world[first].size(); ++t) {
      for (std::size_t i = 0; i < world[first][t].size(); ++i) {
        double sum = 0;
        for (std::size_t m = first; m < first + g; ++m) sum += world[m][t][i];
        for (std::size_t m = first; m < first + g; ++m) world[m][t][i] = sum / static_cast<double>(g);
      }
    }
  }
}

inline bool close(double got, double expected) {
  return std::abs(got - expected) <= 1e-12 * std::max(1.0, std::abs(expected));
}

// A random valid hierarchy for a world of n: a chain of divisors of n ending at n, with strictly
// increasing periods. The same seed gives the same hierarchy on every process.
inline std::vector<strata::LevelSpec> random_levels(std::mt19937_64& rng, std::size_t n) {
  // A chain of divisors of n ending at n, with strictly increasing periods.
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
    period += 1 + rng() % 4;
  }
  return levels;
}

// Runs `steps` averaging steps of `h` on this rank, through the fused path (separate tensors) and
// the in-place path (an arena) side by side, against the serial model.
template <class Comm>
void matches_serial(Comm& comm, const strata::RuntimeHierarchy& h, std::size_t warmup,
                    std::size_t steps) {
  const int n = comm.size();
  const int r = comm.rank();
  std::vector<Params> model;
  for (int k = 0; k < n; ++k) model.push_back(initial(k));

  strata::RuntimeHierarchicalAverager<Comm> fused(comm, h, warmup);
  strata::RuntimeHierarchicalAverager<Comm> in_place(comm, h, warmup);
  Params p = initial(r);
  auto tensors = spans(p);
  strata::ParameterArena<double> arena(1024);
  std::vector<std::span<double>> arena_tensors;
  for (const auto& t : p) {
    arena_tensors.push_back(arena.allocate(t.size()));
    std::copy(t.begin(), t.end(), arena_tensors.back().begin());
  }
  std::size_t total = 0;
  for (const auto& t : p) total += t.size();
  std::vector<double> mine(total), everyone(total * static_cast<std::size_t>(n));

  for (std::size_t step = 0; step < steps; ++step) {
    local_step(p, r, step);
    for (std::size_t t = 0; t < p.size(); ++t) {
      for (std::size_t i = 0; i < p[t].size(); ++i) arena_tensors[t][i] -= 0.05 * gradient(r, t, i, step);
    }
    for (int k = 0; k < n; ++k) local_step(model[static_cast<std::size_t>(k)], k, step);

    const auto level = expected_level(h.levels(), warmup, step);
    CAPTURE(step);
    REQUIRE(fused.average(tensors) == level);
    REQUIRE(in_place.average(arena) == level);
    if (level) serial_average(model, h.level(*level).group_size);

    std::size_t bad = 0;
    std::size_t differ = 0;
    for (std::size_t t = 0; t < p.size(); ++t) {
      for (std::size_t i = 0; i < p[t].size(); ++i) {
        bad += !close(p[t][i], model[static_cast<std::size_t>(r)][t][i]);
        differ += std::memcmp(&p[t][i], &arena_tensors[t][i], sizeof(double)) != 0;
      }
    }
    REQUIRE(bad == 0);
    REQUIRE(differ == 0);  // both paths give the same bits

    // The members of each group hold bitwise identical parameters.
    if (level) {
      std::size_t k = 0;
      for (const auto& t : p) {
        for (double x : t) mine[k++] = x;
      }
      comm.all_gather(std::span<const double>(mine), std::span<double>(everyone));
      const std::size_t g = h.level(*level).group_size;
      const std::size_t first = static_cast<std::size_t>(r) / g * g;
      REQUIRE(std::memcmp(everyone.data() + first * total, mine.data(), total * sizeof(double)) == 0);
    }
  }
}

}  // namespace averager_conformance
