#pragma once
//! \file
//! What every averager shares: its step counter and schedule, and the state that survives a
//! restart.

#include <cstddef>
#include <optional>
#include <stdexcept>
#include <string>
#include <utility>

#include "strata/hierarchy/level.hpp"
#include "strata/schedule/schedule.hpp"

namespace strata {

//! What an averager must remember across a restart: the step counter, and what it was counting
//! for, so that a state is never restored into a different schedule.
//!
//! \code
//! strata::AveragerState s{120, 100, "2:8,4:32,8:64", "absolute"};
//! assert(s.step == 120);
//! \endcode
struct AveragerState {
  std::size_t step = 0;
  std::size_t warmup = 0;
  std::string hierarchy;  //!< `RuntimeHierarchy::to_string()` form
  std::string phase;      //!< the phase policy's name

  friend bool operator==(const AveragerState&, const AveragerState&) = default;
};

//! The schedule and step counter of an averager, and saving and restoring them: the part of the
//! API that every averager (host and device) shares. Not constructed on its own.
//!
//! \code
//! #include <strata/averaging/averager.hpp>
//! #include <strata/comm/local.hpp>
//! strata::LocalWorld(2).run([](strata::LocalComm& comm) {
//!   strata::PeriodicAverager<strata::LocalComm> avg(comm, /*period=*/2);
//!   std::vector<double> w{1.0};
//!   avg.average(std::span<double>(w));  // step 0: averages
//!   avg.average(std::span<double>(w));  // step 1: nothing
//!   const strata::AveragerState saved = avg.state();
//!   assert(saved.step == 2 && avg.next_level() == 0);
//!   strata::PeriodicAverager<strata::LocalComm> resumed(comm, 2);
//!   resumed.restore(saved);
//!   assert(resumed.step() == 2 && resumed.next_level() == 0);
//! });
//! \endcode
template <schedule_type S>
class AveragerClock {
 public:
  //! The level the next `average` call will run, if any.
  [[nodiscard]] std::optional<std::size_t> next_level() const noexcept {
    return schedule_.level_at(step_);
  }
  //! How many `average` calls have completed.
  [[nodiscard]] std::size_t step() const noexcept { return step_; }
  [[nodiscard]] const S& schedule() const noexcept { return schedule_; }

  [[nodiscard]] AveragerState state() const {
    return {step_, schedule_.warmup(), hierarchy_text(), std::string(S::phase::name)};
  }

  //! Continues from a saved state; throws `std::invalid_argument` when it was saved by an
  //! averager with another hierarchy, warm-up or phase, which would silently change the schedule.
  void restore(const AveragerState& state) {
    const AveragerState mine = this->state();
    if (state.hierarchy != mine.hierarchy || state.warmup != mine.warmup ||
        state.phase != mine.phase) {
      throw std::invalid_argument(
          "AveragerClock: cannot restore a state of hierarchy " + state.hierarchy + ", warm-up " +
          std::to_string(state.warmup) + ", phase " + state.phase + " into hierarchy " +
          mine.hierarchy + ", warm-up " + std::to_string(mine.warmup) + ", phase " + mine.phase);
    }
    step_ = state.step;
  }

 protected:
  explicit AveragerClock(S schedule) : schedule_(std::move(schedule)) {}

  [[nodiscard]] std::string hierarchy_text() const {
    return detail::format_levels(schedule_.levels());
  }

  S schedule_;
  std::size_t step_ = 0;
};

}  // namespace strata
