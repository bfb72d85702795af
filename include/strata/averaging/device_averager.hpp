#pragma once
//! \file
//! The averager for device tensors: the schedule of `HierarchicalAverager`, on a device
//! communicator (NCCL), on CUDA streams, with no host synchronisation, and optionally replayed
//! from one CUDA graph per level. Host code: builds with g++; the kernels it launches come from
//! a `.cuh` (`strata/averaging/cuda_averager.cuh` names the CUDA ones).

#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <optional>
#include <span>
#include <stdexcept>
#include <string>
#include <string_view>
#include <tuple>
#include <type_traits>
#include <utility>
#include <vector>

#include "strata/averaging/averager.hpp"
#include "strata/averaging/clock.hpp"
#include "strata/averaging/cuda_graphs.hpp"
#include "strata/averaging/outer.hpp"
#include "strata/comm/communicator.hpp"
#include "strata/comm/level_comms.hpp"
#include "strata/cuda/device_buffer.hpp"
#include "strata/cuda/error.hpp"
#include "strata/cuda/half.hpp"
#include "strata/kernels/fused.hpp"
#include "strata/schedule/schedule.hpp"

namespace strata {

//! A communicator over device memory whose collectives are enqueued on streams: the NCCL backend
//! (`NcclComm`), its host test double, or a wrapper around either. Besides the collectives it
//! names its stream and its device (everything the averager allocates and launches goes there),
//! waits for a stream under its deadline, and can be checked, aborted and told to defer aborts
//! during a capture. A communicator that compares its members' calls before each collective
//! offers `verify_only()` too, so that the averager can compare before it captures a graph.
//!
//! \code
//! static_assert(!strata::device_communicator<int>);
//! \endcode
template <class C>
concept device_communicator = communicator<C> && device_memory_v<C> &&
    requires(C& c, const C& cc, typename C::stream_handle s, std::string_view op) {
  typename C::runtime_type;
  { cc.stream() } -> std::same_as<typename C::stream_handle>;
  { cc.device() } -> std::convertible_to<int>;
  c.synchronize(s);
  c.check_usable(op);
  c.abort();
  c.defer_aborts();
};

//! The element types averaged on the device: float, double, half and bfloat16.
//!
//! \code
//! static_assert(strata::device_average_value<__nv_bfloat16> && strata::device_average_value<float>);
//! static_assert(!strata::device_average_value<int>);
//! \endcode
template <class T>
concept device_average_value = std::same_as<T, float> || std::same_as<T, double> ||
    std::same_as<T, __half> || std::same_as<T, __nv_bfloat16>;

//! The fused kernels a `DeviceAverager` launches for element type `T`, all enqueued on a stream:
//! `upload(plan, s)` makes a plan's chunk table visible to later kernels (outside graph capture),
//! `pack(flat, s)` gathers the planned tensors into `flat`, `unpack(flat, factor, s)` scatters
//! `flat` times `factor` back, `scale(data, factor, s)` scales in place. `CudaFusedKernels`
//! (`strata/averaging/cuda_averager.cuh`) is the CUDA model; each call is one kernel launch.
template <template <class> class K, class T, class Stream>
concept fused_device_kernels = std::default_initializable<K<T>> &&
    requires(K<T>& k, const FusedPlan<T>& plan, std::span<T> flat, std::span<const T> in,
             fused_factor_t<T> factor, Stream s) {
  k.upload(plan, s);
  k.pack(flat, s);
  k.unpack(in, factor, s);
  k.scale(flat, factor, s);
};

//! Settings of a `DeviceAverager`.
//!
//! \code
//! strata::DeviceAveragerOptions opts;
//! opts.use_graphs = true;
//! assert(opts.use_graphs);
//! \endcode
struct DeviceAveragerOptions {
  //! Capture each level's step (pack, all-reduce, unpack) into a CUDA graph the first time it
  //! runs for a set of tensors, and replay the graph afterwards: one launch per averaging
  //! instead of three, and no per-call NCCL enqueue cost. The graphs are captured again when the
  //! tensors move or resize.
  bool use_graphs = false;
};

namespace detail {

// One graph per level for one set of buffers; dropped when the buffers change.
template <class Graphs>
class LevelGraphs {
 public:
  using graph_handle = typename Graphs::graph_handle;
  LevelGraphs() = default;
  LevelGraphs(const LevelGraphs&) = delete;
  LevelGraphs& operator=(const LevelGraphs&) = delete;
  ~LevelGraphs() { clear(); }

  void clear() noexcept {
    for (auto& g : graphs_) {
      if (g) (void)Graphs::destroy(*g);
    }
    graphs_.clear();
  }
  [[nodiscard]] std::optional<graph_handle>& at(std::size_t level) {
    if (graphs_.size() <= level) graphs_.resize(level + 1);
    return graphs_[level];
  }
  [[nodiscard]] std::size_t count() const noexcept {
    std::size_t n = 0;
    for (const auto& g : graphs_) n += g.has_value();
    return n;
  }

 private:
  std::vector<std::optional<graph_handle>> graphs_;
};

// The plan, device table, staging buffer and graphs of the tensors last averaged.
template <class T, template <class> class Kernels, class Runtime, class Graphs>
struct DeviceCache {
  TensorLayout<T> layout;
  std::optional<FusedPlan<T>> plan;
  Kernels<T> kernels;
  DeviceBuffer<T, Runtime> staging;
  LevelGraphs<Graphs> graphs;
  // The in-place form's buffer and graphs, keyed on the buffer's address, size and allocation.
  const T* flat = nullptr;
  std::size_t flat_size = 0;
  std::uint64_t flat_id = 0;
  LevelGraphs<Graphs> flat_graphs;
  // The stream of the last step that used the staging buffer and the table.
  std::optional<typename Runtime::stream_handle> last_stream;
};

template <template <class> class Kernels, class Runtime, class Graphs>
using DeviceCaches = std::tuple<DeviceCache<float, Kernels, Runtime, Graphs>,
                                DeviceCache<double, Kernels, Runtime, Graphs>,
                                DeviceCache<__half, Kernels, Runtime, Graphs>,
                                DeviceCache<__nv_bfloat16, Kernels, Runtime, Graphs>>;

}  // namespace detail

//! Averages device tensors on a schedule, over a device communicator, on a stream. Construction
//! is collective (one communicator per level, made by `split`, sharing the world's stream).
//! Each `average` call is one step: when the schedule names a level, it enqueues on `stream` one
//! fused pack of the tensors into a staging buffer, one all-reduce over the level's group (a sum
//! for float and double; NCCL's average for 16-bit floats, which would overflow as a sum), and
//! one unpack that scales by 1/g (by 1 after an average), and returns without waiting for the
//! device: every group of
//! that level ends with the mean of its members' tensors, identical on every member, once the
//! stream reaches that point. With `use_graphs` the three launches are captured once per level
//! and replayed as one graph.
//!
//! Failures: a bad call (wrong sizes, a broken communicator, which aborts every level's) throws
//! before anything is enqueued, leaves the tensors as they were and does not advance the step. Faults that happen on the
//! device after the call returned (a peer that dies mid-collective) surface as an error of the
//! next call or of `synchronize`, and the communicator is then aborted; tensors written by that
//! step are not to be trusted (restore them from a checkpoint, as with any NCCL trainer).
//!
//! `strata/averaging/cuda_averager.cuh` gives it CUDA's kernels (`CudaHierarchicalAverager`);
//! the device example of docs/device.md runs one on a GPU.
//!
//! \code
//! #include <strata/comm/nccl.hpp>
//! static_assert(strata::device_communicator<strata::NcclComm>);
//! static_assert(strata::device_average_value<__half>);
//! \endcode
template <schedule_type S, device_communicator Comm, template <class> class Kernels,
          graph_policy Graphs = CudaGraphs>
class DeviceAverager : public AveragerClock<S> {
  static_assert(!detail::schedule_has_policies<S>::value,
                "DeviceAverager: outer optimizers and wire formats (LevelWith) run on the host "
                "averagers only; the device averager averages plainly");
  using AveragerClock<S>::schedule_;
  using AveragerClock<S>::step_;
  using Runtime = typename Comm::runtime_type;

 public:
  using schedule_type = S;
  using comm_type = Comm;
  using stream_handle = typename Comm::stream_handle;

  DeviceAverager(Comm& world, S schedule, DeviceAveragerOptions options = {})
      : AveragerClock<S>(std::move(schedule)),
        comms_(world, schedule_.levels()),
        options_(options),
        stream_(world.stream()),
        rank_(world.rank()) {}

  DeviceAverager(const DeviceAverager&) = delete;
  DeviceAverager& operator=(const DeviceAverager&) = delete;

  //! Averages `tensors` (device memory) on `stream`; returns the level that ran.
  template <device_average_value T>
  requires fused_device_kernels<Kernels, T, stream_handle> std::optional<std::size_t> average(
      std::span<const std::span<T>> tensors, stream_handle stream) {
    const std::optional<std::size_t> level = schedule_.level_at(step_);
    if (level) {
      Comm& comm = comms_.level(*level);
      auto& cache = std::get<detail::DeviceCache<T, Kernels, Runtime, Graphs>>(caches_);
      check_levels("average");
      const auto on = on_device(comm);
      prepare(cache, tensors, stream);
      const Mean<T> mean(comm.size());
      const std::span<T> flat = cache.staging.span();
      cache.last_stream = stream;
      verify_before_capture(comm, flat, stream, mean.op);
      run(comm, cache.graphs, *level, stream, [&](bool& issued) {
        cache.kernels.pack(flat, stream);
        comm.all_reduce(flat, mean.op, stream);
        issued = true;
        cache.kernels.unpack(std::span<const T>(flat), mean.factor, stream);
      });
    }
    ++step_;
    return level;
  }
  template <device_average_value T>
  requires fused_device_kernels<Kernels, T, stream_handle> std::optional<std::size_t> average(
      const std::vector<std::span<T>>& tensors, stream_handle stream) {
    return average(std::span<const std::span<T>>(tensors), stream);
  }
  //! On the world communicator's stream.
  template <device_average_value T>
  requires fused_device_kernels<Kernels, T, stream_handle> std::optional<std::size_t> average(
      const std::vector<std::span<T>>& tensors) {
    return average(std::span<const std::span<T>>(tensors), stream_);
  }

  //! Parameters already in one contiguous device buffer: averaged in place, one all-reduce
  //! (sum) and one scale by 1/g (for 16-bit floats one all-reduce with NCCL's average and no
  //! scale), no staging copy.
  template <device_average_value T>
  requires fused_device_kernels<Kernels, T, stream_handle> std::optional<std::size_t> average(
      std::span<T> flat, stream_handle stream) {
    const std::optional<std::size_t> level = schedule_.level_at(step_);
    if (level) {
      Comm& comm = comms_.level(*level);
      auto& cache = std::get<detail::DeviceCache<T, Kernels, Runtime, Graphs>>(caches_);
      const std::uint64_t id = allocation_of(flat.data());
      if (cache.flat != flat.data() || cache.flat_size != flat.size() || cache.flat_id != id) {
        cache.flat_graphs.clear();
        cache.flat = flat.data();
        cache.flat_size = flat.size();
        cache.flat_id = id;
      }
      check_levels("average");
      const auto on = on_device(comm);
      const Mean<T> mean(comm.size());
      remember(stream);
      verify_before_capture(comm, flat, stream, mean.op);
      run(comm, cache.flat_graphs, *level, stream, [&](bool& issued) {
        comm.all_reduce(flat, mean.op, stream);
        issued = true;
        if (mean.scales) cache.kernels.scale(flat, mean.factor, stream);
      });
    }
    ++step_;
    return level;
  }

  //! Waits for the averaging work enqueued on `stream`, under the communicators' deadline, and
  //! checks every level's communicator for asynchronous errors. A failure aborts every level's
  //! communicator (a kernel stuck on one level would hold the shared stream) and throws.
  void synchronize(stream_handle stream) {
    const auto on = on_device(comms_.level(0));
    try {
      for (std::size_t l = 0; l < comms_.num_levels(); ++l) comms_.level(l).synchronize(stream);
    } catch (...) {
      abort_all();
      throw;
    }
  }
  void synchronize() { synchronize(stream_); }

  //! Waits for every stream the averager has enqueued work on, so that the staging buffers and
  //! device tables can be freed; a communicator that misses its deadline is aborted instead, so
  //! destruction never hangs.
  ~DeviceAverager() {
    remember(stream_);
    for (stream_handle s : streams_) {
      try {
        synchronize(s);
      } catch (...) {
        // aborted: the device work is cancelled, and freeing no longer waits for it
      }
    }
  }

  //! How many level graphs are captured now (tensor-list and in-place forms together).
  [[nodiscard]] std::size_t graphs() const noexcept {
    std::size_t n = 0;
    std::apply([&](const auto&... c) { ((n += c.graphs.count() + c.flat_graphs.count()), ...); },
               caches_);
    return n;
  }
  [[nodiscard]] Comm& level_comm(std::size_t level) { return comms_.level(level); }
  [[nodiscard]] const DeviceAveragerOptions& options() const noexcept { return options_; }

 private:
  // Re-plans when the tensors moved or resized. That is rare (a model's parameters stay put),
  // so waiting for the stream first, which makes freeing the old staging buffer safe, is cheap.
  template <class T, class Cache>
  void prepare(Cache& cache, std::span<const std::span<T>> tensors, stream_handle stream) {
    remember(stream);
    if (cache.plan && cache.layout.matches(tensors)) return;
    // The previous step may have run on another stream: wait for that one.
    if (cache.plan && cache.last_stream) synchronize(*cache.last_stream);
    cache.graphs.clear();
    cache.plan.reset();
    FusedPlan<T> plan(tensors);
    cache.staging.resize(plan.total_elements(), rank_);
    cache.kernels.upload(plan, stream);
    cache.layout.record(tensors);
    cache.plan.emplace(std::move(plan));
  }

  // Enqueues the step directly, or through the level's graph: captured on first use, replayed
  // after. A capture that fails part-way is ended and discarded so the stream stays usable. A
  // step that fails after its collective was issued leaves this rank out of step with its peers
  // (they will wait for work it never launches): every level's communicator is aborted, so that
  // they fail instead of waiting, so that nothing is paired wrongly later, and so that a kernel
  // stuck on this level cannot hold the stream the other levels share (as in `synchronize`).
  // Whether the fault shows while enqueueing or only at the next synchronisation is timing; the
  // outcome must not be.
  template <class Enqueue>
  void run(Comm& comm, detail::LevelGraphs<Graphs>& graphs, std::size_t level, stream_handle stream,
           Enqueue enqueue) {
    bool issued = false;
    if (!options_.use_graphs) {
      try {
        enqueue(issued);
      } catch (...) {
        if (issued) abort_all();
        throw;
      }
      return;
    }
    auto& graph = graphs.at(level);
    if (!graph) {
      // ncclCommAbort makes synchronous CUDA calls, which are illegal while capturing: aborts
      // wait until the capture has ended.
      auto deferred = comm.defer_aborts();
      Graphs::check("cudaStreamBeginCapture", rank_, Graphs::begin_capture(stream));
      typename Graphs::graph_handle exec{};
      try {
        enqueue(issued);
      } catch (...) {
        if (Graphs::end_capture(stream, &exec) == Graphs::success) (void)Graphs::destroy(exec);
        if (issued) abort_all();  // the capture has ended; this level's abort is still deferred
        throw;
      }
      const auto ended = Graphs::end_capture(stream, &exec);
      if (ended != Graphs::success) {
        // The step was not launched: its collective would never pair with the peers'.
        abort_all();
        Graphs::check("cudaStreamEndCapture (the communicator was aborted)", rank_, ended);
      }
      graph = exec;
    }
    // A graph launch bypasses NCCL's own checks: make sure its communicator is still alive.
    comm.check_usable("cudaGraphLaunch (averaging step)");
    const auto launched = Graphs::launch(*graph, stream);
    if (launched != Graphs::success) {
      // The step's collective was not issued on this rank: the peers' would never pair.
      abort_all();
      Graphs::check("cudaGraphLaunch (the communicator was aborted)", rank_, launched);
    }
  }

  // A communicator that compares its members' calls cannot do so inside a capture (it waits for
  // the host): the all-reduce about to be captured is compared first, outside the capture.
  // Every step, replays included: whether this rank captures anew is its own affair (its
  // tensors moved), and an agreement issued by one rank only would pair with a peer's replayed
  // collective.
  template <class T>
  void verify_before_capture(Comm& comm, std::span<T> flat, stream_handle stream, ReduceOp op) {
    if constexpr (requires { comm.verify_only(); }) {
      if (!options_.use_graphs) return;  // eager steps compare inside the collective
      if (auto only = comm.verify_only()) comm.all_reduce(flat, op, stream);
    }
  }

  // How a level's mean is formed. A 16-bit sum of g members overflows as soon as |x| exceeds
  // 65504/g (half), so 16-bit floats are averaged by the collective itself (`ncclAvg` scales
  // each input by 1/g before it is summed) and unpacked unscaled; float and double are summed
  // and scaled by 1/g in the unpack, with the rounding of the host averagers.
  template <class T>
  struct Mean {
    explicit Mean(int g)
        : op(is_reduced_float_v<T> ? ReduceOp::average : ReduceOp::sum),
          factor(static_cast<fused_factor_t<T>>(is_reduced_float_v<T> ? 1.0 : 1.0 / g)),
          scales(!is_reduced_float_v<T>) {}
    ReduceOp op;
    fused_factor_t<T> factor;
    bool scales;
  };

  // A captured graph holds the caller's buffer, and NCCL registers the buffers of captured
  // collectives: a buffer freed and reallocated at the same address would replay a stale
  // registration. The allocation's id (never reused) tells them apart where the runtime knows
  // it; 0 where it does not, and then the address and size alone decide.
  static std::uint64_t allocation_of(const void* p) {
    if constexpr (requires(std::uint64_t * id) { Runtime::buffer_id(p, id); }) {
      std::uint64_t id = 0;
      return Runtime::buffer_id(p, &id) == Runtime::success ? id : 0;
    } else {
      return 0;
    }
  }

  // Allocations and launches go to the communicator's device, whatever device the calling
  // thread has made current; the thread's choice is restored afterwards.
  static DeviceGuard<Runtime> on_device(Comm& comm) {
    return DeviceGuard<Runtime>(comm.device(), comm.rank());
  }

  // Every level's communicator must be usable: after a fault on any of them, the job's
  // collectives can no longer be trusted to pair up.
  void check_levels(std::string_view op) {
    try {
      for (std::size_t l = 0; l < comms_.num_levels(); ++l) comms_.level(l).check_usable(op);
    } catch (...) {
      abort_all();
      throw;
    }
  }

  void abort_all() noexcept {
    for (std::size_t l = 0; l < comms_.num_levels(); ++l) comms_.level(l).abort();
  }

  void remember(stream_handle s) {
    if (std::find(streams_.begin(), streams_.end(), s) == streams_.end()) streams_.push_back(s);
  }

  LevelComms<Comm> comms_;
  DeviceAveragerOptions options_;
  stream_handle stream_;
  int rank_;
  std::vector<stream_handle> streams_;  // every stream used, for the destructor
  detail::DeviceCaches<Kernels, Runtime, Graphs> caches_;
};

}  // namespace strata
