#pragma once
//! \file
//! `strata::optim::ShardedOptimizer`: gradients reduced into shards (flat over the world, or
//! hierarchically over a node topology), the update applied to this rank's shard only, the
//! parameters gathered back; gradient buckets reduced as soon as a backward pass fills them.

#include <algorithm>
#include <array>
#include <bit>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <exception>
#include <istream>
#include <limits>
#include <optional>
#include <ostream>
#include <span>
#include <stdexcept>
#include <string>
#include <string_view>
#include <type_traits>
#include <utility>
#include <vector>

#include "strata/comm/async.hpp"
#include "strata/comm/communicator.hpp"
#include "strata/comm/hierarchical_all_reduce.hpp"
#include "strata/comm/level_comms.hpp"
#include "strata/comm/link_traffic.hpp"
#include "strata/error.hpp"
#include "strata/hierarchy/topology.hpp"
#include "strata/optim/shard_layout.hpp"
#include "strata/optim/update.hpp"

namespace strata::optim {

//! How gradients are reduced and where the update runs.
//! - `replicated`: one all-reduce of the gradients over the world; every rank updates every
//!   parameter (data parallelism without sharding: the baseline);
//! - `flat`: reduce-scatter over the world, each rank updates 1/W of the parameters, all-gather
//!   over the world;
//! - `hierarchical`: reduce-scatter inside the node, all-reduce of the shard among the ranks
//!   with the same local index, each rank updates 1/G of the parameters (the same shard as its
//!   peers on the other nodes), all-gather inside the node.
enum class ShardSchedule { replicated, flat, hierarchical };

//! The name of a `ShardSchedule`, as the command lines spell it.
//!
//! \code
//! static_assert(strata::optim::to_string(strata::optim::ShardSchedule::hierarchical) == "hierarchical");
//! \endcode
constexpr std::string_view to_string(ShardSchedule s) noexcept {
  switch (s) {
    case ShardSchedule::replicated: return "replicated";
    case ShardSchedule::flat: return "flat";
    case ShardSchedule::hierarchical: return "hierarchical";
  }
  return "unknown";
}

//! Settings of a `ShardedOptimizer`; every rank must pass the same (checked at construction).
//!
//! \code
//! strata::optim::ShardedOptions o{.schedule = strata::optim::ShardSchedule::hierarchical,
//!                                 .ranks_per_node = 4, .bucket_bytes = 25 << 20, .clip_norm = 1.0};
//! assert(o.alignment_bytes == 256 && o.clip_norm);
//! \endcode
struct ShardedOptions {
  ShardSchedule schedule = ShardSchedule::flat;
  //! G, for `hierarchical`: ranks per node (nodes are contiguous blocks of ranks).
  std::size_t ranks_per_node = 0;
  //! Gradient bucket capacity in bytes; 0 reduces all gradients as one bucket.
  std::size_t bucket_bytes = 0;
  //! Every shard slice starts on this boundary (in bytes, rounded down to whole elements).
  std::size_t alignment_bytes = 256;
  //! Global-norm clipping (PyTorch's `clip_grad_norm_`): gradients scaled by
  //! `min(1, clip_norm / (‖g‖ + 1e-6))` before the update.
  std::optional<double> clip_norm;
  //! Compute ‖g‖ every step even without clipping (one small all-reduce), for `StepReport`.
  bool track_grad_norm = false;
  //! The order the caller marks gradients ready (tensor indices); empty: the reverse of the
  //! parameter list, as a backward pass produces them.
  std::vector<std::size_t> ready_order{};
};

//! What one step did.
struct StepReport {
  //! ‖mean gradient‖ before clipping; NaN when neither clipping nor tracking asked for it.
  double grad_norm = std::numeric_limits<double>::quiet_NaN();
  //! The factor the gradients were scaled by (1 without clipping).
  double clip_factor = 1.0;
  //! Elements this rank sent for the gradients and parameters, by link kind, under ring
  //! algorithms (`strata/comm/hierarchical_all_reduce.hpp`); the small all-reduces of norms and
  //! status are not counted.
  LinkTraffic traffic;
  //! Buckets whose reduction was started before `finish_step`.
  std::size_t buckets_started_early = 0;
};

namespace detail {

// What a rank builds before the ranks agree on the setup: its layout, or, when its own tensor
// list or settings are invalid, a one-tensor stand-in and the reason, so that it still joins the
// agreement and every rank can refuse together (a rank that threw here alone would leave its
// peers waiting in the agreement).
struct SetupLayout {
  ShardLayout layout;
  std::string problem;
};

inline SetupLayout make_setup_layout(std::size_t world, std::size_t rank,
                                     const ShardedOptions& options,
                                     std::span<const std::size_t> sizes,
                                     std::size_t element_bytes) {
  std::size_t shards = 1, shard = 0;
  switch (options.schedule) {
    case ShardSchedule::replicated: break;
    case ShardSchedule::flat:
      shards = world;
      shard = rank;
      break;
    case ShardSchedule::hierarchical: {
      const std::size_t g = options.ranks_per_node;
      shards = g != 0 && world % g == 0 ? g : 1;  // refused after the agreement otherwise
      shard = rank % shards;
      break;
    }
  }
  std::vector<std::size_t> order = options.ready_order;
  if (order.empty()) {
    for (std::size_t i = sizes.size(); i-- > 0;) order.push_back(i);
  }
  const std::size_t align = std::max<std::size_t>(1, options.alignment_bytes / element_bytes);
  const std::size_t bucket = options.bucket_bytes == 0
                                 ? 0
                                 : std::max<std::size_t>(1, options.bucket_bytes / element_bytes);
  std::string problem;
  if (options.clip_norm && !(std::isfinite(*options.clip_norm) && *options.clip_norm > 0)) {
    problem = "ShardedOptions: clip_norm " + std::to_string(*options.clip_norm) +
              " is not a positive finite number";
  }
  if (problem.empty()) {
    try {
      return {ShardLayout(sizes, std::move(order), shards, shard, align, bucket), {}};
    } catch (const std::invalid_argument& e) {
      problem = e.what();
    }
  }
  const std::size_t one = 1;
  return {ShardLayout(std::span<const std::size_t>(&one, 1), 1, 0, 1, 0), std::move(problem)};
}

// The words every rank contributes to the setup agreement (one all-gather over the world).
inline constexpr std::size_t setup_words = 9;

inline std::array<std::int64_t, setup_words> setup_signature(const SetupLayout& s,
                                                             const ShardedOptions& options,
                                                             std::size_t num_tensors,
                                                             std::size_t state_size) {
  return {static_cast<std::int64_t>(num_tensors),
          static_cast<std::int64_t>(s.layout.parameter_elements()),
          static_cast<std::int64_t>(s.layout.fingerprint() >> 1),
          static_cast<std::int64_t>(options.schedule),
          static_cast<std::int64_t>(options.ranks_per_node),
          options.clip_norm ? std::bit_cast<std::int64_t>(*options.clip_norm) : std::int64_t{-1},
          static_cast<std::int64_t>(options.track_grad_norm),
          static_cast<std::int64_t>(state_size),
          static_cast<std::int64_t>(!s.problem.empty())};
}

// Every rank reads the same gathered words, so every rank throws the same usage_error.
inline void check_setup(std::string_view entity, std::span<const std::int64_t> all,
                        std::size_t world, int rank, const std::string& own_problem,
                        const ShardedOptions& options) {
  constexpr std::size_t n = setup_words;
  for (std::size_t r = 0; r < world; ++r) {
    if (all[r * n + 8] == 0) continue;
    throw usage_error(entity, rank,
                      "rank " + std::to_string(r) +
                          (r == static_cast<std::size_t>(rank)
                               ? ": " + own_problem
                               : " passes an invalid tensor list, ready order or setting"));
  }
  for (std::size_t r = 1; r < world; ++r) {
    const std::int64_t* a = all.data();
    const std::int64_t* b = all.data() + r * n;
    std::string why;
    if (a[3] != b[3] || a[4] != b[4]) {
      why = "rank " + std::to_string(r) + " asks for the " +
            std::string(to_string(static_cast<ShardSchedule>(b[3]))) + " schedule with " +
            std::to_string(b[4]) + " ranks per node, rank 0 for " +
            std::string(to_string(static_cast<ShardSchedule>(a[3]))) + " with " +
            std::to_string(a[4]);
    } else if (a[0] != b[0] || a[1] != b[1] || a[2] != b[2]) {
      why = "rank " + std::to_string(r) + " passes " + std::to_string(b[0]) + " tensors of " +
            std::to_string(b[1]) + " elements, rank 0 " + std::to_string(a[0]) + " of " +
            std::to_string(a[1]) +
            (a[0] == b[0] && a[1] == b[1] ? " (sizes, ready order, bucket size or alignment differ)"
                                          : "");
    } else if (a[5] != b[5] || a[6] != b[6]) {
      why = "rank " + std::to_string(r) + " clips or tracks the gradient norm differently";
    } else if (a[7] != b[7]) {
      why = "rank " + std::to_string(r) + " runs an update with " + std::to_string(b[7]) +
            " state values per parameter, rank 0 one with " + std::to_string(a[7]);
    }
    if (!why.empty()) throw usage_error(entity, rank, why);
  }
  if (options.schedule == ShardSchedule::hierarchical) {
    const std::size_t g = options.ranks_per_node;
    if (g == 0 || world % g != 0) {
      throw usage_error(
          entity, rank,
          "the hierarchical schedule needs nodes that divide the world: " + std::to_string(g) +
              " ranks per node, " + std::to_string(world) + " ranks");
    }
  }
}

}  // namespace detail

//! Everything a rank needs to resume: its shard of the optimizer state, the step count, and
//! what the state is only valid for (world, schedule, node size, layout).
template <class T>
struct ShardedState {
  //! The world it was saved in.
  std::uint64_t world_size = 0;
  //! The node size and schedule it was saved for.
  std::uint64_t ranks_per_node = 0;
  ShardSchedule schedule = ShardSchedule::flat;
  //! `ShardLayout::fingerprint()` of the layout it was saved for.
  std::uint64_t layout = 0;
  //! The shard it holds.
  std::uint64_t shard = 0;
  //! Completed steps.
  std::uint64_t steps = 0;
  //! `state_size` vectors of the shard's length.
  std::vector<T> values;
};

//! Writes a `ShardedState` as bytes (host byte order), for checkpoints.
template <class T>
void write_state(std::ostream& out, const ShardedState<T>& s) {
  const char magic[8] = {'S', 'T', 'R', 'A', 'T', 'A', 'O', '1'};
  out.write(magic, 8);
  const std::uint64_t words[] = {
      s.world_size, s.ranks_per_node, static_cast<std::uint64_t>(s.schedule),
      s.layout,     s.shard,          s.steps,
      sizeof(T),    s.values.size()};
  out.write(reinterpret_cast<const char*>(words), sizeof words);
  out.write(reinterpret_cast<const char*>(s.values.data()),
            static_cast<std::streamsize>(s.values.size() * sizeof(T)));
  if (!out) throw std::runtime_error("write_state: the stream failed");
}

//! Reads what `write_state` wrote; throws `std::invalid_argument` for anything else.
template <class T>
ShardedState<T> read_state(std::istream& in) {
  char magic[8] = {};
  in.read(magic, 8);
  if (!in || std::string_view(magic, 8) != "STRATAO1") {
    throw std::invalid_argument("read_state: not a strata optimizer state");
  }
  std::uint64_t w[8] = {};
  in.read(reinterpret_cast<char*>(w), sizeof w);
  if (!in || w[6] != sizeof(T) || w[2] > 2) {
    throw std::invalid_argument("read_state: truncated state or another element type");
  }
  ShardedState<T> s{.world_size = w[0],
                    .ranks_per_node = w[1],
                    .schedule = static_cast<ShardSchedule>(w[2]),
                    .layout = w[3],
                    .shard = w[4],
                    .steps = w[5],
                    .values = {}};
  constexpr std::uint64_t chunk = std::uint64_t{1} << 16;
  for (std::uint64_t left = w[7]; left > 0;) {
    const std::uint64_t n = std::min(left, chunk);
    const std::size_t at = s.values.size();
    s.values.resize(at + n);
    in.read(reinterpret_cast<char*>(s.values.data() + at),
            static_cast<std::streamsize>(n * sizeof(T)));
    if (!in) throw std::invalid_argument("read_state: truncated state");
    left -= n;
  }
  return s;
}

namespace detail {

// Elements one rank sends per step, by link kind, for the host and device optimizers alike.
inline LinkTraffic sharded_traffic(const ShardLayout& layout, const ShardedOptions& options,
                                   std::size_t world, std::size_t rank) {
  const std::size_t total = layout.total_elements();
  switch (options.schedule) {
    case ShardSchedule::replicated:
    case ShardSchedule::flat: {
      // A reduce-scatter and an all-gather move what one ring all-reduce moves.
      const std::size_t g = options.ranks_per_node == 0 || world % options.ranks_per_node != 0
                                ? world
                                : options.ranks_per_node;
      return flat_all_reduce_traffic(total, NodeTopology(world, g), rank);
    }
    case ShardSchedule::hierarchical:
      return hierarchical_all_reduce_traffic(total, NodeTopology(world, options.ranks_per_node));
  }
  return {};
}

// Why a saved state does not fit this rank's optimizer (empty when it does): the check both
// optimizers' load() runs before the ranks agree.
template <class T>
std::string state_mismatch(const ShardedState<T>& s, std::size_t world,
                           const ShardedOptions& options, const ShardLayout& layout,
                           std::size_t values) {
  if (s.world_size != world) {
    return "it was saved in a world of " + std::to_string(s.world_size) + " ranks, this one has " +
           std::to_string(world);
  }
  if (s.schedule != options.schedule || s.ranks_per_node != options.ranks_per_node) {
    return "it was saved for the " + std::string(to_string(s.schedule)) + " schedule with " +
           std::to_string(s.ranks_per_node) + " ranks per node, this optimizer runs " +
           std::string(to_string(options.schedule)) + " with " +
           std::to_string(options.ranks_per_node);
  }
  if (s.layout != layout.fingerprint()) {
    return "it was saved for another tensor list, ready order, bucket size or alignment";
  }
  if (s.shard != layout.shard() || s.values.size() != values) {
    return "it holds shard " + std::to_string(s.shard) + " of " + std::to_string(s.values.size()) +
           " values, this rank owns shard " + std::to_string(layout.shard()) + " of " +
           std::to_string(values);
  }
  return {};
}

}  // namespace detail

//! A sharded optimizer over any host communicator. Construction is collective over `world`: the
//! ranks check that they pass the same tensor list (sizes and ready order) and settings, then
//! the hierarchical schedule splits the node and strided communicators. `world` must outlive
//! the optimizer; the parameter tensors too (they are read and written at every step).
//!
//! A step: the gradients are packed into buckets (`grad_ready` per tensor, or `step` for all),
//! each bucket's reduction starts as soon as it is complete and every earlier bucket has
//! started (non-blocking on communicators that model `async_communicator_for`, MPI; on the
//! others it runs then); `finish_step` waits for them, scales to the mean, computes the global
//! norm and clips when asked, runs the update on this rank's shard (with one small all-reduce of
//! per-tensor partial norms when the update needs norms), agrees with every rank that all
//! succeeded (one all-reduce of one word over the world), gathers the parameters and writes them
//! into the tensors. A bad gradient (wrong size, a tensor marked twice or never), or an update
//! that throws on any rank makes every rank throw `strata::error` (`usage_error` for bad input)
//! with the parameters and the optimizer state unchanged. A failed collective throws on the
//! ranks that see it, with the tensors and state unchanged there.
//!
//! \code
//! #include <cmath>
//! #include <strata/comm/local.hpp>
//! #include <strata/optim/adam.hpp>
//! strata::LocalWorld(4).run([](strata::LocalComm& world) {
//!   std::vector<double> w(10, 1.0), b(3, 0.0);
//!   std::vector<std::span<double>> params{w, b};
//!   strata::optim::ShardedOptimizer opt(world, params, strata::optim::Adam{.lr = 0.1});
//!   std::vector<double> gw(10, 1.0 + world.rank()), gb(3, -1.0);
//!   opt.step(std::vector<std::span<const double>>{gw, gb});
//!   assert(std::abs(w[0] - 0.9) < 1e-6 && std::abs(b[0] - 0.1) < 1e-6);  // Adam's first step
//! });
//! \endcode
template <class T, communicator Comm, class Update>
requires shard_update<Update, T> && comm_value<T>
class ShardedOptimizer {
  static_assert(!device_memory_v<Comm>,
                "ShardedOptimizer: this communicator's buffers are device memory; use the device "
                "optimizer (strata/optim/device_sharded_optimizer.hpp)");

 public:
  using value_type = T;
  using update_type = Update;
  static constexpr bool started_collectives = async_communicator_for<Comm, T>;

  ShardedOptimizer(Comm& world, std::span<const std::span<T>> params, Update update,
                   ShardedOptions options = {})
      : world_(&world),
        options_(std::move(options)),
        params_(params.begin(), params.end()),
        update_(std::move(update)),
        layout_(setup_.layout) {
    agree_on_setup(setup_.problem);
    if (options_.schedule == ShardSchedule::hierarchical) {
      node_.emplace(split_node(world, static_cast<int>(options_.ranks_per_node)));
      across_.emplace(split_strided(world, static_cast<int>(options_.ranks_per_node)));
    }
    const std::size_t n = layout_.shard_elements();
    state_.assign(Update::state_size * n, T{});
    flat_.assign(layout_.total_elements(), T{});
    if (options_.schedule != ShardSchedule::replicated) grad_shard_.assign(n, T{});
    ready_.assign(params_.size(), false);
    remaining_.resize(layout_.num_buckets());
    begin_step();
  }

  ShardedOptimizer(Comm& world, const std::vector<std::span<T>>& params, Update update,
                   ShardedOptions options = {})
      : ShardedOptimizer(world, std::span<const std::span<T>>(params), std::move(update),
                         std::move(options)) {}

  ShardedOptimizer(const ShardedOptimizer&) = delete;
  ShardedOptimizer& operator=(const ShardedOptimizer&) = delete;

  //! The update, to change its hyper-parameters between steps (a learning-rate schedule).
  [[nodiscard]] Update& update() noexcept { return update_; }
  //! Where each tensor and bucket lies in the flat buffer, and this rank's shard.
  [[nodiscard]] const ShardLayout& layout() const noexcept { return layout_; }
  //! The settings, as agreed by every rank.
  [[nodiscard]] const ShardedOptions& options() const noexcept { return options_; }
  //! Completed steps; the next update sees `step = steps_taken() + 1`.
  [[nodiscard]] std::uint64_t steps_taken() const noexcept { return steps_; }
  //! This rank's optimizer state (`state_size` vectors of the shard's length).
  [[nodiscard]] std::span<const T> state_values() const noexcept { return state_; }

  //! Marks tensor `t`'s gradient ready: copies it into its bucket and starts the reduction of
  //! every bucket that is now complete (in bucket order). Cheap to call from a backward hook.
  void grad_ready(std::size_t t, std::span<const T> grad) {
    if (t >= params_.size()) {
      fault(fault_bad_input, "gradient index " + std::to_string(t) + " is not below the " +
                                 std::to_string(params_.size()) + " parameter tensors");
    } else if (ready_[t]) {
      fault(fault_bad_input, "the gradient of tensor " + std::to_string(t) + " was marked twice");
    } else {
      ready_[t] = true;
      if (grad.size() != params_[t].size()) {
        fault(fault_bad_input, "the gradient of tensor " + std::to_string(t) + " has " +
                                   std::to_string(grad.size()) + " elements, the tensor " +
                                   std::to_string(params_[t].size()));
      } else if (!grad.empty()) {
        std::memcpy(flat_.data() + layout_.tensor_offset(t), grad.data(), grad.size() * sizeof(T));
      }
      --remaining_[layout_.bucket_of(t)];
    }
    try {
      launch_complete_buckets(/*early=*/true);
      progress();
    } catch (...) {
      begin_step();  // the step is abandoned on this rank; its peers fail in their collectives
      throw;
    }
  }

  //! Ends the step that `grad_ready` calls began: see the class comment.
  StepReport finish_step() {
    for (std::size_t t = 0; t < params_.size(); ++t) {
      if (!ready_[t]) {
        fault(fault_bad_input, "the gradient of tensor " + std::to_string(t) + " was never marked");
        ready_[t] = true;
        --remaining_[layout_.bucket_of(t)];
      }
    }
    try {
      launch_complete_buckets(/*early=*/false);
      wait_all();
    } catch (...) {
      begin_step();
      throw;
    }
    StepReport report;
    report.buckets_started_early = started_early_;
    try {
      report = finish_reduced(report);
    } catch (...) {
      begin_step();
      throw;
    }
    begin_step();
    return report;
  }

  //! One whole step: every gradient in ready order, then `finish_step`.
  template <class Grads>
  StepReport step(const Grads& grads) {
    if (std::size(grads) != params_.size()) {
      fault(fault_bad_input, "the step has " + std::to_string(std::size(grads)) +
                                 " gradients for " + std::to_string(params_.size()) +
                                 " parameter tensors");
    } else {
      for (std::size_t t : layout_.ready_order()) {
        grad_ready(t, std::span<const T>(std::data(grads)[t]));
      }
    }
    return finish_step();
  }

  //! This rank's state for a checkpoint.
  [[nodiscard]] ShardedState<T> state() const {
    return ShardedState<T>{.world_size = static_cast<std::uint64_t>(world_->size()),
                           .ranks_per_node = options_.ranks_per_node,
                           .schedule = options_.schedule,
                           .layout = layout_.fingerprint(),
                           .shard = layout_.shard(),
                           .steps = steps_,
                           .values = state_};
  }

  //! Collective over the world: restores a state saved by `state()`. Every rank throws
  //! `strata::usage_error` (and nothing changes anywhere) when any rank's state was saved for
  //! another world size, schedule, node size, tensor list, shard, or differs in step count.
  void load(const ShardedState<T>& s) {
    const std::string why = detail::state_mismatch(s, static_cast<std::size_t>(world_->size()),
                                                   options_, layout_, state_.size());
    // One all-reduce (min) finds the first rank that refuses and the range of saved steps.
    std::int64_t words[3] = {why.empty() ? no_fault : encode(fault_bad_input),
                             static_cast<std::int64_t>(s.steps),
                             -static_cast<std::int64_t>(s.steps)};
    world_->all_reduce(std::span<std::int64_t>(words), ReduceOp::min);
    if (words[0] != no_fault) {
      throw usage_error("ShardedOptimizer::load", world_->rank(),
                        describe_fault(words[0], "the state does not fit: " + why));
    }
    if (words[1] != -words[2]) {
      throw usage_error("ShardedOptimizer::load", world_->rank(),
                        "the ranks' states were saved at different steps (" +
                            std::to_string(words[1]) + " to " + std::to_string(-words[2]) + ")");
    }
    state_ = s.values;
    steps_ = s.steps;
  }

  //! Elements one rank sends per step for the gradients and parameters, by link kind.
  [[nodiscard]] LinkTraffic traffic() const {
    return detail::sharded_traffic(layout_, options_, static_cast<std::size_t>(world_->size()),
                                   static_cast<std::size_t>(world_->rank()));
  }

 private:
  static constexpr std::int64_t no_fault = std::numeric_limits<std::int64_t>::max();
  static constexpr std::int64_t fault_bad_input = 1, fault_update = 2;

  [[nodiscard]] std::int64_t encode(std::int64_t kind) const {
    return static_cast<std::int64_t>(world_->rank()) * 4 + kind;
  }

  void fault(std::int64_t kind, std::string why) {
    if (fault_kind_ != 0) return;  // the first fault names the step's problem
    fault_kind_ = kind;
    fault_why_ = std::move(why);
  }

  [[nodiscard]] std::string describe_fault(std::int64_t word, const std::string& own) const {
    const std::int64_t rank = word / 4, kind = word % 4;
    if (rank == world_->rank()) return "rank " + std::to_string(rank) + ": " + own;
    return "rank " + std::to_string(rank) +
           (kind == fault_update ? " failed in its shard update" : " passed bad input");
  }

  detail::SetupLayout make_layout() const {
    std::vector<std::size_t> sizes;
    sizes.reserve(params_.size());
    for (const std::span<T> p : params_) sizes.push_back(p.size());
    return detail::make_setup_layout(static_cast<std::size_t>(world_->size()),
                                     static_cast<std::size_t>(world_->rank()), options_, sizes,
                                     sizeof(T));
  }

  // Every rank must describe the same tensors and settings, or the collectives of every later
  // step would pair unrelated buffers: one all-gather of a few words over the world.
  void agree_on_setup(const std::string& problem) {
    const auto w = static_cast<std::size_t>(world_->size());
    const auto mine = detail::setup_signature(detail::SetupLayout{layout_, problem}, options_,
                                              params_.size(), Update::state_size);
    std::vector<std::int64_t> all(detail::setup_words * w);
    world_->all_gather(std::span<const std::int64_t>(mine), std::span<std::int64_t>(all));
    detail::check_setup("ShardedOptimizer", all, w, world_->rank(), problem, options_);
  }

  void begin_step() {
    std::fill(ready_.begin(), ready_.end(), false);
    for (std::size_t b = 0; b < layout_.num_buckets(); ++b) {
      const auto& bucket = layout_.buckets()[b];
      remaining_[b] = bucket.last - bucket.first;
    }
    // Padding and the slots of tensors never marked must reduce as zeros.
    std::fill(flat_.begin(), flat_.end(), T{});
    launched_ = 0;
    started_early_ = 0;
    pending_.clear();
    fault_kind_ = 0;
    fault_why_.clear();
  }

  [[nodiscard]] std::span<T> bucket_span(std::size_t b) {
    const auto& bucket = layout_.buckets()[b];
    return std::span<T>(flat_).subspan(bucket.begin, bucket.length);
  }
  [[nodiscard]] std::span<T> bucket_shard(std::size_t b) {
    const auto& bucket = layout_.buckets()[b];
    return std::span<T>(grad_shard_).subspan(bucket.shard_begin, bucket.length / layout_.shards());
  }

  // Buckets start in index order on every rank, whatever order their tensors completed in, so
  // that every rank issues the same collectives in the same order.
  void launch_complete_buckets(bool early) {
    while (launched_ < layout_.num_buckets() && remaining_[launched_] == 0) {
      launch(launched_);
      if (early) ++started_early_;
      ++launched_;
    }
  }

  // --- the reductions, started or run -------------------------------------------------------
  template <class C, bool = async_communicator_for<C, T>>
  struct RequestOf {
    using type = int;  // never used: the reductions run in the call
  };
  template <class C>
  struct RequestOf<C, true> {
    using type =
        decltype(std::declval<C&>().start_all_reduce(std::declval<std::span<T>>(), ReduceOp::sum));
    static_assert(std::is_same_v<type, decltype(std::declval<C&>().start_all_gather(
                                           std::declval<std::span<const T>>(),
                                           std::declval<std::span<T>>()))>,
                  "ShardedOptimizer: a communicator's started collectives must share one "
                  "request type");
  };
  using Request = typename RequestOf<Comm>::type;

  struct Pending {
    std::size_t bucket = 0;
    int stage = 0;  // hierarchical: 0 = node reduce-scatter, 1 = across all-reduce
    std::optional<Request> request{};
  };

  void launch(std::size_t b) {
    if constexpr (started_collectives) {
      Pending p{.bucket = b};
      p.request.emplace(start_stage(b, 0));
      pending_.push_back(std::move(p));
      // A hierarchical bucket's step across nodes starts when the next bucket's node step has
      // started (or in wait_all, for the last): a fixed place in the sequence of starts, the
      // same on every rank. Starting it whenever its node step happens to complete would order
      // the starts on the node and across communicators differently on different ranks, and a
      // start that checks its arguments with its peers would wait for ranks waiting for it.
      if (pending_.size() >= 2) advance(pending_[pending_.size() - 2]);
    } else {
      run_bucket(b);
    }
  }

  void run_bucket(std::size_t b) {
    switch (options_.schedule) {
      case ShardSchedule::replicated: world_->all_reduce(bucket_span(b), ReduceOp::sum); break;
      case ShardSchedule::flat:
        world_->reduce_scatter(std::span<const T>(bucket_span(b)), bucket_shard(b), ReduceOp::sum);
        break;
      case ShardSchedule::hierarchical:
        node_->reduce_scatter(std::span<const T>(bucket_span(b)), bucket_shard(b), ReduceOp::sum);
        if (across_->size() > 1) across_->all_reduce(bucket_shard(b), ReduceOp::sum);
        break;
    }
  }

  auto start_stage(std::size_t b, int stage) requires started_collectives {
    switch (options_.schedule) {
      case ShardSchedule::replicated:
        return world_->start_all_reduce(bucket_span(b), ReduceOp::sum);
      case ShardSchedule::flat:
        return world_->start_reduce_scatter(std::span<const T>(bucket_span(b)), bucket_shard(b),
                                            ReduceOp::sum);
      case ShardSchedule::hierarchical: break;
    }
    if (stage == 0) {
      return node_->start_reduce_scatter(std::span<const T>(bucket_span(b)), bucket_shard(b),
                                         ReduceOp::sum);
    }
    return across_->start_all_reduce(bucket_shard(b), ReduceOp::sum);
  }

  [[nodiscard]] bool has_next_stage(const Pending& p) const {
    return options_.schedule == ShardSchedule::hierarchical && p.stage == 0 && across_->size() > 1;
  }

  // A bucket's node step is done: start its step across nodes (hierarchical only).
  void advance(Pending& p) {
    if (!has_next_stage(p)) return;
    p.request->wait();
    p.stage = 1;
    p.request.emplace(start_stage(p.bucket, 1));
  }

  // MPI progresses started collectives only inside MPI calls: test them now and then.
  void progress() {
    if constexpr (started_collectives) {
      for (Pending& p : pending_) {
        if (p.request && p.request->test() && !has_next_stage(p)) p.request.reset();
      }
    }
  }

  void wait_all() {
    if constexpr (started_collectives) {
      for (Pending& p : pending_) {
        if (!p.request) continue;
        advance(p);
        p.request->wait();
        p.request.reset();
      }
      pending_.clear();
    }
  }

  // --- after the reduction -------------------------------------------------------------------
  // The communicator over which the shard's pieces of one tensor are spread (for its norms).
  Comm* shard_comm() {
    switch (options_.schedule) {
      case ShardSchedule::replicated: return nullptr;
      case ShardSchedule::flat: return world_;
      case ShardSchedule::hierarchical: return &*node_;
    }
    return nullptr;
  }

  StepReport finish_reduced(StepReport report) {
    const std::size_t n = layout_.shard_elements();
    const std::span<T> grads = options_.schedule == ShardSchedule::replicated
                                   ? std::span<T>(flat_)
                                   : std::span<T>(grad_shard_);
    const T inv = T(1) / static_cast<T>(world_->size());
    for (T& g : grads) g *= inv;

    // This rank's parameters, shard by shard (padding stays zero).
    params_shard_.assign(n, T{});
    for (const ShardSegment& s : layout_.segments()) {
      std::memcpy(params_shard_.data() + s.offset, params_[s.tensor].data() + s.tensor_offset,
                  s.length * sizeof(T));
    }

    if (options_.clip_norm || options_.track_grad_norm) {
      double sq = 0.0;
      for (const ShardSegment& s : layout_.segments()) {
        for (std::size_t i = s.offset; i < s.offset + s.length; ++i) {
          sq += static_cast<double>(grads[i]) * static_cast<double>(grads[i]);
        }
      }
      if (Comm* c = shard_comm()) c->all_reduce(std::span<double>(&sq, 1), ReduceOp::sum);
      report.grad_norm = std::sqrt(sq);
      if (options_.clip_norm) {
        report.clip_factor = std::min(1.0, *options_.clip_norm / (report.grad_norm + 1e-6));
        const T f = static_cast<T>(report.clip_factor);
        for (T& g : grads) g *= f;
      }
    }

    new_params_ = params_shard_;
    new_state_ = state_;
    scratch_.assign(n, T{});
    const ShardContext<T> ctx{.params = params_shard_,
                              .grads = grads,
                              .new_params = new_params_,
                              .state = state_,
                              .new_state = new_state_,
                              .scratch = scratch_,
                              .segments = layout_.segments(),
                              .num_tensors = params_.size(),
                              .step = steps_ + 1};
    partials_.assign(Update::norm_slots * params_.size(), 0.0);
    guarded_update([&] { update_.compute(ctx, std::span<double>(partials_)); });
    if constexpr (Update::norm_slots > 0) {
      if (Comm* c = shard_comm()) c->all_reduce(std::span<double>(partials_), ReduceOp::sum);
    }
    if (fault_kind_ == 0) {
      guarded_update([&] { update_.apply(ctx, std::span<const double>(partials_)); });
    }

    // Every rank, not only the shard's group: a failure anywhere must stop everyone.
    std::int64_t word = fault_kind_ == 0 ? no_fault : encode(fault_kind_);
    world_->all_reduce(std::span<std::int64_t>(&word, 1), ReduceOp::min);
    if (word != no_fault) {
      const std::string cause = describe_fault(word, fault_why_);
      if (word % 4 == fault_bad_input)
        throw usage_error("ShardedOptimizer::step", world_->rank(), cause);
      throw error("ShardedOptimizer::step", world_->rank(), cause);
    }

    gather_parameters();
    state_.swap(new_state_);
    ++steps_;
    report.traffic = traffic();
    return report;
  }

  template <class F>
  void guarded_update(F&& f) {
    try {
      f();
    } catch (const std::exception& e) {
      fault(fault_update, std::string("the shard update threw: ") + e.what());
    } catch (...) {
      fault(fault_update, "the shard update threw a non-standard exception");
    }
  }

  // The new parameters of every shard into `flat_`, one all-gather per bucket, then into the
  // tensors; nothing is written into a tensor before every gather succeeded.
  void gather_parameters() {
    if (options_.schedule == ShardSchedule::replicated) {
      for (const ShardSegment& s : layout_.segments()) {
        std::memcpy(params_[s.tensor].data() + s.tensor_offset, new_params_.data() + s.offset,
                    s.length * sizeof(T));
      }
      return;
    }
    Comm& c = options_.schedule == ShardSchedule::flat ? *world_ : *node_;
    const std::size_t shards = layout_.shards();
    if constexpr (started_collectives) {
      std::vector<Request> gathers;
      gathers.reserve(layout_.num_buckets());
      for (std::size_t b = 0; b < layout_.num_buckets(); ++b) {
        const auto& bucket = layout_.buckets()[b];
        gathers.push_back(c.start_all_gather(
            std::span<const T>(new_params_).subspan(bucket.shard_begin, bucket.length / shards),
            bucket_span(b)));
      }
      for (Request& r : gathers) r.wait();
    } else {
      for (std::size_t b = 0; b < layout_.num_buckets(); ++b) {
        const auto& bucket = layout_.buckets()[b];
        c.all_gather(
            std::span<const T>(new_params_).subspan(bucket.shard_begin, bucket.length / shards),
            bucket_span(b));
      }
    }
    for (std::size_t t = 0; t < params_.size(); ++t) {
      if (params_[t].empty()) continue;
      std::memcpy(params_[t].data(), flat_.data() + layout_.tensor_offset(t),
                  params_[t].size() * sizeof(T));
    }
  }

  Comm* world_;
  ShardedOptions options_;
  std::vector<std::span<T>> params_;
  Update update_;
  detail::SetupLayout setup_ = make_layout();  // before layout_, which it initialises
  ShardLayout layout_;
  std::optional<Comm> node_;
  std::optional<Comm> across_;

  std::vector<T> state_;
  std::vector<T> flat_;        // the gradients in buckets; then the gathered parameters
  std::vector<T> grad_shard_;  // the reduced gradients of this rank's shard
  std::vector<T> params_shard_, new_params_, new_state_, scratch_;
  std::vector<double> partials_;
  std::uint64_t steps_ = 0;

  std::vector<bool> ready_;
  std::vector<std::size_t> remaining_;
  std::size_t launched_ = 0;
  std::size_t started_early_ = 0;
  std::vector<Pending> pending_;
  std::int64_t fault_kind_ = 0;
  std::string fault_why_;
};

template <class T, communicator Comm, class Update>
ShardedOptimizer(Comm&, const std::vector<std::span<T>>&, Update)
    -> ShardedOptimizer<T, Comm, Update>;
template <class T, communicator Comm, class Update>
ShardedOptimizer(Comm&, const std::vector<std::span<T>>&, Update, ShardedOptions)
    -> ShardedOptimizer<T, Comm, Update>;

}  // namespace strata::optim
