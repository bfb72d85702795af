#pragma once
//! \file
//! `strata::TorchComm` and `strata::TorchDeviceComm`: the `communicator` concept over a PyTorch
//! `c10d::ProcessGroup`, so that strata's algorithms run inside a PyTorch job on the process
//! groups it already has: `TorchComm` over host memory (gloo), `TorchDeviceComm` over the memory
//! of one device (a CUDA device with an NCCL group, or gloo's CUDA support).
//!
//! What the process group gives, and what this wrapper adds (docs/torch.md):
//! - every collective runs on a staging tensor owned by the process group's work object, and the
//!   caller's buffer is written only after the work completed: a failure or a timeout leaves it
//!   as it was (all-or-nothing), and a work that is still running after a timeout writes only
//!   into memory it owns;
//! - each wait is bounded: `Work::isCompleted()` is polled until the communicator's deadline
//!   (`TorchOptions::timeout`, by default the process group's own timeout where the caller knows
//!   it, see strata/torch/gloo.hpp); a timeout makes the communicator unusable, since the process
//!   group still has the collective queued;
//! - the members' calls are compared first (sizes, types, roots, counts) over the process group
//!   itself, so misuse is a `strata::usage_error` on every member, as on every backend;
//! - `average` is the sum times 1/n (the truncated quotient for integers), as on the local and
//!   MPI backends; reduce-scatter on gloo, which does not offer it, is an all-reduce of which each
//!   member keeps its block;
//! - `split` creates the sub-groups through a `TorchGroupFactory` over the job's `c10d::Store`,
//!   under keys of this communicator's own, so only the members of this communicator take part.

#include <torch/csrc/distributed/c10d/PrefixStore.hpp>
#include <torch/csrc/distributed/c10d/ProcessGroup.hpp>
#include <torch/csrc/distributed/c10d/Store.hpp>
#include <torch/csrc/distributed/c10d/Types.hpp>
#include <torch/csrc/distributed/c10d/Work.hpp>

#include <ATen/ATen.h>
#include <c10/core/Device.h>
#include <c10/core/Stream.h>
#include <c10/core/impl/DeviceGuardImplInterface.h>
#include <c10/util/Exception.h>

#include <algorithm>
#include <array>
#include <chrono>
#include <cstddef>
#include <cstdint>
#include <exception>
#include <functional>
#include <memory>
#include <mutex>
#include <numeric>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <type_traits>
#include <utility>
#include <vector>

#include "strata/comm/communicator.hpp"
#include "strata/comm/communicator_traits.hpp"
#include "strata/comm/detail/call.hpp"
#include "strata/comm/detail/deadline.hpp"
#include "strata/comm/detail/facade.hpp"
#include "strata/detail/splitmix.hpp"
#include "strata/error.hpp"

namespace strata {

//! A failure the process group reported (a peer that closed its connection, a backend that
//! refuses an operation): the cause carries PyTorch's own message, without its backtrace.
//!
//! \code
//! strata::torch_error e("all_reduce", 1, "Connection closed by peer");
//! assert(e.rank() == 1);
//! \endcode
class torch_error : public error {
 public:
  using error::error;
};

//! Settings of a `TorchComm`.
//!
//! \code
//! strata::TorchOptions o;
//! o.timeout = std::chrono::seconds(30);
//! assert(o.verify_arguments);
//! \endcode
struct TorchOptions {
  //! How long one collective may wait for its peers. The process groups of a split are created by
  //! the group factory, under the factory's own timeout (`gloo_comm`'s: this one).
  std::chrono::milliseconds timeout = detail::default_timeout;
  //! Compare the members' calls before each collective (one all-gather of 11 words; for the
  //! uneven all-to-all also an all-to-all of a word per peer and an all-gather of 3 words), so that
  //! misuse is a `usage_error` on every member.
  //! Off: each member checks only its own arguments.
  bool verify_arguments = true;
};

//! Creates the process group of `size` ranks in which this process is `rank`, rendezvousing
//! through `store` (keys of its own: a prefix store). strata/torch/gloo.hpp has one for gloo.
using TorchGroupFactory = std::function<c10::intrusive_ptr<c10d::ProcessGroup>(
    const c10::intrusive_ptr<c10d::Store>& store, int rank, int size)>;

namespace detail::torch {

template <class T>
constexpr c10::ScalarType scalar_type() noexcept {
  if constexpr (std::is_same_v<T, float>) return c10::ScalarType::Float;
  else if constexpr (std::is_same_v<T, double>) return c10::ScalarType::Double;
  else if constexpr (std::is_same_v<T, std::int32_t>) return c10::ScalarType::Int;
  else return c10::ScalarType::Long;
}

// A tensor over memory the caller owns, on `device`; only ever the source or target of a copy.
template <class T>
at::Tensor view(const T* data, std::size_t n, c10::Device device = c10::Device(c10::kCPU)) {
  return at::from_blob(const_cast<T*>(data), {static_cast<std::int64_t>(n)},
                       at::TensorOptions().dtype(scalar_type<T>()).device(device));
}

template <class T>
at::Tensor staging(std::size_t n, c10::Device device = c10::Device(c10::kCPU)) {
  return at::empty({static_cast<std::int64_t>(n)},
                   at::TensorOptions().dtype(scalar_type<T>()).device(device));
}

inline c10d::ReduceOp reduction(ReduceOp op) {
  switch (op) {
    case ReduceOp::min: return c10d::ReduceOp(c10d::ReduceOp::MIN);
    case ReduceOp::max: return c10d::ReduceOp(c10d::ReduceOp::MAX);
    case ReduceOp::sum:
    case ReduceOp::average: break;
  }
  return c10d::ReduceOp(c10d::ReduceOp::SUM);
}

// The staging tensor of the large collectives, kept between calls and shared by a communicator
// and its splits: a fresh tensor of parameter size costs its first touch of every page, about
// eight times the copy into it. One collective at a time holds the kept tensor (another, on
// another thread, gets a fresh one of its own), and only while nothing else holds its storage (a
// work object that finished may hold it a little longer); a tensor that a failed or timed-out
// collective may still write into is dropped, never reused.
class StagingCache {
 public:
  struct Taken {
    at::Tensor tensor;
    bool kept = false;  // the kept tensor: give it back with release() or discard()
  };

  // The first `n` elements of the kept tensor when it is free and fits; otherwise of a fresh
  // tensor, which becomes the kept one when the cache is free.
  Taken take(std::size_t n, c10::ScalarType type, c10::Device device) {
    const std::lock_guard<std::mutex> lock(mutex_);
    const auto count = static_cast<std::int64_t>(n);
    const auto options = at::TensorOptions().dtype(type).device(device);
    if (busy_) return {at::empty({count}, options), false};
    if (!(kept_.defined() && kept_.scalar_type() == type && kept_.device() == device &&
          kept_.numel() >= count && kept_.storage().use_count() == 1)) {
      kept_ = at::empty({count}, options);
    }
    busy_ = true;
    // A view: while the collective holds it, the storage counts one more user than kept_.
    return {kept_.narrow(0, 0, count), true};
  }
  // The holder of the kept tensor is done with it.
  void release() {
    const std::lock_guard<std::mutex> lock(mutex_);
    busy_ = false;
  }
  // The holder of the kept tensor failed: a work may still write into it.
  void discard() {
    const std::lock_guard<std::mutex> lock(mutex_);
    kept_ = at::Tensor();
    busy_ = false;
  }

 private:
  std::mutex mutex_;
  at::Tensor kept_;
  bool busy_ = false;
};

// A collective's use of the cache: the kept tensor, if it got it, is released when the
// collective completed (`done`) and discarded when it left by an exception.
class StagingLease {
 public:
  explicit StagingLease(StagingCache& cache) : cache_(&cache) {}
  StagingLease(const StagingLease&) = delete;
  StagingLease& operator=(const StagingLease&) = delete;
  ~StagingLease() {
    if (!kept_) return;
    if (done_) {
      cache_->release();
    } else {
      cache_->discard();
    }
  }
  template <class T>
  at::Tensor take(std::size_t n, c10::Device device) {
    StagingCache::Taken t = cache_->take(n, scalar_type<T>(), device);
    kept_ = t.kept;
    return std::move(t.tensor);
  }
  void done() noexcept { done_ = true; }

 private:
  StagingCache* cache_;
  bool kept_ = false;
  bool done_ = false;
};

// "an all_reduce", "a broadcast": how messages name one call of an operation.
inline std::string a_or_an(std::string_view op) {
  const bool vowel = !op.empty() && std::string_view("aeiou").find(op.front()) != op.npos;
  return (vowel ? "an " : "a ") + std::string(op);
}

// What an all_reduce_tensors call puts where a collective's code goes in the words the members
// compare: no collective has it, so a member that called another collective sees a difference.
inline constexpr std::int64_t tensors_code = 100;

// A 64-bit digest of a tensor list's sizes, so that the members compare their lists in the one
// exchange of a collective's words.
template <class T>
std::int64_t sizes_digest(std::span<const std::span<T>> tensors) {
  std::uint64_t h = 0;
  for (const std::span<T>& t : tensors) h = splitmix64(h ^ static_cast<std::uint64_t>(t.size()));
  return static_cast<std::int64_t>(h);
}

// PyTorch's message without the backtrace c10::Error appends.
inline std::string message(const std::exception& e) {
  if (const auto* c = dynamic_cast<const c10::Error*>(&e)) return c->what_without_backtrace();
  return e.what();
}

}  // namespace detail::torch

//! The `communicator` concept over a `c10d::ProcessGroup` (see the file's comment for what it
//! adds to the process group), with the caller's buffers in host memory (`TorchComm`) or in the
//! memory of one device (`TorchDeviceComm`). Construction is collective over the process group.
//! Movable, not copyable; its splits hold process groups of their own.
//!
//! \code
//! static_assert(strata::communicator<strata::TorchComm>);
//! static_assert(strata::all_or_nothing_v<strata::TorchComm>);
//! static_assert(!std::is_copy_constructible_v<strata::TorchComm>);
//! \endcode
template <MemorySpace Space>
class BasicTorchComm : public detail::CollectiveFacade<BasicTorchComm<Space>> {
  static constexpr bool on_device = Space == MemorySpace::device;

 public:
  template <class T>
  static constexpr bool accepts = comm_value<T>;
  using stream_type = void;

  //! Collective over `group`, with host buffers. With a `store` (the job's rendezvous store, as
  //! the process group was created with) and a `factory`, `split` works; without them it throws
  //! `usage_error`.
  BasicTorchComm(c10::intrusive_ptr<c10d::ProcessGroup> group,
                 c10::intrusive_ptr<c10d::Store> store, TorchGroupFactory factory,
                 TorchOptions options = {}) requires(!on_device)
      : BasicTorchComm(std::move(group), std::move(store), std::move(factory),
                       c10::Device(c10::kCPU), options, 0) {}

  //! Collective over `group`, with host buffers, without splits.
  explicit BasicTorchComm(c10::intrusive_ptr<c10d::ProcessGroup> group,
                          TorchOptions options = {}) requires(!on_device)
      : BasicTorchComm(std::move(group), {}, {}, c10::Device(c10::kCPU), options, 0) {}

  //! Collective over `group`, with buffers in the memory of `device` (the device the process
  //! group's collectives run on). Each collective completes before it returns: it runs on the
  //! device's current stream, which it synchronises at the end.
  BasicTorchComm(c10::intrusive_ptr<c10d::ProcessGroup> group,
                 c10::intrusive_ptr<c10d::Store> store, TorchGroupFactory factory,
                 c10::Device device, TorchOptions options = {}) requires(on_device)
      : BasicTorchComm(std::move(group), std::move(store), std::move(factory), device, options, 0) {
  }

  BasicTorchComm(BasicTorchComm&&) noexcept = default;
  BasicTorchComm& operator=(BasicTorchComm&&) noexcept = default;
  BasicTorchComm(const BasicTorchComm&) = delete;
  BasicTorchComm& operator=(const BasicTorchComm&) = delete;
  ~BasicTorchComm() = default;

  [[nodiscard]] int rank() const noexcept { return rank_; }
  [[nodiscard]] int size() const noexcept { return size_; }
  //! The process group, for code that mixes in its own calls.
  [[nodiscard]] const c10::intrusive_ptr<c10d::ProcessGroup>& native() const noexcept {
    return group_;
  }
  [[nodiscard]] const TorchOptions& options() const noexcept { return options_; }
  //! Why the communicator can no longer be used (a collective timed out or failed with the
  //! process group still holding it); empty while it can.
  [[nodiscard]] const std::string& broken() const noexcept { return broken_; }
  //! Where the buffers live: the CPU for `TorchComm`.
  [[nodiscard]] c10::Device device() const noexcept { return device_; }

  //! As `all_reduce` in place, over the concatenation of this member's tensors, with one
  //! collective: the tensors are packed straight into the staging tensor the process group
  //! reduces, and the result (times 1/n for `average`) is written straight back into them, only
  //! once the collective has completed. The averagers use it for a list of tensors. The members
  //! must pass the same number of tensors, of the same sizes, which must not overlap; with
  //! `verify_arguments` a difference is a `usage_error` on every member naming the first tensor
  //! that differs (the members compare a digest of their sizes, and gather the sizes themselves
  //! only when the digests differ).
  //!
  //! \code
  //! static_assert(requires(strata::TorchComm& c, std::span<const std::span<float>> t) {
  //!   c.all_reduce_tensors(t, strata::ReduceOp::average);
  //! });
  //! \endcode
  template <comm_value T>
  void all_reduce_tensors(std::span<const std::span<T>> tensors, ReduceOp op) {
    const std::string_view name = detail::tensors_name;
    ensure_usable(name);
    std::size_t total = 0;
    for (const std::span<T>& t : tensors) total += t.size();
    agree_tensors<T>(tensors, total, op);
    if (total == 0) return;
    detail::torch::StagingLease lease(*cache_);
    at::Tensor s = lease.take<T>(total, device_);
    std::int64_t at = 0;
    for (const std::span<T>& t : tensors) {
      const auto n = static_cast<std::int64_t>(t.size());
      if (n != 0) s.narrow(0, at, n).copy_(view(t.data(), t.size()));
      at += n;
    }
    std::vector<at::Tensor> list{s};
    c10d::AllreduceOptions o;
    o.reduceOp = detail::torch::reduction(op);
    finish(name, [&] { return group_->allreduce(list, o); });
    at = 0;
    if constexpr (on_device) {
      scale_on_device<T>(s, op);
      for (const std::span<T>& t : tensors) {
        const auto n = static_cast<std::int64_t>(t.size());
        if (n != 0) view(t.data(), t.size()).copy_(s.narrow(0, at, n));
        at += n;
      }
      settle();
    } else {
      for (const std::span<T>& t : tensors) {
        const auto n = static_cast<std::int64_t>(t.size());
        if (n != 0) write_host(op, s.narrow(0, at, n), t.data(), t.size());
        at += n;
      }
    }
    lease.done();
  }

 private:
  friend class detail::CollectiveFacade<BasicTorchComm>;
  using Call = detail::Call;
  using Collective = detail::Collective;

  // The public constructors' common part; collective: draws the communicator's store keys.
  BasicTorchComm(c10::intrusive_ptr<c10d::ProcessGroup> group,
                 c10::intrusive_ptr<c10d::Store> store, TorchGroupFactory factory,
                 c10::Device device, TorchOptions options, int)
      : group_(std::move(group)),
        store_(std::move(store)),
        factory_(std::move(factory)),
        options_(options),
        device_(device) {
    if (!group_) throw std::invalid_argument("TorchComm: the process group is null");
    rank_ = group_->getRank();
    size_ = group_->getSize();
    if (store_) prefix_ = "strata/" + std::to_string(unique_id()) + "/";
  }

  struct child_tag {};
  BasicTorchComm(child_tag, c10::intrusive_ptr<c10d::ProcessGroup> group,
                 c10::intrusive_ptr<c10d::Store> store, TorchGroupFactory factory,
                 TorchOptions options, c10::Device device, std::string prefix)
      : group_(std::move(group)),
        store_(std::move(store)),
        factory_(std::move(factory)),
        options_(options),
        device_(device),
        prefix_(std::move(prefix)) {
    rank_ = group_->getRank();
    size_ = group_->getSize();
  }

  template <class T>
  at::Tensor staging(std::size_t n) const {
    return detail::torch::staging<T>(n, device_);
  }
  template <class T>
  at::Tensor view(const T* data, std::size_t n) const {
    return detail::torch::view(data, n, device_);
  }

  // A device communicator's copies and reductions run on the device's current stream: the call
  // completes only once that stream has.
  void settle() const {
    if constexpr (on_device) {
      if (!device_.is_cpu()) {
        c10::impl::getDeviceGuardImpl(device_.type())->getStream(device_).synchronize();
      }
    }
  }

  // Store keys that no other communicator of the job uses: rank 0 draws a number from the store,
  // and the others learn it over the process group.
  std::int64_t unique_id() {
    at::Tensor id = at::zeros({1}, at::TensorOptions().dtype(at::kLong).device(device_));
    if (rank_ == 0) id.fill_(run("TorchComm", [&] { return store_->add("strata/comms", 1); }));
    std::vector<at::Tensor> t{id};
    finish("TorchComm", [&] { return group_->broadcast(t, c10d::BroadcastOptions{}); });
    return id.to(c10::kCPU).template item<std::int64_t>();
  }

  // The average of a reduced sum on the device: a tensor times a scalar of its own type rounds as
  // the scalar product does (the local and MPI backends' rounding); integers: the truncated
  // quotient.
  template <comm_value T>
  void scale_on_device(at::Tensor& sum, ReduceOp op) const {
    if (op != ReduceOp::average) return;
    if constexpr (std::is_floating_point_v<T>) {
      sum.mul_(static_cast<double>(T(1) / static_cast<T>(size_)));
    } else {
      sum.div_(size_, "trunc");
    }
  }

  // The agreement of all_reduce_tensors, with the local backend's rule and words: first the
  // lowest member whose tensors overlap, then the first member whose call differs from member
  // 0's in operation, element type, reduction, tensor count, or the size of a tensor (the first
  // that differs). The first exchange has a collective call's length, so that a member that
  // called another collective exchanges well-formed words too, and fails alike.
  template <comm_value T>
  void agree_tensors(std::span<const std::span<T>> tensors, std::size_t total, ReduceOp op) {
    const std::string_view name = detail::tensors_name;
    const auto overlap = detail::overlapping_tensors(tensors);
    if (!options_.verify_arguments) {
      if (overlap) fail_tensors(detail::tensors_overlap(detail::rank_name(rank_), *overlap));
      return;
    }
    const auto n = static_cast<std::size_t>(size_);
    constexpr std::size_t words = detail::signature_words;
    const std::array<std::int64_t, words> mine = {detail::torch::tensors_code,
                                                  detail::element_info<T>::code,
                                                  static_cast<std::int64_t>(op),
                                                  0,
                                                  detail::as_word(tensors.size()),
                                                  detail::as_word(total),
                                                  0,
                                                  overlap ? 1 : 0,
                                                  overlap ? detail::as_word(overlap->first) : 0,
                                                  overlap ? detail::as_word(overlap->second) : 0,
                                                  detail::torch::sizes_digest(tensors)};
    std::vector<std::int64_t> all(words * n);
    gather_words(name, mine, all);
    const auto word = [&](std::size_t m, std::size_t w) { return all[m * words + w]; };
    const auto rank = [](std::size_t m) { return detail::rank_name(static_cast<int>(m)); };
    const auto is_tensors = [&](std::size_t m) {
      return word(m, 0) == detail::torch::tensors_code;
    };
    for (std::size_t m = 0; m < n; ++m) {
      if (is_tensors(m) && word(m, 7) != 0) {
        fail_tensors(detail::tensors_overlap(
            rank(m), {static_cast<std::size_t>(word(m, 8)), static_cast<std::size_t>(word(m, 9))}));
      }
    }
    // A member that called another collective sent that collective's words.
    const auto signature = [&](std::size_t m) {
      return detail::TensorListSignature{
          is_tensors(m) ? detail::tensors_name
                        : detail::collective_name(static_cast<Collective>(word(m, 0))),
          static_cast<std::uint8_t>(word(m, 1)), static_cast<ReduceOp>(word(m, 2)),
          is_tensors(m) ? static_cast<std::size_t>(word(m, 4)) : 0};
    };
    for (std::size_t m = 1; m < n; ++m) {
      if (auto why = detail::tensor_list_mismatch(rank(0), signature(0), rank(m), signature(m))) {
        fail_tensors(*why);
      }
    }
    // The same count everywhere: the sizes must match too, since equal totals of different sizes
    // would reduce misaligned tensors. Their digests were exchanged; only when one differs are the
    // sizes themselves gathered, to name the first tensor that differs.
    bool digests_agree = true;
    for (std::size_t m = 1; m < n; ++m) digests_agree = digests_agree && word(m, 10) == word(0, 10);
    if (tensors.empty() || digests_agree) return;
    std::vector<std::int64_t> sizes(tensors.size());
    for (std::size_t t = 0; t < tensors.size(); ++t) sizes[t] = detail::as_word(tensors[t].size());
    std::vector<std::int64_t> every(sizes.size() * n);
    gather_words(name, sizes, every);
    for (std::size_t m = 1; m < n; ++m) {
      for (std::size_t t = 0; t < sizes.size(); ++t) {
        const std::int64_t a = every[t];
        const std::int64_t b = every[m * sizes.size() + t];
        if (a != b) {
          fail_tensors(detail::tensor_size_mismatch(
              rank(0), rank(m), t, static_cast<std::size_t>(a), static_cast<std::size_t>(b)));
        }
      }
    }
  }

  [[noreturn]] void fail_tensors(const std::string& why) const {
    throw usage_error(detail::tensors_name, rank_, why);
  }

  // --- for the facade ---------------------------------------------------------------------------
  [[nodiscard]] int error_rank() const noexcept { return rank_; }

  void ensure_usable(std::string_view op) const {
    if (!broken_.empty()) {
      throw error(op, rank_, "the communicator is unusable since " + broken_);
    }
  }

  void agree(const Call& c) { this->agree_by_exchange(c, options_.verify_arguments); }

  void gather_words(std::string_view op, std::span<const std::int64_t> mine,
                    std::span<std::int64_t> all) {
    at::Tensor in = staging<std::int64_t>(mine.size());
    in.copy_(detail::torch::view(mine.data(), mine.size()));
    at::Tensor out = staging<std::int64_t>(all.size());
    std::vector<std::vector<at::Tensor>> outputs(1);
    for (int r = 0; r < size_; ++r) {
      outputs[0].push_back(out.narrow(0, static_cast<std::int64_t>(r * mine.size()),
                                      static_cast<std::int64_t>(mine.size())));
    }
    std::vector<at::Tensor> inputs{in};
    finish(op, [&] { return group_->allgather(outputs, inputs); });
    detail::torch::view(all.data(), all.size()).copy_(out.to(c10::kCPU));
  }

  void exchange_words(std::string_view op, std::span<const std::int64_t> mine,
                      std::span<std::int64_t> theirs) {
    at::Tensor in = staging<std::int64_t>(mine.size());
    in.copy_(detail::torch::view(mine.data(), mine.size()));
    at::Tensor out = staging<std::int64_t>(theirs.size());
    std::vector<std::int64_t> none;
    finish(op, [&] { return group_->alltoall_base(out, in, none, none); });
    detail::torch::view(theirs.data(), theirs.size()).copy_(out.to(c10::kCPU));
  }

  template <comm_value T>
  void transport(const Call& c, const T* in, T* out) {
    const std::string_view op = detail::collective_name(c.op);
    const auto n = static_cast<std::int64_t>(size_);
    switch (c.op) {
      case Collective::all_reduce: {
        if (c.in == 0) return;
        detail::torch::StagingLease lease(*cache_);
        at::Tensor s = lease.take<T>(c.in, device_);
        s.copy_(view(in, c.in));
        std::vector<at::Tensor> t{s};
        c10d::AllreduceOptions o;
        o.reduceOp = detail::torch::reduction(c.reduce);
        finish(op, [&] { return group_->allreduce(t, o); });
        deliver(c.reduce, s, out, c.in);
        lease.done();
        return;
      }
      case Collective::broadcast: {
        if (c.in == 0) return;
        at::Tensor s = staging<T>(c.in);
        s.copy_(view(in, c.in));
        std::vector<at::Tensor> t{s};
        c10d::BroadcastOptions o;
        o.rootRank = c.root;
        finish(op, [&] { return group_->broadcast(t, o); });
        copy_out(s, out, c.in);
        return;
      }
      case Collective::all_gather: {
        if (c.in == 0) return;
        at::Tensor s = staging<T>(c.in);
        s.copy_(view(in, c.in));
        detail::torch::StagingLease lease(*cache_);
        at::Tensor r = lease.take<T>(c.out, device_);
        std::vector<std::vector<at::Tensor>> outputs(1);
        for (std::int64_t j = 0; j < n; ++j) {
          outputs[0].push_back(
              r.narrow(0, j * static_cast<std::int64_t>(c.in), static_cast<std::int64_t>(c.in)));
        }
        std::vector<at::Tensor> inputs{s};
        finish(op, [&] { return group_->allgather(outputs, inputs); });
        copy_out(r, out, c.out);
        lease.done();
        return;
      }
      case Collective::reduce_scatter: {
        if (c.out == 0) return;
        detail::torch::StagingLease lease(*cache_);
        at::Tensor s = lease.take<T>(c.in, device_);
        s.copy_(view(in, c.in));
        const auto block = static_cast<std::int64_t>(c.out);
        if (group_->getBackendName() == "gloo") {
          // Gloo has no reduce-scatter: the whole reduction, of which this member keeps its block.
          std::vector<at::Tensor> t{s};
          c10d::AllreduceOptions o;
          o.reduceOp = detail::torch::reduction(c.reduce);
          finish(op, [&] { return group_->allreduce(t, o); });
          deliver(c.reduce, s.narrow(0, rank_ * block, block), out, c.out);
          lease.done();
          return;
        }
        at::Tensor r = staging<T>(c.out);
        std::vector<std::vector<at::Tensor>> inputs(1);
        for (std::int64_t j = 0; j < n; ++j) inputs[0].push_back(s.narrow(0, j * block, block));
        std::vector<at::Tensor> outputs{r};
        c10d::ReduceScatterOptions o;
        o.reduceOp = detail::torch::reduction(c.reduce);
        finish(op, [&] { return group_->reduce_scatter(outputs, inputs, o); });
        deliver(c.reduce, r, out, c.out);
        lease.done();
        return;
      }
      case Collective::all_to_all: {
        if (c.in == 0) return;
        at::Tensor s = staging<T>(c.in);
        s.copy_(view(in, c.in));
        at::Tensor r = staging<T>(c.out);
        std::vector<std::int64_t> equal;
        finish(op, [&] { return group_->alltoall_base(r, s, equal, equal); });
        copy_out(r, out, c.out);
        return;
      }
      case Collective::all_to_all_v: {
        at::Tensor s = staging<T>(c.in);
        s.copy_(view(in, c.in));
        at::Tensor r = staging<T>(c.out);
        std::vector<std::int64_t> sends(c.send_counts.begin(), c.send_counts.end());
        std::vector<std::int64_t> recvs(c.recv_counts.begin(), c.recv_counts.end());
        finish(op, [&] { return group_->alltoall_base(r, s, recvs, sends); });
        if (c.out != 0) copy_out(r, out, c.out);
        return;
      }
      case Collective::barrier:
      case Collective::split: return;
    }
  }

  template <comm_value T>
  void copy_out(const at::Tensor& result, T* out, std::size_t count) const {
    view(out, count).copy_(result);
    settle();
  }

  // One pass from a reduction's result (host memory) into the caller's buffer, averaged on the
  // way: the sum times 1/n (the truncated quotient for integers), the rounding of the local and
  // MPI backends.
  template <comm_value T>
  void write_host(ReduceOp op, const at::Tensor& result, T* out, std::size_t count) const {
    const T* sum = result.template data_ptr<T>();
    if (op == ReduceOp::average) {
      const detail::AverageOf<T> average(size_);
      for (std::size_t i = 0; i < count; ++i) out[i] = average(sum[i]);
    } else {
      std::copy(sum, sum + count, out);
    }
  }

  // The result of a reduction into the caller's buffer, averaged when asked.
  template <comm_value T>
  void deliver(ReduceOp op, at::Tensor result, T* out, std::size_t count) const {
    if constexpr (on_device) {
      scale_on_device<T>(result, op);
      copy_out(result, out, count);
    } else {
      write_host(op, result, out, count);
    }
  }

  // With verify_arguments the agreement was itself a barrier: an all-gather completes on a
  // member only once every member has contributed.
  void transport_barrier(const Call&) {
    if (options_.verify_arguments) return;
    finish("barrier", [&] { return group_->barrier(c10d::BarrierOptions{}); });
  }

  BasicTorchComm transport_split(const Call&, int color, int key) {
    if (!store_ || !factory_) {
      throw usage_error("split", rank_,
                        "this TorchComm was made without a store and a group factory, so it "
                        "cannot create process groups");
    }
    // Every member learns every (color, key): the members of a color, ordered by key then rank.
    std::vector<std::int64_t> mine{color, key};
    std::vector<std::int64_t> all(2 * static_cast<std::size_t>(size_));
    gather_words("split", mine, all);
    std::vector<int> members;
    for (int r = 0; r < size_; ++r) {
      if (all[2 * static_cast<std::size_t>(r)] == color) members.push_back(r);
    }
    std::stable_sort(members.begin(), members.end(), [&](int a, int b) {
      return all[2 * static_cast<std::size_t>(a) + 1] < all[2 * static_cast<std::size_t>(b) + 1];
    });
    const int sub_rank =
        static_cast<int>(std::find(members.begin(), members.end(), rank_) - members.begin());
    const std::string prefix =
        prefix_ + "s" + std::to_string(splits_++) + "/c" + std::to_string(color) + "/";
    auto sub_store = c10::make_intrusive<c10d::PrefixStore>(prefix + "group", store_);
    c10::intrusive_ptr<c10d::ProcessGroup> sub = run(
        "split", [&] { return factory_(sub_store, sub_rank, static_cast<int>(members.size())); });
    if (!sub) throw error("split", rank_, "the group factory returned no process group");
    BasicTorchComm child(child_tag{}, std::move(sub), store_, factory_, options_, device_, prefix);
    child.cache_ = cache_;
    return child;
  }

  // --- process-group calls ----------------------------------------------------------------------
  // Runs a call that reports failures as exceptions, as strata's errors.
  template <class F>
  auto run(std::string_view op, F&& f) -> decltype(f()) {
    try {
      return f();
    } catch (const strata::error&) {
      throw;
    } catch (const std::exception& e) {
      throw torch_error(op, rank_, detail::torch::message(e));
    }
  }

  // Issues a collective and waits for it under the deadline. The work object keeps the tensors
  // it was given alive, so a work abandoned here never writes into memory that was freed.
  template <class Issue>
  void finish(std::string_view op, Issue&& issue) {
    c10::intrusive_ptr<c10d::Work> work = run(op, issue);
    const detail::Deadline deadline(options_.timeout);
    detail::Poller poller;
    while (!run(op, [&] { return work->isCompleted(); })) {
      if (deadline.passed()) {
        broken_ = detail::torch::a_or_an(op) + " timed out";
        throw timeout_error(op, rank_,
                            deadline.expired() +
                                "; the process group cannot tell which peers had not arrived, "
                                "and still holds the collective, so the communicator is unusable");
      }
      poller.pause();
    }
    try {
      work->wait();
    } catch (const std::exception& e) {
      broken_ = detail::torch::a_or_an(op) + " failed";
      throw torch_error(op, rank_, detail::torch::message(e));
    }
  }

  c10::intrusive_ptr<c10d::ProcessGroup> group_;
  c10::intrusive_ptr<c10d::Store> store_;
  TorchGroupFactory factory_;
  TorchOptions options_;
  c10::Device device_ = c10::Device(c10::kCPU);
  std::string prefix_;  // this communicator's keys in the store
  int rank_ = 0;
  int size_ = 0;
  std::size_t splits_ = 0;
  std::string broken_;
  std::shared_ptr<detail::torch::StagingCache> cache_ =
      std::make_shared<detail::torch::StagingCache>();
};

//! The `communicator` over host buffers (gloo process groups).
using TorchComm = BasicTorchComm<MemorySpace::host>;

//! The `communicator` over the buffers of one device (NCCL process groups on a CUDA device).
//! Construction names the device; every collective completes before it returns.
//!
//! \code
//! static_assert(strata::communicator<strata::TorchDeviceComm>);
//! static_assert(strata::device_memory_v<strata::TorchDeviceComm>);
//! \endcode
using TorchDeviceComm = BasicTorchComm<MemorySpace::device>;

//! The collectives complete before they return, and leave the caller's buffers as they were
//! when they fail (they run on staging tensors).
template <MemorySpace Space>
struct communicator_traits<BasicTorchComm<Space>> {
  static constexpr bool all_or_nothing = true;
  static constexpr MemorySpace memory_space = Space;
  using stream_type = void;
};

static_assert(communicator<TorchComm>);
static_assert(communicator<TorchDeviceComm>);

}  // namespace strata
