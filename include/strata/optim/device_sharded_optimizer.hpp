#pragma once
//! \file
//! `strata::optim::DeviceShardedOptimizer`: the sharded optimizer of `sharded_optimizer.hpp` on a
//! device communicator (NCCL), with parameters, gradients, state and norms in device memory, so
//! that a step enqueues its work on streams and never waits for the device (target
//! `strata::cuda`; the CUDA launcher is in `strata/optim/device_sharded_optimizer.cuh`).

#include <algorithm>
#include <concepts>
#include <cstddef>
#include <cstdint>
#include <limits>
#include <optional>
#include <span>
#include <stdexcept>
#include <string>
#include <type_traits>
#include <utility>
#include <vector>

#include <thrust/fill.h>
#include <thrust/for_each.h>
#include <thrust/iterator/counting_iterator.h>

#include "strata/comm/communicator.hpp"
#include "strata/comm/hierarchical_all_reduce.hpp"
#include "strata/comm/level_comms.hpp"
#include "strata/cuda/device_buffer.hpp"
#include "strata/cuda/runtime.hpp"
#include "strata/error.hpp"
#include "strata/optim/adam.hpp"
#include "strata/optim/detail/device_optim_steps.hpp"
#include "strata/optim/lamb.hpp"
#include "strata/optim/sgd.hpp"
#include "strata/optim/shard_layout.hpp"
#include "strata/optim/sharded_optimizer.hpp"

namespace strata::optim {

//! A caller's element-wise update for the device path: trivially copyable (it travels to the
//! device by value), with `state_size` state values per parameter, and callable on the device
//! (`STRATA_HOST_DEVICE`) as `u(step, p, g, state, stride)`: `step` is 1 at the first update, `p`
//! the parameter to change in place, `g` the mean (clipped) gradient, and state value k of the
//! element at `state[k * stride]`. No norms: updates that need per-tensor norms are LAMB's kind,
//! which the device path provides (`Lamb`).
//!
//! \code
//! // struct SignSgd {  // p -= lr * sign(g), at namespace scope
//! //   static constexpr std::size_t state_size = 0;
//! //   double lr = 0.1;
//! //   STRATA_HOST_DEVICE void operator()(std::uint64_t, double& p, double g, double*,
//! //                                      std::size_t) const { p -= lr * ((g > 0) - (g < 0)); }
//! // };
//! static_assert(!strata::optim::device_elementwise_update<strata::optim::Adam, double>);
//! static_assert(!strata::optim::device_elementwise_update<int, double>);
//! \endcode
template <class U, class T>
concept device_elementwise_update = std::is_trivially_copyable_v<U> &&
    requires(const U& u, T& p, T g, T* state) {
  { U::state_size } -> std::convertible_to<std::size_t>;
  u(std::uint64_t{1}, p, g, state, std::size_t{1});
};

//! The updates `DeviceShardedOptimizer` runs: `Sgd`, `Adam` and `Lamb` (device kernels with the
//! host updates' arithmetic), or a caller's `device_elementwise_update`.
//!
//! \code
//! static_assert(strata::optim::device_shard_update<strata::optim::Lamb, float>);
//! static_assert(!strata::optim::device_shard_update<int, float>);
//! \endcode
template <class U, class T>
concept device_shard_update = std::floating_point<T> &&
    (std::same_as<U, Sgd> || std::same_as<U, Adam> || std::same_as<U, Lamb> ||
     device_elementwise_update<U, T>);

//! How `DeviceShardedOptimizer` reaches the device besides its communicator:
//! `launch(stream, f)` calls `f(policy)` with a Thrust execution policy whose work runs in
//! stream order on `stream`, and `order(from, to)` makes the work enqueued on `to` from now on
//! wait for the work enqueued on `from` so far (an event recorded on `from` that `to` waits
//! for), without the host waiting. A launcher may also say how the squared norms are reduced:
//! `max_lanes` threads at most per reduced range, each summing at least `min_lane_elements`
//! (both `static constexpr std::size_t`); without them every range is summed by one thread, in
//! element order, as the host optimizer sums.
//!
//! \code
//! // struct Inline {  // runs each step at once, on the host
//! //   template <class F> void launch(int, F&& f) { f(thrust::host); }
//! //   void order(int, int) {}
//! // };
//! static_assert(!strata::optim::device_optimizer_launcher<int, int>);
//! \endcode
template <class L, class Stream>
concept device_optimizer_launcher = std::move_constructible<L> && requires(L& l, Stream s) {
  l.order(s, s);
};

//! A communicator over device memory whose collectives are enqueued on streams (`NcclComm` or its
//! host double): it names its stream, its runtime policy and its device, and waits for a stream
//! under its deadline.
//!
//! \code
//! static_assert(!strata::optim::device_stream_communicator<int>);
//! \endcode
template <class C>
concept device_stream_communicator = communicator<C> && device_memory_v<C> &&
    requires(C& c, const C& cc, typename C::stream_handle s) {
  typename C::runtime_type;
  { cc.stream() } -> std::same_as<typename C::stream_handle>;
  { cc.device() } -> std::convertible_to<int>;
  c.synchronize(s);
};

//! The sharded optimizer on a device communicator (docs/device.md, "The sharded optimizer on the
//! device"): the schedules, layout, buckets, clipping, updates and checkpoints of
//! `ShardedOptimizer`, with every tensor in device memory and every step enqueued:
//! - `grad_ready(t, grad, stream)` copies the gradient into its bucket on `stream` (where the
//!   backward produced it) and, once the bucket and every earlier one are complete, enqueues the
//!   bucket's reduction on the communicator's stream behind an `order` from each stream that
//!   filled it: NCCL collectives are stream-ordered, so the reduction overlaps the rest of the
//!   backward;
//! - `finish_step(stream)` enqueues on the communicator's stream the rest: the mean, the global
//!   squared norm and this rank's status into a small control buffer, one small all-reduce of it
//!   (over the world; the hierarchical schedule sums the norm over the node and the status over
//!   the world, two all-reduces), the agreement, norm and clipping factor computed on the device,
//!   the update on this rank's shard (LAMB: its direction, one small all-reduce of per-tensor
//!   norms over the ranks sharing the tensors, its step), one all-gather per bucket and the copy
//!   into the parameter tensors; `stream` then waits for all of it, so work enqueued there sees
//!   the new parameters. No call of a step waits for the device or copies from it.
//!
//! Failures. A rank's bad input to a step (a gradient of the wrong size, an index out of range, a
//! tensor marked twice or never, a step with the wrong number of gradients) is found on the host
//! when the call is made; the rank records it and carries on with the step (the tensor's
//! gradient counts as zeros), so that every rank enqueues the same collectives and nobody hangs.
//! The status travels in the control all-reduce: on every rank the device then skips the update,
//! the state, the parameters and the step count of that step alike (nothing is committed), and
//! keeps the first problem until the host reads it: `check()` waits for the device and throws
//! the same `strata::usage_error` on every rank, naming the lowest rank with a problem and the
//! problem. Later clean steps commit as usual; a caller that must not train past a bad step
//! calls `check()` after each one (a wait per step). Construction is collective: the ranks agree
//! on the tensor list and settings (one all-gather and a wait), and every rank throws the same
//! `usage_error` when they differ. A communicator that fails (an abort, a peer that dies, a
//! deadline) throws from the call that meets it; the step's tensors are then not to be trusted,
//! as with any NCCL trainer, and the peers' next wait (`check`, `grad_norm`, `state`) fails
//! under its deadline.
//!
//! The caller keeps `params` alive and in place (the optimizer holds their device pointers),
//! leaves a gradient unchanged until the step's work is ordered on its stream (anything enqueued
//! on `finish_step`'s stream after the call), and makes every call of one rank from one thread.
//! NcclOptions::verify_arguments makes every collective wait for the host: leave it off here.
//!
//! \code
//! // See tests/nccl/optim_device_test.cpp (host double of NCCL, worlds 1 to 8) and
//! // tests/cuda/sharded_optimizer_device_test.cu (a real GPU) for complete programs.
//! static_assert(strata::optim::device_shard_update<strata::optim::Adam, double>);
//! \endcode
template <class T, class Comm, class Update, class Launcher>
requires(std::same_as<T, float> || std::same_as<T, double>) &&
    device_stream_communicator<Comm>&& device_shard_update<Update, T>&& device_optimizer_launcher<
        Launcher, typename Comm::stream_handle> class DeviceShardedOptimizer {
  using i64 = std::int64_t;
  using Runtime = typename Comm::runtime_type;
  template <class U>
  using Buffer = DeviceBuffer<U, Runtime>;
  using Info = detail::dev::StepInfo<T>;
  static constexpr bool is_sgd = std::same_as<Update, Sgd>;
  static constexpr bool is_adam = std::same_as<Update, Adam>;
  static constexpr bool is_lamb = std::same_as<Update, Lamb>;
  static constexpr std::size_t state_size = Update::state_size;

 public:
  using value_type = T;
  using update_type = Update;
  using stream_handle = typename Comm::stream_handle;

  //! Collective over `world`: agrees on the tensors and settings with every rank (throws the
  //! same `strata::usage_error` on every rank when they differ), splits the node and strided
  //! communicators for the hierarchical schedule, allocates every buffer and waits for the
  //! uploads. `params` are device memory on the communicator's device.
  DeviceShardedOptimizer(Comm& world, std::span<const std::span<T>> params, Update update,
                         ShardedOptions options = {}, Launcher launcher = {})
      : world_(&world),
        options_(std::move(options)),
        params_(params.begin(), params.end()),
        update_(std::move(update)),
        launcher_(std::move(launcher)),
        layout_(setup_.layout) {
    const DeviceGuard<Runtime> on(world.device(), world.rank());
    agree_on_setup(setup_.problem);
    if (options_.schedule == ShardSchedule::hierarchical) {
      node_.emplace(split_node(world, static_cast<int>(options_.ranks_per_node)));
      across_.emplace(split_strided(world, static_cast<int>(options_.ranks_per_node)));
    }
    allocate();
    begin_step();
  }

  DeviceShardedOptimizer(Comm& world, const std::vector<std::span<T>>& params, Update update,
                         ShardedOptions options = {}, Launcher launcher = {})
      : DeviceShardedOptimizer(world, std::span<const std::span<T>>(params), std::move(update),
                               std::move(options), std::move(launcher)) {}

  DeviceShardedOptimizer(const DeviceShardedOptimizer&) = delete;
  DeviceShardedOptimizer& operator=(const DeviceShardedOptimizer&) = delete;

  //! The update, to change its hyper-parameters between steps (read at each `finish_step`).
  [[nodiscard]] Update& update() noexcept { return update_; }
  [[nodiscard]] const ShardLayout& layout() const noexcept { return layout_; }
  [[nodiscard]] const ShardedOptions& options() const noexcept { return options_; }

  //! Marks tensor `t`'s gradient (device memory) ready: enqueues its copy into the bucket on
  //! `stream`, and the reduction of every bucket that is now complete (in bucket order) on the
  //! communicator's stream. Bad input is recorded, not thrown (see the class comment).
  void grad_ready(std::size_t t, std::span<const T> grad, stream_handle stream) {
    const DeviceGuard<Runtime> on(world_->device(), world_->rank());
    if (t >= params_.size()) {
      fault(detail::dev::problem_index, t, 0);
    } else if (ready_[t]) {
      fault(detail::dev::problem_twice, t, 0);
    } else {
      ready_[t] = true;
      const std::size_t b = layout_.bucket_of(t);
      if (grad.size() != params_[t].size()) {
        fault(detail::dev::problem_size, t, grad.size());
      } else if (!grad.empty()) {
        try {
          release_to(stream);
          Runtime::check("cudaMemcpyAsync", world_->rank(),
                         Runtime::memcpy_async(flat_.data() + layout_.tensor_offset(t), grad.data(),
                                               grad.size_bytes(), stream));
        } catch (...) {
          abandon_step();
          throw;
        }
        auto& filled = bucket_streams_[b];
        if (std::find(filled.begin(), filled.end(), stream) == filled.end()) {
          filled.push_back(stream);
        }
      }
      --remaining_[b];
    }
    try {
      launch_complete_buckets(/*early=*/true);
    } catch (...) {
      abandon_step();
      throw;
    }
  }
  //! `grad_ready` with the gradient produced on the communicator's stream.
  void grad_ready(std::size_t t, std::span<const T> grad) { grad_ready(t, grad, world_->stream()); }

  //! Ends the step that `grad_ready` calls began (see the class comment); work enqueued on
  //! `stream` afterwards sees the new parameters. Never waits for the device.
  void finish_step(stream_handle stream) {
    const DeviceGuard<Runtime> on(world_->device(), world_->rank());
    for (std::size_t t = 0; t < params_.size(); ++t) {
      if (!ready_[t]) {
        fault(detail::dev::problem_never, t, 0);
        ready_[t] = true;
        --remaining_[layout_.bucket_of(t)];
      }
    }
    try {
      launch_complete_buckets(/*early=*/false);
      // The parameters may have been written on the caller's stream.
      order(stream, world_->stream());
      enqueue_update();
      order(world_->stream(), stream);
    } catch (...) {
      abandon_step();
      throw;
    }
    last_started_early_ = started_early_;
    begin_step();
    released_.push_back(stream);
  }
  void finish_step() { finish_step(world_->stream()); }

  //! One whole step: every gradient (device spans, one per tensor) in ready order on `stream`,
  //! then `finish_step(stream)`.
  template <class Grads>
  void step(const Grads& grads, stream_handle stream) {
    if (std::size(grads) != params_.size()) {
      fault(detail::dev::problem_count, std::size(grads), 0);
    } else {
      for (std::size_t t : layout_.ready_order()) {
        grad_ready(t, std::span<const T>(std::data(grads)[t]), stream);
      }
    }
    finish_step(stream);
  }
  template <class Grads>
  void step(const Grads& grads) {
    step(grads, world_->stream());
  }

  //! Waits for the device and throws `strata::usage_error`, the same on every rank, when a step
  //! since the last check skipped its commit because a rank had bad input (naming the first such
  //! problem); the problem is then forgotten.
  void check() {
    const DeviceGuard<Runtime> on(world_->device(), world_->rank());
    const Info info = read_info();
    if (info.problem[0] == detail::dev::problem_none) return;
    Info* dev = info_.data();
    launcher_.launch(world_->stream(), [=](const auto& policy) {
      const auto it = thrust::counting_iterator<i64>(0);
      thrust::for_each(policy, it, it + 1, detail::dev::ClearProblem<T>{dev});
    });
    throw usage_error("DeviceShardedOptimizer::check", world_->rank(), describe(info.problem));
  }

  //! ‖mean gradient‖ of the last step, before clipping (NaN when neither clipping nor tracking
  //! asked for it). Waits for the device.
  [[nodiscard]] double grad_norm() { return read_info().grad_norm; }

  //! Where the last step's ‖mean gradient‖ lives in device memory (a `double`), for device code
  //! ordered after the step (on `finish_step`'s stream), without waiting.
  [[nodiscard]] const double* grad_norm_device() const noexcept { return &info_.data()->grad_norm; }

  //! The last step's report: the norm and clipping factor (waits for the device), the traffic
  //! and the buckets whose reduction was enqueued before `finish_step`.
  [[nodiscard]] StepReport report() {
    const Info info = read_info();
    StepReport r;
    r.grad_norm = info.grad_norm;
    r.clip_factor = info.clip_factor;
    r.traffic = traffic();
    r.buckets_started_early = last_started_early_;
    return r;
  }

  //! Committed steps; the next update sees `step = steps_taken() + 1`. Waits for the device.
  [[nodiscard]] std::uint64_t steps_taken() { return read_info().steps; }

  //! This rank's state for a checkpoint (as `ShardedOptimizer::state`). Waits for the device.
  [[nodiscard]] ShardedState<T> state() {
    const DeviceGuard<Runtime> on(world_->device(), world_->rank());
    const Info info = read_info();
    ShardedState<T> s{.world_size = static_cast<std::uint64_t>(world_->size()),
                      .ranks_per_node = options_.ranks_per_node,
                      .schedule = options_.schedule,
                      .layout = layout_.fingerprint(),
                      .shard = layout_.shard(),
                      .steps = info.steps,
                      .values = std::vector<T>(state_size * layout_.shard_elements())};
    download(s.values, state_);
    return s;
  }

  //! Collective over the world: restores a state saved by `state()` (of this optimizer or of the
  //! host `ShardedOptimizer` with the same tensors and settings). Every rank throws
  //! `strata::usage_error` (and nothing changes anywhere) when any rank's state does not fit or
  //! the ranks' step counts differ. Waits for the device.
  void load(const ShardedState<T>& s) {
    const DeviceGuard<Runtime> on(world_->device(), world_->rank());
    const std::size_t values = state_size * layout_.shard_elements();
    const std::string why = detail::state_mismatch(s, static_cast<std::size_t>(world_->size()),
                                                   options_, layout_, values);
    constexpr i64 no_fault = std::numeric_limits<i64>::max();
    const std::vector<i64> words =
        reduce_words({why.empty() ? no_fault : static_cast<i64>(world_->rank()),
                      static_cast<i64>(s.steps), -static_cast<i64>(s.steps)},
                     ReduceOp::min);
    if (words[0] != no_fault) {
      const std::string cause = words[0] == world_->rank() ? "the state does not fit: " + why
                                                           : "passed a state that does not fit";
      throw usage_error("DeviceShardedOptimizer::load", world_->rank(),
                        "rank " + std::to_string(words[0]) + ": " + cause);
    }
    if (words[1] != -words[2]) {
      throw usage_error("DeviceShardedOptimizer::load", world_->rank(),
                        "the ranks' states were saved at different steps (" +
                            std::to_string(words[1]) + " to " + std::to_string(-words[2]) + ")");
    }
    if (values != 0) upload(state_, s.values);
    Info* dev = info_.data();
    const std::uint64_t steps = s.steps;
    launcher_.launch(world_->stream(), [=](const auto& policy) {
      const auto it = thrust::counting_iterator<i64>(0);
      thrust::for_each(policy, it, it + 1, detail::dev::SetSteps<T>{dev, steps});
    });
    world_->synchronize(world_->stream());
  }

  //! Elements one rank sends per step for the gradients and parameters, by link kind (as
  //! `ShardedOptimizer::traffic`).
  [[nodiscard]] LinkTraffic traffic() const {
    return detail::sharded_traffic(layout_, options_, static_cast<std::size_t>(world_->size()),
                                   static_cast<std::size_t>(world_->rank()));
  }

 private:
  detail::SetupLayout make_layout() const {
    std::vector<std::size_t> sizes;
    sizes.reserve(params_.size());
    for (const std::span<T> p : params_) sizes.push_back(p.size());
    return detail::make_setup_layout(static_cast<std::size_t>(world_->size()),
                                     static_cast<std::size_t>(world_->rank()), options_, sizes,
                                     sizeof(T));
  }

  // The host optimizer's agreement (detail::check_setup), over the device communicator: one
  // all-gather of a few words through device memory.
  void agree_on_setup(const std::string& problem) {
    const auto sig = detail::setup_signature(detail::SetupLayout{layout_, problem}, options_,
                                             params_.size(), state_size);
    const std::vector<i64> mine(sig.begin(), sig.end());
    const std::vector<i64> all = gather_words(mine);
    detail::check_setup("DeviceShardedOptimizer", all, static_cast<std::size_t>(world_->size()),
                        world_->rank(), problem, options_);
  }

  // Squared-norm reductions: each range split into lanes (threads), each lane summing in element
  // order, then the lanes summed in order. One lane per range sums as the host optimizer does.
  struct LanePlan {
    std::vector<detail::dev::Lane> lanes;
    std::vector<detail::dev::Range> ranges;
  };
  struct RangeSpec {
    std::size_t begin, length, out;
  };
  static LanePlan plan_lanes(const std::vector<RangeSpec>& specs) {
    std::size_t most = 1, least = 1;
    if constexpr (requires {
                    { Launcher::max_lanes } -> std::convertible_to<std::size_t>;
                    { Launcher::min_lane_elements } -> std::convertible_to<std::size_t>;
                  }) {
      most = std::max<std::size_t>(1, Launcher::max_lanes);
      least = std::max<std::size_t>(1, Launcher::min_lane_elements);
    }
    LanePlan p;
    for (const RangeSpec& s : specs) {
      const std::size_t n = s.length == 0 ? 0 : std::min(most, (s.length + least - 1) / least);
      p.ranges.push_back(
          {static_cast<i64>(p.lanes.size()), static_cast<i64>(n), static_cast<i64>(s.out)});
      for (std::size_t l = 0; l < n; ++l) {
        p.lanes.push_back({static_cast<i64>(s.begin + l),
                           static_cast<i64>((s.length - l + n - 1) / n), static_cast<i64>(n)});
      }
    }
    return p;
  }

  void allocate() {
    const int r = world_->rank();
    const std::size_t n = layout_.shard_elements(), total = layout_.total_elements();
    const auto w = static_cast<std::size_t>(world_->size());
    flat_.resize(std::max<std::size_t>(total, 1), r);
    if (options_.schedule != ShardSchedule::replicated)
      grads_.resize(std::max<std::size_t>(n, 1), r);
    shard_.resize(std::max<std::size_t>(n, 1), r);
    state_.resize(std::max<std::size_t>(state_size * n, 1), r);
    scratch_.resize(is_lamb ? std::max<std::size_t>(n, 1) : 1, r);
    control_.resize(1 + detail::dev::status_words * w, r);
    partials_.resize(std::max<std::size_t>(2 * params_.size(), 1), r);
    info_.resize(1, r);
    info_host_.resize(1, r);

    std::vector<detail::dev::SegmentRef<T>> segs;
    for (const ShardSegment& s : layout_.segments()) {
      segs.push_back({static_cast<i64>(s.offset), static_cast<i64>(s.length),
                      static_cast<i64>(s.tensor), params_[s.tensor].data() + s.tensor_offset});
    }
    segment_count_ = segs.size();
    std::vector<detail::dev::TensorRef<T>> tensors;
    for (std::size_t t : layout_.ready_order()) {  // increasing offsets
      if (params_[t].empty()) continue;
      tensors.push_back({static_cast<i64>(layout_.tensor_offset(t)),
                         static_cast<i64>(params_[t].size()), params_[t].data()});
    }
    tensor_count_ = tensors.size();
    const LanePlan global = plan_lanes({{0, n, 0}});
    std::vector<RangeSpec> pieces;
    for (const ShardSegment& s : layout_.segments())
      pieces.push_back({s.offset, s.length, s.tensor});
    const LanePlan per_tensor = is_lamb ? plan_lanes(pieces) : LanePlan{};
    global_lanes_ = global.lanes.size();
    tensor_lanes_ = per_tensor.lanes.size();
    const std::size_t lane_room = std::max<std::size_t>({global_lanes_, tensor_lanes_, 1});
    lanes_a_.resize(lane_room, r);
    lanes_b_.resize(lane_room, r);
    lamb_steps_.resize(std::max<std::size_t>(segment_count_, 1), r);

    upload(segments_, segs);
    upload(tensors_, tensors);
    upload(global_lane_table_, global.lanes);
    upload(global_ranges_, global.ranges);
    upload(tensor_lane_table_, per_tensor.lanes);
    upload(tensor_ranges_, per_tensor.ranges);
    upload(info_, std::vector<Info>(1));
    const std::size_t flat_size = flat_.size(), grads_size = grads_.size(),
                      shard_size = shard_.size(), state_elems = state_.size();
    T *flat = flat_.data(), *grads = grads_.data(), *shard = shard_.data(), *state = state_.data();
    launcher_.launch(world_->stream(), [=](const auto& policy) {
      thrust::fill_n(policy, flat, flat_size, T(0));
      if (grads != nullptr) thrust::fill_n(policy, grads, grads_size, T(0));
      thrust::fill_n(policy, shard, shard_size, T(0));
      thrust::fill_n(policy, state, state_elems, T(0));
    });
    world_->synchronize(world_->stream());
  }

  template <class U>
  void upload(Buffer<U>& dst, const std::vector<U>& src) {
    const int r = world_->rank();
    if (dst.size() < std::max<std::size_t>(src.size(), 1)) {
      dst.resize(std::max<std::size_t>(src.size(), 1), r);
    }
    if (src.empty()) return;
    PinnedBuffer<U, Runtime> staging(src.size(), r);
    std::copy(src.begin(), src.end(), staging.data());
    Runtime::check("cudaMemcpyAsync", r,
                   Runtime::memcpy_async(dst.data(), staging.data(), src.size() * sizeof(U),
                                         world_->stream()));
    world_->synchronize(world_->stream());
  }

  template <class U>
  void download(std::vector<U>& dst, const Buffer<U>& src) {
    if (dst.empty()) return;
    const int r = world_->rank();
    PinnedBuffer<U, Runtime> staging(dst.size(), r);
    Runtime::check("cudaMemcpyAsync", r,
                   Runtime::memcpy_async(staging.data(), src.data(), dst.size() * sizeof(U),
                                         world_->stream()));
    world_->synchronize(world_->stream());
    std::copy(staging.data(), staging.data() + dst.size(), dst.begin());
  }

  // The step's info, once the communicator's stream (where every step runs) has reached it.
  Info read_info() {
    const DeviceGuard<Runtime> on(world_->device(), world_->rank());
    Runtime::check(
        "cudaMemcpyAsync", world_->rank(),
        Runtime::memcpy_async(info_host_.data(), info_.data(), sizeof(Info), world_->stream()));
    world_->synchronize(world_->stream());
    return *info_host_.data();
  }

  // Collectives on a few words, through device memory, waited for: construction and load only.
  std::vector<i64> gather_words(const std::vector<i64>& mine) {
    const auto w = static_cast<std::size_t>(world_->size());
    const std::size_t k = mine.size();
    Buffer<i64> words(k * (w + 1), world_->rank());
    upload(words, mine);
    world_->all_gather(std::span<const i64>(words.data(), k),
                       std::span<i64>(words.data() + k, k * w));
    std::vector<i64> all(k * (w + 1));
    download(all, words);
    return std::vector<i64>(all.begin() + static_cast<std::ptrdiff_t>(k), all.end());
  }
  std::vector<i64> reduce_words(std::vector<i64> mine, ReduceOp op) {
    Buffer<i64> words(mine.size(), world_->rank());
    upload(words, mine);
    world_->all_reduce(std::span<i64>(words.data(), mine.size()), op);
    download(mine, words);
    return mine;
  }

  void fault(i64 code, std::size_t first, std::size_t second) {
    if (fault_[0] != detail::dev::problem_none) return;  // the first names the step's problem
    fault_[0] = code;
    fault_[1] = static_cast<i64>(first);
    fault_[2] = static_cast<i64>(second);
  }

  [[nodiscard]] std::string describe(const i64* p) const {
    namespace dv = detail::dev;
    const auto num = [](i64 v) { return std::to_string(v); };
    std::string why = "rank " + num(p[1]) + ": ";
    switch (p[0]) {
      case dv::problem_size:
        return why + "the gradient of tensor " + num(p[2]) + " has " + num(p[3]) +
               " elements, the tensor " + std::to_string(params_.at(std::size_t(p[2])).size());
      case dv::problem_index:
        return why + "gradient index " + num(p[2]) + " is not below the " +
               std::to_string(params_.size()) + " parameter tensors";
      case dv::problem_twice:
        return why + "the gradient of tensor " + num(p[2]) + " was marked twice";
      case dv::problem_never:
        return why + "the gradient of tensor " + num(p[2]) + " was never marked";
      default:
        return why + "the step has " + num(p[2]) + " gradients for " +
               std::to_string(params_.size()) + " parameter tensors";
    }
  }

  void begin_step() {
    std::fill(ready_.begin(), ready_.end(), false);
    ready_.resize(params_.size(), false);
    remaining_.resize(layout_.num_buckets());
    bucket_streams_.assign(layout_.num_buckets(), {});
    for (std::size_t b = 0; b < layout_.num_buckets(); ++b) {
      const auto& bucket = layout_.buckets()[b];
      remaining_[b] = bucket.last - bucket.first;
    }
    launched_ = 0;
    started_early_ = 0;
    released_.clear();
    fault_[0] = fault_[1] = fault_[2] = 0;
  }

  // A step that threw half-way: the buckets must read as zeros again (best effort: the
  // communicator that threw may be unusable), and the next step starts afresh.
  void abandon_step() noexcept {
    try {
      zero_flat();
    } catch (...) {  // NOLINT(bugprone-empty-catch): the error that unwinds is the one to report
    }
    begin_step();
  }

  void zero_flat() {
    T* flat = flat_.data();
    const std::size_t size = flat_.size();
    launcher_.launch(world_->stream(),
                     [=](const auto& policy) { thrust::fill_n(policy, flat, size, T(0)); });
  }

  void order(stream_handle from, stream_handle to) {
    if (from != to) launcher_.order(from, to);
  }

  // Work on `stream` this step must follow the communicator's stream's last step (which wrote
  // the buckets and the parameters), once per stream and step.
  void release_to(stream_handle stream) {
    if (stream == world_->stream()) return;
    if (std::find(released_.begin(), released_.end(), stream) != released_.end()) return;
    order(world_->stream(), stream);
    released_.push_back(stream);
  }

  [[nodiscard]] std::span<T> bucket_span(std::size_t b) {
    const auto& bucket = layout_.buckets()[b];
    return std::span<T>(flat_.data() + bucket.begin, bucket.length);
  }
  [[nodiscard]] std::span<T> bucket_shard(std::size_t b) {
    const auto& bucket = layout_.buckets()[b];
    return std::span<T>(grads_.data() + bucket.shard_begin, bucket.length / layout_.shards());
  }

  // Buckets go in index order on every rank, whatever order their tensors completed in, so that
  // every rank enqueues the same collectives in the same order.
  void launch_complete_buckets(bool early) {
    while (launched_ < layout_.num_buckets() && remaining_[launched_] == 0) {
      for (const stream_handle s : bucket_streams_[launched_]) order(s, world_->stream());
      reduce_bucket(launched_);
      if (early) ++started_early_;
      ++launched_;
    }
  }

  void reduce_bucket(std::size_t b) {
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

  // The communicator over which the shard's pieces of one tensor are spread (for its norms).
  Comm* shard_comm() {
    switch (options_.schedule) {
      case ShardSchedule::replicated: return nullptr;
      case ShardSchedule::flat: return world_;
      case ShardSchedule::hierarchical: return &*node_;
    }
    return nullptr;
  }

  // Everything after the reductions, on the communicator's stream.
  void enqueue_update() {
    namespace dv = detail::dev;
    const stream_handle cs = world_->stream();
    const bool replicated = options_.schedule == ShardSchedule::replicated;
    const i64 n = static_cast<i64>(layout_.shard_elements());
    const i64 world = world_->size();
    const i64 status = static_cast<i64>(dv::status_words) * world;
    T* grads = replicated ? flat_.data() : grads_.data();
    T* shard = shard_.data();
    T* state = state_.data();
    T* scratch = scratch_.data();
    double* control = control_.data();
    double* partials = partials_.data();
    double *lanes_a = lanes_a_.data(), *lanes_b = lanes_b_.data();
    Info* info = info_.data();
    const dv::SegmentRef<T>* segs = segments_.data();
    const i64 nsegs = static_cast<i64>(segment_count_);
    const bool norm_wanted = options_.clip_norm.has_value() || options_.track_grad_norm;

    // The mean, this shard's parameters, the squared norm and this rank's status.
    {
      const T inv = T(1) / static_cast<T>(world);
      const dv::Lane* lanes = global_lane_table_.data();
      const dv::Range* ranges = global_ranges_.data();
      const i64 nlanes = static_cast<i64>(global_lanes_);
      const i64 rank = world_->rank();
      const double code = static_cast<double>(fault_[0]), first = static_cast<double>(fault_[1]),
                   second = static_cast<double>(fault_[2]);
      launcher_.launch(cs, [=](const auto& policy) {
        const auto it = thrust::counting_iterator<i64>(0);
        thrust::for_each(policy, it, it + n, dv::Scale<T>{grads, inv});
        thrust::for_each(policy, it, it + n, dv::GatherShard<T>{segs, nsegs, shard});
        if (norm_wanted) {
          thrust::for_each(policy, it, it + nlanes,
                           dv::SquareLanes<T>{grads, nullptr, lanes, lanes_a, nullptr});
          thrust::for_each(policy, it, it + 1,
                           dv::SumRanges{ranges, lanes_a, nullptr, control, nullptr, 1});
        } else {
          thrust::fill_n(policy, control, 1, 0.0);
        }
        thrust::for_each(policy, it, it + status,
                         dv::WriteStatus{control + 1, rank, code, first, second});
      });
    }
    // Norm and status over the ranks: the status over the whole world, the norm over the ranks
    // that hold the other pieces of the shard.
    switch (options_.schedule) {
      case ShardSchedule::flat:
        world_->all_reduce(std::span<double>(control, std::size_t(1 + status)), ReduceOp::sum);
        break;
      case ShardSchedule::hierarchical:
        node_->all_reduce(std::span<double>(control, std::size_t(1 + status)), ReduceOp::sum);
        if (across_->size() > 1) {
          across_->all_reduce(std::span<double>(control + 1, std::size_t(status)), ReduceOp::sum);
        }
        break;
      case ShardSchedule::replicated:
        world_->all_reduce(std::span<double>(control + 1, std::size_t(status)), ReduceOp::sum);
        break;
    }
    // The agreement, the clipping and the update's first (or only) phase.
    {
      dv::Agree<T> agree{control,
                         world,
                         norm_wanted,
                         options_.clip_norm.has_value(),
                         is_adam || is_lamb,
                         options_.clip_norm.value_or(0.0),
                         std::numeric_limits<double>::quiet_NaN(),
                         0.0,
                         0.0,
                         0.0,
                         0.0,
                         0.0,
                         info};
      if constexpr (is_adam || is_lamb) {
        agree.lr = update_.lr;
        agree.beta1 = update_.beta1;
        agree.beta2 = update_.beta2;
        agree.eps = update_.eps;
        agree.weight_decay = update_.weight_decay;
      }
      const bool clip = options_.clip_norm.has_value();
      const Update u = update_;
      const dv::Lane* lanes = tensor_lane_table_.data();
      const dv::Range* ranges = tensor_ranges_.data();
      const i64 nlanes = static_cast<i64>(tensor_lanes_);
      const std::size_t slots = partials_.size();
      launcher_.launch(cs, [=](const auto& policy) {
        const auto it = thrust::counting_iterator<i64>(0);
        thrust::for_each(policy, it, it + 1, agree);
        if (clip) thrust::for_each(policy, it, it + n, dv::Clip<T>{grads, info});
        if constexpr (is_sgd) {
          thrust::for_each(policy, it, it + n,
                           dv::SgdStep<T>{shard, grads, info, static_cast<T>(u.lr),
                                          static_cast<T>(u.weight_decay)});
        } else if constexpr (is_adam) {
          thrust::for_each(policy, it, it + n,
                           dv::AdamStepElement<T>{shard, grads, state, state + n, info});
        } else if constexpr (is_lamb) {
          thrust::for_each(policy, it, it + n,
                           dv::LambDirection<T>{shard, grads, state, state + n, scratch, info});
          thrust::fill_n(policy, partials, slots, 0.0);
          thrust::for_each(policy, it, it + nlanes,
                           dv::SquareLanes<T>{shard, scratch, lanes, lanes_a, lanes_b});
          thrust::for_each(policy, it, it + nsegs,
                           dv::SumRanges{ranges, lanes_a, lanes_b, partials, partials + 1, 2});
        } else {
          thrust::for_each(policy, it, it + n,
                           dv::UserStep<T, Update>{u, shard, grads, state, n, info});
        }
      });
    }
    if constexpr (is_lamb) {
      if (Comm* c = shard_comm()) {
        c->all_reduce(std::span<double>(partials, 2 * params_.size()), ReduceOp::sum);
      }
      const double lr = update_.lr;
      T* steps = lamb_steps_.data();
      launcher_.launch(cs, [=](const auto& policy) {
        const auto it = thrust::counting_iterator<i64>(0);
        thrust::for_each(policy, it, it + nsegs, dv::LambRatios<T>{segs, partials, lr, steps});
        thrust::for_each(policy, it, it + n,
                         dv::LambApply<T>{segs, nsegs, steps, scratch, shard, info});
      });
    }
    // Every shard's new parameters into the buckets, then into the tensors when the step
    // commits; the buckets are zeros again for the next step's gradients.
    const T* source = shard;
    if (!replicated) {
      Comm& c = options_.schedule == ShardSchedule::flat ? *world_ : *node_;
      const std::size_t shards = layout_.shards();
      for (std::size_t b = 0; b < layout_.num_buckets(); ++b) {
        const auto& bucket = layout_.buckets()[b];
        c.all_gather(std::span<const T>(shard + bucket.shard_begin, bucket.length / shards),
                     bucket_span(b));
      }
      source = flat_.data();
    }
    {
      const dv::TensorRef<T>* tensors = tensors_.data();
      const i64 ntensors = static_cast<i64>(tensor_count_);
      const i64 total = static_cast<i64>(layout_.total_elements());
      T* flat = flat_.data();
      const std::size_t flat_size = flat_.size();
      launcher_.launch(cs, [=](const auto& policy) {
        const auto it = thrust::counting_iterator<i64>(0);
        thrust::for_each(policy, it, it + total, dv::CopyBack<T>{tensors, ntensors, source, info});
        thrust::for_each(policy, it, it + 1, dv::Commit<T>{info});
        thrust::fill_n(policy, flat, flat_size, T(0));
      });
    }
  }

  Comm* world_;
  ShardedOptions options_;
  std::vector<std::span<T>> params_;
  Update update_;
  Launcher launcher_;
  detail::SetupLayout setup_ = make_layout();  // before layout_, which it initialises
  ShardLayout layout_;
  std::optional<Comm> node_;
  std::optional<Comm> across_;

  Buffer<T> flat_;     // the gradients in buckets; then the gathered parameters
  Buffer<T> grads_;    // the reduced gradients of this rank's shard (not replicated)
  Buffer<T> shard_;    // this rank's parameters, updated in place
  Buffer<T> state_;    // state_size vectors of the shard's length
  Buffer<T> scratch_;  // LAMB's direction
  Buffer<T> lamb_steps_;
  Buffer<double> control_;   // [0] the squared norm, then every rank's status
  Buffer<double> partials_;  // LAMB's per-tensor squared norms
  Buffer<double> lanes_a_, lanes_b_;
  Buffer<Info> info_;
  PinnedBuffer<Info, Runtime> info_host_;
  Buffer<detail::dev::SegmentRef<T>> segments_;
  Buffer<detail::dev::TensorRef<T>> tensors_;
  Buffer<detail::dev::Lane> global_lane_table_, tensor_lane_table_;
  Buffer<detail::dev::Range> global_ranges_, tensor_ranges_;
  std::size_t segment_count_ = 0, tensor_count_ = 0, global_lanes_ = 0, tensor_lanes_ = 0;

  std::vector<bool> ready_;
  std::vector<std::size_t> remaining_;
  std::vector<std::vector<stream_handle>> bucket_streams_;
  std::vector<stream_handle> released_;
  std::size_t launched_ = 0;
  std::size_t started_early_ = 0;
  std::size_t last_started_early_ = 0;
  i64 fault_[3] = {0, 0, 0};
};

}  // namespace strata::optim
