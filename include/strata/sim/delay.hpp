#pragma once
//! \file
//! Delay models: how long each rank computes at each step of a simulated run.

#include <algorithm>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <span>
#include <stdexcept>
#include <string>
#include <vector>

#include "strata/sim/detail/counter_rng.hpp"
#include "strata/sim/detail/format.hpp"

namespace strata::sim {

//! One delay placed by hand: `rank` computes `delay_s` seconds longer at `step`. For replaying a
//! straggler trace recorded on a real cluster, and for cases small enough to work out by hand.
//!
//! \code
//! const strata::sim::DelayEvent e{/*rank=*/3, /*step=*/10, /*delay_s=*/0.5};
//! assert(e.rank == 3 && e.delay_s == 0.5);
//! \endcode
struct DelayEvent {
  std::size_t rank = 0;
  std::size_t step = 0;
  double delay_s = 0.0;
};

//! The compute time of rank r at step s (forward, backward and optimizer, without communication):
//!
//!     t(r, s) = step_s * slow(r) * L(r, s) + (straggles(r, s) ? straggler_delay_s : 0)
//!               + events(r, s)
//!
//! - *independent stragglers*: `straggles(r, s)` is true with probability `straggler_rate`,
//!   independently for every rank and step;
//! - *persistent stragglers*: `slow(r)` is `slow_factor` for the ranks in `slow_ranks`, else 1;
//! - *heavy-tailed step times*: `L(r, s) = exp(sigma * Z - sigma^2 / 2)` with Z standard normal
//!   and sigma = `lognormal_sigma`: log-normal with mean 1, so the mean step time stays `step_s`
//!   while its tail grows with sigma (1 when sigma is 0);
//! - `events`: the sum of the `events` that name (r, s).
//!
//! The components combine; the defaults switch each off. Every draw is a pure function of
//! (seed, rank, step), computed with a counter-based generator rather than `<random>`'s
//! distributions, so a seed gives the same delays with any standard library, and two schedules
//! simulated with one seed meet the same stragglers.
//!
//! \code
//! strata::sim::DelayModel m{.step_s = 0.055, .straggler_rate = 0.01, .straggler_delay_s = 1.0};
//! m.validate(/*world=*/256);
//! const double t = m.step_time(/*seed=*/7, /*rank=*/3, /*step=*/0);
//! assert(t == 0.055 || t == 0.055 + 1.0);
//! assert(m.step_time(7, 3, 0) == t);  // deterministic
//! \endcode
struct DelayModel {
  double step_s = 0.0;                    //!< normal compute time of one step, seconds
  double straggler_rate = 0.0;            //!< chance that a rank is late at a step, in [0, 1]
  double straggler_delay_s = 0.0;         //!< how late, seconds
  std::vector<std::size_t> slow_ranks{};  //!< ranks that are always slow
  double slow_factor = 1.0;               //!< their step time is multiplied by this
  double lognormal_sigma = 0.0;           //!< spread of the log-normal factor; 0 turns it off
  std::vector<DelayEvent> events{};       //!< delays placed by hand

  //! Throws `std::invalid_argument` naming the first field that cannot describe a run of `world`
  //! ranks (a negative time, a rate outside [0, 1], a rank outside the world, a rank listed twice).
  void validate(std::size_t world) const;

  //! Rank `rank`'s compute time at `step` under `seed`, in seconds. The simulator uses exactly
  //! these values; a real benchmark that sleeps them reproduces the simulated run's delays.
  [[nodiscard]] double step_time(std::uint64_t seed, std::size_t rank, std::size_t step) const;
};

}  // namespace strata::sim

namespace strata::detail {

// The random part of t(r, s); events are added by the callers, in their given order, so that
// `DelayModel::step_time` and the simulator add the same numbers in the same order.
[[nodiscard]] inline double base_step_time(const sim::DelayModel& m, double slow,
                                           std::uint64_t seed, std::size_t rank,
                                           std::size_t step) noexcept {
  double t = m.step_s * slow;
  if (m.lognormal_sigma > 0.0) {
    const double z = standard_normal(seed, rank, step);
    t *= std::exp(m.lognormal_sigma * z - 0.5 * m.lognormal_sigma * m.lognormal_sigma);
  }
  if (m.straggler_rate > 0.0 &&
      unit_interval(counter_bits(seed, SimStream::straggler, rank, step)) < m.straggler_rate) {
    t += m.straggler_delay_s;
  }
  return t;
}

// The delay model prepared for one world size: per-rank slow factors in an array and the hand
// placed events sorted by step, so a simulated step costs one pass over the ranks.
class DelaySampler {
 public:
  DelaySampler(const sim::DelayModel& model, std::size_t world)
      : model_(model), slow_(world, 1.0), events_(model.events) {
    model_.validate(world);
    for (const std::size_t r : model.slow_ranks) slow_[r] = model.slow_factor;
    std::stable_sort(
        events_.begin(), events_.end(),
        [](const sim::DelayEvent& a, const sim::DelayEvent& b) { return a.step < b.step; });
  }

  // times[r] = t(r, step) for every rank.
  void fill(std::uint64_t seed, std::size_t step, std::span<double> times) const {
    for (std::size_t r = 0; r < times.size(); ++r) {
      times[r] = base_step_time(model_, slow_[r], seed, r, step);
    }
    const auto [first, last] = std::equal_range(
        events_.begin(), events_.end(), sim::DelayEvent{0, step, 0.0},
        [](const sim::DelayEvent& a, const sim::DelayEvent& b) { return a.step < b.step; });
    for (auto e = first; e != last; ++e) times[e->rank] += e->delay_s;
  }

 private:
  sim::DelayModel model_;
  std::vector<double> slow_;
  std::vector<sim::DelayEvent> events_;
};

}  // namespace strata::detail

namespace strata::sim {

inline void DelayModel::validate(std::size_t world) const {
  using detail::sim_number;
  const auto finite_non_negative = [](double x) { return std::isfinite(x) && x >= 0.0; };
  if (world == 0) throw std::invalid_argument("DelayModel: world size is 0");
  if (!finite_non_negative(step_s)) {
    throw std::invalid_argument("DelayModel: step time " + sim_number(step_s) +
                                " s is not a finite non-negative number");
  }
  if (!(straggler_rate >= 0.0 && straggler_rate <= 1.0)) {
    throw std::invalid_argument("DelayModel: straggler rate " + sim_number(straggler_rate) +
                                " is outside [0, 1]");
  }
  if (!finite_non_negative(straggler_delay_s)) {
    throw std::invalid_argument("DelayModel: straggler delay " + sim_number(straggler_delay_s) +
                                " s is not a finite non-negative number");
  }
  if (!(std::isfinite(slow_factor) && slow_factor > 0.0)) {
    throw std::invalid_argument("DelayModel: slow factor " + sim_number(slow_factor) +
                                " is not a finite positive number");
  }
  for (std::size_t i = 0; i < slow_ranks.size(); ++i) {
    if (slow_ranks[i] >= world) {
      throw std::invalid_argument("DelayModel: slow rank " + std::to_string(slow_ranks[i]) +
                                  " is outside a world of " + std::to_string(world) + " ranks");
    }
    for (std::size_t j = 0; j < i; ++j) {
      if (slow_ranks[j] == slow_ranks[i]) {
        throw std::invalid_argument("DelayModel: slow rank " + std::to_string(slow_ranks[i]) +
                                    " is listed twice");
      }
    }
  }
  // Past about 5 the factor's mean is carried by draws too rare to appear in any run.
  if (!(lognormal_sigma >= 0.0 && lognormal_sigma <= 5.0)) {
    throw std::invalid_argument("DelayModel: log-normal sigma " + sim_number(lognormal_sigma) +
                                " is outside [0, 5]");
  }
  for (std::size_t i = 0; i < events.size(); ++i) {
    if (events[i].rank >= world) {
      throw std::invalid_argument("DelayModel: event " + std::to_string(i) + " names rank " +
                                  std::to_string(events[i].rank) + " outside a world of " +
                                  std::to_string(world) + " ranks");
    }
    if (!finite_non_negative(events[i].delay_s)) {
      throw std::invalid_argument("DelayModel: event " + std::to_string(i) + " delay " +
                                  sim_number(events[i].delay_s) +
                                  " s is not a finite non-negative number");
    }
  }
}

inline double DelayModel::step_time(std::uint64_t seed, std::size_t rank, std::size_t step) const {
  const bool slow = std::find(slow_ranks.begin(), slow_ranks.end(), rank) != slow_ranks.end();
  double t = detail::base_step_time(*this, slow ? slow_factor : 1.0, seed, rank, step);
  for (const DelayEvent& e : events) {
    if (e.rank == rank && e.step == step) t += e.delay_s;
  }
  return t;
}

}  // namespace strata::sim
