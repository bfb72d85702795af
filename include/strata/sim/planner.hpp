#pragma once
//! \file
//! A planner: enumerate node-aligned hierarchies and rank them by predicted time per step,
//! optionally only those that keep the replicas as close together as a reference schedule.

#include <algorithm>
#include <atomic>
#include <cstddef>
#include <exception>
#include <functional>
#include <mutex>
#include <numeric>
#include <optional>
#include <stdexcept>
#include <string>
#include <thread>
#include <vector>

#include "strata/hierarchy/level.hpp"
#include "strata/hierarchy/runtime_hierarchy.hpp"
#include "strata/hierarchy/topology.hpp"
#include "strata/sim/consensus.hpp"
#include "strata/sim/cost.hpp"
#include "strata/sim/delay.hpp"
#include "strata/sim/method.hpp"
#include "strata/sim/monte_carlo.hpp"
#include "strata/sim/simulate.hpp"

namespace strata::detail {

// Calls f(i) for i in [0, n) on up to `threads` threads; the first exception is rethrown.
template <class F>
void parallel_for(std::size_t n, std::size_t threads, F&& f) {
  if (threads == 0) threads = std::max(1u, std::thread::hardware_concurrency());
  threads = std::min(threads, n);
  if (threads <= 1) {
    for (std::size_t i = 0; i < n; ++i) f(i);
    return;
  }
  std::atomic<std::size_t> next{0};
  std::exception_ptr failure;
  std::mutex mutex;
  const auto work = [&] {
    for (std::size_t i = next++; i < n; i = next++) {
      try {
        f(i);
      } catch (...) {
        const std::lock_guard<std::mutex> lock(mutex);
        if (!failure) failure = std::current_exception();
        next = n;  // the others stop at their next index
      }
    }
  };
  std::vector<std::thread> pool;
  for (std::size_t t = 1; t < threads; ++t) pool.emplace_back(work);
  work();
  for (std::thread& t : pool) t.join();
  if (failure) std::rethrow_exception(failure);
}

}  // namespace strata::detail

namespace strata::sim {

//! Every hierarchy the planner considers for `world` ranks on nodes of `ranks_per_node`:
//! group sizes are node-aligned (a divisor of the node size, or whole nodes), larger than 1 (a
//! group of one averages nothing), each dividing the next, the last the world; periods strictly
//! increase from the smallest group and are at most `max_period`; at most `max_levels` levels.
//! One level alone is the world averaging every P steps. When `max_local_period` is not 0, the
//! smallest level's period is at most that: every rank averages with some group at least that
//! often. Throws `std::invalid_argument` for a 0 size, period or level count, partial nodes, or
//! more than 200000 candidates.
//!
//! \code
//! const auto c = strata::sim::candidate_hierarchies(/*world=*/8, /*ranks_per_node=*/4,
//!                                                   /*max_period=*/2, /*max_levels=*/2);
//! // 1:8, 2:8; then groups of 2 or 4 under the world with periods (1, 2)
//! assert(c.size() == 4 && c[0].to_string() == "1:8" && c[3].to_string() == "1:4,2:8");
//! assert(strata::sim::candidate_hierarchies(8, 4, 2, 2, /*max_local_period=*/1).size() == 3);
//! \endcode
[[nodiscard]] inline std::vector<RuntimeHierarchy> candidate_hierarchies(
    std::size_t world, std::size_t ranks_per_node, std::size_t max_period, std::size_t max_levels,
    std::size_t max_local_period = 0) {
  const NodeTopology topo(world, ranks_per_node);
  if (max_period == 0) throw std::invalid_argument("candidate_hierarchies: max period is 0");
  if (max_levels == 0) throw std::invalid_argument("candidate_hierarchies: max levels is 0");
  std::vector<std::size_t> sizes;  // the groups below the world, ascending
  for (std::size_t g = 2; g < world; ++g) {
    if (world % g == 0 && topo.aligns(g)) sizes.push_back(g);
  }
  const std::size_t limit = 200'000;
  const auto too_many = [&] {
    return std::invalid_argument("candidate_hierarchies: more than " + std::to_string(limit) +
                                 " candidates for world " + std::to_string(world) +
                                 "; lower the max period or the max levels");
  };
  // Chains of group sizes, each dividing the next and the world last.
  std::vector<std::vector<std::size_t>> chains;
  std::vector<std::size_t> chain;
  const std::function<void(std::size_t)> grow = [&](std::size_t from) {
    // More levels than periods give no candidate, and neither do longer chains.
    if (chain.size() + 1 > max_period) return;
    if (chains.size() >= limit) throw too_many();  // each chain is at least one candidate
    std::vector<std::size_t> full = chain;
    full.push_back(world);
    chains.push_back(std::move(full));
    if (chain.size() + 1 >= max_levels) return;
    for (std::size_t i = from; i < sizes.size(); ++i) {
      if (!chain.empty() && sizes[i] % chain.back() != 0) continue;
      chain.push_back(sizes[i]);
      grow(i + 1);
      chain.pop_back();
    }
  };
  grow(0);
  std::stable_sort(chains.begin(), chains.end(),
                   [](const auto& a, const auto& b) { return a.size() < b.size(); });

  const std::size_t first_max = max_local_period == 0 ? max_period : max_local_period;
  // Counted while generated: a bound computed ahead would have to know every constraint.
  std::vector<RuntimeHierarchy> out;
  for (const auto& c : chains) {
    std::vector<std::size_t> periods(c.size());
    const std::function<void(std::size_t, std::size_t)> pick = [&](std::size_t i, std::size_t lo) {
      if (i == c.size()) {
        if (out.size() >= limit) throw too_many();
        std::vector<LevelSpec> levels;
        for (std::size_t k = 0; k < c.size(); ++k) levels.push_back({periods[k], c[k]});
        out.emplace_back(std::move(levels));
        return;
      }
      const std::size_t hi = i == 0 ? std::min(first_max, max_period) : max_period;
      for (std::size_t p = lo; p <= hi && p + (c.size() - 1 - i) <= max_period; ++p) {
        periods[i] = p;
        pick(i + 1, p + 1);
      }
    };
    pick(0, 1);
  }
  return out;
}

//! What to plan for. `screen_seeds` seeds rank every candidate first; the best
//! `max(3 * top, 10)` are then estimated with all of `mc.seeds`.
//!
//! \code
//! const strata::sim::PlanRequest r{.world = 64, .max_period = 8};
//! assert(r.top == 5 && r.max_levels == 3);
//! \endcode
struct PlanRequest {
  std::size_t world = 0;
  std::size_t max_period = 8;  //!< the largest period of the global level the user accepts
  std::size_t max_levels = 3;
  //! 0, or the largest period of the smallest level: how long a rank may go without averaging
  //! with anyone. Without it the answer is always the world alone at `max_period` (see `plan`).
  std::size_t max_local_period = 0;
  std::size_t top = 5;
  std::size_t warmup = 0;
  bool intra_node = false;  //!< add post-local SGD's intra-node gradient all-reduce
  MonteCarlo mc{};
  std::size_t screen_seeds = 2;
  //! When set, only schedules whose expected consensus distance (`consensus` over `mc.steps`
  //! steps, with `warmup`) does not exceed this method's are ranked: a quality bound. The plan
  //! then carries the reference's own estimate. Its world must be `world`.
  std::optional<Method> max_consensus_of{};
  //! Also rank every hierarchy of two or more levels with shuffled groups
  //! (`GroupAssignment::shuffled`, "rotated"); one level is the world, with nothing to shuffle.
  bool rotated = false;
  //! Threads that simulate candidates at once; 0: one per hardware thread. The result does not
  //! depend on it (every candidate's seeds are fixed).
  std::size_t threads = 0;
};

//! One ranked hierarchy with its estimate.
//!
//! \code
//! std::vector<strata::sim::Candidate> ranked;
//! assert(ranked.empty());
//! \endcode
struct Candidate {
  RuntimeHierarchy hierarchy;
  Estimate estimate;
  GroupAssignment groups = GroupAssignment::contiguous;
  Consensus consensus{};  //!< the expected consensus distance over the run
};

//! The schedule a quality bound refers to, with its own estimate and consensus distance.
//!
//! \code
//! strata::sim::PlanReference r;
//! assert(r.consensus.mean == 0.0);
//! \endcode
struct PlanReference {
  std::string method;  //!< `Method::name()`
  Estimate estimate;
  Consensus consensus;
};

//! The planner's answer: the best hierarchies, fastest first.
//!
//! \code
//! strata::sim::Plan p;
//! assert(p.ranked.empty() && p.candidates == 0);
//! \endcode
struct Plan {
  std::size_t candidates = 0;     //!< hierarchies enumerated
  std::size_t within_bound = 0;   //!< schedules that meet the quality bound (all without one)
  std::size_t refined = 0;        //!< of those, estimated with every seed
  std::vector<Candidate> ranked;  //!< the `top` fastest, by mean time per step
  std::optional<PlanReference> reference;  //!< with `max_consensus_of`
};

//! Ranks the hierarchical SGD schedules of `candidate_hierarchies` by predicted time per step
//! under `delays` and `cost` (whose node size the candidates follow). Each estimate carries its
//! speed-up over synchronous SGD. The screening pass can drop a candidate that more seeds would
//! have ranked higher; raise `screen_seeds` to make that less likely.
//!
//! In this model a collective never lets anyone finish sooner (it only makes ranks wait), so
//! dropping a level never slows a run down: unconstrained, the fastest schedule is the world
//! alone at `max_period`. Smaller levels are there for convergence, which the time model does not
//! see. Two ways to say how much of it the user needs: `max_local_period`, or a quality bound,
//! `max_consensus_of`: the fastest schedules (with `rotated`, shuffled groups too) that keep the
//! replicas at most as far apart as a schedule the user trusts, by the consensus model
//! (`strata/sim/consensus.hpp`).
//!
//! \code
//! strata::sim::DelayModel d{.step_s = 0.05, .straggler_rate = 0.02, .straggler_delay_s = 1.0};
//! strata::sim::CostModel c;
//! c.ranks_per_node = 4;
//! const auto p = strata::sim::plan({.world = 16, .max_period = 4, .max_levels = 2, .top = 3,
//!                                   .mc = {.steps = 100, .seeds = 3}},
//!                                  d, c);
//! assert(p.ranked.size() == 3 && p.ranked[0].estimate.speedup() > 1.0);
//! // As close together as local SGD of period 2, or closer:
//! const auto q = strata::sim::plan({.world = 16, .max_period = 4, .max_levels = 2, .top = 3,
//!                                   .mc = {.steps = 100, .seeds = 3},
//!                                   .max_consensus_of = strata::sim::Method::local_sgd(16, 2),
//!                                   .rotated = true},
//!                                  d, c);
//! for (const auto& k : q.ranked) assert(k.consensus.mean <= q.reference->consensus.mean);
//! \endcode
[[nodiscard]] inline Plan plan(const PlanRequest& request, const DelayModel& delays,
                               const CostModel& cost) {
  if (request.top == 0) throw std::invalid_argument("plan: top is 0");
  if (request.screen_seeds == 0) throw std::invalid_argument("plan: screen seeds is 0");
  if (request.mc.seeds == 0) throw std::invalid_argument("plan: seeds is 0");
  if (request.mc.steps == 0) throw std::invalid_argument("plan: steps is 0");
  if (request.world == 0) throw std::invalid_argument("plan: world size is 0");
  cost.validate();
  delays.validate(request.world);
  if (request.max_consensus_of && request.max_consensus_of->world_size() != request.world) {
    throw std::invalid_argument("plan: the reference schedule has " +
                                std::to_string(request.max_consensus_of->world_size()) +
                                " ranks, the plan " + std::to_string(request.world));
  }
  const ConsensusOptions node{.ranks_per_node = cost.ranks_per_node};
  Plan p;
  if (request.max_consensus_of) {
    const Method& ref = *request.max_consensus_of;
    p.reference = PlanReference{ref.name(), estimate(ref, delays, cost, request.mc),
                                consensus(ref, request.mc.steps, node)};
  }

  struct Entry {
    RuntimeHierarchy hierarchy;
    GroupAssignment groups;
    Consensus consensus;
  };
  const auto method_of = [&](const Entry& e) {
    return Method::hierarchical(e.hierarchy, request.warmup)
        .with_intra_node_gradients(request.intra_node)
        .with_groups(e.groups);
  };
  std::vector<Entry> all;
  for (RuntimeHierarchy& h :
       candidate_hierarchies(request.world, cost.ranks_per_node, request.max_period,
                             request.max_levels, request.max_local_period)) {
    const bool rotates = request.rotated && h.num_levels() > 1;
    all.push_back({std::move(h), GroupAssignment::contiguous, {}});
    if (rotates) all.push_back({all.back().hierarchy, GroupAssignment::shuffled, {}});
  }
  p.candidates = all.size();
  // The quality bound first: it is exact and cheap, the time estimate is neither.
  strata::detail::parallel_for(all.size(), request.threads, [&](std::size_t i) {
    all[i].consensus = consensus(method_of(all[i]), request.mc.steps, node);
  });
  std::vector<Entry> kept;
  for (Entry& e : all) {
    // Equal distances computed along different paths may differ in the last bits.
    if (!p.reference || e.consensus.mean <= p.reference->consensus.mean * (1.0 + 1e-12)) {
      kept.push_back(std::move(e));
    }
  }
  p.within_bound = kept.size();

  // Screening: common seeds for every candidate, so their order is not sampling noise.
  const std::size_t screen = std::min(request.screen_seeds, request.mc.seeds);
  std::vector<double> score(kept.size(), 0.0);
  strata::detail::parallel_for(kept.size(), request.threads, [&](std::size_t i) {
    const Method m = method_of(kept[i]);
    for (std::size_t k = 0; k < screen; ++k) {
      score[i] += simulate(m, delays, cost, request.mc.steps, request.mc.first_seed + k).seconds;
    }
  });
  std::vector<std::size_t> order(kept.size());
  std::iota(order.begin(), order.end(), std::size_t{0});
  std::stable_sort(order.begin(), order.end(),
                   [&](std::size_t a, std::size_t b) { return score[a] < score[b]; });

  p.refined = std::min(kept.size(), std::max<std::size_t>(3 * request.top, 10));
  std::vector<Estimate> refined(p.refined);
  strata::detail::parallel_for(p.refined, request.threads, [&](std::size_t k) {
    refined[k] = estimate(method_of(kept[order[k]]), delays, cost, request.mc);
  });
  for (std::size_t k = 0; k < p.refined; ++k) {
    const Entry& e = kept[order[k]];
    p.ranked.push_back({e.hierarchy, std::move(refined[k]), e.groups, e.consensus});
  }
  std::stable_sort(p.ranked.begin(), p.ranked.end(), [](const Candidate& a, const Candidate& b) {
    return a.estimate.seconds_per_step.mean < b.estimate.seconds_per_step.mean;
  });
  if (p.ranked.size() > request.top) {
    p.ranked.erase(p.ranked.begin() + static_cast<std::ptrdiff_t>(request.top), p.ranked.end());
  }
  return p;
}

}  // namespace strata::sim
