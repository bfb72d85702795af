#pragma once
//! \file
//! Streaming fragments (Streaming DiLoCo): a one-level schedule whose parameters are split into
//! fragments that synchronise at staggered steps, each result mixed in a few steps later, so
//! that the transfer overlaps the next steps' computation.

#include <algorithm>
#include <cmath>
#include <cstddef>
#include <optional>
#include <span>
#include <stdexcept>
#include <string>
#include <type_traits>
#include <utility>
#include <vector>

#include <thrust/execution_policy.h>

#include "strata/averaging/averager.hpp"
#include "strata/averaging/outer.hpp"
#include "strata/comm/async.hpp"
#include "strata/comm/communicator.hpp"
#include "strata/comm/communicator_traits.hpp"
#include "strata/comm/compressed_average.hpp"
#include "strata/comm/detail/keep_forever.hpp"
#include "strata/error.hpp"
#include "strata/hierarchy/hierarchy.hpp"
#include "strata/kernels/fused.hpp"

namespace strata {

namespace detail {

// The request type of a started all-reduce, where the communicator can start one.
template <class Comm, class T, bool = async_communicator_for<Comm, T>>
struct request_of {
  using type = int;
};
template <class Comm, class T>
struct request_of<Comm, T, true> {
  using type = decltype(std::declval<Comm&>().start_all_reduce(std::declval<std::span<T>>(),
                                                               ReduceOp::average));
};

}  // namespace detail

//! Streaming settings: `fragments` F contiguous fragments (sizes D/F, the first D mod F one
//! larger); fragment f synchronises at the steps t >= warm-up with `t % P == f * (P / F)`; its
//! result X is mixed in `delay` steps later as `p = (1 - mix) p + mix X` and becomes the
//! fragment's anchor. Rules: F divides P, delay < P / F, 0 < mix <= 1.
//!
//! \code
//! const strata::StreamingOptions s{.fragments = 4, .delay = 1, .mix = 0.5};
//! s.check(/*period=*/8);  // throws std::invalid_argument naming the broken rule
//! \endcode
struct StreamingOptions {
  std::size_t fragments = 1;
  std::size_t delay = 0;
  double mix = 1.0;
  //! Count the period from the end of warm-up, (t - W) % P, as local SGD (`PeriodicAverager`)
  //! does, instead of from step 0, as a hierarchy `P:N` does (the default).
  bool from_warmup = false;

  void check(std::size_t period) const {
    if (period == 0) throw std::invalid_argument("Streaming: the period is 0");
    if (fragments == 0 || period % fragments != 0) {
      throw std::invalid_argument("Streaming: the fragment count F = " + std::to_string(fragments) +
                                  " must divide the period P = " + std::to_string(period));
    }
    if (delay >= period / fragments) {
      throw std::invalid_argument("Streaming: the delay " + std::to_string(delay) +
                                  " must be below P/F = " + std::to_string(period / fragments));
    }
    if (!(mix > 0.0 && mix <= 1.0)) {
      char text[32];
      std::snprintf(text, sizeof text, "%.17g", mix);
      throw std::invalid_argument(std::string("Streaming: the mix must be in (0, 1], got ") + text);
    }
  }
};

//! Compile-time streaming settings; the rules that involve the period are checked by
//! `StaticStreamingAverager`, which knows it.
//!
//! \code
//! using S = strata::Streaming<4, 1, 0.5>;
//! static_assert(S::fragments == 4 && S::options().mix == 0.5);
//! \endcode
template <std::size_t F, std::size_t Delay, double Mix>
struct Streaming {
  static_assert(F > 0, "Streaming: the fragment count F must be at least 1");
  static_assert(Mix > 0.0 && Mix <= 1.0, "Streaming: the mix must be in (0, 1]");
  static constexpr std::size_t fragments = F;
  static constexpr std::size_t delay = Delay;
  static constexpr double mix = Mix;
  [[nodiscard]] static constexpr StreamingOptions options() { return {F, Delay, Mix, false}; }
};

//! The first element of fragment f of F over D elements (the first D mod F fragments one larger).
//!
//! \code
//! static_assert(strata::fragment_begin(10, 4, 0) == 0 && strata::fragment_begin(10, 4, 1) == 3);
//! static_assert(strata::fragment_begin(10, 4, 2) == 6 && strata::fragment_begin(10, 4, 4) == 10);
//! \endcode
[[nodiscard]] constexpr std::size_t fragment_begin(std::size_t d, std::size_t f_count,
                                                   std::size_t f) noexcept {
  const std::size_t base = d / f_count;
  const std::size_t extra = d % f_count;
  return f * base + (f < extra ? f : extra);
}

//! Streaming DiLoCo over the world: local SGD of period P whose parameters synchronise fragment
//! by fragment (`StreamingOptions`), each fragment with its own anchor and, with an outer
//! optimizer, its own state: at fragment f's step t, d = mean(a_f - p_f) over the world (sent in
//! `wire`), X = a_f - lr (d + mu m_f) (plain: X = mean(p_f)), applied `delay` steps later, after
//! that step's local update: p_f = (1 - mix) p_f + mix X, a_f = X. In warm-up every anchor
//! follows the parameters (gradients are averaged over the world then). `average` is called once
//! per step after the local update; `begin` once with the initial parameters (the same on every
//! rank). On a communicator that starts collectives (MPI), a fragment's reduction in the native
//! wire is started at its step and waited for only when it is applied; elsewhere, and with a
//! compressed wire (an all-to-all and an all-gather, which no backend starts yet), it completes
//! at once and its result waits: the numbers are the same, the overlap is lost. A failed call throws; a result in flight when a collective fails is lost and the
//! communicator is unusable, as after any timeout.
//!
//! \code
//! #include <strata/comm/local.hpp>
//! strata::LocalWorld(2).run([](strata::LocalComm& comm) {
//!   strata::StreamingAverager<strata::LocalComm> avg(comm, /*period=*/4, {.fragments = 2});
//!   std::vector<double> w(4, 1.0);
//!   avg.begin(std::span<double>(w));
//!   w.assign(4, comm.rank());
//!   avg.average(std::span<double>(w));  // step 0: fragment 0 (elements 0, 1) averaged
//!   assert(w[0] == 0.5 && w[2] == comm.rank());
//!   avg.average(std::span<double>(w));  // step 1: nothing
//!   avg.average(std::span<double>(w));  // step 2: fragment 1
//!   assert(w[3] == 0.5);
//! });
//! \endcode
template <communicator Comm>
class StreamingAverager {
 public:
  StreamingAverager(Comm& world, std::size_t period, StreamingOptions streaming,
                    std::size_t warmup = 0, std::optional<OuterOptimizer> outer = std::nullopt,
                    WireFormat wire = WireFormat::native)
      : comm_(&world),
        period_(period),
        s_(streaming),
        warmup_(warmup),
        outer_(std::move(outer)),
        wire_(wire) {
    s_.check(period_);
  }

  StreamingAverager(const StreamingAverager&) = delete;
  StreamingAverager& operator=(const StreamingAverager&) = delete;
  StreamingAverager(StreamingAverager&&) = default;
  StreamingAverager& operator=(StreamingAverager&&) = default;

  //! Results still in flight are abandoned; their buffers outlive the averager when MPI may still
  //! write into them.
  ~StreamingAverager() {
    float_.abandon_pending();
    double_.abandon_pending();
  }

  [[nodiscard]] std::size_t step() const noexcept { return step_; }
  [[nodiscard]] const StreamingOptions& streaming() const noexcept { return s_; }
  [[nodiscard]] std::size_t period() const noexcept { return period_; }

  //! The fragment that synchronises at step t, if any.
  [[nodiscard]] std::optional<std::size_t> fragment_at(std::size_t t) const noexcept {
    if (t < warmup_) return std::nullopt;
    const std::size_t stride = period_ / s_.fragments;
    const std::size_t r = (s_.from_warmup ? t - warmup_ : t) % period_;
    if (r % stride != 0) return std::nullopt;
    return r / stride;
  }

  template <class T>
  void begin(std::span<const std::span<T>> tensors) {
    static_assert(std::is_floating_point_v<T>, "StreamingAverager: floating-point parameters");
    State<T>& st = state<T>();
    const FusedPlan<T>& plan = st.plan_for(tensors);
    const std::size_t d = plan.total_elements();
    const std::size_t k = outer_ ? outer_->state_per_element() : 0;
    if (k != 0 && d > static_cast<std::size_t>(-1) / k) {
      throw std::invalid_argument("StreamingAverager: the outer state of " + std::to_string(d) +
                                  " parameters overflows");
    }
    // Built aside, then swapped in: a failed allocation leaves the averager as it was.
    std::vector<T> flat(d);
    pack(thrust::host, plan, std::span<T>(flat));
    std::vector<T> anchor = flat;
    std::vector<T> momentum(d * k, T(0));
    st.abandon_pending();
    st.flat.swap(flat);
    st.anchor.swap(anchor);
    st.momentum.swap(momentum);
    st.d = d;
    st.started = true;
  }
  template <class T>
  void begin(std::span<T> flat) {
    const std::span<T> one[1] = {flat};
    begin(std::span<const std::span<T>>(one));
  }

  //! One step; returns the fragment that started synchronising at it, if any.
  template <class T>
  std::optional<std::size_t> average(std::span<const std::span<T>> tensors) {
    static_assert(std::is_floating_point_v<T>, "StreamingAverager: floating-point parameters");
    State<T>& st = state<T>();
    if (!st.started) {
      throw std::invalid_argument(
          "StreamingAverager: call begin(parameters) with the initial parameters first");
    }
    const FusedPlan<T>& plan = st.plan_for(tensors);
    if (plan.total_elements() != st.d) {
      throw std::invalid_argument("StreamingAverager: the anchors hold " + std::to_string(st.d) +
                                  " parameters, the call passes " +
                                  std::to_string(plan.total_elements()));
    }
    const std::size_t t = step_;
    if (!usable_.empty()) {
      throw error("StreamingAverager", comm_->rank(), "unusable: " + usable_);
    }
    if (t < warmup_) {
      pack(thrust::host, plan, std::span<T>(st.anchor));  // the world moves together in warm-up
      ++step_;
      return std::nullopt;
    }
    const std::optional<std::size_t> starts = fragment_at(t);
    bool due = false;
    for (Pending<T>& p : st.pending) {
      due = due || p.due == t;
      // MPI moves data only inside MPI calls: give the results in flight a chance every step.
      if constexpr (async_communicator_for<Comm, T>) {
        if (p.request && p.due != t) (void)p.request->test();
      }
    }
    if (!starts && !due) {  // nothing to send or apply: the parameters stay where they are
      ++step_;
      return std::nullopt;
    }
    pack(thrust::host, plan, std::span<T>(st.flat));
    // The fragment that starts now first, then the results due now: a due step is never a start
    // step of the same fragment (delay < P/F), and the fragments are disjoint, so the numbers are
    // those of the spec's order (applications before starts), while a failed start leaves
    // everything as it was.
    std::optional<Pending<T>> started;
    if (starts) started = start(st, *starts);
    for (auto it = st.pending.begin(); it != st.pending.end();) {
      if (it->due == t) {
        finish(st, *it);
        it = st.pending.erase(it);
      } else {
        ++it;
      }
    }
    if (started) {
      if (s_.delay == 0) {
        finish(st, *started);
      } else {
        started->due = t + s_.delay;
        st.pending.push_back(std::move(*started));
      }
    }
    unpack(thrust::host, std::span<const T>(st.flat), plan);
    ++step_;
    return starts;
  }
  template <class T>
  std::optional<std::size_t> average(std::span<T> flat) {
    const std::span<T> one[1] = {flat};
    return average(std::span<const std::span<T>>(one));
  }

  //! Bytes this rank sends at one synchronisation of fragment f of D parameters of type T.
  template <class T>
  [[nodiscard]] std::size_t bytes_per_sync(std::size_t d, std::size_t f) const {
    const std::size_t n =
        fragment_begin(d, s_.fragments, f + 1) - fragment_begin(d, s_.fragments, f);
    const auto g = static_cast<std::size_t>(comm_->size());
    if (wire_ == WireFormat::native) return g <= 1 ? 0 : 2 * (g - 1) * n * sizeof(T) / g;
    return compressed_average_bytes(wire_, n, g);
  }

 private:
  template <class T>
  struct Pending {
    std::size_t fragment = 0;
    std::size_t due = 0;
    std::vector<T> delta;  // a_f - p_f at the start, then its mean
    std::optional<typename detail::request_of<Comm, T>::type> request;
  };

  template <class T>
  struct State {
    bool started = false;
    std::size_t d = 0;
    std::vector<T> flat, anchor, momentum;
    std::vector<Pending<T>> pending;

    // Drops the results in flight. A request that has not completed may still be written into by
    // MPI (a collective that timed out is abandoned, not waited for): its buffer is kept alive.
    void abandon_pending() noexcept {
      for (Pending<T>& p : pending) {
        if constexpr (async_communicator_for<Comm, T>) {
          bool done = false;
          try {
            done = !p.request || p.request->test();
          } catch (...) {
          }
          if (!done) detail::keep_forever(p.delta);
        }
      }
      pending.clear();
    }
    std::optional<FusedPlan<T>> plan;
    detail::TensorLayout<T> layout;

    // The averagers' rule: the plan is rebuilt only when a tensor moved or resized.
    const FusedPlan<T>& plan_for(std::span<const std::span<T>> tensors) {
      if (!plan || !layout.matches(tensors)) {
        layout.record(tensors);
        plan.emplace(tensors);
      }
      return *plan;
    }
  };

  template <class T>
  State<T>& state() {
    if constexpr (std::is_same_v<T, float>) {
      return float_;
    } else {
      return double_;
    }
  }

  // Starts fragment f's reduction of a_f - p_f (completed at once unless the communicator can
  // leave it in flight).
  template <class T>
  Pending<T> start(State<T>& st, std::size_t f) {
    Pending<T> p;
    p.fragment = f;
    const std::size_t b = fragment_begin(st.d, s_.fragments, f);
    const std::size_t e = fragment_begin(st.d, s_.fragments, f + 1);
    p.delta.resize(e - b);
    for (std::size_t i = b; i < e; ++i) p.delta[i - b] = st.anchor[i] - st.flat[i];
    const std::span<T> delta(p.delta);
    try {
      if (wire_ != WireFormat::native) {
        compressed_average(*comm_, std::span<const T>(delta), delta, wire_);
      } else if constexpr (async_communicator_for<Comm, T>) {
        if (s_.delay > 0) {
          p.request.emplace(comm_->start_all_reduce(delta, ReduceOp::average));
        } else {
          comm_->all_reduce(delta, ReduceOp::average);
        }
      } else {
        comm_->all_reduce(delta, ReduceOp::average);
      }
    } catch (const usage_error&) {
      throw;  // refused before anything was posted
    } catch (...) {
      if constexpr (!all_or_nothing_v<Comm>) detail::keep_forever(p.delta);
      throw;
    }
    return p;
  }

  // Waits for fragment f's mean if it is in flight, computes X and mixes it in.
  template <class T>
  void finish(State<T>& st, Pending<T>& p) {
    if constexpr (async_communicator_for<Comm, T>) {
      if (p.request) {
        try {
          p.request->wait();
        } catch (...) {
          detail::keep_forever(p.delta);  // MPI may still write into it
          throw;
        }
      }
    }
    const std::size_t b = fragment_begin(st.d, s_.fragments, p.fragment);
    const std::size_t n = p.delta.size();
    const std::span<T> a(st.anchor.data() + b, n);
    std::vector<T> x(n);
    if (outer_) {
      const std::size_t k = outer_->state_per_element();
      const std::span<T> state(st.momentum.data() + b * k, n * k);
      // A user's step may throw after the peers completed the collective: this rank can no
      // longer follow the schedule, so the averager refuses every later call.
      std::vector<T> saved;
      if (!outer_->is_nesterov()) saved.assign(state.begin(), state.end());
      try {
        outer_->apply(std::span<T>(x), std::span<const T>(a), std::span<const T>(p.delta), state);
      } catch (const std::exception& e) {
        std::copy(saved.begin(), saved.end(), state.begin());
        usable_ =
            std::string("the outer step threw after its collective had completed: ") + e.what();
        throw;
      }
    } else {
      for (std::size_t i = 0; i < n; ++i) x[i] = a[i] - p.delta[i];
    }
    const T mix = static_cast<T>(s_.mix);
    for (std::size_t i = 0; i < n; ++i) {
      T& v = st.flat[b + i];
      v = s_.mix == 1.0 ? x[i] : (T(1) - mix) * v + mix * x[i];
      a[i] = x[i];
    }
  }

  Comm* comm_;
  std::size_t period_;
  StreamingOptions s_;
  std::size_t warmup_;
  std::optional<OuterOptimizer> outer_;
  WireFormat wire_;
  std::size_t step_ = 0;
  std::string usable_;  // why the averager is unusable; empty while it is usable
  State<float> float_;
  State<double> double_;
};

//! `StreamingAverager` with its settings as types: a one-level hierarchy `H` (its level may be a
//! `LevelWith` carrying an outer optimizer and a wire format) and `Streaming<F, Delay, Mix>`.
//! The rules are compile errors here.
//!
//! \code
//! #include <strata/comm/local.hpp>
//! using H = strata::Hierarchy<
//!     strata::LevelWith<strata::Level<8, 2>, strata::NesterovOuter<0.7, 0.9>>>;
//! strata::LocalWorld(2).run([](strata::LocalComm& comm) {
//!   strata::StaticStreamingAverager<H, strata::Streaming<4, 1, 0.5>, strata::LocalComm> avg(comm);
//!   assert(avg.fragment_at(6) == 3u && !avg.fragment_at(7));
//! });
//! \endcode
template <class H, class S, communicator Comm>
class StaticStreamingAverager : public StreamingAverager<Comm> {
  static_assert(H::num_levels == 1,
                "StaticStreamingAverager: streaming fragments need a one-level hierarchy P:N");
  static constexpr std::size_t P = H::levels[0].period;
  static_assert(P % S::fragments == 0,
                "StaticStreamingAverager: the fragment count F must divide the period P");
  static_assert(S::delay < P / S::fragments,
                "StaticStreamingAverager: the delay must be below P/F");

 public:
  explicit StaticStreamingAverager(Comm& world, std::size_t warmup = 0)
      : StreamingAverager<Comm>(world, P, S::options(), warmup, policy().outer, policy().wire) {
    if (static_cast<std::size_t>(world.size()) != H::world_size) {
      throw std::invalid_argument("StaticStreamingAverager: the hierarchy's world is " +
                                  std::to_string(H::world_size) + " ranks, the communicator has " +
                                  std::to_string(world.size()));
    }
  }

 private:
  static LevelPolicy policy() { return level_policy<typename H::template level<0>>(); }
};

}  // namespace strata
