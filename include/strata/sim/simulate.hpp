#pragma once
//! \file
//! One simulated training run: per-rank clocks under a delay model, a cost model and a method.

#include <algorithm>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <optional>
#include <span>
#include <stdexcept>
#include <string>
#include <utility>
#include <vector>

#include "strata/comm/compressed_average.hpp"
#include "strata/hierarchy/topology.hpp"
#include "strata/kernels/wire_codec.hpp"
#include "strata/sim/cost.hpp"
#include "strata/sim/delay.hpp"
#include "strata/sim/detail/counter_rng.hpp"
#include "strata/sim/method.hpp"

namespace strata::sim {

//! What a collective in a simulated run does.
//!
//! \code
//! static_assert(strata::sim::SyncKind::model_average != strata::sim::SyncKind::node_gradients);
//! \endcode
enum class SyncKind {
  model_average,    //!< a level of the method averages the model (no overlap with compute,
                    //!< except streaming fragments in flight)
  world_gradients,  //!< gradient all-reduce over the world (synchronous SGD, warm-up)
  node_gradients,   //!< gradient all-reduce inside each node after warm-up (post-local SGD)
};

//! The collectives of one kind (or one level) in a run: how often they ran, how long ranks
//! waited at them for the slowest member of their group, and how long they communicated.
//! Times are per rank, averaged over ranks, summed over the run.
//!
//! \code
//! strata::sim::SyncStats s{strata::sim::SyncKind::model_average, 0, 8, 2, 500, 1.5, 3.0};
//! assert(s.label() == "level 0 (g=8, P=2)");
//! s.kind = strata::sim::SyncKind::node_gradients;
//! assert(s.label() == "node gradients (g=8)");
//! \endcode
struct SyncStats {
  SyncKind kind = SyncKind::model_average;
  std::size_t level = 0;  //!< the level, for `model_average`
  std::size_t group_size = 0;
  std::size_t period = 0;  //!< the level's period, for `model_average`
  std::size_t count = 0;   //!< how many steps ran this collective
  double wait_s = 0.0;     //!< mean over ranks of the time spent waiting for the group
  //! Time each rank spent communicating (the exposed part; for streaming fragments, the mean
  //! over ranks of the part of the collective still running when a rank applies it).
  double comm_s = 0.0;

  [[nodiscard]] std::string label() const {
    const std::string g = "g=" + std::to_string(group_size);
    switch (kind) {
      case SyncKind::model_average:
        return "level " + std::to_string(level) + " (" + g + ", P=" + std::to_string(period) + ")";
      case SyncKind::world_gradients: return "world gradients (" + g + ")";
      case SyncKind::node_gradients: return "node gradients (" + g + ")";
    }
    return g;
  }
};

//! The result of one simulated run.
//!
//! \code
//! strata::sim::Run r{/*steps=*/100, /*seconds=*/6.0, {}};
//! assert(r.seconds_per_step() == 0.06);
//! \endcode
struct Run {
  std::size_t steps = 0;
  double seconds = 0.0;  //!< when the last rank finished its last step
  //! One entry per level of the method (model averaging), then world gradients if the method
  //! all-reduces gradients over the world at any step, then node gradients if it has them.
  std::vector<SyncStats> syncs;

  [[nodiscard]] double seconds_per_step() const noexcept {
    return steps == 0 ? 0.0 : seconds / static_cast<double>(steps);
  }
};

}  // namespace strata::sim

namespace strata::detail {

// Every member of a group leaves a collective at the same moment: when its slowest member
// arrives, plus the collective's time. Returns the time waited, summed over the group.
inline double sync_group(std::span<double> clock, double comm_s) noexcept {
  const double last = *std::max_element(clock.begin(), clock.end());
  double waited = 0.0;
  for (double& c : clock) {
    waited += last - c;
    c = last + comm_s;
  }
  return waited;
}

inline double sync_blocks(std::span<double> clock, std::size_t g, double comm_s) noexcept {
  double waited = 0.0;
  for (std::size_t b = 0; b < clock.size(); b += g) {
    waited += sync_group(clock.subspan(b, g), comm_s);
  }
  return waited;
}

// The same through a permutation: groups are contiguous blocks of `order`.
inline double sync_blocks(std::span<double> clock, std::span<const std::size_t> order,
                          std::size_t g, double comm_s) noexcept {
  double waited = 0.0;
  for (std::size_t b = 0; b < order.size(); b += g) {
    double last = clock[order[b]];
    for (std::size_t i = b + 1; i < b + g; ++i) last = std::max(last, clock[order[i]]);
    for (std::size_t i = b; i < b + g; ++i) {
      waited += last - clock[order[i]];
      clock[order[i]] = last + comm_s;
    }
  }
  return waited;
}

// Seconds of one averaging over a group of g ranks: a ring all-reduce of `native_bytes`, or for a
// compressed wire the bytes that `compressed_average` sends for `values` values, over the same
// sequential steps.
inline double averaging_s(const sim::CostModel& cost, std::size_t g, double native_bytes,
                          WireFormat wire, std::size_t values) noexcept {
  sim::CostModel c = cost;
  if (wire == WireFormat::native) {
    c.model_bytes = native_bytes;
  } else {
    if (g <= 1) return 0.0;
    // allreduce_s charges 2(g-1)/g of model_bytes to each rank: scale so that it charges what
    // the compressed average sends.
    const auto sent = static_cast<double>(compressed_average_bytes(wire, values, g));
    c.model_bytes = sent * static_cast<double>(g) / (2.0 * static_cast<double>(g - 1));
  }
  return c.allreduce_s(g);
}

// Fisher-Yates over [first, last) with counter-based draws keyed by (seed, step, key + i).
inline void shuffle_range(std::size_t* first, std::size_t* last, std::uint64_t seed,
                          std::size_t step, std::uint64_t key) noexcept {
  const std::size_t n = static_cast<std::size_t>(last - first);
  for (std::size_t i = n; i > 1; --i) {
    const std::uint64_t bits = counter_bits(seed, SimStream::shuffle, step, key + i);
    std::swap(first[i - 1], first[bits % i]);  // % is biased by under i / 2^64: nothing here
  }
}

// The group order of a shuffled level of group size g at `step` (see GroupAssignment::shuffled).
inline void shuffled_order(std::vector<std::size_t>& order, std::size_t g, std::size_t node,
                           std::uint64_t seed, std::size_t step) {
  const std::size_t world = order.size();
  if (g <= node && node % g == 0) {
    for (std::size_t r = 0; r < world; ++r) order[r] = r;
    for (std::size_t b = 0; b < world; b += node) {
      shuffle_range(order.data() + b, order.data() + b + node, seed, step, b);
    }
  } else if (g % node == 0 && world % node == 0) {
    std::vector<std::size_t> nodes(world / node);
    for (std::size_t n = 0; n < nodes.size(); ++n) nodes[n] = n;
    shuffle_range(nodes.data(), nodes.data() + nodes.size(), seed, step, world);
    for (std::size_t n = 0; n < nodes.size(); ++n) {
      for (std::size_t i = 0; i < node; ++i) order[n * node + i] = nodes[n] * node + i;
    }
  } else {
    for (std::size_t r = 0; r < world; ++r) order[r] = r;
    shuffle_range(order.data(), order.data() + world, seed, step, 2 * world);
  }
}

}  // namespace strata::detail

namespace strata::sim {

//! Simulates `steps` training steps of `method` with the delays of `delays` under `seed` and the
//! communication times of `cost`.
//!
//! Every rank has a clock, all starting at 0. At each step s, in this order:
//! 1. every rank r computes: its clock advances by `delays.step_time(seed, r, s)`;
//! 2. gradients: during warm-up and at every step of synchronous SGD, the world all-reduces them;
//!    after warm-up, with `with_intra_node_gradients`, each node does;
//! 3. the level that the method's schedule names at s, if any, averages the model.
//!
//! A collective over a group moves every member's clock to the group's latest clock (the others
//! wait for the slowest) plus the collective's time from `cost`, of which gradient all-reduces
//! expose only `1 - backward_overlap`. A level with a compressed wire (`Method::with_wire`) takes
//! the time of the bytes `compressed_average` sends (the model taken as `model_bytes / 4` 4-byte
//! values) over the ring's sequential steps. The run lasts until the last rank's clock. Throws
//! `std::invalid_argument` when `steps` is 0 or a model does not fit the method's world (slow
//! ranks outside it, a node size that does not divide it).
//!
//! With streaming fragments (`Method::with_streaming`: F fragments, delay tau), step 3 becomes:
//! when fragment f starts at s, no rank waits; its collective of `model_bytes / F` bytes over the
//! world begins when the last rank has reached the end of step s and completes that collective's
//! time later; at the end of step s + tau every rank whose clock is earlier waits until that
//! completion. Delay 0 is the plain averaging of the world; a larger delay lets the others run up
//! to tau steps ahead of a late rank before they wait, and hides the transfer behind the steps in
//! between. A fragment whose application would fall past the last step is never waited for, nor
//! counted. Its wait is the part of a rank's wait before the last rank arrived, its communication
//! the rest.
//!
//! A fragment sent in a compressed wire (`Method::with_wire`) does not overlap: no backend starts
//! `compressed_average`'s all-to-all and all-gather without waiting for them, so
//! `StreamingAverager` completes that exchange at the fragment's start and only holds its result
//! until it is applied. The simulator prices it so: at its start step the world meets, as with
//! delay 0 (every rank waits for the slowest, then the time of the bytes `compressed_average`
//! sends for that fragment's values), and it is counted there, even when its application, still
//! tau steps later, would fall past the last step; the application moves no clock.
//!
//! \code
//! // Two ranks, 1 s steps, rank 1 three seconds late at step 1; they average every 2 steps.
//! strata::sim::DelayModel d{.step_s = 1.0, .events = {{/*rank=*/1, /*step=*/1, 3.0}}};
//! const auto m = strata::sim::Method::hierarchical(strata::RuntimeHierarchy::parse("2:2"));
//! const auto run = strata::sim::simulate(m, d, strata::sim::CostModel{}, /*steps=*/4, /*seed=*/1);
//! // Step 2 averages: rank 0 reaches it at 3 s, rank 1 at 6 s, so rank 0 waits 3 s.
//! assert(run.seconds == 7.0 && run.syncs[0].count == 2 && run.syncs[0].wait_s == 1.5);
//! // Streaming, one fragment applied a step after it starts: rank 0 has done step 3 (at 4 s)
//! // before it waits for the average that rank 1 joined at 6 s, so it waits 2 s.
//! const auto s = strata::sim::simulate(m.with_streaming(1, /*delay=*/1), d,
//!                                      strata::sim::CostModel{}, 4, 1);
//! assert(s.seconds == 7.0 && s.syncs[0].count == 2 && s.syncs[0].wait_s == 1.0);
//! \endcode
[[nodiscard]] inline Run simulate(const Method& method, const DelayModel& delays,
                                  const CostModel& cost, std::size_t steps, std::uint64_t seed) {
  if (steps == 0) throw std::invalid_argument("simulate: steps is 0");
  const std::size_t world = method.world_size();
  cost.validate();
  const NodeTopology topology(world, cost.ranks_per_node);  // throws for partial nodes
  const detail::DelaySampler sampler(delays, world);
  const std::size_t node = topology.ranks_per_node();

  Run run;
  run.steps = steps;
  const auto levels = method.levels();
  for (std::size_t l = 0; l < levels.size(); ++l) {
    run.syncs.push_back(
        {SyncKind::model_average, l, levels[l].group_size, levels[l].period, 0, 0.0, 0.0});
  }
  std::optional<std::size_t> world_entry;
  std::optional<std::size_t> node_entry;
  if (method.kind() == MethodKind::synchronous || method.warmup() > 0) {
    world_entry = run.syncs.size();
    run.syncs.push_back({SyncKind::world_gradients, 0, world, 0, 0, 0.0, 0.0});
  }
  if (method.intra_node_gradients() && method.warmup() < steps) {
    node_entry = run.syncs.size();
    run.syncs.push_back({SyncKind::node_gradients, 0, node, 0, 0, 0.0, 0.0});
  }

  // The model as 4-byte values, for compressed wires.
  const auto values = static_cast<std::size_t>(std::llround(cost.model_bytes / 4.0));
  std::vector<double> level_comm(levels.size());
  for (std::size_t l = 0; l < levels.size(); ++l) {
    level_comm[l] =
        detail::averaging_s(cost, levels[l].group_size, cost.model_bytes, method.wire(l), values);
  }
  // Streaming: each fragment's collective over the world (fragment sizes as `fragment_begin`).
  const bool streaming = method.streaming();
  const std::size_t fragments = method.fragments();
  std::vector<double> fragment_comm(streaming ? fragments : 0);
  for (std::size_t f = 0; f < fragment_comm.size(); ++f) {
    const std::size_t n = values / fragments + (f < values % fragments ? 1 : 0);
    fragment_comm[f] =
        detail::averaging_s(cost, world, cost.model_bytes / fragments, method.wire(0), n);
  }
  // A compressed fragment completes at its start (see above); a native one may be in flight.
  const bool blocking_fragments = method.wire(0) != WireFormat::native;
  // At most one fragment is in flight: its delay is below the steps between two fragments.
  struct InFlight {
    bool active = false;
    std::size_t due = 0;  // the step at whose end it is applied
    double posted = 0.0;  // when the last rank reached its start
    double comm = 0.0;
  } in_flight;
  const double world_grad_comm = cost.gradient_allreduce_s(world);
  const double node_grad_comm = cost.gradient_allreduce_s(node);
  const bool shuffled = method.groups() == GroupAssignment::shuffled;

  // The schedule in pieces, so that a long run does not hold one entry per step.
  std::vector<std::optional<std::size_t>> schedule(std::min<std::size_t>(steps, 4096));
  std::vector<double> clock(world, 0.0);
  std::vector<double> times(world);
  std::vector<std::size_t> order(shuffled ? world : 0);
  for (std::size_t s = 0; s < steps; ++s) {
    if (!streaming && s % schedule.size() == 0) {
      const std::size_t n = std::min(schedule.size(), steps - s);
      method.averaging_levels(s, std::span(schedule).first(n));
    }
    sampler.fill(seed, s, times);
    for (std::size_t r = 0; r < world; ++r) clock[r] += times[r];

    if (method.world_gradients_at(s)) {
      SyncStats& st = run.syncs[*world_entry];
      st.wait_s += detail::sync_group(clock, world_grad_comm);
      st.comm_s += world_grad_comm;
      ++st.count;
    } else if (node_entry) {
      SyncStats& st = run.syncs[*node_entry];
      st.wait_s += detail::sync_blocks(clock, node, node_grad_comm);
      st.comm_s += node_grad_comm;
      ++st.count;
    }

    if (streaming) {
      if (const auto f = method.fragment_at(s)) {
        if (blocking_fragments) {
          SyncStats& st = run.syncs[0];
          st.wait_s += detail::sync_group(clock, fragment_comm[*f]);
          st.comm_s += fragment_comm[*f];
          ++st.count;
        } else {
          const double last = *std::max_element(clock.begin(), clock.end());
          in_flight = InFlight{true, s + method.fragment_delay(), last, fragment_comm[*f]};
        }
      }
      if (in_flight.active && in_flight.due == s) {
        SyncStats& st = run.syncs[0];
        const double done = in_flight.posted + in_flight.comm;
        double waited = 0.0;
        double hidden = 0.0;  // the part of the collective that ran behind a rank's compute
        for (double& c : clock) {
          if (c <= in_flight.posted) {
            waited += in_flight.posted - c;
          } else {
            hidden += in_flight.comm - std::clamp(done - c, 0.0, in_flight.comm);
          }
          c = std::max(c, done);
        }
        st.wait_s += waited;
        st.comm_s += in_flight.comm - hidden / static_cast<double>(world);
        ++st.count;
        in_flight.active = false;
      }
    } else if (const auto l = schedule[s % schedule.size()]) {
      SyncStats& st = run.syncs[*l];
      const std::size_t g = levels[*l].group_size;
      if (shuffled && g < world) {
        detail::shuffled_order(order, g, node, seed, s);
        st.wait_s += detail::sync_blocks(clock, order, g, level_comm[*l]);
      } else {
        st.wait_s += detail::sync_blocks(clock, g, level_comm[*l]);
      }
      st.comm_s += level_comm[*l];
      ++st.count;
    }
  }
  run.seconds = *std::max_element(clock.begin(), clock.end());
  for (SyncStats& st : run.syncs) st.wait_s /= static_cast<double>(world);
  return run;
}

}  // namespace strata::sim
