#pragma once
//! \file
//! Means and 95 % confidence intervals of Monte Carlo samples (Student's t).

#include <array>
#include <cmath>
#include <cstddef>
#include <span>
#include <stdexcept>

namespace strata::sim {

//! The 0.975 quantile of Student's t distribution with `dof` degrees of freedom: the half-width
//! of a two-sided 95 % interval, in standard errors. Exact to 6 digits: a table up to 30 degrees
//! of freedom, then the Cornish-Fisher expansion around the normal quantile 1.959964 (its error
//! is below 1e-6 from 30 on). Throws `std::invalid_argument` for 0.
//!
//! \code
//! assert(strata::sim::t_quantile_975(9) > 2.262 && strata::sim::t_quantile_975(9) < 2.263);
//! assert(strata::sim::t_quantile_975(100000) < 1.96);
//! \endcode
[[nodiscard]] inline double t_quantile_975(std::size_t dof) {
  // Computed by integrating the t density numerically and bisecting; rounded to 6 digits.
  static constexpr std::array<double, 30> table{
      12.706205, 4.302653, 3.182446, 2.776445, 2.570582, 2.446912, 2.364624, 2.306004,
      2.262157,  2.228139, 2.200985, 2.178813, 2.160369, 2.144787, 2.131450, 2.119905,
      2.109816,  2.100922, 2.093024, 2.085963, 2.079614, 2.073873, 2.068658, 2.063899,
      2.059539,  2.055529, 2.051831, 2.048407, 2.045230, 2.042272};
  if (dof == 0) throw std::invalid_argument("t_quantile_975: 0 degrees of freedom");
  if (dof <= table.size()) return table[dof - 1];
  const double z = 1.959963984540054;
  const double v = static_cast<double>(dof);
  const double z3 = z * z * z;
  const double z5 = z3 * z * z;
  const double z7 = z5 * z * z;
  return z + (z3 + z) / (4 * v) + (5 * z5 + 16 * z3 + 3 * z) / (96 * v * v) +
         (3 * z7 + 19 * z5 + 17 * z3 - 15 * z) / (384 * v * v * v);
}

//! A closed interval.
//!
//! \code
//! const strata::sim::Interval i{1.0, 2.0};
//! assert(i.contains(1.5) && !i.contains(2.5));
//! \endcode
struct Interval {
  double lo = 0.0;
  double hi = 0.0;
  [[nodiscard]] constexpr bool contains(double x) const noexcept { return lo <= x && x <= hi; }
};

//! The mean of n samples, their sample standard deviation and the 95 % confidence interval of
//! the mean.
//!
//! \code
//! const strata::sim::Summary s{/*n=*/1, /*mean=*/2.0, /*stddev=*/0.0, {2.0, 2.0}};
//! assert(s.ci95.contains(s.mean));
//! \endcode
struct Summary {
  std::size_t n = 0;
  double mean = 0.0;
  double stddev = 0.0;
  Interval ci95{};
};

//! Summarizes `samples`: the interval is mean ± t(0.975, n-1) · sd / sqrt(n) (Student's t, not
//! the normal approximation, since Monte Carlo runs use few seeds). With one sample the interval
//! is the point. Throws `std::invalid_argument` when `samples` is empty.
//!
//! \code
//! const std::array<double, 4> xs{1.0, 2.0, 3.0, 4.0};
//! const auto s = strata::sim::summarize(xs);
//! assert(s.n == 4 && s.mean == 2.5 && s.ci95.contains(2.5) && s.ci95.lo < 1.0);
//! \endcode
[[nodiscard]] inline Summary summarize(std::span<const double> samples) {
  if (samples.empty()) throw std::invalid_argument("summarize: no samples");
  Summary s;
  s.n = samples.size();
  double sum = 0.0;
  for (const double x : samples) sum += x;
  s.mean = sum / static_cast<double>(s.n);
  s.ci95 = {s.mean, s.mean};
  if (s.n < 2) return s;
  // Two passes: the sum of squared deviations does not cancel the way E[x^2] - E[x]^2 does.
  double ss = 0.0;
  for (const double x : samples) ss += (x - s.mean) * (x - s.mean);
  s.stddev = std::sqrt(ss / static_cast<double>(s.n - 1));
  const double half = t_quantile_975(s.n - 1) * s.stddev / std::sqrt(static_cast<double>(s.n));
  s.ci95 = {s.mean - half, s.mean + half};
  return s;
}

}  // namespace strata::sim
