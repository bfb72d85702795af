#pragma once
//! \file
//! Monte Carlo over seeds: a method's time per step with a confidence interval, and its speed-up
//! over synchronous SGD under the same delays.

#include <cstddef>
#include <cstdint>
#include <stdexcept>
#include <string>
#include <vector>

#include "strata/sim/cost.hpp"
#include "strata/sim/delay.hpp"
#include "strata/sim/method.hpp"
#include "strata/sim/simulate.hpp"
#include "strata/sim/statistics.hpp"

namespace strata::sim {

//! How many runs to average: seeds `first_seed`, `first_seed + 1`, ... of `steps` steps each.
//!
//! \code
//! const strata::sim::MonteCarlo mc{.steps = 1000, .seeds = 10};
//! assert(mc.first_seed == 1);
//! \endcode
struct MonteCarlo {
  std::size_t steps = 1000;
  std::size_t seeds = 10;
  std::uint64_t first_seed = 1;
};

//! A method's predicted time per step over the seeds, next to synchronous SGD's under the same
//! draws (seed s gives both the same stragglers, so their difference is not sampling noise).
//!
//! \code
//! strata::sim::Estimate e;
//! e.seconds_per_step.mean = 0.1;
//! e.sync_seconds_per_step.mean = 0.5;
//! assert(e.speedup() == 5.0);
//! \endcode
struct Estimate {
  std::string method;             //!< `Method::name()`
  Summary seconds_per_step;       //!< the method's time per step over the seeds
  Summary sync_seconds_per_step;  //!< synchronous SGD's, same seeds
  Summary speedup_per_seed;       //!< sync / method, seed by seed (a paired interval)
  //! As in `Run::syncs`, averaged over the seeds (totals over the run, per rank).
  std::vector<SyncStats> syncs;

  //! Synchronous SGD's mean time per step over the method's.
  [[nodiscard]] double speedup() const noexcept {
    return seconds_per_step.mean > 0.0 ? sync_seconds_per_step.mean / seconds_per_step.mean : 1.0;
  }
};

//! Simulates `method` and synchronous SGD over `mc.seeds` seeds (see `simulate`) and summarizes.
//! Throws `std::invalid_argument` for 0 seeds or steps, or a model that does not fit the world.
//!
//! \code
//! strata::sim::DelayModel d{.step_s = 0.055, .straggler_rate = 0.02, .straggler_delay_s = 1.0};
//! const auto h = strata::RuntimeHierarchy::parse("2:8,4:32,8:64");
//! const auto m = strata::sim::Method::hierarchical(h);
//! const auto e = strata::sim::estimate(m, d, strata::sim::CostModel{}, {.steps = 200, .seeds =
//! 4}); assert(e.seconds_per_step.ci95.contains(e.seconds_per_step.mean) && e.speedup() > 1.0);
//! \endcode
[[nodiscard]] inline Estimate estimate(const Method& method, const DelayModel& delays,
                                       const CostModel& cost, const MonteCarlo& mc = {}) {
  if (mc.seeds == 0) throw std::invalid_argument("estimate: seeds is 0");
  const bool is_sync = method.kind() == MethodKind::synchronous;
  const Method sync = Method::synchronous(method.world_size());
  std::vector<double> mine(mc.seeds);
  std::vector<double> theirs(mc.seeds);
  std::vector<double> ratio(mc.seeds);
  Estimate e;
  e.method = method.name();
  for (std::size_t i = 0; i < mc.seeds; ++i) {
    const std::uint64_t seed = mc.first_seed + i;
    const Run run = simulate(method, delays, cost, mc.steps, seed);
    mine[i] = run.seconds_per_step();
    theirs[i] = is_sync ? mine[i] : simulate(sync, delays, cost, mc.steps, seed).seconds_per_step();
    ratio[i] = mine[i] > 0.0 ? theirs[i] / mine[i] : 1.0;  // nothing to compute or send
    if (i == 0) {
      e.syncs = run.syncs;
      for (SyncStats& st : e.syncs) st.wait_s = st.comm_s = 0.0;
    }
    for (std::size_t k = 0; k < e.syncs.size(); ++k) {
      e.syncs[k].wait_s += run.syncs[k].wait_s / static_cast<double>(mc.seeds);
      e.syncs[k].comm_s += run.syncs[k].comm_s / static_cast<double>(mc.seeds);
    }
  }
  e.seconds_per_step = summarize(mine);
  e.sync_seconds_per_step = summarize(theirs);
  e.speedup_per_seed = summarize(ratio);
  return e;
}

}  // namespace strata::sim
