// Averager conformance: every behaviour of the averagers written once, as a function template
// over a backend harness, and instantiated for each backend where it applies (local:
// averager_test.cpp; MPI with real processes: tests/mpi/mpi_test.cpp; the NCCL host double:
// nccl_averager_test.cpp). Expected values come from an independent serial computation: every
// rank simulates the whole world (all ranks' parameters, the schedule rule, group means as plain
// loops in double) and checks its own parameters against that model. Each (backend, world size)
// case is a SUBCASE of its own ("nccl with graphs, world 12").
//
// A harness H describes one backend:
//   H::name, H::world_sizes()    its name in case names, the world sizes it runs (MPI: the one
//                                the job was started with)
//   H::run(n, f)                 calls f(r) on every rank r of a world of n
// and r, one rank's view of it:
//   r.rank(), r.size(), r.comm() the communicator the averagers are built on
//   r.averager(schedule)         the backend's averager over `schedule` (a prvalue: device
//                                averagers do not move)
//   r.separate(p), r.packed(p)   the backend's memory, holding the tensors `p`: apart, or in one
//                                buffer averaged in place (`elements()` is that buffer's size)
//   r.write(b, p), r.read(b)     copies between the host and that memory
//   r.average(avg, b)            one averaging step on those tensors, complete when it returns
//   r.gather(values)             every rank's values in rank order, over a host communicator
#pragma once

#include <doctest/doctest.h>

#include <strata/averaging/averager.hpp>
#include <strata/averaging/post_local_sgd.hpp>
#include <strata/error.hpp>
#include <strata/hierarchy/runtime_hierarchy.hpp>
#include <strata/schedule/schedule.hpp>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <optional>
#include <random>
#include <span>
#include <stdexcept>
#include <string>
#include <string_view>
#include <type_traits>
#include <vector>

#include "../comm/conformance.hpp"
#include "../tools/random_levels.hpp"

namespace averager_conformance {

template <class T>
using Params = std::vector<std::vector<T>>;  // one rank's tensors

using Model = Params<double>;

inline const std::vector<std::size_t>& tensor_sizes() {
  static const std::vector<std::size_t> sizes{1, 17, 40, 3};
  return sizes;
}

inline double initial_value(int rank, std::size_t t, std::size_t i) {
  return std::cos(0.01 * static_cast<double>(i + 1 + 100 * t) * (rank + 1));
}

inline double gradient(int rank, std::size_t t, std::size_t i, std::size_t step) {
  return std::sin(0.001 * static_cast<double>(i + 1 + 100 * t) * (rank + 1) *
                  static_cast<double>(step + 1));
}

template <class T>
Params<T> initial(int rank) {
  Params<T> p;
  for (std::size_t t = 0; t < tensor_sizes().size(); ++t) {
    p.emplace_back(tensor_sizes()[t]);
    for (std::size_t i = 0; i < tensor_sizes()[t]; ++i) {
      p[t][i] = static_cast<T>(initial_value(rank, t, i));
    }
  }
  return p;
}

// One step of "training" between two averagings, the same on a rank and in the model.
template <class T>
void local_step(Params<T>& p, int rank, std::size_t step) {
  for (std::size_t t = 0; t < p.size(); ++t) {
    for (std::size_t i = 0; i < p[t].size(); ++i) {
      p[t][i] = static_cast<T>(static_cast<double>(p[t][i]) - 0.05 * gradient(rank, t, i, step));
    }
  }
}

// The schedule rule, independently: nothing before warm-up, then the highest level whose period
// divides the step counted from `origin`.
inline std::optional<std::size_t> expected_level(std::span<const strata::LevelSpec> levels,
                                                 std::size_t warmup, std::size_t step,
                                                 std::size_t origin = 0) {
  if (step < warmup) return std::nullopt;
  std::optional<std::size_t> l;
  for (std::size_t i = 0; i < levels.size(); ++i) {
    if ((step - origin) % levels[i].period == 0) l = i;
  }
  return l;
}

// Every group of `g` consecutive ranks replaced by its mean, as a plain loop.
inline void serial_average(std::vector<Model>& world, std::size_t g) {
  for (std::size_t first = 0; first < world.size(); first += g) {
    for (std::size_t t = 0; t < world[first].size(); ++t) {
      for (std::size_t i = 0; i < world[first][t].size(); ++i) {
        double sum = 0;
        for (std::size_t m = first; m < first + g; ++m) sum += world[m][t][i];
        for (std::size_t m = first; m < first + g; ++m) {
          world[m][t][i] = sum / static_cast<double>(g);
        }
      }
    }
  }
}

inline std::vector<Model> initial_world(int n) {
  std::vector<Model> world;
  for (int k = 0; k < n; ++k) world.push_back(initial<double>(k));
  return world;
}

// The model is exact in double; a rank rounds to T at every step. Over the few dozen steps of a
// case the difference stays far below this for T, and far above it for a wrong group or scale.
template <class T>
double tolerance() {
  return std::is_same_v<T, float> ? 1e-4 : 1e-12;
}

// Elements of `got` that differ from the model by more than T's tolerance.
// Whether a backend's all-reduce sums each element in an order that does not depend on the
// buffer's size, so that the tensor-list path and the in-place arena path (whose buffer holds
// padding) give the same bits. A backend whose algorithm splits the buffer by its size (gloo's
// ring) specialises it to false; the two paths then agree to rounding.
template <class Comm>
inline constexpr bool size_independent_sums = true;

template <class T>
std::size_t mismatches(const Params<T>& got, const Model& expected) {
  std::size_t bad = 0;
  for (std::size_t t = 0; t < got.size(); ++t) {
    for (std::size_t i = 0; i < got[t].size(); ++i) {
      const double e = expected[t][i];
      bad += !(std::abs(static_cast<double>(got[t][i]) - e) <=
               tolerance<T>() * std::max(1.0, std::abs(e)));
    }
  }
  return bad;
}

template <class T>
bool same_bits(const Params<T>& a, const Params<T>& b) {
  if (a.size() != b.size()) return false;
  for (std::size_t t = 0; t < a.size(); ++t) {
    if (a[t].size() != b[t].size() ||
        std::memcmp(a[t].data(), b[t].data(), a[t].size() * sizeof(T)) != 0) {
      return false;
    }
  }
  return true;
}

template <class T>
std::vector<T> flatten(const Params<T>& p) {
  std::vector<T> flat;
  for (const auto& t : p) flat.insert(flat.end(), t.begin(), t.end());
  return flat;
}

inline std::size_t total_elements(const std::vector<std::size_t>& sizes) {
  std::size_t n = 0;
  for (std::size_t s : sizes) n += s;
  return n;
}

// A random valid hierarchy for a world of n: a chain of divisors of n ending at n, with strictly
// increasing periods. The same seed gives the same hierarchy on every process.
inline std::vector<strata::LevelSpec> random_levels(std::mt19937_64& rng, std::size_t n) {
  return test_tools::random_levels(rng, n, 4);
}

// Two levels where the world allows: nodes of the smallest divisor of n above 1 (ranks alone
// when n is prime), period 2, then the world; a world of one has one level, of period
// `top_period - 1`.
inline strata::RuntimeHierarchy two_levels(std::size_t n, std::size_t top_period = 3) {
  if (n == 1) return strata::RuntimeHierarchy({{top_period - 1, 1}});
  std::size_t node = 1;
  for (std::size_t d = 2; d < n; ++d) {
    if (n % d == 0) {
      node = d;
      break;
    }
  }
  return strata::RuntimeHierarchy({{2, node}, {top_period, n}});
}

// The world sizes of H that a behaviour runs on: those of at least `min` ranks.
template <class H>
std::vector<int> worlds(int min = 1) {
  std::vector<int> sizes;
  for (int n : H::world_sizes()) {
    if (n >= min) sizes.push_back(n);
  }
  return sizes;
}

// --- behaviours: each on one rank ---------------------------------------------------------------

// `steps` steps of hierarchy `h` on elements of type T: the fused path (tensors apart) and the
// in-place path (one buffer) side by side, each against the serial model; both give the same
// bits, and the members of each group hold the same bits.
template <class T, class Rank>
void matches_serial(Rank& r, const strata::RuntimeHierarchy& h, std::size_t warmup,
                    std::size_t steps) {
  const int n = r.size();
  const int me = r.rank();
  std::vector<Model> model = initial_world(n);
  auto fused = r.averager(strata::RuntimeSchedule<>(h, warmup));
  auto in_place = r.averager(strata::RuntimeSchedule<>(h, warmup));
  Params<T> p = initial<T>(me);
  auto apart = r.separate(p);
  auto together = r.packed(p);
  const std::size_t total = total_elements(tensor_sizes());

  for (std::size_t step = 0; step < steps; ++step) {
    CAPTURE(step);
    local_step(p, me, step);
    for (int k = 0; k < n; ++k) local_step(model[static_cast<std::size_t>(k)], k, step);
    r.write(apart, p);
    r.write(together, p);
    const auto level = expected_level(h.levels(), warmup, step);
    REQUIRE(r.average(fused, apart) == level);
    REQUIRE(r.average(in_place, together) == level);
    if (level) serial_average(model, h.level(*level).group_size);

    p = r.read(apart);
    CHECK(mismatches(p, model[static_cast<std::size_t>(me)]) == 0);
    if constexpr (size_independent_sums<std::remove_cvref_t<decltype(r.comm())>>) {
      CHECK(same_bits(p, r.read(together)));  // both paths give the same bits
    } else {
      CHECK(mismatches(r.read(together), model[static_cast<std::size_t>(me)]) == 0);
    }
    if (level) {
      // The members of each group hold bitwise identical parameters.
      const std::vector<T> mine = flatten(p);
      const std::vector<T> everyone = r.gather(std::span<const T>(mine));
      const std::size_t g = h.level(*level).group_size;
      const std::size_t first = static_cast<std::size_t>(me) / g * g;
      std::size_t differ = 0;
      for (std::size_t m = first; m < first + g; ++m) {
        differ += std::memcmp(everyone.data() + m * total, mine.data(), total * sizeof(T)) != 0;
      }
      CHECK(differ == 0);
    }
  }
}

// One rank passes tensors of another size: the averaging fails on every member with the same
// usage_error, naming that rank; the parameters and the step are as they were; the retry with
// the right tensors runs the same step and gives the serial mean.
template <class Rank>
void failed_averaging_changes_nothing(Rank& r) {
  const int n = r.size();
  const int me = r.rank();
  const int bad = n - 1;
  const std::string who = "rank " + std::to_string(bad);
  const strata::RuntimeHierarchy h({{1, static_cast<std::size_t>(n)}});  // the world, each step
  auto fused = r.averager(strata::RuntimeSchedule<>(h));
  auto in_place = r.averager(strata::RuntimeSchedule<>(h));
  const Params<double> p = initial<double>(me);
  Params<double> longer = p;
  longer.back().push_back(7.0);
  auto apart = r.separate(p);
  auto apart_longer = r.separate(longer);
  auto together = r.packed(p);
  auto together_longer = r.packed(longer);

  const std::size_t total = total_elements(tensor_sizes());
  // Backends with a collective over tensor lists (the local backend's all_reduce_tensors) average
  // separate tensors with it and name the tensor that differs; the others compare flat buffers.
  constexpr bool tensor_lists =
      requires(decltype(r.comm()) c, std::span<const std::span<double>> t) {
    c.all_reduce_tensors(t, strata::ReduceOp::average);
  };
  const std::size_t last = tensor_sizes().size() - 1;
  conformance::expect_usage_error(
      me, tensor_lists ? "all_reduce_tensors" : "all_reduce",
      tensor_lists ? "rank 0 and " + who + " disagree: tensor " + std::to_string(last) + " has " +
                         std::to_string(tensor_sizes()[last]) + " elements on rank 0, " +
                         std::to_string(tensor_sizes()[last] + 1) + " on " + who
                   : "rank 0 and " + who + " disagree: rank 0 passed " + std::to_string(total) +
                         " elements, " + who + " passed " + std::to_string(total + 1),
      [&] { (void)r.average(fused, me == bad ? apart_longer : apart); });
  conformance::expect_usage_error(
      me, "all_reduce",
      "rank 0 and " + who + " disagree: rank 0 passed " + std::to_string(together.elements()) +
          " elements, " + who + " passed " + std::to_string(together_longer.elements()),
      [&] { (void)r.average(in_place, me == bad ? together_longer : together); });
  CHECK(fused.step() == 0);
  CHECK(in_place.step() == 0);
  CHECK(same_bits(r.read(apart), p));
  CHECK(same_bits(r.read(together), p));
  CHECK(same_bits(r.read(apart_longer), longer));
  CHECK(same_bits(r.read(together_longer), longer));

  std::vector<Model> model = initial_world(n);
  serial_average(model, static_cast<std::size_t>(n));
  REQUIRE(r.average(fused, apart) == 0);
  REQUIRE(r.average(in_place, together) == 0);
  CHECK(fused.step() == 1);
  CHECK(in_place.step() == 1);
  CHECK(mismatches(r.read(apart), model[static_cast<std::size_t>(me)]) == 0);
  if constexpr (size_independent_sums<std::remove_cvref_t<decltype(r.comm())>>) {
    CHECK(same_bits(r.read(together), r.read(apart)));
  } else {
    CHECK(mismatches(r.read(together), model[static_cast<std::size_t>(me)]) == 0);
  }
}

// An averager restored from a saved state continues the schedule it was saved from: the run
// interrupted after 7 steps ends with the same bits as the straight run. A state of another
// hierarchy is refused.
template <class Rank>
void restore_continues_the_schedule(Rank& r) {
  const auto n = static_cast<std::size_t>(r.size());
  const int me = r.rank();
  const strata::RuntimeHierarchy h = two_levels(n);
  const std::size_t warmup = 1;
  auto run = [&](auto& avg, auto& buffers, Params<double>& p, std::size_t from, std::size_t to) {
    for (std::size_t step = from; step < to; ++step) {
      local_step(p, me, step);
      r.write(buffers, p);
      CHECK(r.average(avg, buffers) == expected_level(h.levels(), warmup, step));
      p = r.read(buffers);
    }
  };
  Params<double> straight = initial<double>(me);
  {
    auto avg = r.averager(strata::RuntimeSchedule<>(h, warmup));
    auto buffers = r.separate(straight);
    run(avg, buffers, straight, 0, 20);
  }
  Params<double> resumed = initial<double>(me);
  auto buffers = r.separate(resumed);
  strata::AveragerState saved;
  {
    auto avg = r.averager(strata::RuntimeSchedule<>(h, warmup));
    run(avg, buffers, resumed, 0, 7);
    saved = avg.state();
  }
  CHECK(saved == strata::AveragerState{7, warmup, h.to_string(), "absolute"});
  auto restarted = r.averager(strata::RuntimeSchedule<>(h, warmup));
  restarted.restore(saved);
  CHECK(restarted.step() == 7);
  run(restarted, buffers, resumed, 7, 20);
  CHECK(same_bits(resumed, straight));

  const strata::RuntimeHierarchy other = two_levels(n, 5);
  auto elsewhere = r.averager(strata::RuntimeSchedule<>(other, warmup));
  const std::string refused = "AveragerClock: cannot restore a state of hierarchy " +
                              h.to_string() + ", warm-up 1, phase absolute into hierarchy " +
                              other.to_string() + ", warm-up 1, phase absolute";
  CHECK_THROWS_WITH_AS(elsewhere.restore(saved), refused.c_str(), std::invalid_argument);
  CHECK(elsewhere.step() == 0);
}

// Construction checks the hierarchy against the world size, on every rank, before any
// collective.
template <class Rank>
void hierarchy_checked_against_world(Rank& r) {
  const auto n = static_cast<std::size_t>(r.size());
  const strata::RuntimeHierarchy wrong({{1, n}, {2, 2 * n}});
  const std::string message = "Hierarchy: level 1 group size " + std::to_string(2 * n) +
                              " is not the world size " + std::to_string(n) +
                              "; the largest group must span the whole world";
  CHECK_THROWS_WITH_AS((void)r.averager(strata::RuntimeSchedule<>(wrong)), message.c_str(),
                       std::invalid_argument);
}

// Plain local SGD: with the warm-up-relative phase the period counts from the end of warm-up,
// so the first step after it averages.
template <class Rank>
void warmup_relative_period(Rank& r) {
  const int n = r.size();
  const int me = r.rank();
  const std::size_t period = 4;
  const std::size_t warmup = 3;
  const strata::RuntimeHierarchy h({{period, static_cast<std::size_t>(n)}});
  auto avg = r.averager(strata::RuntimeSchedule<strata::WarmupRelativePhase>(h, warmup));
  std::vector<Model> model = initial_world(n);
  Params<double> p = initial<double>(me);
  auto buffers = r.separate(p);
  std::size_t runs = 0;
  for (std::size_t step = 0; step < 15; ++step) {
    CAPTURE(step);
    const bool due = step >= warmup && (step - warmup) % period == 0;
    const std::optional<std::size_t> due_level = due ? std::optional<std::size_t>(0) : std::nullopt;
    CHECK(expected_level(h.levels(), warmup, step, warmup) == due_level);
    local_step(p, me, step);
    for (int k = 0; k < n; ++k) local_step(model[static_cast<std::size_t>(k)], k, step);
    r.write(buffers, p);
    const auto level = r.average(avg, buffers);
    CHECK(level == due_level);
    if (due) serial_average(model, static_cast<std::size_t>(n));
    p = r.read(buffers);
    CHECK(mismatches(p, model[static_cast<std::size_t>(me)]) == 0);
    runs += level.has_value();
  }
  CHECK(runs == 3);  // steps 3, 7, 11
}

// A compile-time hierarchy averages like its run-time twin, bit for bit, on the schedule rule.
template <strata::hierarchy_type Hier, class Rank>
void compile_time_matches_run_time(Rank& r) {
  const int me = r.rank();
  const std::size_t warmup = 4;
  auto ct = r.averager(strata::Schedule<Hier>(warmup));
  auto rt = r.averager(strata::RuntimeSchedule<>(strata::RuntimeHierarchy::from<Hier>(), warmup));
  std::vector<Model> model = initial_world(r.size());
  Params<double> p = initial<double>(me);
  auto a = r.separate(p);
  auto b = r.separate(p);
  for (std::size_t step = 0; step < 40; ++step) {
    CAPTURE(step);
    local_step(p, me, step);
    for (int k = 0; k < r.size(); ++k) local_step(model[static_cast<std::size_t>(k)], k, step);
    r.write(a, p);
    r.write(b, p);
    const auto level = expected_level(Hier::levels, warmup, step);
    REQUIRE(r.average(ct, a) == level);
    REQUIRE(r.average(rt, b) == level);
    if (level) serial_average(model, Hier::levels[*level].group_size);
    p = r.read(a);
    CHECK(same_bits(p, r.read(b)));
    CHECK(mismatches(p, model[static_cast<std::size_t>(me)]) == 0);
  }
}

// Post-local SGD (host averagers): gradients averaged over the world during warm-up, then per
// node every step when `intra_node`, else not at all. Nodes are the smallest proper divisor of
// n above 1 (one rank each when n is prime).
template <class Rank>
void post_local_sgd(Rank& r, bool intra) {
  const auto n = static_cast<std::size_t>(r.size());
  const auto me = static_cast<std::size_t>(r.rank());
  const strata::RuntimeHierarchy h = two_levels(n);
  const std::size_t node = h.level(0).group_size;
  const std::size_t warmup = 2;
  auto avg = r.averager(strata::RuntimeSchedule<>(h, warmup));
  strata::PostLocalGradientSync sync(avg, r.comm(), static_cast<int>(node), intra);
  std::vector<double> w{0.0};
  for (std::size_t step = 0; step < 6; ++step) {
    CAPTURE(step);
    const double scale = static_cast<double>(step + 1);
    std::vector<double> g{static_cast<double>(me) * scale};
    std::vector<std::span<double>> grads{g};
    // The serial expectation: which group averages, and the mean of its ranks.
    std::size_t first = me;
    std::size_t members = 1;
    strata::GradientSync where = strata::GradientSync::none;
    if (step < warmup || (intra && node == n)) {
      where = strata::GradientSync::world;
      first = 0;
      members = n;
    } else if (intra && node > 1) {
      where = strata::GradientSync::node;
      first = me / node * node;
      members = node;
    }
    double sum = 0;
    for (std::size_t k = first; k < first + members; ++k) sum += static_cast<double>(k) * scale;
    CHECK(sync.sync(grads) == where);
    CHECK(g[0] == doctest::Approx(sum / static_cast<double>(members)).epsilon(1e-14));
    avg.average(std::span<double>(w));
  }
}

// --- suites: one behaviour, every world of a backend, one SUBCASE each ---------------------------

// `trials` random hierarchies per world; the seed and the world size give the hierarchies, so that
// every backend runs the same ones.
template <class H, class T = double>
void random_hierarchies(std::uint64_t seed, int trials) {
  // Each element type its own case: "local, float, world 7".
  const std::string backend = std::string(H::name) + (std::is_same_v<T, float> ? ", float" : "");
  conformance::for_each_world(backend, worlds<H>(), [&](int n) {
    std::mt19937_64 rng(seed * 1000 + static_cast<std::uint64_t>(n));
    for (int trial = 0; trial < trials; ++trial) {
      const strata::RuntimeHierarchy h(random_levels(rng, static_cast<std::size_t>(n)));
      const std::size_t warmup = rng() % 4;
      // Long enough for every level to run, short enough for 16 ranks on two cores.
      const std::size_t steps = warmup + std::min<std::size_t>(2 * h.hyper_period(), 40) + 1;
      CAPTURE(h.to_string());
      CAPTURE(warmup);
      H::run(n, [&](auto& r) { matches_serial<T>(r, h, warmup, steps); });
    }
  });
}

template <class H>
void failed_averaging() {
  conformance::for_each_world(H::name, worlds<H>(2), [](int n) {
    H::run(n, [](auto& r) { failed_averaging_changes_nothing(r); });
  });
}

template <class H>
void restore() {
  conformance::for_each_world(H::name, worlds<H>(), [](int n) {
    H::run(n, [](auto& r) { restore_continues_the_schedule(r); });
  });
}

template <class H>
void world_size_check() {
  conformance::for_each_world(H::name, worlds<H>(), [](int n) {
    H::run(n, [](auto& r) { hierarchy_checked_against_world(r); });
  });
}

template <class H>
void warmup_relative() {
  conformance::for_each_world(H::name, worlds<H>(),
                              [](int n) { H::run(n, [](auto& r) { warmup_relative_period(r); }); });
}

// Runs on the worlds of H whose size is Hier's.
template <class H, strata::hierarchy_type Hier>
void compile_time_hierarchy() {
  const int n = static_cast<int>(Hier::levels.back().group_size);
  const std::vector<int> all = worlds<H>();
  if (std::find(all.begin(), all.end(), n) == all.end()) return;
  conformance::for_each_world(H::name, {n}, [](int size) {
    H::run(size, [](auto& r) { compile_time_matches_run_time<Hier>(r); });
  });
}

template <class H>
void post_local() {
  conformance::for_each_world(H::name, worlds<H>(), [](int n) {
    for (const bool intra : {true, false}) {
      CAPTURE(intra);
      H::run(n, [&](auto& r) { post_local_sgd(r, intra); });
    }
  });
}

}  // namespace averager_conformance
