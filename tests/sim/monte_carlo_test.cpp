// Statistics and the Monte Carlo estimate.
#include <doctest/doctest.h>

#include <array>
#include <cmath>
#include <stdexcept>
#include <strata/sim/monte_carlo.hpp>
#include <strata/sim/statistics.hpp>
#include <vector>

using strata::RuntimeHierarchy;
using strata::sim::CostModel;
using strata::sim::DelayModel;
using strata::sim::estimate;
using strata::sim::Method;

TEST_CASE("Student t quantiles: the table and the expansion beyond it") {
  // Printed tables of the t distribution (two-sided 95 %).
  CHECK(strata::sim::t_quantile_975(1) == doctest::Approx(12.706).epsilon(1e-4));
  CHECK(strata::sim::t_quantile_975(4) == doctest::Approx(2.776).epsilon(1e-3));
  CHECK(strata::sim::t_quantile_975(9) == doctest::Approx(2.262).epsilon(1e-3));
  CHECK(strata::sim::t_quantile_975(30) == doctest::Approx(2.042).epsilon(1e-3));
  CHECK(strata::sim::t_quantile_975(40) == doctest::Approx(2.021).epsilon(1e-3));
  CHECK(strata::sim::t_quantile_975(120) == doctest::Approx(1.980).epsilon(1e-3));
  // It falls towards the normal quantile as the degrees of freedom grow.
  double previous = strata::sim::t_quantile_975(1);
  for (std::size_t v = 2; v < 2000; ++v) {
    const double q = strata::sim::t_quantile_975(v);
    REQUIRE(q < previous);
    REQUIRE(q > 1.959963);
    previous = q;
  }
  CHECK_THROWS_AS((void)strata::sim::t_quantile_975(0), std::invalid_argument);
}

TEST_CASE("summarize: mean, sample deviation and the t interval, by hand") {
  // 2, 4, 4, 4, 5, 5, 7, 9: mean 5, squared deviations sum to 32, sd sqrt(32/7).
  const std::array<double, 8> xs{2, 4, 4, 4, 5, 5, 7, 9};
  const auto s = strata::sim::summarize(xs);
  CHECK(s.n == 8);
  CHECK(s.mean == 5.0);
  CHECK(s.stddev == doctest::Approx(std::sqrt(32.0 / 7.0)));
  const double half = 2.364624 * std::sqrt(32.0 / 7.0) / std::sqrt(8.0);
  CHECK(s.ci95.lo == doctest::Approx(5.0 - half));
  CHECK(s.ci95.hi == doctest::Approx(5.0 + half));
  const std::array<double, 1> one{3.5};
  const auto p = strata::sim::summarize(one);
  CHECK((p.mean == 3.5 && p.ci95.lo == 3.5 && p.ci95.hi == 3.5));
  CHECK_THROWS_WITH_AS((void)strata::sim::summarize(std::vector<double>{}), "summarize: no samples",
                       std::invalid_argument);
}

TEST_CASE("the estimate's interval holds its mean, and synchronous SGD is its own baseline") {
  const DelayModel d{.step_s = 0.055, .straggler_rate = 0.01, .straggler_delay_s = 1.0};
  const auto sync =
      estimate(Method::synchronous(64), d, CostModel::t4_resnet18(), {.steps = 200, .seeds = 6});
  CHECK(sync.seconds_per_step.n == 6);
  CHECK(sync.seconds_per_step.ci95.contains(sync.seconds_per_step.mean));
  CHECK(sync.seconds_per_step.ci95.lo < sync.seconds_per_step.ci95.hi);
  CHECK(sync.speedup() == 1.0);
  CHECK(sync.speedup_per_seed.mean == 1.0);
  // With 64 ranks straggling 1 % of steps, about 1 - 0.99^64 = 47 % of synchronous steps wait a
  // whole second: between 0.4 and 0.6 s a step.
  CHECK(sync.seconds_per_step.mean > 0.4);
  CHECK(sync.seconds_per_step.mean < 0.6);
}

TEST_CASE("hierarchical SGD beats synchronous SGD under stragglers, seed by seed") {
  const DelayModel d{.step_s = 0.055, .straggler_rate = 0.01, .straggler_delay_s = 1.0};
  const auto m = Method::hierarchical(RuntimeHierarchy::parse("2:8,4:64,8:256"));
  const auto e = estimate(m, d, CostModel::t4_resnet18(), {.steps = 400, .seeds = 5});
  CHECK(e.method == "hierarchical SGD 2:8,4:64,8:256");
  CHECK(e.speedup() > 1.5);
  CHECK(e.speedup_per_seed.ci95.lo > 1.0);
  CHECK(e.seconds_per_step.ci95.contains(e.seconds_per_step.mean));
  REQUIRE(e.syncs.size() == 3);
  // 400 steps: the world at multiples of 8, groups of 64 at the other multiples of 4, groups of
  // 8 at the remaining even steps.
  CHECK(e.syncs[0].count == 100);
  CHECK(e.syncs[1].count == 50);
  CHECK(e.syncs[2].count == 50);
  // Ranks wait at every level; the global one waits the longest, for the whole world's delays.
  CHECK(e.syncs[0].wait_s > 0.0);
  CHECK(e.syncs[2].wait_s > e.syncs[0].wait_s);
}

TEST_CASE("without delays or communication every method takes the step time") {
  const DelayModel d{.step_s = 0.1};
  for (const Method& m : {Method::synchronous(16), Method::local_sgd(16, 4, 3),
                          Method::hierarchical(RuntimeHierarchy::parse("1:4,4:16"))}) {
    const auto e = estimate(m, d, CostModel{}, {.steps = 50, .seeds = 3});
    CHECK(e.seconds_per_step.mean == doctest::Approx(0.1));
    CHECK(e.speedup() == doctest::Approx(1.0));
  }
}

TEST_CASE("estimate refuses zero seeds") {
  CHECK_THROWS_WITH_AS((void)estimate(Method::synchronous(4), DelayModel{.step_s = 1.0},
                                      CostModel{}, {.steps = 10, .seeds = 0}),
                       "estimate: seeds is 0", std::invalid_argument);
}
