#pragma once
//! \file
//! The NCCL backend: a communicator over an `ncclComm_t` for device buffers, on CUDA streams
//! (target `strata::nccl`). Host code: it builds with g++ against the CUDA and NCCL headers.
//!
//! Every collective is enqueued on a CUDA stream and returns without waiting for the device, as
//! NCCL's own calls do; the result is visible to later work on that stream, and to the host after
//! `synchronize()`. What NCCL does per operation (n ranks, c elements of s bytes in the
//! operation's input), for the record:
//!
//! | operation | NCCL algorithm | steps | bytes sent per rank |
//! | --- | --- | --- | --- |
//! | `all_reduce` | ring (large), tree / NVLS (small, or where the fabric has them) | 2(n-1) | 2(n-1)/n·c·s |
//! | `all_reduce_many` | one grouped launch of the per-tensor all-reduces | 2(n-1) | 2(n-1)/n·Σc·s |
//! | `broadcast` | pipelined ring | n-1 | c·s |
//! | `all_gather` | ring | n-1 | (n-1)·c·s |
//! | `reduce_scatter` | ring | n-1 | (n-1)/n·c·s |
//! | `all_to_all` | grouped `ncclSend`/`ncclRecv` to every peer | 1 (all pairs at once) | what it sends to the others |
//! | `all_to_all` (uneven) | grouped send/recv (after the counts check, when on) | 1 | what it sends to the others |
//! | `barrier` | an all-reduce of one element, then a wait | 2(n-1) | 4 |
//!
//! The argument checks and the cross-rank agreement are those of every backend
//! (`detail::CollectiveFacade`). Exchanging the calls costs an all-gather of 11 words per rank
//! and a wait for the stream, so on NCCL it is off unless `NcclOptions::verify_arguments` is set;
//! the counts of the uneven all-to-all are checked by default (`check_counts`).
//!
//! Faults (docs/errors.md): NCCL and CUDA statuses become `strata::nccl_error` /
//! `strata::cuda_error` naming the operation, the rank, the library call and the library's own
//! message; a deadline is a `strata::timeout_error`. By default the communicator is created in
//! NCCL's non-blocking mode, so that creation, `split` and every wait are polled against a
//! deadline (`ncclCommGetAsyncError`); a communicator that misses it, or reports an asynchronous
//! error, is aborted (`ncclCommAbort`): the caller gets an error, never a hang, and every later
//! call on it throws. `NcclOptions::blocking` selects NCCL's blocking mode instead: no NCCL
//! thread and no poll per call, and a call that blocks inside NCCL past the deadline ends the
//! process (docs/device.md, "Blocking mode").
//!
//! The communicator reaches NCCL and CUDA only through its runtime policy (`NcclRuntime`), so
//! that its logic is one piece of code that a host test double can drive across 1 to 16 ranks on
//! a machine without GPUs.

#include <nccl.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstddef>
#include <cstdint>
#include <memory>
#include <span>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "strata/comm/communicator.hpp"
#include "strata/comm/detail/call.hpp"
#include "strata/comm/detail/deadline.hpp"
#include "strata/comm/detail/facade.hpp"
#include "strata/comm/detail/watchdog.hpp"
#include "strata/comm/nccl/error.hpp"
#include "strata/comm/nccl/runtime.hpp"
#include "strata/cuda/device_buffer.hpp"
#include "strata/error.hpp"

namespace strata {

//! Settings of an `NcclComm`.
//!
//! \code
//! strata::NcclOptions opts;
//! opts.timeout = std::chrono::seconds(20);
//! opts.device = 0;
//! assert(opts.check_counts && !opts.verify_arguments && !opts.blocking);
//! \endcode
struct NcclOptions {
  //! How long creation, `split` and each `synchronize` may take before the communicator is
  //! aborted and the call throws.
  std::chrono::milliseconds timeout = detail::default_timeout;
  //! The CUDA device of this rank; -1 takes the device that is current when the communicator is
  //! created. Whatever the calling thread's current device is later, the communicator allocates
  //! and enqueues on this one, and leaves the thread's current device as it was.
  int device = -1;
  //! Before each collective the members exchange what they are about to do and throw the same
  //! `strata::usage_error` when a member's arguments are invalid or the calls disagree, instead
  //! of a collective that NCCL would pair wrongly, truncate or hang on. It costs a small
  //! all-gather and a wait for the stream per collective, which takes the host out of the
  //! asynchronous flow: for debugging and tests.
  bool verify_arguments = false;
  //! The same for the uneven all-to-all alone: the counts are gathered and checked first, so a
  //! mismatch is an error on every rank instead of a truncated or hung transfer. Trainers that
  //! derive the counts from one shared plan can turn it off to keep the host out of the hot path.
  bool check_counts = true;
  //! NCCL's blocking mode (`ncclConfig_t::blocking = 1`) for this communicator and those split
  //! from it. In the default non-blocking mode NCCL completes every call on a thread of its own
  //! (one per call) while strata polls for it, which bounds every wait by `timeout`. In blocking
  //! mode a call returns once NCCL has enqueued the work, with no thread and no poll; waits for
  //! the stream (`synchronize`) are still polled and still throw `timeout_error`. But creation,
  //! a split, finalize and a collective that first connects to its peers wait inside NCCL, where
  //! nothing can interrupt them: if one of those calls outlives `timeout`, a watchdog ends the
  //! process with a message naming the call, as a cluster's job launcher would on a hang.
  bool blocking = false;
};

//! One rank's handle on an NCCL communicator over device buffers; models `strata::communicator`
//! (spans point to device memory) and adds half, bfloat16, explicit streams, grouped multi-tensor
//! all-reduce and `synchronize`. Each collective comes in two forms: without a stream it runs
//! on the communicator's own stream (`stream()`), with one it runs on that stream. Communicators
//! made by `split` share their parent's stream, so that every level of a hierarchy is ordered
//! with the others. Movable, not copyable.
//!
//! Create it with `BasicNcclComm::from_unique_id` (the caller distributes the id) or with
//! `nccl_bootstrap` over any host communicator (MPI across nodes, the local backend across the
//! GPUs of one process).
//!
//! \code
//! static_assert(strata::communicator<strata::NcclComm>);
//! static_assert(!std::is_copy_constructible_v<strata::NcclComm>);
//! static_assert(strata::device_memory_v<strata::NcclComm>);
//! \endcode
template <class Runtime>
class BasicNcclComm : public detail::CollectiveFacade<BasicNcclComm<Runtime>> {
  using Facade = detail::CollectiveFacade<BasicNcclComm<Runtime>>;

 public:
  using runtime_type = Runtime;
  using comm_handle = typename Runtime::comm_handle;
  using stream_handle = typename Runtime::stream_handle;
  using stream_type = stream_handle;
  template <class T>
  static constexpr bool accepts = nccl_value<T>;

  //! A fresh id for one new communicator; rank 0 makes it and hands it to every rank.
  [[nodiscard]] static ncclUniqueId unique_id() {
    ncclUniqueId id{};
    const ncclResult_t rc = Runtime::get_unique_id(&id);
    if (rc != ncclSuccess) {
      throw nccl_error("unique_id", -1,
                       "ncclGetUniqueId: " + Runtime::error_string(rc, comm_handle{}), rc);
    }
    return id;
  }

  //! Collective over the `size` ranks that pass the same `id`: joins the communicator as `rank`,
  //! on `options.device`, with a new stream of its own. Waits at most `options.timeout` for the
  //! others, then aborts and throws.
  [[nodiscard]] static BasicNcclComm from_unique_id(const ncclUniqueId& id, int rank, int size,
                                                    NcclOptions options = {}) {
    if (size <= 0 || rank < 0 || rank >= size) {
      throw std::invalid_argument("NcclComm: rank " + std::to_string(rank) +
                                  " is not a rank of a world of " + std::to_string(size));
    }
    if (options.blocking && options.timeout <= std::chrono::milliseconds::zero()) {
      // The watchdog would end the process during the first call that waits in NCCL.
      throw std::invalid_argument(
          "NcclComm: a blocking communicator needs a positive timeout, not " +
          std::to_string(options.timeout.count()) + " ms");
    }
    // Everything of the communicator lives on its device; the caller's current device is left
    // as it was.
    const DeviceGuard<Runtime> on(options.device, rank);
    if (options.device < 0) {
      Runtime::check("cudaGetDevice", rank, Runtime::get_device(&options.device));
    }
    auto stream = std::make_shared<OwnedStream>();
    Runtime::check("cudaStreamCreate", rank, Runtime::stream_create(&stream->handle));
    stream->owned = true;
    BasicNcclComm comm(options, rank, size, std::move(stream));
    comm.invoke("init", "ncclCommInitRankConfig",
                [&] { return Runtime::init_rank(&comm.comm_, size, id, rank, options.blocking); });
    comm.wait_ready("init");
    return comm;
  }

  BasicNcclComm(BasicNcclComm&& other) noexcept
      : comm_(std::exchange(other.comm_, comm_handle{})),
        options_(other.options_),
        rank_(other.rank_),
        size_(other.size_),
        stream_(std::move(other.stream_)),
        scratch_(std::move(other.scratch_)),
        staging_(std::move(other.staging_)),
        broken_(std::move(other.broken_)),
        // Guards alive across a move refer to the object they were made from: their counts stay
        // there, and the new object starts with none.
        deferring_(0),
        verifying_(0),
        abort_requested_(other.abort_requested_) {}
  BasicNcclComm& operator=(BasicNcclComm&& other) noexcept {
    if (this != &other) {
      release();
      comm_ = std::exchange(other.comm_, comm_handle{});
      options_ = other.options_;
      rank_ = other.rank_;
      size_ = other.size_;
      stream_ = std::move(other.stream_);
      scratch_ = std::move(other.scratch_);
      staging_ = std::move(other.staging_);
      broken_ = std::move(other.broken_);
      deferring_ = 0;
      verifying_ = 0;
      abort_requested_ = other.abort_requested_;
    }
    return *this;
  }
  BasicNcclComm(const BasicNcclComm&) = delete;
  BasicNcclComm& operator=(const BasicNcclComm&) = delete;
  ~BasicNcclComm() { release(); }

  [[nodiscard]] int rank() const noexcept { return rank_; }
  [[nodiscard]] int size() const noexcept { return size_; }
  //! The stream collectives run on when the call names none.
  [[nodiscard]] stream_handle stream() const noexcept {
    return stream_ ? stream_->handle : stream_handle{};  // a moved-from communicator has none
  }
  [[nodiscard]] comm_handle native() const noexcept { return comm_; }
  [[nodiscard]] const NcclOptions& options() const noexcept { return options_; }
  //! The CUDA device of the communicator: `options().device`, or the device that was current
  //! when it was created. Its streams, scratch memory and NCCL's work live there.
  [[nodiscard]] int device() const noexcept { return options_.device; }
  //! Why the communicator can no longer be used; empty while it can.
  [[nodiscard]] const std::string& broken() const noexcept { return broken_; }

  //! Many tensors in place with one grouped launch (`ncclGroupStart/End`): the fused form for
  //! tensors that are not packed into one buffer.
  template <nccl_value T>
  void all_reduce_many(std::span<const std::span<T>> tensors, ReduceOp op, stream_handle s) {
    constexpr std::string_view name = "all_reduce_many";
    ensure_usable(name);
    Group group(*this, name);
    for (const std::span<T> t : tensors) {
      if (t.empty()) continue;
      invoke(name, "ncclAllReduce", [&] {
        return Runtime::all_reduce(t.data(), t.data(), t.size(), detail::nccl::datatype<T>(),
                                   detail::nccl::reduction(op), comm_, s);
      });
    }
    group.end();
  }
  template <nccl_value T>
  void all_reduce_many(std::span<const std::span<T>> tensors, ReduceOp op) {
    all_reduce_many(tensors, op, stream());
  }

  //! Waits until the work enqueued on `s` is done, polling NCCL's asynchronous error state; an
  //! asynchronous error, a failed stream or the deadline aborts the communicator and throws.
  void synchronize(stream_handle s) {
    constexpr std::string_view op = "synchronize";
    ensure_usable(op);
    const detail::Deadline deadline(options_.timeout);
    detail::Poller poller;
    for (;;) {
      const auto q = Runtime::stream_query(s);
      poll_async_error(op);
      if (q == Runtime::success) return;
      if (q != Runtime::not_ready) {
        break_and_abort("the stream failed");
        Runtime::check("cudaStreamQuery", rank_, q);
      }
      honour_abort_request(op);
      if (deadline.passed()) {
        break_and_abort("a " + std::string(op) + " timed out");
        throw timeout_error(op, rank_,
                            deadline.expired() + ": the stream did not finish (a peer that never " +
                                "joined a collective, or a device that stopped); the " +
                                "communicator was aborted and cannot be used again");
      }
      poller.pause();
    }
  }
  void synchronize() { synchronize(stream()); }

  //! While the returned guard lives and `verify_arguments` is on, the data collectives
  //! (`all_reduce`, `broadcast`, `all_gather`, `reduce_scatter`, `all_to_all`) check their
  //! arguments and agree on them with the other members, but enqueue nothing: for a caller about
  //! to capture such a collective into a CUDA graph, where the agreement (which waits for the
  //! host) cannot run, and which makes the same call under the guard first. `barrier`, `split`
  //! and `all_reduce_many` are not affected. Inside `defer_aborts()` (a capture) nothing is
  //! compared: take this guard before the capture. It converts to false when `verify_arguments`
  //! is off: there is nothing to do then.
  [[nodiscard]] auto verify_only() {
    struct Guard {
      explicit Guard(BasicNcclComm* c) : comm(c) {
        if (comm != nullptr) ++comm->verifying_;
      }
      BasicNcclComm* comm;
      Guard(const Guard&) = delete;
      Guard& operator=(const Guard&) = delete;
      ~Guard() {
        if (comm != nullptr) --comm->verifying_;
      }
      explicit operator bool() const noexcept { return comm != nullptr; }
    };
    return Guard{options_.verify_arguments ? this : nullptr};
  }

  //! Aborts the communicator now: pending work on it is cancelled and every later call throws.
  //! For a rank that must give up without leaving its peers waiting for it. Like every other
  //! member, call it from the thread that uses the communicator (one thread at a time); from
  //! another thread, use `request_abort`.
  void abort() { break_and_abort("abort() was called"); }

  //! Safe from any thread (a watchdog): the thread that uses the communicator aborts it at its
  //! next poll, within one polling interval if it is waiting, or at its next call, which throws.
  //! The communicator must not be moved or destroyed while a watchdog may still call it.
  void request_abort() noexcept { abort_requested_->store(true); }

  //! Throws if the communicator cannot be used: aborted, moved from, or with an asynchronous
  //! error pending (which aborts it). Cheap (a host-side query): callers that launch work NCCL
  //! does not see, such as a captured graph, check before each launch.
  void check_usable(std::string_view op) { ensure_usable(op); }

  //! Aborts that become due while the returned guard lives wait until it is destroyed: for a
  //! caller that is capturing a CUDA graph, where the synchronous CUDA calls of `ncclCommAbort`
  //! are illegal. End the capture before the guard goes.
  [[nodiscard]] auto defer_aborts() {
    struct Guard {
      explicit Guard(BasicNcclComm* c) : comm(c) {}
      BasicNcclComm* comm;
      Guard(const Guard&) = delete;
      Guard& operator=(const Guard&) = delete;
      ~Guard() { comm->resume_aborts(); }
    };
    ++deferring_;
    return Guard{this};
  }

 private:
  friend Facade;
  using Call = detail::Call;
  using Collective = detail::Collective;

  struct OwnedStream {
    stream_handle handle{};
    bool owned = false;
    OwnedStream() = default;
    OwnedStream(const OwnedStream&) = delete;
    OwnedStream& operator=(const OwnedStream&) = delete;
    ~OwnedStream() {
      if (owned) (void)Runtime::stream_destroy(handle);
    }
  };

  BasicNcclComm(NcclOptions options, int rank, int size, std::shared_ptr<OwnedStream> stream)
      : options_(options), rank_(rank), size_(size), stream_(std::move(stream)) {}

  // Ends an ncclGroupStart scope on every path: NCCL requires the pairing even when a call inside
  // the group failed. Aborting a communicator with operations queued in an open group would
  // leave ncclGroupEnd walking a freed communicator: inside the group, aborts are deferred until
  // it has ended.
  class Group {
   public:
    Group(BasicNcclComm& comm, std::string_view op) : comm_(comm), op_(op) {
      comm_.call(op_, "ncclGroupStart", Runtime::group_start());
      ++comm_.deferring_;
    }
    void end() {
      open_ = false;
      const ncclResult_t rc = comm_.launch_group(op_);
      comm_.resume_aborts();
      comm_.call(op_, "ncclGroupEnd", rc);
    }
    Group(const Group&) = delete;
    Group& operator=(const Group&) = delete;
    // On an error path: the group is closed, and an end still in progress is waited for
    // (bounded by the deadline), so that the next call does not meet a half-launched group.
    ~Group() {
      if (!open_) return;
      const ncclResult_t rc = comm_.launch_group(op_);
      comm_.resume_aborts();
      if (rc == ncclInProgress) {
        try {
          comm_.wait_ready(op_);
        } catch (...) {
          // the communicator was aborted; the error that unwinds here is the one to report
        }
      }
    }

   private:
    BasicNcclComm& comm_;
    std::string_view op_;
    bool open_ = true;
  };

  // --- for the facade ---------------------------------------------------------------------------
  [[nodiscard]] int error_rank() const noexcept { return rank_; }

  // Inside a graph capture (or an open group) the exchange cannot run: it waits for the host.
  // A caller that captures verifies first (`verify_only`), outside the capture.
  void agree(const Call& c) {
    const bool exchange =
        options_.verify_arguments || (c.op == Collective::all_to_all_v && options_.check_counts);
    this->agree_by_exchange(c, exchange && deferring_ == 0);
  }

  // The agreement's exchanges run on the communicator's stream and wait for it: the host needs
  // the answer before it enqueues the collective.
  void gather_words(std::string_view op, std::span<const std::int64_t> mine,
                    std::span<std::int64_t> all) {
    auto* device = scratch_words(mine.size() + all.size());
    copy_to(device, mine);
    invoke(op, "ncclAllGather", [&] {
      return Runtime::all_gather(device, device + mine.size(), mine.size(), ncclInt64, comm_,
                                 stream());
    });
    copy_back(all, device + mine.size());
  }

  void exchange_words(std::string_view op, std::span<const std::int64_t> mine,
                      std::span<std::int64_t> theirs) {
    auto* device = scratch_words(mine.size() + theirs.size());
    copy_to(device, mine);
    exchange(
        op, device, device + mine.size(), [](std::size_t) { return std::size_t{1}; },
        [](std::size_t j) { return j; }, [](std::size_t) { return std::size_t{1}; },
        [](std::size_t j) { return j; }, stream());
    copy_back(theirs, device + mine.size());
  }

  template <nccl_value T, class... S>
  void transport(const Call& c, const T* in, T* out, S... given) {
    if (verifying_ > 0) return;  // verify_only(): the agreement was the point
    const stream_handle s = pick(given...);
    const std::string_view op = detail::collective_name(c.op);
    constexpr ncclDataType_t type = detail::nccl::datatype<T>();
    switch (c.op) {
      case Collective::all_reduce:
        invoke(op, "ncclAllReduce", [&] {
          return Runtime::all_reduce(in, out, c.in, type, detail::nccl::reduction(c.reduce), comm_,
                                     s);
        });
        break;
      case Collective::broadcast:
        invoke(op, "ncclBroadcast",
               [&] { return Runtime::broadcast(in, out, c.in, type, c.root, comm_, s); });
        break;
      case Collective::all_gather:
        invoke(op, "ncclAllGather",
               [&] { return Runtime::all_gather(in, out, c.in, type, comm_, s); });
        break;
      case Collective::reduce_scatter:
        invoke(op, "ncclReduceScatter", [&] {
          return Runtime::reduce_scatter(in, out, c.out, type, detail::nccl::reduction(c.reduce),
                                         comm_, s);
        });
        break;
      case Collective::all_to_all: {
        const std::size_t block = c.in / static_cast<std::size_t>(size_);
        const auto count = [block](std::size_t) { return block; };
        const auto offset = [block](std::size_t j) { return j * block; };
        exchange(op, in, out, count, offset, count, offset, s);
        break;
      }
      case Collective::all_to_all_v:
        exchange(
            op, in, out, [&](std::size_t j) { return c.send_counts[j]; },
            [&](std::size_t j) { return c.layout.send_offsets[j]; },
            [&](std::size_t j) { return c.recv_counts[j]; },
            [&](std::size_t j) { return c.layout.recv_offsets[j]; }, s);
        break;
      case Collective::barrier:
      case Collective::split: break;
    }
  }

  // Every member has reached this point and the work on the communicator's stream is done: an
  // all-reduce of one element on that stream, then `synchronize()`. Work enqueued on other
  // streams is not waited for. When the agreement ran, it was that barrier already: an
  // all-gather on the stream that every member joined, then a wait for the stream.
  void transport_barrier(const Call&) {
    if (options_.verify_arguments && deferring_ == 0) return;
    auto* one = scratch_words(1);
    invoke("barrier", "ncclAllReduce",
           [&] { return Runtime::all_reduce(one, one, 1, ncclInt64, ncclSum, comm_, stream()); });
    synchronize();
  }

  // The new communicator shares this one's stream and options. In non-blocking mode NCCL
  // returns from ncclCommSplit at once and completes the split on its own thread: the parent
  // reports ncclInProgress meanwhile, and the new handle is written only at completion. So the
  // parent is waited for first, under the deadline, and only then is the handle read and the
  // child waited for. A parent that misses the deadline is aborted, which joins NCCL's work on
  // it; a handle that arrived all the same is aborted too.
  BasicNcclComm transport_split(const Call&, int color, int key) {
    comm_handle handle{};
    const ncclResult_t rc = [&] {
      const auto watch = watch_blocking("split", "ncclCommSplit");
      return Runtime::split(comm_, color, key, &handle, options_.blocking);
    }();
    try {
      if (rc != ncclInProgress) call("split", "ncclCommSplit", rc);
      wait_ready("split");
    } catch (...) {
      break_and_abort("a split failed");
      if (handle != comm_handle{}) release_handle(handle, /*destroy=*/false);
      throw;
    }
    if (handle == comm_handle{}) {
      throw nccl_error("split", rank_, "ncclCommSplit completed without a new communicator",
                       ncclInternalError);
    }
    BasicNcclComm child(options_, rank_, 0, stream_);  // errors while waiting name this rank
    child.comm_ = handle;
    child.wait_ready("split");
    child.read_rank_and_size();
    return child;
  }

  stream_handle pick() const noexcept { return stream(); }
  static stream_handle pick(stream_handle s) noexcept { return s; }

  void read_rank_and_size() {
    // The runtime may only know the new rank and size once the split is complete.
    int r = -1;
    int n = 0;
    call("split", "ncclCommUserRank", Runtime::user_rank(comm_, &r));
    call("split", "ncclCommCount", Runtime::count(comm_, &n));
    rank_ = r;
    size_ = n;
  }

  // One group of sends and receives to and from every rank (self included), skipping empty
  // blocks; the counts and offsets are in elements.
  template <class T, class SendCount, class SendOffset, class RecvCount, class RecvOffset>
  void exchange(std::string_view op, const T* in, T* out, SendCount send_count,
                SendOffset send_offset, RecvCount recv_count, RecvOffset recv_offset,
                stream_handle s) {
    constexpr ncclDataType_t type = detail::nccl::datatype<T>();
    Group group(*this, op);
    for (int j = 0; j < size_; ++j) {
      const auto u = static_cast<std::size_t>(j);
      if (send_count(u) != 0) {
        invoke(op, "ncclSend", [&] {
          return Runtime::send(in + send_offset(u), send_count(u), type, j, comm_, s);
        });
      }
      if (recv_count(u) != 0) {
        invoke(op, "ncclRecv", [&] {
          return Runtime::recv(out + recv_offset(u), recv_count(u), type, j, comm_, s);
        });
      }
    }
    group.end();
  }

  // Device words kept for the communicator's lifetime, for the agreement and the barrier.
  std::int64_t* scratch_words(std::size_t words) {
    if (words > scratch_.size()) {
      // The old buffer may still be read by enqueued work: wait for it before freeing.
      if (!scratch_.empty()) synchronize();
      // On the communicator's GPU, whichever device the calling thread last made current.
      const DeviceGuard<Runtime> on(options_.device, rank_);
      scratch_.reserve(std::max<std::size_t>(words, 32), rank_);
    }
    return scratch_.data();
  }

  // The words travel through pinned memory the communicator owns: a copy into pageable memory
  // would block the host until it is done, behind a collective that a missing peer never
  // joins, and no deadline could end that wait; and a copy still queued when a wait fails must
  // land in memory that outlives the call.
  void copy_to(std::int64_t* device, std::span<const std::int64_t> host) {
    if (host.size() > staging_.size()) {
      const DeviceGuard<Runtime> on(options_.device, rank_);
      staging_.reserve(host.size(), rank_);
    }
    std::copy(host.begin(), host.end(), staging_.data());
    Runtime::check("cudaMemcpyAsync", rank_,
                   Runtime::memcpy_async(device, staging_.data(), host.size_bytes(), stream()));
  }
  void copy_back(std::span<std::int64_t> host, const std::int64_t* device) {
    // The upload above may still read the staging words: wait for it before growing them.
    if (host.size() > staging_.size()) {
      synchronize();
      const DeviceGuard<Runtime> on(options_.device, rank_);
      staging_.reserve(host.size(), rank_);
    }
    Runtime::check("cudaMemcpyAsync", rank_,
                   Runtime::memcpy_async(staging_.data(), device, host.size_bytes(), stream()));
    synchronize();
    std::copy(staging_.data(), staging_.data() + host.size(), host.begin());
  }

  // In blocking mode a call that waits inside NCCL past the deadline cannot be interrupted: the
  // watchdog ends the process (detail/watchdog.hpp). In non-blocking mode nothing waits there,
  // except ncclCommAbort and ncclCommDestroy, which join NCCL's proxy thread in both modes
  // (`always`): it stays until the peers on the same node have closed their connections, so a
  // peer process that is alive but stuck holds them.
  [[nodiscard]] detail::CallWatchdog::Watch watch_blocking(std::string_view op, std::string_view fn,
                                                           bool always = false) const {
    if (!options_.blocking && !always) return {};
    return detail::CallWatchdog::instance().watch(options_.timeout, op, fn, rank_);
  }
  // The same on paths that must not throw (destructors, error paths, a group's end): a watch
  // that cannot be armed (no memory, no thread) leaves the call unwatched rather than skipped.
  [[nodiscard]] detail::CallWatchdog::Watch watch_blocking_noexcept(
      std::string_view op, std::string_view fn, bool always = false) const noexcept {
    try {
      return watch_blocking(op, fn, always);
    } catch (...) {
      return {};
    }
  }

  // ncclCommAbort or ncclCommDestroy, watched in both modes.
  void release_handle(comm_handle handle, bool destroy) const noexcept {
    const auto watch = watch_blocking_noexcept(
        "release", destroy ? "ncclCommDestroy" : "ncclCommAbort", /*always=*/true);
    (void)(destroy ? Runtime::destroy(handle) : Runtime::abort(handle));
  }

  // An NCCL call that enqueues work or changes the communicator, then its status (`call`).
  template <class F>
  void invoke(std::string_view op, std::string_view fn, F&& nccl_call) {
    ncclResult_t rc = ncclSuccess;
    {
      const auto watch = watch_blocking(op, fn);
      rc = std::forward<F>(nccl_call)();
    }
    call(op, fn, rc);
  }

  // Never throws: a group's destructor ends it too.
  ncclResult_t launch_group(std::string_view op) noexcept {
    const auto watch = watch_blocking_noexcept(op, "ncclGroupEnd");
    return Runtime::group_end();
  }

  // A status returned by an NCCL call. In non-blocking mode a call may return ncclInProgress:
  // the work is accepted and completes in the background, and the next call must wait for it.
  void call(std::string_view op, std::string_view fn, ncclResult_t rc) {
    if (rc == ncclSuccess) return;
    if (rc == ncclInProgress) {
      wait_ready(op);
      return;
    }
    // Every failure aborts, invalid arguments included: NCCL found them after the peers may have
    // enqueued their part, and a communicator whose members are out of step pairs later calls
    // wrongly. The arguments strata can check are checked before any NCCL call (usage_error,
    // and the communicator stays usable).
    const std::string why = std::string(fn) + ": " + Runtime::error_string(rc, comm_);
    break_and_abort(why);
    throw nccl_error(op, rank_, why + "; the communicator was aborted", rc);
  }

  // NCCL's asynchronous state of the communicator; a failure of the query itself counts as one.
  ncclResult_t async_state() const {
    ncclResult_t state = ncclSuccess;
    const ncclResult_t rc = Runtime::async_error(comm_, &state);
    return rc != ncclSuccess ? rc : state;
  }

  // Polls the communicator until NCCL reports it ready (creation, split, a call that returned
  // ncclInProgress), or its deadline passes, which aborts it.
  void wait_ready(std::string_view op) {
    const detail::Deadline deadline(options_.timeout);
    detail::Poller poller;
    for (;;) {
      const ncclResult_t state = async_state();
      if (state == ncclSuccess) return;
      if (state != ncclInProgress) {
        const std::string why = Runtime::error_string(state, comm_);
        break_and_abort(std::string(op) + " failed: " + why);
        throw nccl_error(op, rank_, why + "; the communicator was aborted", state);
      }
      honour_abort_request(op);
      if (deadline.passed()) {
        break_and_abort("a " + std::string(op) + " timed out");
        throw timeout_error(op, rank_,
                            deadline.expired() + " waiting for NCCL (a rank that never joined?); " +
                                "the communicator was aborted");
      }
      poller.pause();
    }
  }

  // An asynchronous error (a peer that failed, a network fault) makes the communicator unusable.
  void poll_async_error(std::string_view op) {
    const ncclResult_t state = async_state();
    if (state == ncclSuccess || state == ncclInProgress) return;
    const std::string why = Runtime::error_string(state, comm_);
    break_and_abort("an asynchronous error: " + why);
    throw nccl_error(op, rank_,
                     "asynchronous NCCL error: " + why + "; the communicator was aborted", state);
  }

  // A watchdog's request is honoured by the thread that uses the communicator: only that thread
  // touches the handle.
  void honour_abort_request(std::string_view op) {
    if (!abort_requested_->load()) return;
    break_and_abort("request_abort() was called");
    throw error(op, rank_, "the communicator is unusable since request_abort() was called");
  }

  void ensure_usable(std::string_view op) {
    honour_abort_request(op);
    if (!broken_.empty()) throw error(op, rank_, "the communicator is unusable since " + broken_);
    if (comm_ == comm_handle{}) throw error(op, rank_, "the communicator was moved from");
    poll_async_error(op);
  }

  // Marks the communicator broken at once; the ncclCommAbort itself waits while aborts are
  // deferred (an open group, a capture).
  void break_and_abort(const std::string& why) {
    if (!broken_.empty()) return;
    broken_ = why;
    if (deferring_ > 0) return;
    if (comm_ != comm_handle{}) release_handle(comm_, /*destroy=*/false);
    comm_ = comm_handle{};
  }

  void resume_aborts() noexcept {
    if (deferring_ > 0) --deferring_;
    if (deferring_ == 0 && !broken_.empty() && comm_ != comm_handle{}) {
      release_handle(comm_, /*destroy=*/false);
      comm_ = comm_handle{};
    }
  }

  // Destruction never throws and never waits past the deadline: the flush and the finalize go
  // through the same deadline-bound waits as every call, and a communicator that misses them or
  // fails is aborted instead of destroyed.
  void release() noexcept {
    if (comm_ != comm_handle{}) {
      bool clean = broken_.empty();
      if (clean) {
        try {
          synchronize();
          invoke("finalize", "ncclCommFinalize", [&] { return Runtime::finalize(comm_); });
          wait_ready("finalize");
        } catch (...) {
          clean = false;
        }
      }
      if (comm_ != comm_handle{}) {
        release_handle(comm_, /*destroy=*/clean);
      }
      comm_ = comm_handle{};
    }
    scratch_.reset();
    staging_.reset();
  }

  comm_handle comm_{};
  NcclOptions options_;
  int rank_ = -1;
  int size_ = 0;
  std::shared_ptr<OwnedStream> stream_;
  DeviceBuffer<std::int64_t, Runtime> scratch_;
  PinnedBuffer<std::int64_t, Runtime> staging_;  // the host side of the agreement's words
  std::string broken_;
  int deferring_ = 0;  // open groups and deferral guards: aborts wait until they are gone
  int verifying_ = 0;  // verify_only() guards: collectives agree and enqueue nothing
  // Set by request_abort() from any thread; shared with nothing else, kept at a stable address
  // so that a move of the communicator cannot race with a watchdog.
  std::shared_ptr<std::atomic<bool>> abort_requested_ = std::make_shared<std::atomic<bool>>(false);
};

//! A collective on NCCL can fail half-way (a peer dies mid-transfer); its buffers are device
//! memory, and its collectives are enqueued on the runtime's streams.
template <class Runtime>
struct communicator_traits<BasicNcclComm<Runtime>> {
  static constexpr bool all_or_nothing = false;
  static constexpr MemorySpace memory_space = MemorySpace::device;
  using stream_type = typename Runtime::stream_handle;
};

//! The NCCL communicator over the real libraries.
using NcclComm = BasicNcclComm<NcclRuntime>;

}  // namespace strata
