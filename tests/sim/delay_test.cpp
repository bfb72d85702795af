// The delay models: exact values where they are deterministic, frequencies and means where they
// are random, and the messages of bad configurations.
#include <doctest/doctest.h>

#include <cmath>
#include <cstdint>
#include <stdexcept>
#include <strata/sim/delay.hpp>

using strata::sim::DelayModel;

TEST_CASE("without delays every step takes the step time") {
  const DelayModel m{.step_s = 0.055};
  m.validate(4);
  for (std::size_t r = 0; r < 4; ++r) {
    for (std::size_t s = 0; s < 50; ++s) CHECK(m.step_time(9, r, s) == 0.055);
  }
}

TEST_CASE("persistent stragglers are always slow by their factor") {
  const DelayModel m{.step_s = 2.0, .slow_ranks = {1, 3}, .slow_factor = 1.5};
  m.validate(4);
  for (std::size_t s = 0; s < 20; ++s) {
    CHECK(m.step_time(1, 0, s) == 2.0);
    CHECK(m.step_time(1, 1, s) == 3.0);
    CHECK(m.step_time(1, 2, s) == 2.0);
    CHECK(m.step_time(1, 3, s) == 3.0);
  }
}

TEST_CASE("events add to their rank and step only, summed when they repeat") {
  const DelayModel m{.step_s = 1.0, .events = {{2, 5, 0.25}, {2, 5, 0.5}, {0, 1, 3.0}}};
  m.validate(3);
  CHECK(m.step_time(0, 2, 5) == 1.75);
  CHECK(m.step_time(0, 0, 1) == 4.0);
  CHECK(m.step_time(0, 2, 4) == 1.0);
  CHECK(m.step_time(0, 1, 5) == 1.0);
}

TEST_CASE("independent stragglers: the delay or nothing, at the given rate, the same for a seed") {
  const DelayModel m{.step_s = 0.05, .straggler_rate = 0.1, .straggler_delay_s = 1.0};
  const std::size_t ranks = 100;
  const std::size_t steps = 1000;
  std::size_t late = 0;
  for (std::size_t r = 0; r < ranks; ++r) {
    for (std::size_t s = 0; s < steps; ++s) {
      const double t = m.step_time(42, r, s);
      REQUIRE((t == 0.05 || t == 0.05 + 1.0));
      if (t > 0.05) ++late;
      REQUIRE(m.step_time(42, r, s) == t);
    }
  }
  // 10^5 Bernoulli(0.1) draws: mean 10^4, standard deviation sqrt(10^5 * 0.1 * 0.9) = 94.9; five
  // deviations either side.
  CHECK(late > 10'000 - 475);
  CHECK(late < 10'000 + 475);

  // Another seed draws other stragglers; rate 0 and 1 are never and always.
  std::size_t same = 0;
  for (std::size_t s = 0; s < steps; ++s) same += m.step_time(42, 0, s) == m.step_time(43, 0, s);
  CHECK(same < steps);
  const DelayModel never{.step_s = 1.0, .straggler_rate = 0.0, .straggler_delay_s = 5.0};
  const DelayModel always{.step_s = 1.0, .straggler_rate = 1.0, .straggler_delay_s = 5.0};
  for (std::size_t s = 0; s < 100; ++s) {
    CHECK(never.step_time(3, 1, s) == 1.0);
    CHECK(always.step_time(3, 1, s) == 6.0);
  }
}

TEST_CASE("log-normal step times keep the mean step time and have the requested spread") {
  const double sigma = 0.5;
  const DelayModel m{.step_s = 2.0, .lognormal_sigma = sigma};
  double sum = 0.0;
  double sum_log = 0.0;
  double sum_log2 = 0.0;
  const std::size_t n = 200'000;
  for (std::size_t i = 0; i < n; ++i) {
    const double t = m.step_time(5, i % 64, i / 64);
    REQUIRE(t > 0.0);
    sum += t;
    const double l = std::log(t / 2.0);
    sum_log += l;
    sum_log2 += l * l;
  }
  const double mean = sum / n;
  const double mean_log = sum_log / n;
  const double var_log = sum_log2 / n - mean_log * mean_log;
  // log(t / step) is normal(-sigma^2/2, sigma^2); then E[t] = step. Standard error of the mean of
  // t: step * sqrt(exp(sigma^2) - 1) / sqrt(n) = 0.0024; allow five.
  CHECK(mean == doctest::Approx(2.0).epsilon(0.006));
  CHECK(mean_log == doctest::Approx(-sigma * sigma / 2).epsilon(0.02));
  CHECK(std::sqrt(var_log) == doctest::Approx(sigma).epsilon(0.01));
}

TEST_CASE("bad delay models are refused with a message that names the field") {
  CHECK_THROWS_WITH_AS(DelayModel{.step_s = -1.0}.validate(4),
                       "DelayModel: step time -1 s is not a finite non-negative number",
                       std::invalid_argument);
  CHECK_THROWS_WITH_AS((DelayModel{.step_s = 1.0, .straggler_rate = 1.5}.validate(4)),
                       "DelayModel: straggler rate 1.5 is outside [0, 1]", std::invalid_argument);
  CHECK_THROWS_WITH_AS(
      (DelayModel{.step_s = 1.0, .straggler_rate = 0.1, .straggler_delay_s = -2}.validate(4)),
      "DelayModel: straggler delay -2 s is not a finite non-negative number",
      std::invalid_argument);
  CHECK_THROWS_WITH_AS((DelayModel{.step_s = 1.0, .slow_ranks = {3, 4}}.validate(4)),
                       "DelayModel: slow rank 4 is outside a world of 4 ranks",
                       std::invalid_argument);
  CHECK_THROWS_WITH_AS((DelayModel{.step_s = 1.0, .slow_ranks = {2, 0, 2}}.validate(4)),
                       "DelayModel: slow rank 2 is listed twice", std::invalid_argument);
  CHECK_THROWS_WITH_AS((DelayModel{.step_s = 1.0, .slow_ranks = {1}, .slow_factor = 0}.validate(4)),
                       "DelayModel: slow factor 0 is not a finite positive number",
                       std::invalid_argument);
  CHECK_THROWS_WITH_AS((DelayModel{.step_s = 1.0, .lognormal_sigma = 7}.validate(4)),
                       "DelayModel: log-normal sigma 7 is outside [0, 5]", std::invalid_argument);
  CHECK_THROWS_WITH_AS(
      (DelayModel{.step_s = 1.0, .events = {{0, 0, 1.0}, {9, 2, 1.0}}}.validate(8)),
      "DelayModel: event 1 names rank 9 outside a world of 8 ranks", std::invalid_argument);
  CHECK_THROWS_WITH_AS(DelayModel{.step_s = 1.0}.validate(0), "DelayModel: world size is 0",
                       std::invalid_argument);
}
