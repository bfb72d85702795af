// The compile-time and run-time schedules against an independent naive loop, over many random
// valid hierarchies.
#include <doctest/doctest.h>

#include <boost/mp11/algorithm.hpp>
#include <strata/schedule/schedule.hpp>

#include <cstdint>
#include <random>
#include <utility>
#include <vector>

namespace {

// The rule of docs/design.md written as plainly as possible: scan all levels from the smallest
// and keep the last one whose period divides the step counted from the phase origin.
long naive_level(const std::vector<strata::LevelSpec>& levels, std::size_t warmup, bool relative,
                 std::size_t step) {
  if (step < warmup) return -1;
  const std::size_t t = relative ? step - warmup : step;
  long found = -1;
  for (std::size_t i = 0; i < levels.size(); ++i) {
    if (t % levels[i].period == 0) found = static_cast<long>(i);
  }
  return found;
}

std::vector<std::size_t> naive_counts(const std::vector<strata::LevelSpec>& levels,
                                      std::size_t warmup, bool relative, std::size_t steps) {
  std::vector<std::size_t> c(levels.size());
  for (std::size_t s = 0; s < steps; ++s) {
    const long l = naive_level(levels, warmup, relative, s);
    if (l >= 0) ++c[static_cast<std::size_t>(l)];
  }
  return c;
}

long as_long(std::optional<std::size_t> l) { return l ? static_cast<long>(*l) : -1; }

// A deterministic generator of valid hierarchies, usable in constant expressions so that the
// same random hierarchies also exist as types.
struct Random {
  std::uint64_t state;
  constexpr std::uint64_t next() {
    state = state * 6364136223846793005ULL + 1442695040888963407ULL;
    return state >> 33;
  }
  constexpr std::size_t below(std::size_t n) { return static_cast<std::size_t>(next() % n); }
};

struct Levels {
  std::size_t n = 0;
  strata::LevelSpec l[5]{};
};

constexpr Levels random_levels(std::uint64_t seed) {
  Random rng{seed * 7919 + 17};
  Levels out;
  out.n = 1 + rng.below(5);
  std::size_t period = 1 + rng.below(4);
  std::size_t group = 1 + rng.below(3);
  for (std::size_t i = 0; i < out.n; ++i) {
    out.l[i] = {period, group};
    period += 1 + rng.below(6);  // strictly increasing, not necessarily dividing
    group *= 2 + rng.below(2);   // each divides the next
  }
  return out;
}

template <std::uint64_t Seed, class Is>
struct make_hierarchy;
template <std::uint64_t Seed, std::size_t... I>
struct make_hierarchy<Seed, std::index_sequence<I...>> {
  static constexpr Levels r = random_levels(Seed);
  using type = strata::Hierarchy<strata::Level<r.l[I].period, r.l[I].group_size>...>;
};
template <std::uint64_t Seed>
using RandomHierarchy =
    typename make_hierarchy<Seed, std::make_index_sequence<random_levels(Seed).n>>::type;

template <class Phase, class H>
void check_both_forms(std::size_t warmup, std::size_t steps) {
  constexpr bool relative = std::is_same_v<Phase, strata::WarmupRelativePhase>;
  const std::vector<strata::LevelSpec> levels(H::levels.begin(), H::levels.end());
  const strata::Schedule<H, Phase> ct(warmup);
  const strata::RuntimeSchedule<Phase> rt(strata::RuntimeHierarchy::from<H>(), warmup);
  CAPTURE(H::to_string());
  CAPTURE(warmup);
  CAPTURE(relative);
  for (std::size_t s = 0; s < steps; ++s) {
    const long expected = naive_level(levels, warmup, relative, s);
    if (as_long(ct.level_at(s)) != expected || as_long(rt.level_at(s)) != expected) {
      CAPTURE(s);
      CHECK(as_long(ct.level_at(s)) == expected);
      CHECK(as_long(rt.level_at(s)) == expected);
      return;
    }
  }
  for (std::size_t n : {std::size_t{0}, std::size_t{1}, warmup, warmup + 1, steps / 3, steps}) {
    CAPTURE(n);
    const auto expected = naive_counts(levels, warmup, relative, n);
    const auto c = ct.sync_counts(n);
    CHECK(std::vector<std::size_t>(c.begin(), c.end()) == expected);
    CHECK(rt.sync_counts(n) == expected);
  }
}

}  // namespace

TEST_CASE("compile-time and run-time schedules match the naive loop on random hierarchies") {
  // 48 random hierarchies as types, each checked over 3000 steps, both phases, three warm-ups.
  boost::mp11::mp_for_each<boost::mp11::mp_iota_c<48>>([](auto seed) {
    using H = RandomHierarchy<decltype(seed)::value>;
    for (std::size_t warmup : {std::size_t{0}, std::size_t{1}, std::size_t{37}}) {
      check_both_forms<strata::AbsolutePhase, H>(warmup, 3000);
      check_both_forms<strata::WarmupRelativePhase, H>(warmup, 3000);
    }
  });
}

TEST_CASE("run-time schedules match the naive loop on many more random hierarchies") {
  std::mt19937_64 rng(20261122);
  for (int trial = 0; trial < 400; ++trial) {
    std::vector<strata::LevelSpec> levels;
    const std::size_t n = 1 + rng() % 6;
    std::size_t period = 1 + rng() % 5;
    std::size_t group = 1 + rng() % 4;
    for (std::size_t i = 0; i < n; ++i) {
      levels.push_back({period, group});
      period += 1 + rng() % 9;
      group *= 2 + rng() % 3;
    }
    const std::size_t warmup = rng() % 50;
    const std::size_t steps = 2000 + rng() % 3000;
    const bool relative = (rng() & 1) != 0;
    const strata::RuntimeHierarchy h(levels);
    CAPTURE(h.to_string());
    CAPTURE(warmup);
    CAPTURE(relative);
    const strata::RuntimeSchedule<strata::AbsolutePhase> abs_s(h, warmup);
    const strata::RuntimeSchedule<strata::WarmupRelativePhase> rel_s(h, warmup);
    bool ok = true;
    for (std::size_t s = 0; s < steps && ok; ++s) {
      const long got = relative ? as_long(rel_s.level_at(s)) : as_long(abs_s.level_at(s));
      if (got != naive_level(levels, warmup, relative, s)) {
        CAPTURE(s);
        CHECK(got == naive_level(levels, warmup, relative, s));
        ok = false;
      }
    }
    const auto counts = relative ? rel_s.sync_counts(steps) : abs_s.sync_counts(steps);
    CHECK(counts == naive_counts(levels, warmup, relative, steps));
  }
}

TEST_CASE("sync counts stay exact over long runs without walking every step") {
  // 10^12 steps: the hyper-period decomposition makes this instant; the expected numbers follow
  // from inclusion-exclusion by hand for periods 2, 4, 8 (each divides the next).
  const strata::RuntimeSchedule<> s(strata::RuntimeHierarchy::parse("2:8,4:32,8:64"));
  const std::size_t n = 1'000'000'000'000;
  CHECK(s.sync_counts(n) == std::vector<std::size_t>{n / 4, n / 8, n / 8});
  const strata::RuntimeSchedule<> w(strata::RuntimeHierarchy::parse("3:2,5:4"), 10);
  // Steps [10, 10^12): multiples of 5 (level 1), multiples of 3 but not 15 (level 0).
  const std::size_t fives = (n - 1) / 5 - (10 - 1) / 5;
  const std::size_t threes = (n - 1) / 3 - (10 - 1) / 3;
  const std::size_t fifteens = (n - 1) / 15 - (10 - 1) / 15;
  CHECK(w.sync_counts(n) == std::vector<std::size_t>{threes - fifteens, fives});
}

TEST_CASE("bytes per rank follow the ring all-reduce model") {
  const strata::RuntimeSchedule<> s(strata::RuntimeHierarchy::parse("2:8,4:32,8:64"), 3);
  const std::size_t param_bytes = 46'800'000;  // 11.7 M float32 parameters
  const auto counts = s.sync_counts(1000);
  const auto bytes = s.bytes_per_rank(1000, param_bytes);
  const std::size_t g[] = {8, 32, 64};
  for (std::size_t i = 0; i < 3; ++i) {
    CAPTURE(i);
    CHECK(bytes[i] ==
          doctest::Approx(static_cast<double>(counts[i]) * 2.0 * static_cast<double>(g[i] - 1) /
                          static_cast<double>(g[i]) * static_cast<double>(param_bytes)));
  }
}

TEST_CASE("the pattern is the steady state of every hyper-period") {
  const strata::RuntimeSchedule<> s(strata::RuntimeHierarchy::parse("2:4,3:8,4:16"), 7);
  const auto p = s.pattern();
  REQUIRE(p.size() == 12);
  for (std::size_t step = 7; step < 200; ++step) {
    CAPTURE(step);
    CHECK(s.level_at(step) == p[step % 12]);
  }
  const strata::RuntimeSchedule<strata::WarmupRelativePhase> r(s.hierarchy(), 7);
  for (std::size_t step = 7; step < 200; ++step) {
    CAPTURE(step);
    CHECK(r.level_at(step) == p[(step - 7) % 12]);
  }
}
