// A communicator decorator that injects one fault into one collective of one rank: it models
// `strata::communicator` (and, over a device communicator, `strata::device_communicator`),
// forwards every call to the communicator it wraps, and counts the collectives of each step so
// that the fault fires at exactly the collective the scenario names.
#pragma once

#include <strata/comm/communicator.hpp>
#include <strata/comm/communicator_traits.hpp>

#include <chrono>
#include <cstddef>
#include <cstdint>
#include <memory>
#include <optional>
#include <span>
#include <stdexcept>
#include <string>
#include <string_view>
#include <thread>
#include <type_traits>
#include <utility>
#include <vector>

namespace fault {

// What the faulty rank does at the faulty collective.
enum class Kind : std::uint8_t {
  throws,         // throws `injected_fault` instead of calling the collective
  stalls,         // sleeps past the deadline, then calls the collective as asked
  returns_early,  // leaves its rank function without calling the collective
  mismatch,       // calls a collective whose arguments disagree with its peers' (see Mismatch)
};

// How a mismatching call differs from its peers' calls.
enum class Mismatch : std::uint8_t {
  none,
  count,         // a buffer one element shorter (or longer, for one-element buffers)
  io_size,       // out-of-place all_reduce whose output is one element shorter than its input
  op,            // another ReduceOp
  type,          // another element type (double -> float, int64 -> int32)
  kind,          // another collective (broadcast instead of all_reduce, and the reverse)
  root,          // broadcast from another member
  root_invalid,  // broadcast from a root outside the group
};

constexpr std::string_view to_string(Kind k) noexcept {
  switch (k) {
    case Kind::throws: return "throws";
    case Kind::stalls: return "stalls";
    case Kind::returns_early: return "returns_early";
    case Kind::mismatch: return "mismatch";
  }
  return "unknown";
}

constexpr std::string_view to_string(Mismatch m) noexcept {
  switch (m) {
    case Mismatch::none: return "none";
    case Mismatch::count: return "count";
    case Mismatch::io_size: return "io_size";
    case Mismatch::op: return "op";
    case Mismatch::type: return "type";
    case Mismatch::kind: return "kind";
    case Mismatch::root: return "root";
    case Mismatch::root_invalid: return "root_invalid";
  }
  return "unknown";
}

// The exception a rank with the `throws` fault raises: what a failing training step of the
// caller's own code would throw. Deliberately not a strata::error.
class injected_fault : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

// Raised by the `returns_early` fault and caught by the campaign's rank function, which then
// returns normally. Not a std::exception, so that no handler for real errors mistakes it for one.
struct leave_early {};

struct FaultSpec {
  Kind kind = Kind::throws;
  Mismatch mismatch = Mismatch::none;
  int step = 0;   // the averaging step
  int index = 0;  // the collective within that step, counted from 0 on this rank
  std::chrono::milliseconds stall{0};
};

// One rank's fault and its count of collectives, shared by the rank's world communicator and
// every communicator split from it. Only the rank's own thread touches it.
class RankFaults {
 public:
  RankFaults() = default;
  explicit RankFaults(FaultSpec spec) : fault_(spec) {}

  // Collectives are counted from here, per step; the set-up before (splits) is not.
  void begin_step(int step) {
    step_ = step;
    index_ = 0;
    counting_ = true;
  }

  // Called once per collective; returns the fault when this is the faulty collective.
  [[nodiscard]] std::optional<FaultSpec> next(std::string_view op) {
    if (!counting_) return std::nullopt;
    const int i = index_++;
    if (fault_ && fault_->step == step_ && fault_->index == i) {
      fired_ = true;
      fired_on_ = op;
      return fault_;
    }
    return std::nullopt;
  }

  [[nodiscard]] bool fired() const noexcept { return fired_; }
  [[nodiscard]] const std::string& fired_on() const noexcept { return fired_on_; }

  // Keeps a scratch buffer of a mismatching call alive until the rank is done: a device
  // communicator may still read or write it after the call returned.
  template <class T>
  std::span<T> scratch(std::size_t n) {
    auto v = std::make_shared<std::vector<T>>(n);
    std::span<T> s(*v);
    keep_.push_back(std::move(v));
    return s;
  }

  [[nodiscard]] std::string describe(std::string_view op) const {
    return std::string(op) + " of step " + std::to_string(step_) + " (collective " +
           std::to_string(index_ - 1) + ")";
  }

 private:
  std::optional<FaultSpec> fault_;
  int step_ = -1;
  int index_ = 0;
  bool counting_ = false;
  bool fired_ = false;
  std::string fired_on_;
  std::vector<std::shared_ptr<void>> keep_;
};

template <class C>
concept device_like = strata::device_memory_v<C>;

// The types a device averager looks for on a device communicator: its runtime and stream.
template <class Comm, bool Device = device_like<Comm>>
struct FaultyTypes {};
template <class Comm>
struct FaultyTypes<Comm, true> {
  using runtime_type = typename Comm::runtime_type;
  using stream_handle = typename Comm::stream_handle;
};

template <class T>
using other_type_t =
    std::conditional_t<std::is_same_v<T, double>, float,
                       std::conditional_t<std::is_same_v<T, float>, double,
                                          std::conditional_t<std::is_same_v<T, std::int64_t>,
                                                             std::int32_t, std::int64_t>>>;

constexpr strata::ReduceOp other_op(strata::ReduceOp op) noexcept {
  switch (op) {
    case strata::ReduceOp::sum: return strata::ReduceOp::max;
    case strata::ReduceOp::average: return strata::ReduceOp::sum;
    case strata::ReduceOp::min: return strata::ReduceOp::max;
    case strata::ReduceOp::max: return strata::ReduceOp::min;
  }
  return strata::ReduceOp::sum;
}

// The decorator. Every collective counts itself; the one the rank's fault names runs the fault
// instead of (or, for a stall, after) the call. The trailing `S... s` is the stream of a device
// communicator's stream-taking forms, forwarded as is.
template <class Comm>
class FaultyComm : public FaultyTypes<Comm> {
 public:
  static constexpr bool is_device = device_like<Comm>;

  FaultyComm(Comm inner, std::shared_ptr<RankFaults> faults)
      : faults_(std::move(faults)), inner_(std::move(inner)) {}

  [[nodiscard]] int rank() const { return inner_.rank(); }
  [[nodiscard]] int size() const { return inner_.size(); }
  [[nodiscard]] Comm& inner() noexcept { return inner_; }
  [[nodiscard]] RankFaults& faults() noexcept { return *faults_; }

  template <class T, class... S>
  void all_reduce(std::span<T> buf, strata::ReduceOp op, S... s) {
    if (auto f = faults_->next("all_reduce")) {
      if (enact(*f, "all_reduce")) {
        mismatched_all_reduce(std::span<const T>(buf.data(), buf.size()), buf, op, true, *f, s...);
        return;
      }
    }
    inner_.all_reduce(buf, op, s...);
  }

  template <class T, class... S>
  void all_reduce(std::span<const T> in, std::span<T> out, strata::ReduceOp op, S... s) {
    if (auto f = faults_->next("all_reduce")) {
      if (enact(*f, "all_reduce")) {
        mismatched_all_reduce(in, out, op, false, *f, s...);
        return;
      }
    }
    inner_.all_reduce(in, out, op, s...);
  }

  template <class T, class... S>
  void broadcast(std::span<T> buf, int root, S... s) {
    if (auto f = faults_->next("broadcast")) {
      if (enact(*f, "broadcast")) {
        mismatched_broadcast(buf, root, *f, s...);
        return;
      }
    }
    inner_.broadcast(buf, root, s...);
  }

  // The collectives the campaign never targets still count, so that a change in what the
  // averagers call shows up as a fault that did not fire.
  template <class T, class... S>
  void all_gather(std::span<const T> in, std::span<T> out, S... s) {
    plain("all_gather");
    inner_.all_gather(in, out, s...);
  }
  template <class T, class... S>
  void reduce_scatter(std::span<const T> in, std::span<T> out, strata::ReduceOp op, S... s) {
    plain("reduce_scatter");
    inner_.reduce_scatter(in, out, op, s...);
  }
  template <class T, class... S>
  void all_to_all(std::span<const T> in, std::span<T> out, S... s) {
    plain("all_to_all");
    inner_.all_to_all(in, out, s...);
  }
  template <class T, class... S>
  void all_to_all(std::span<const T> in, std::span<const std::size_t> send_counts, std::span<T> out,
                  std::span<const std::size_t> recv_counts, S... s) {
    plain("all_to_all (uneven)");
    inner_.all_to_all(in, send_counts, out, recv_counts, s...);
  }
  void barrier() {
    plain("barrier");
    inner_.barrier();
  }
  FaultyComm split(int color, int key) { return FaultyComm(inner_.split(color, key), faults_); }

  // --- what a device communicator adds ------------------------------------------------------
  auto stream() const requires is_device { return inner_.stream(); }
  int device() const requires is_device { return inner_.device(); }
  void request_abort() requires is_device { inner_.request_abort(); }
  template <class S>
  requires is_device void synchronize(S s) { inner_.synchronize(s); }
  void synchronize() requires is_device { inner_.synchronize(); }
  void check_usable(std::string_view op) requires is_device { inner_.check_usable(op); }
  void abort() requires is_device { inner_.abort(); }
  auto defer_aborts() requires is_device { return inner_.defer_aborts(); }
  // The averager's pre-capture agreement is a collective call like any other: the fault of the
  // collective it stands for fires on it.
  auto verify_only() requires is_device { return inner_.verify_only(); }

 private:
  // Runs the parts of a fault that do not depend on the collective. Returns true when the
  // collective must be replaced by a mismatching call.
  bool enact(const FaultSpec& f, std::string_view op) {
    switch (f.kind) {
      case Kind::throws:
        throw injected_fault("injected fault: rank " + std::to_string(rank()) + " of " +
                             std::to_string(size()) + " throws in " + faults_->describe(op));
      case Kind::returns_early: throw leave_early{};
      case Kind::stalls: std::this_thread::sleep_for(f.stall); return false;
      case Kind::mismatch: return true;
    }
    return false;
  }

  void plain(std::string_view op) {
    if (auto f = faults_->next(op)) {
      if (enact(*f, op)) {
        throw std::logic_error("fault_campaign: no mismatching form of " + std::string(op));
      }
    }
  }

  template <class T, class... S>
  void mismatched_all_reduce(std::span<const T> in, std::span<T> out, strata::ReduceOp op,
                             bool in_place, const FaultSpec& f, S... s) {
    const std::size_t n = out.size();
    switch (f.mismatch) {
      case Mismatch::count:
        if (n >= 2) {
          // Shorter: the real buffers, so that a backend that writes anyway is caught.
          if (in_place) {
            inner_.all_reduce(out.first(n - 1), op, s...);
          } else {
            inner_.all_reduce(in.first(n - 1), out.first(n - 1), op, s...);
          }
        } else {
          std::span<T> longer = faults_->template scratch<T>(n + 1);
          inner_.all_reduce(longer, op, s...);
        }
        return;
      case Mismatch::io_size: inner_.all_reduce(in, out.first(n - 1), op, s...); return;
      case Mismatch::op:
        if (in_place) {
          inner_.all_reduce(out, other_op(op), s...);
        } else {
          inner_.all_reduce(in, out, other_op(op), s...);
        }
        return;
      case Mismatch::type: {
        using U = other_type_t<T>;
        std::span<U> converted = faults_->template scratch<U>(n);
        for (std::size_t i = 0; i < n; ++i) converted[i] = static_cast<U>(in[i]);
        inner_.all_reduce(converted, op, s...);
        return;
      }
      case Mismatch::kind: inner_.broadcast(out, 0, s...); return;
      default:
        throw std::logic_error("fault_campaign: mismatch " + std::string(to_string(f.mismatch)) +
                               " has no all_reduce form");
    }
  }

  template <class T, class... S>
  void mismatched_broadcast(std::span<T> buf, int root, const FaultSpec& f, S... s) {
    const std::size_t n = buf.size();
    switch (f.mismatch) {
      case Mismatch::count:
        if (n >= 2) {
          inner_.broadcast(buf.first(n - 1), root, s...);
        } else {
          inner_.broadcast(faults_->template scratch<T>(n + 1), root, s...);
        }
        return;
      case Mismatch::root: inner_.broadcast(buf, (root + 1) % size(), s...); return;
      case Mismatch::root_invalid: inner_.broadcast(buf, size(), s...); return;
      case Mismatch::type: {
        using U = other_type_t<T>;
        std::span<U> converted = faults_->template scratch<U>(n);
        for (std::size_t i = 0; i < n; ++i) converted[i] = static_cast<U>(buf[i]);
        inner_.broadcast(converted, root, s...);
        return;
      }
      case Mismatch::kind: inner_.all_reduce(buf, strata::ReduceOp::sum, s...); return;
      default:
        throw std::logic_error("fault_campaign: mismatch " + std::string(to_string(f.mismatch)) +
                               " has no broadcast form");
    }
  }

  // Declared first, destroyed last: a device communicator's stream (destroyed with `inner_`)
  // finishes its queued work, which may use the scratch buffers, before they go.
  std::shared_ptr<RankFaults> faults_;
  Comm inner_;
};

}  // namespace fault

// A wrapper promises what the communicator it wraps promises.
template <class Comm>
struct strata::communicator_traits<fault::FaultyComm<Comm>> : strata::communicator_traits<Comm> {};
