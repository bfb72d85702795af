#pragma once
//! \file
//! Model averagers: hierarchical SGD (several levels) and plain local SGD (one level), following
//! a schedule exactly, with one fused collective per averaging over all parameter tensors.

#include <algorithm>
#include <bit>
#include <cstddef>
#include <cstdint>
#include <mutex>
#include <optional>
#include <span>
#include <stdexcept>
#include <string>
#include <tuple>
#include <type_traits>
#include <utility>
#include <vector>

#include <thrust/execution_policy.h>

#include "strata/averaging/clock.hpp"
#include "strata/averaging/outer.hpp"
#include "strata/comm/communicator.hpp"
#include "strata/comm/compressed_average.hpp"
#include "strata/comm/detail/keep_forever.hpp"
#include "strata/comm/hierarchical_all_reduce.hpp"
#include "strata/comm/level_comms.hpp"
#include "strata/error.hpp"
#include "strata/hierarchy/hierarchy.hpp"
#include "strata/hierarchy/runtime_hierarchy.hpp"
#include "strata/hierarchy/topology.hpp"
#include "strata/kernels/arena.hpp"
#include "strata/kernels/fused.hpp"
#include "strata/schedule/phase.hpp"
#include "strata/schedule/schedule.hpp"

namespace strata {

namespace detail {

// Where each tensor of a list starts and how long it is: what a cached plan depends on. A
// training loop averages the same tensors at every step, so the plan is rebuilt only when one of
// them moved or resized.
template <class T>
class TensorLayout {
 public:
  template <class Tensors>
  [[nodiscard]] bool matches(const Tensors& tensors) const {
    if (data_.size() != std::size(tensors)) return false;
    std::size_t i = 0;
    for (const std::span<T> t : tensors) {
      if (data_[i] != t.data() || sizes_[i] != t.size()) return false;
      ++i;
    }
    return true;
  }
  template <class Tensors>
  void record(const Tensors& tensors) {
    data_.clear();
    sizes_.clear();
    for (const std::span<T> t : tensors) {
      data_.push_back(t.data());
      sizes_.push_back(t.size());
    }
  }

 private:
  std::vector<const T*> data_;
  std::vector<std::size_t> sizes_;
};

// The plan and staging buffer of the tensors last averaged, rebuilt only when they move or
// resize, so that a training loop allocates nothing after its first step.
template <class T>
struct PackCache {
  TensorLayout<T> layout;
  std::optional<FusedPlan<T>> plan;
  std::vector<T> staging;

  template <class Tensors>
  const FusedPlan<T>& plan_for(const Tensors& tensors) {
    if (!plan || !layout.matches(tensors)) {
      layout.record(tensors);
      plan.emplace(tensors);
    }
    // The in-place path of a non-all-or-nothing backend may have resized the staging buffer.
    staging.resize(plan->total_elements());
    return *plan;
  }

  // After a failure that may leave the backend still writing into the staging buffer (an MPI
  // request that timed out stays pending), the buffer is handed over to it for good.
  void give_up_staging() { keep_forever(staging); }
};

// Elements packed between two progress calls of a pipelined averaging: MPI moves data only
// inside MPI calls, so the pack stops for a test() after every 256 KiB.
inline constexpr std::size_t progress_bytes = std::size_t{256} << 10;

// Packs flat elements [begin, end) from the tensors of `plan`, with the fused kernels' copy, so
// that a pipelined averaging packs the same bits as `pack` over the whole buffer.
template <class T, class Progress>
void pack_range(const FusedPlan<T>& plan, T* flat, std::size_t begin, std::size_t end,
                Progress&& progress) {
  const std::span<const TensorChunk<T>> chunks = plan.chunks();
  // The last chunk that starts at or before `begin`: offsets increase along the plan.
  auto it = std::upper_bound(chunks.begin(), chunks.end(), begin,
                             [](std::size_t v, const TensorChunk<T>& c) { return v < c.offset; });
  if (it != chunks.begin()) --it;
  const std::size_t between = std::max<std::size_t>(1, progress_bytes / sizeof(T));
  std::size_t moved = 0;
  for (; it != chunks.end() && it->offset < end; ++it) {
    const std::size_t from = std::max(begin, it->offset);
    const std::size_t to = std::min(end, it->offset + it->length);
    if (from >= to) continue;
    move_elements<false>(it->data + (from - it->offset), flat + from, to - from, T(1));
    moved += to - from;
    if (moved >= between) {
      progress();
      moved = 0;
    }
  }
}

// A segment callback's shape, to ask whether a communicator pipelines an all-reduce.
struct SegmentCallback {
  template <class Progress>
  void operator()(std::size_t, std::size_t, Progress&&) const {}
};

template <class Comm, class T>
concept pipelines_all_reduce = requires(Comm& c, std::span<const T> in, std::span<T> out,
                                        SegmentCallback f) {
  c.all_reduce_pipelined(in, out, ReduceOp::sum, std::size_t{1}, f, f);
};

template <class Comm, class T>
concept reduces_tensors = requires(Comm& c, std::span<const std::span<T>> t) {
  c.all_reduce_tensors(t, ReduceOp::average);
};

// Bytes per segment of a pipelined averaging of `total` bytes unless the caller chose (see
// AveragerOptions::pipeline_bytes): about total / pipeline_segments, within
// [pipeline_min_segment, pipeline_max_segment] (so one segment up to 1 MiB).
inline constexpr std::size_t pipeline_segments = 16;
inline constexpr std::size_t pipeline_min_segment = std::size_t{1} << 20;
inline constexpr std::size_t pipeline_max_segment = std::size_t{4} << 20;

inline std::size_t pipeline_segment_bytes(std::size_t total_bytes, std::size_t chosen) {
  if (chosen != 0) return chosen;
  return std::clamp(total_bytes / pipeline_segments, pipeline_min_segment, pipeline_max_segment);
}

// The fused average, pipelined: the pack of segment k+1 overlaps the all-reduce of segment k.
// Each segment is reduced in place in the staging buffer (on MPI an out-of-place all-reduce
// first copies its input: one more pass over the parameters), so the packed values are gone once
// a segment has been reduced; the tensors are therefore unpacked, with the 1/g scaling fused in,
// only after every segment has completed, and a failed call leaves them as they were.
template <comm_value T, class Comm>
void fused_average_pipelined(Comm& comm, PackCache<T>& cache, std::span<const std::span<T>> tensors,
                             std::size_t pipeline_bytes) {
  const FusedPlan<T>& plan = cache.plan_for(tensors);
  const std::span<T> flat(cache.staging);
  const std::size_t segment = std::max<std::size_t>(
      1, pipeline_segment_bytes(flat.size() * sizeof(T), pipeline_bytes) / sizeof(T));
  bool posted = false;
  try {
    comm.all_reduce_pipelined(
        std::span<const T>(flat), flat,
        std::is_floating_point_v<T> ? ReduceOp::sum : ReduceOp::average, segment,
        [&](std::size_t begin, std::size_t end, auto&& progress) {
          posted = true;
          pack_range(plan, flat.data(), begin, end, progress);
        },
        [](std::size_t, std::size_t, auto&&) {});
  } catch (const usage_error&) {
    throw;  // the members disagreed before anything was posted
  } catch (...) {
    if (posted) cache.give_up_staging();
    throw;
  }
  if constexpr (std::is_floating_point_v<T>) {
    unpack(thrust::host, std::span<const T>(flat), plan, T(1) / static_cast<T>(comm.size()));
  } else {
    unpack(thrust::host, std::span<const T>(flat), plan);  // integers: the truncated quotient
  }
}

// The fused average of many tensors over `comm`: pack into the cached flat buffer, one
// all-reduce, unpack with the 1/g scaling fused into the unpack. The tensors are written only by
// the unpack, after the collective has succeeded. A communicator that averages a tensor list
// itself does it instead, and one that pipelines an all-reduce runs the pipelined form.
template <comm_value T, class Comm>
void fused_average(Comm& comm, PackCache<T>& cache, std::span<const std::span<T>> tensors,
                   std::size_t pipeline_bytes = 0) {
  if constexpr (reduces_tensors<Comm, T>) {
    comm.all_reduce_tensors(tensors, ReduceOp::average);
  } else if constexpr (pipelines_all_reduce<Comm, T>) {
    fused_average_pipelined(comm, cache, tensors, pipeline_bytes);
  } else {
    const FusedPlan<T>& plan = cache.plan_for(tensors);
    const std::span<T> flat(cache.staging);
    pack(thrust::host, plan, flat);
    if constexpr (std::is_floating_point_v<T>) {
      comm.all_reduce(flat, ReduceOp::sum);
      unpack(thrust::host, std::span<const T>(flat), plan, T(1) / static_cast<T>(comm.size()));
    } else {
      comm.all_reduce(flat, ReduceOp::average);  // integers: the truncated quotient
      unpack(thrust::host, std::span<const T>(flat), plan);
    }
  }
}

// The anchors and outer states of the levels that keep them, for one parameter type; all flat,
// over the concatenation of the parameters.
template <class T>
struct OuterCache {
  bool started = false;
  std::size_t elements = 0;
  std::vector<std::vector<T>> anchor;  // per level; empty for levels without an anchor
  std::vector<std::vector<T>> state;   // per level, state_per_element values per element
  std::vector<T> flat;                 // scratch: the parameters
  std::vector<T> delta;                // scratch: a - p, then its group mean
};

using OuterCaches = std::tuple<OuterCache<float>, OuterCache<double>>;

// A digest of the levels' policies (FNV-1a over what decides the arithmetic), for the members
// to compare at construction.
inline std::uint64_t policy_digest(std::span<const LevelPolicy> policies) {
  std::uint64_t h = 14695981039346656037ull;
  const auto mix = [&](std::uint64_t v) {
    for (int i = 0; i < 8; ++i) {
      h ^= (v >> (8 * i)) & 0xffu;
      h *= 1099511628211ull;
    }
  };
  for (const LevelPolicy& p : policies) {
    mix(static_cast<std::uint64_t>(p.wire));
    mix(p.outer ? 1 : 0);
    if (p.outer) {
      mix(p.outer->is_nesterov() ? 1 : 0);
      mix(std::bit_cast<std::uint64_t>(p.outer->lr()));
      mix(std::bit_cast<std::uint64_t>(p.outer->momentum()));
      mix(p.outer->state_per_element());
      for (const char c : p.outer->name()) mix(static_cast<unsigned char>(c));
    }
  }
  return h;
}

// Values of outer state a level keeps for d parameters, with its overflow refused.
inline std::size_t state_elements(std::size_t d, const LevelPolicy& p) {
  const std::size_t k = p.outer ? p.outer->state_per_element() : 0;
  if (k != 0 && d > static_cast<std::size_t>(-1) / k) {
    throw std::invalid_argument("BasicAverager: " + std::to_string(k) +
                                " outer state values per parameter overflow for " +
                                std::to_string(d) + " parameters");
  }
  return d * k;
}

using PackCaches = std::tuple<PackCache<float>, PackCache<double>, PackCache<std::int32_t>,
                              PackCache<std::int64_t>>;

}  // namespace detail

//! Settings of the averagers.
//!
//! \code
//! strata::AveragerOptions o{.ranks_per_node = 8};  // levels over several nodes: hierarchical
//! assert(o.ranks_per_node == 8);
//! \endcode
struct AveragerOptions {
  //! 0 (the default): every level averages with one all-reduce over its group. G > 0: ranks sit
  //! on nodes of G consecutive ranks, and a level whose groups span several whole nodes averages
  //! with `HierarchicalAllReduce` over its group (reduce-scatter inside each node, all-reduce of
  //! each 1/G shard across the nodes, all-gather inside each node): each rank sends 1/G of the
  //! cross-node bytes over its own link, in 2(N-1) steps instead of 2(W-1). Levels inside one
  //! node are unchanged. Every rank must pass the same value. The result equals the flat average up to rounding (bitwise identical on
  //! every member).
  std::size_t ranks_per_node = 0;
  //! Communicators that pipeline an all-reduce (MPI: `MpiComm::all_reduce_pipelined`) average a
  //! tensor list in segments of this many bytes (rounded down to whole elements, at least one),
  //! so that packing one segment overlaps the transfer of the previous one. 0 (the default):
  //! about 1/16 of the parameters per segment, at least 1 MiB (so one segment up to 1 MiB) and at
  //! most 4 MiB (measured on MPI: docs/averaging.md). A value at least the parameters' size: one
  //! segment. Every rank must pass the same value. Other communicators ignore it.
  std::size_t pipeline_bytes = 0;
  //! Per level, smallest group first: an outer optimizer and a wire format (`LevelPolicy`,
  //! strata/averaging/outer.hpp). Empty (the default): plain averaging on every level. A level
  //! with an outer optimizer or a compressed wire keeps an anchor of the parameters, and needs
  //! `begin(parameters)` before the first step. Every rank must pass the same policies. The
  //! compile-time averagers take them from `LevelWith` levels instead.
  std::vector<LevelPolicy> levels{};
};

//! The anchors and outer-optimizer states of an averager, for a restart: per level, smallest
//! group first; empty for a level that keeps none.
//!
//! \code
//! strata::OuterSnapshot<float> s;
//! assert(s.anchors.empty());
//! \endcode
template <class T>
struct OuterSnapshot {
  std::vector<std::vector<T>> anchors;
  std::vector<std::vector<T>> states;
};

//! An averager over any schedule (`Schedule<H, P>` or `RuntimeSchedule<P>`) and any
//! communicator. Construction is collective: it builds one communicator per level, once, and
//! checks the hierarchy against the world size (`std::invalid_argument`). Each `average` call is
//! one step: when the schedule names a level, every group of that level ends with the
//! arithmetic mean of its members' parameters, bitwise identical on every member; otherwise the
//! parameters are untouched. A failed call throws, leaves the parameters as they were, and does
//! not advance the step, so it can be retried.
//!
//! Use `HierarchicalAverager`, `RuntimeHierarchicalAverager` or `PeriodicAverager`.
template <schedule_type S, communicator Comm>
class BasicAverager : public AveragerClock<S> {
  static_assert(!device_memory_v<Comm>,
                "BasicAverager: this communicator's buffers are device memory; average device "
                "tensors with DeviceAverager (strata/averaging/device_averager.hpp)");
  using AveragerClock<S>::schedule_;
  using AveragerClock<S>::step_;

 public:
  using schedule_type = S;
  using comm_type = Comm;

  BasicAverager(Comm& world, S schedule, AveragerOptions options = {})
      : AveragerClock<S>(std::move(schedule)),
        comms_(world, schedule_.levels()),
        pipeline_bytes_(options.pipeline_bytes),
        policies_(std::move(options.levels)) {
    const std::size_t g = options.ranks_per_node;
    const auto levels = schedule_.levels();
    if (policies_.empty()) policies_.resize(levels.size());
    if (policies_.size() != levels.size()) {
      throw std::invalid_argument("BasicAverager: " + std::to_string(policies_.size()) +
                                  " level policies for " + std::to_string(levels.size()) +
                                  " levels");
    }
    for (const LevelPolicy& p : policies_) anchors_ = anchors_ || p.keeps_anchor();
    // Members with different policies would average parameters with pseudo-gradients without
    // noticing (the sizes agree): compare them once, over the world.
    const std::uint64_t digest = detail::policy_digest(policies_);
    std::int64_t both[2] = {static_cast<std::int64_t>(digest), static_cast<std::int64_t>(~digest)};
    Comm& world_comm = comms_.level(levels.size() - 1);
    world_comm.all_reduce(std::span<std::int64_t>(both), ReduceOp::max);
    if (static_cast<std::uint64_t>(both[1]) != ~static_cast<std::uint64_t>(both[0])) {
      throw usage_error("BasicAverager", world_comm.rank(),
                        "the ranks pass different level policies (outer optimizers or wire "
                        "formats); every rank must pass the same");
    }
    hierarchical_.resize(levels.size());
    if (g == 0) return;
    for (std::size_t i = 0; i < levels.size(); ++i) {
      const std::size_t size = levels[i].group_size;
      if (size > g && size % g == 0) {
        hierarchical_[i].emplace(comms_.level(i), NodeTopology(size, g));
      }
    }
  }

  //! Averages many tensors with one collective: packs them into a flat buffer, all-reduces it,
  //! and unpacks with the 1/g scaling fused into the unpack. On a communicator that pipelines an
  //! all-reduce (MPI), packing overlaps the transfer, segment by segment
  //! (`AveragerOptions::pipeline_bytes`); one that averages a tensor list itself (the local
  //! backend) does it without the flat buffer. Returns the level that ran.
  template <comm_value T>
  std::optional<std::size_t> average(std::span<const std::span<T>> tensors) {
    const std::optional<std::size_t> level = schedule_.level_at(step_);
    if (anchors_) {
      if constexpr (std::is_floating_point_v<T>) {
        outer_step(tensors, level);
        ++step_;
        return level;
      } else {
        throw std::invalid_argument(
            "BasicAverager: outer optimizers and compressed wires need floating-point "
            "parameters");
      }
    }
    if (level) {
      auto& cache = std::get<detail::PackCache<T>>(caches_);
      if (auto& h = hierarchical_[*level]) {
        detail::fused_average(*h, cache, tensors);
      } else {
        detail::fused_average(comms_.level(*level), cache, tensors, pipeline_bytes_);
      }
    }
    ++step_;
    return level;
  }

  template <comm_value T>
  std::optional<std::size_t> average(const std::vector<std::span<T>>& tensors) {
    return average(std::span<const std::span<T>>(tensors));
  }

  //! Parameters that already live in one contiguous buffer are averaged in place, with no copy,
  //! on backends whose collectives are all-or-nothing (the local backend); on the others (MPI)
  //! the result goes to a staging buffer first, so that a failure leaves `flat` as it was.
  template <comm_value T>
  std::optional<std::size_t> average(std::span<T> flat) {
    if (anchors_) {
      const std::span<T> one[1] = {flat};
      return average(std::span<const std::span<T>>(one));
    }
    const std::optional<std::size_t> level = schedule_.level_at(step_);
    if (level && hierarchical_[*level]) {
      hierarchical_[*level]->all_reduce(flat, ReduceOp::average);  // works on its own copy
    } else if (level) {
      Comm& comm = comms_.level(*level);
      if constexpr (all_or_nothing_v<Comm>) {
        comm.all_reduce(flat, ReduceOp::average);
      } else {
        std::vector<T>& staging = std::get<detail::PackCache<T>>(caches_).staging;
        staging.resize(flat.size());
        comm.all_reduce(std::span<const T>(flat), std::span<T>(staging), ReduceOp::average);
        std::copy(staging.begin(), staging.end(), flat.begin());
      }
    }
    ++step_;
    return level;
  }

  //! The whole arena in place, padding included (the mean of zeros stays zero).
  template <comm_value T>
  std::optional<std::size_t> average(ParameterArena<T>& arena) {
    return average(arena.flat());
  }

  //! Records the initial parameters as every anchor (outer optimizers' states at zero). Needed
  //! once, before the first step, when a level keeps an anchor (`LevelPolicy::keeps_anchor`);
  //! calling it again restarts the outer optimizers from the given parameters. Not collective.
  template <comm_value T>
  void begin(std::span<const std::span<T>> tensors) {
    static_assert(std::is_floating_point_v<T>,
                  "BasicAverager::begin: outer optimizers need floating-point parameters");
    auto& oc = std::get<detail::OuterCache<T>>(outer_);
    auto& pc = std::get<detail::PackCache<T>>(caches_);
    const FusedPlan<T>& plan = pc.plan_for(tensors);
    const std::size_t d = plan.total_elements();
    // Built aside, then swapped in: a failed allocation leaves the averager as it was.
    std::vector<T> flat(d);
    pack(thrust::host, plan, std::span<T>(flat));
    std::vector<std::vector<T>> anchor(policies_.size());
    std::vector<std::vector<T>> state(policies_.size());
    for (std::size_t l = 0; l < policies_.size(); ++l) {
      if (!policies_[l].keeps_anchor()) continue;
      anchor[l] = flat;
      state[l].assign(detail::state_elements(d, policies_[l]), T(0));
    }
    oc.flat.swap(flat);
    oc.anchor.swap(anchor);
    oc.state.swap(state);
    oc.elements = d;
    oc.started = true;
  }
  template <comm_value T>
  void begin(const std::vector<std::span<T>>& tensors) {
    begin(std::span<const std::span<T>>(tensors));
  }
  template <comm_value T>
  void begin(std::span<T> flat) {
    const std::span<T> one[1] = {flat};
    begin(std::span<const std::span<T>>(one));
  }

  //! The anchors and outer states, for a restart (with `state()`).
  template <comm_value T>
  [[nodiscard]] OuterSnapshot<T> outer_state() const {
    const auto& oc = std::get<detail::OuterCache<T>>(outer_);
    return {oc.anchor, oc.state};
  }

  //! Restores `outer_state()`'s snapshot; throws `std::invalid_argument` when its levels or
  //! sizes do not match this averager's policies and parameters of `elements` values.
  template <comm_value T>
  void load_outer_state(const OuterSnapshot<T>& s, std::size_t elements) {
    auto& oc = std::get<detail::OuterCache<T>>(outer_);
    if (s.anchors.size() != policies_.size() || s.states.size() != policies_.size()) {
      throw std::invalid_argument("BasicAverager: an outer state of " +
                                  std::to_string(s.anchors.size()) + " levels for " +
                                  std::to_string(policies_.size()));
    }
    for (std::size_t l = 0; l < policies_.size(); ++l) {
      const bool keeps = policies_[l].keeps_anchor();
      if (s.anchors[l].size() != (keeps ? elements : 0) ||
          s.states[l].size() != (keeps ? detail::state_elements(elements, policies_[l]) : 0)) {
        throw std::invalid_argument("BasicAverager: the outer state of level " + std::to_string(l) +
                                    " does not fit " + std::to_string(elements) +
                                    " parameters and its policy");
      }
    }
    std::vector<std::vector<T>> anchor = s.anchors;
    std::vector<std::vector<T>> state = s.states;
    std::vector<T> flat(elements);
    oc.anchor.swap(anchor);
    oc.state.swap(state);
    oc.flat.swap(flat);
    oc.elements = elements;
    oc.started = true;
  }

  [[nodiscard]] std::span<const LevelPolicy> policies() const noexcept { return policies_; }

  [[nodiscard]] Comm& level_comm(std::size_t level) { return comms_.level(level); }
  //! Whether `level` averages with `HierarchicalAllReduce` (see `AveragerOptions`).
  [[nodiscard]] bool hierarchical(std::size_t level) const {
    return hierarchical_.at(level).has_value();
  }

 private:
  LevelComms<Comm> comms_;
  std::vector<std::optional<HierarchicalAllReduce<Comm>>> hierarchical_;
  // One step with anchors: warm-up steps move every anchor to the parameters; a level with an
  // anchor averages a - p (natively or compressed) and applies its outer step; a plain level
  // averages p; either way the anchors at or below the level follow the new parameters. The
  // tensors and the states are written only after the collective has succeeded.
  template <class T>
  void outer_step(std::span<const std::span<T>> tensors, std::optional<std::size_t> level) {
    auto& oc = std::get<detail::OuterCache<T>>(outer_);
    auto& pc = std::get<detail::PackCache<T>>(caches_);
    const FusedPlan<T>& plan = pc.plan_for(tensors);
    if (!oc.started) {
      throw std::invalid_argument(
          "BasicAverager: a level keeps an anchor (outer optimizer or compressed wire); call "
          "begin(parameters) with the initial parameters before the first step");
    }
    if (plan.total_elements() != oc.elements) {
      throw std::invalid_argument("BasicAverager: the anchors hold " + std::to_string(oc.elements) +
                                  " parameters, the call passes " +
                                  std::to_string(plan.total_elements()));
    }
    const auto follow = [&](std::size_t up_to) {
      for (std::size_t l = 0; l <= up_to && l < policies_.size(); ++l) {
        if (!oc.anchor[l].empty()) std::copy(oc.flat.begin(), oc.flat.end(), oc.anchor[l].begin());
      }
    };
    if (!unusable_.empty()) {
      throw error("BasicAverager", comms_.level(0).rank(), "unusable: " + unusable_);
    }
    if (step_ < schedule_.warmup()) {
      // Gradients are averaged over the world in warm-up: the anchors follow the parameters.
      pack(thrust::host, plan, std::span<T>(oc.flat));
      follow(policies_.size());
      return;
    }
    if (!level) return;
    const std::size_t l = *level;
    const LevelPolicy& policy = policies_[l];
    auto& h = hierarchical_[l];
    if (!policy.keeps_anchor()) {
      if (h) {
        detail::fused_average(*h, pc, tensors);
      } else {
        detail::fused_average(comms_.level(l), pc, tensors, pipeline_bytes_);
      }
      pack(thrust::host, plan, std::span<T>(oc.flat));
      follow(l);
      return;
    }
    pack(thrust::host, plan, std::span<T>(oc.flat));
    const std::vector<T>& a = oc.anchor[l];
    oc.delta.resize(oc.elements);
    for (std::size_t i = 0; i < oc.elements; ++i) oc.delta[i] = a[i] - oc.flat[i];
    Comm& comm = comms_.level(l);
    try {
      if (policy.wire != WireFormat::native) {
        // Over the level's whole group: the compressed exchange has no node-aware form.
        compressed_average(comm, std::span<const T>(oc.delta), std::span<T>(oc.delta), policy.wire);
      } else if (h) {
        h->all_reduce(std::span<T>(oc.delta), ReduceOp::average);  // works on its own copy
      } else {
        comm.all_reduce(std::span<T>(oc.delta), ReduceOp::average);
      }
    } catch (const usage_error&) {
      throw;  // refused before anything was posted
    } catch (...) {
      // A collective that timed out may still be writing into the buffer (MPI).
      if constexpr (!all_or_nothing_v<Comm>) detail::keep_forever(oc.delta);
      throw;
    }
    if (policy.outer) {
      // A user's step may throw after the group completed the collective: this rank can no
      // longer follow the schedule with its peers, so the averager refuses every later call.
      std::vector<T> saved;
      if (!policy.outer->is_nesterov()) saved = oc.state[l];
      try {
        policy.outer->apply(std::span<T>(oc.flat), std::span<const T>(a),
                            std::span<const T>(oc.delta), std::span<T>(oc.state[l]));
      } catch (const std::exception& e) {
        if (!policy.outer->is_nesterov()) oc.state[l].swap(saved);
        unusable_ = std::string("the outer step of level ") + std::to_string(l) +
                    " threw after its collective had completed: " + e.what();
        throw;
      }
    } else {
      for (std::size_t i = 0; i < oc.elements; ++i) oc.flat[i] = a[i] - oc.delta[i];
    }
    unpack(thrust::host, std::span<const T>(oc.flat), plan);
    follow(l);
  }

  std::size_t pipeline_bytes_ = 0;
  std::string unusable_;  // why later calls are refused; empty while usable
  std::vector<LevelPolicy> policies_;
  bool anchors_ = false;
  detail::PackCaches caches_;
  detail::OuterCaches outer_;
};

//! Hierarchical SGD with a compile-time hierarchy: PyTorch's `HierarchicalModelAverager`, step
//! for step (periods count from step 0; `AbsolutePhase`).
//!
//! \code
//! #include <strata/comm/local.hpp>
//! using H = strata::Hierarchy<strata::Level<1, 2>, strata::Level<2, 4>>;
//! strata::LocalWorld(4).run([](strata::LocalComm& comm) {
//!   strata::HierarchicalAverager<H, strata::LocalComm> avg(comm);
//!   std::vector<double> w{double(comm.rank())};
//!   std::vector<std::span<double>> params{w};
//!   assert(avg.average(params) == 1 && w[0] == 1.5);  // step 0: all four ranks
//!   w[0] = comm.rank();
//!   assert(avg.average(params) == 0);                  // step 1: pairs
//!   assert(w[0] == (comm.rank() < 2 ? 0.5 : 2.5));
//! });
//! \endcode
template <hierarchy_type H, communicator Comm, phase_policy P = AbsolutePhase>
class HierarchicalAverager : public BasicAverager<Schedule<H, P>, Comm> {
 public:
  explicit HierarchicalAverager(Comm& world, std::size_t warmup = 0, AveragerOptions options = {})
      : BasicAverager<Schedule<H, P>, Comm>(world, Schedule<H, P>(warmup),
                                            with_policies(std::move(options))) {}

 private:
  // The levels' `LevelWith` policies, unless the caller gave run-time ones.
  static AveragerOptions with_policies(AveragerOptions o) {
    std::vector<LevelPolicy> typed = level_policies<H>();
    if (o.levels.empty()) {
      o.levels = std::move(typed);
    } else {
      for (const LevelPolicy& p : typed) {
        if (p.keeps_anchor()) {
          throw std::invalid_argument(
              "HierarchicalAverager: the hierarchy's LevelWith levels carry policies and "
              "AveragerOptions::levels gives others; give them in one place");
        }
      }
    }
    return o;
  }
};

//! Hierarchical SGD with a hierarchy read at run time.
//!
//! \code
//! #include <strata/comm/local.hpp>
//! strata::LocalWorld(4).run([](strata::LocalComm& comm) {
//!   strata::RuntimeHierarchicalAverager<strata::LocalComm> avg(
//!       comm, strata::RuntimeHierarchy::parse("1:2,2:4"), /*warmup=*/1);
//!   std::vector<float> w{float(comm.rank())};
//!   assert(!avg.average(std::span<float>(w)));  // warm-up
//!   assert(avg.average(std::span<float>(w)) == 0 && w[0] == (comm.rank() < 2 ? 0.5f : 2.5f));
//! });
//! \endcode
template <communicator Comm, phase_policy P = AbsolutePhase>
class RuntimeHierarchicalAverager : public BasicAverager<RuntimeSchedule<P>, Comm> {
 public:
  RuntimeHierarchicalAverager(Comm& world, RuntimeHierarchy hierarchy, std::size_t warmup = 0,
                              AveragerOptions options = {})
      : BasicAverager<RuntimeSchedule<P>, Comm>(
            world, RuntimeSchedule<P>(std::move(hierarchy), warmup), options) {}
};

//! Plain local SGD: the whole world averages every `period` steps, counted from the end of
//! warm-up (`WarmupRelativePhase`), as PyTorch's `PeriodicModelAverager`.
//!
//! \code
//! #include <strata/comm/local.hpp>
//! strata::LocalWorld(2).run([](strata::LocalComm& comm) {
//!   strata::PeriodicAverager<strata::LocalComm> avg(comm, /*period=*/3, /*warmup=*/2);
//!   std::vector<double> w{double(comm.rank())};
//!   std::size_t runs = 0;
//!   for (int step = 0; step < 9; ++step) runs += avg.average(std::span<double>(w)).has_value();
//!   assert(runs == 3);  // steps 2, 5, 8
//! });
//! \endcode
template <communicator Comm>
class PeriodicAverager : public BasicAverager<RuntimeSchedule<WarmupRelativePhase>, Comm> {
 public:
  PeriodicAverager(Comm& world, std::size_t period, std::size_t warmup = 0,
                   AveragerOptions options = {})
      : BasicAverager<RuntimeSchedule<WarmupRelativePhase>, Comm>(
            world,
            RuntimeSchedule<WarmupRelativePhase>(
                RuntimeHierarchy({LevelSpec{period, static_cast<std::size_t>(world.size())}}),
                warmup),
            options) {}
};

}  // namespace strata
