#pragma once
//! \file
//! The MPI backend: a communicator over an `MPI_Comm`, for CPU clusters (target `strata::mpi`).
//!
//! Every collective is MPI's non-blocking form (`MPI_Iallreduce`, `MPI_Ibcast`, ...) polled with
//! `MPI_Test` against the communicator's deadline, so that no call waits forever. The library's
//! own algorithms run underneath; for the record, what an MPI library typically does per
//! operation (n ranks, c elements of s bytes in the operation's input):
//!
//! | operation | usual algorithm | steps | bytes sent per rank |
//! | --- | --- | --- | --- |
//! | `all_reduce` | recursive doubling (small), ring / Rabenseifner (large) | log2 n / 2(n-1) | c·s·log2 n / 2(n-1)/n·c·s |
//! | `broadcast` | binomial tree (small), scatter + all-gather (large) | log2 n / ~2 log2 n | up to c·s |
//! | `all_gather` | recursive doubling or ring | log2 n / n-1 | (n-1)·c·s |
//! | `reduce_scatter` | recursive halving or ring | log2 n / n-1 | (n-1)/n·c·s |
//! | `all_to_all` | pairwise exchange | n-1 | what it sends to the others |
//! | `all_to_all` (uneven) | pairwise exchange | n-1 | what it sends to the others |
//! | `barrier` | dissemination | log2 n | 0 |
//!
//! With `verify_arguments` (the default) each collective is preceded by an all-gather of 11
//! words per rank (88·(n-1) bytes received per rank, log2 n steps), and the uneven all-to-all by
//! an all-to-all of one count per peer and an all-gather of 3 words per rank.
//!
//! `start_all_reduce`, `start_reduce_scatter` and `start_all_gather` check and agree as the
//! blocking forms do, post the same non-blocking call and return an `MpiRequest` instead of
//! polling it, so that the caller computes while the data moves (`async_communicator_for`).
//! `all_reduce_pipelined` cuts an all-reduce into segments that are posted as the caller fills
//! them and handed back as they complete.
//!
//! On OpenMPI, whose non-blocking all-reduce would reduce a large buffer in place to one root and
//! broadcast it back, all-reduces from min(128 KiB x n, 2 MiB) on run its reduce-scatter +
//! all-gather instead (`detail::mpi::NbcAllReduceAlgorithm`; docs/communicators.md).
//!
//! Errors (docs/errors.md): the communicator's error handler returns codes, and every failure
//! becomes a `strata::mpi_error` naming the operation, the rank, the MPI call and MPI's own error
//! string. Invalid or mismatched arguments are found before anything is sent (see
//! `MpiOptions::verify_arguments`) and raise `strata::usage_error` on every member. A deadline
//! raises `strata::timeout_error`; it leaves MPI's request pending (MPI cannot cancel a
//! collective), so the communicator is marked broken and every later call on it throws;
//! `abort()` ends the job cleanly.

// strata uses MPI's C interface only; the deprecated C++ bindings are not needed.
#ifndef OMPI_SKIP_MPICXX
#define OMPI_SKIP_MPICXX 1
#endif
#ifndef MPICH_SKIP_MPICXX
#define MPICH_SKIP_MPICXX 1
#endif
#include <mpi.h>

#include <algorithm>
#include <chrono>
#include <climits>
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <span>
#include <string>
#include <string_view>
#include <thread>
#include <type_traits>
#include <utility>
#include <vector>

#include "strata/comm/async.hpp"
#include "strata/comm/communicator.hpp"
#include "strata/comm/detail/call.hpp"
#include "strata/comm/detail/deadline.hpp"
#include "strata/comm/detail/facade.hpp"
#include "strata/error.hpp"

namespace strata {

//! A failure reported by MPI; `code()` is MPI's error code.
//!
//! \code
//! strata::mpi_error e("all_reduce", 3, "MPI_ERR_TRUNCATE: message truncated", MPI_ERR_TRUNCATE);
//! assert(e.rank() == 3 && e.code() == MPI_ERR_TRUNCATE);
//! \endcode
class mpi_error : public coded_error<int> {
 public:
  using coded_error::coded_error;
};

//! Settings of an `MpiComm`.
//!
//! \code
//! strata::MpiOptions opts;
//! opts.timeout = std::chrono::seconds(30);
//! assert(opts.timeout.count() == 30000 && opts.verify_arguments);
//! \endcode
struct MpiOptions {
  //! How long each wait of a collective may take before it fails (a collective with
  //! `verify_arguments` waits twice: for the agreement, then for the data). Generous by default:
  //! a rank may legitimately compute for minutes between collectives.
  std::chrono::milliseconds timeout = detail::default_timeout;
  //! Call `MPI_Abort` on a timeout instead of throwing: for jobs where a stuck collective means
  //! the whole job should end now rather than unwind.
  bool abort_on_timeout = false;
  //! Before each collective the members exchange what they are about to do (operation, element
  //! type, reduction, root, sizes: 11 words each, one small all-gather) and, for the uneven
  //! all-to-all, their counts; when a member's arguments are invalid or the calls disagree,
  //! every member throws the same `strata::usage_error` and nothing is sent. MPI itself cannot
  //! tell: mismatched sizes truncate, hang or corrupt. Costs one latency of a small all-gather
  //! per collective (two more for the uneven all-to-all); trainers whose calls are derived from
  //! one shared plan may turn it off.
  bool verify_arguments = true;
};

namespace detail::mpi {

inline std::string error_string(int code) {
  char text[MPI_MAX_ERROR_STRING];
  int length = 0;
  if (MPI_Error_string(code, text, &length) != MPI_SUCCESS)
    return "MPI error " + std::to_string(code);
  return std::string(text, static_cast<std::size_t>(length));
}

template <comm_value T>
MPI_Datatype datatype() noexcept {
  if constexpr (std::is_same_v<T, float>) return MPI_FLOAT;
  else if constexpr (std::is_same_v<T, double>) return MPI_DOUBLE;
  else if constexpr (std::is_same_v<T, std::int32_t>) return MPI_INT32_T;
  else return MPI_INT64_T;
}

inline MPI_Op reduction(ReduceOp op) noexcept {
  switch (op) {
    case ReduceOp::sum:
    case ReduceOp::average: return MPI_SUM;  // average: the sum, then scaled here
    case ReduceOp::min: return MPI_MIN;
    case ReduceOp::max: return MPI_MAX;
  }
  return MPI_SUM;
}

// ReduceOp::average: MPI sums, and the sum is scaled here once it has arrived. Type-erased, so
// that a request of any element type can apply it when it completes.
template <comm_value T>
void scale_average(void* out, std::size_t count, int group) noexcept {
  const AverageOf<T> average(group);
  T* values = static_cast<T*>(out);
  for (std::size_t i = 0; i < count; ++i) values[i] = average(values[i]);
}

// OpenMPI's non-blocking all-reduce (its coll/libnbc component) takes its algorithm from one
// process-wide setting, coll_libnbc_iallreduce_algorithm, whose default (0) lets it choose: a
// buffer reduced in place goes to one root and back (binomial reduce, then broadcast) at any
// size, and so does every buffer below 4 processes. From 1 MiB per process on, over shared memory
// (docs/communicators.md), that costs 1.1 to 1.5x the blocking MPI_Allreduce with 8 processes and
// up to 2.9x with 2, where its reduce-scatter + all-gather (Rabenseifner's algorithm, setting 3)
// in place costs about 0.75 to 1.1x; below about 128 KiB times the number of processes the
// root-based one is the faster. The setting is an MPI_T control variable: strata sets it to 3
// around its own posts of large all-reduces while it holds 0 and puts 0 back right after, so a
// value chosen by the user (an MCA parameter) always stands. Other MPI libraries keep their own
// choice.
class NbcAllReduceAlgorithm {
 public:
  static constexpr int automatic = 0;
  static constexpr int reduce_scatter_all_gather = 3;
  // Rabenseifner's algorithm from 128 KiB times the group size, or from 2 MiB in any group.
  static constexpr std::size_t threshold_per_member = std::size_t{128} << 10;
  static constexpr std::size_t threshold_cap = std::size_t{2} << 20;

  // Chooses Rabenseifner's algorithm for all-reduces posted during its lifetime when `wanted`.
  class Scope {
   public:
    explicit Scope(bool wanted) noexcept {
      if (wanted) set_ = variable().set_if_automatic(reduce_scatter_all_gather);
    }
    ~Scope() {
      if (set_) variable().write(automatic);
    }
    Scope(const Scope&) = delete;
    Scope& operator=(const Scope&) = delete;

   private:
    bool set_ = false;
  };

  [[nodiscard]] static bool wanted(std::size_t bytes, int members) noexcept {
    return members > 1 && bytes >= std::min(threshold_cap, threshold_per_member *
                                                               static_cast<std::size_t>(members));
  }

 private:
  static NbcAllReduceAlgorithm& variable() noexcept {
    static NbcAllReduceAlgorithm v;
    return v;
  }

  NbcAllReduceAlgorithm() noexcept {
#if defined(OPEN_MPI)
    int provided = 0;
    int index = -1;
    int count = 0;
    if (MPI_T_init_thread(MPI_THREAD_SINGLE, &provided) != MPI_SUCCESS) return;
    usable_ = MPI_T_cvar_get_index("coll_libnbc_iallreduce_algorithm", &index) == MPI_SUCCESS &&
              MPI_T_cvar_handle_alloc(index, nullptr, &handle_, &count) == MPI_SUCCESS &&
              count == 1;
#endif
  }

  bool set_if_automatic(int value) noexcept {
#if defined(OPEN_MPI)
    int current = -1;
    if (!usable_ || MPI_T_cvar_read(handle_, &current) != MPI_SUCCESS || current != automatic) {
      return false;
    }
    return write(value);
#else
    (void)value;
    return false;
#endif
  }

  bool write(int value) noexcept {
#if defined(OPEN_MPI)
    return MPI_T_cvar_write(handle_, &value) == MPI_SUCCESS;
#else
    (void)value;
    return false;
#endif
  }

#if defined(OPEN_MPI)
  MPI_T_cvar_handle handle_ = MPI_T_CVAR_HANDLE_NULL;
#endif
  bool usable_ = false;
};

}  // namespace detail::mpi

//! Initialises MPI for programs that want strata to own it, and finalises it on destruction.
//! Programs that already call `MPI_Init` themselves do not need it: `MpiComm` never initialises
//! or finalises MPI on its own.
//!
//! \code
//! // A program's main: compiled here, run under mpirun in the MPI suites.
//! auto program = [](int argc, char** argv) {
//!   strata::MpiEnvironment env(argc, argv);
//!   strata::MpiComm world = strata::MpiComm::world();
//!   return world.size() > 0 ? 0 : 1;
//! };
//! (void)program;
//! static_assert(!std::is_copy_constructible_v<strata::MpiEnvironment>);
//! \endcode
class MpiEnvironment {
 public:
  MpiEnvironment(int& argc, char**& argv) {
    int initialized = 0;
    MPI_Initialized(&initialized);
    if (initialized != 0) return;  // someone else owns MPI: leave it alone
    const int rc = MPI_Init(&argc, &argv);
    if (rc != MPI_SUCCESS) throw mpi_error("MPI_Init", -1, detail::mpi::error_string(rc), rc);
    owns_ = true;
    // Errors of the world communicator come back as codes, not as an abort inside MPI.
    MPI_Comm_set_errhandler(MPI_COMM_WORLD, MPI_ERRORS_RETURN);
  }
  ~MpiEnvironment() {
    if (!owns_) return;
    int finalized = 0;
    MPI_Finalized(&finalized);
    if (finalized == 0) MPI_Finalize();
  }
  MpiEnvironment(const MpiEnvironment&) = delete;
  MpiEnvironment& operator=(const MpiEnvironment&) = delete;

 private:
  bool owns_ = false;
};

class MpiComm;

//! A collective that `MpiComm::start_all_reduce`, `start_reduce_scatter` or `start_all_gather`
//! started; models `collective_request`. Movable, not copyable.
//!
//! - `test()` calls `MPI_Test` once and says whether the collective completed; `wait()` polls it
//!   like a blocking collective, under the communicator's deadline. Either applies
//!   `ReduceOp::average`'s scaling once, when the sum has arrived, and then the buffers are the
//!   caller's again. A timeout marks the communicator unusable and throws `strata::timeout_error`
//!   (or aborts the job with `MpiOptions::abort_on_timeout`), as a blocking collective does; the
//!   request cannot be completed after that, and `test()` and `wait()` say so.
//! - MPI progresses the collective only inside MPI calls: a caller that computes meanwhile calls
//!   `test()` now and then.
//! - A request still pending when it is destroyed (or assigned to) is waited for under the
//!   deadline, without throwing; if that fails, the communicator is marked unusable.
//! - Several requests may be pending on one communicator and may be completed in any order, and
//!   blocking collectives may run meanwhile. The communicator must outlive its requests and must
//!   not be moved while one is pending. A default-constructed or moved-from request is empty:
//!   done, with nothing to wait for.
//!
//! \code
//! static_assert(strata::collective_request<strata::MpiRequest>);
//! static_assert(!std::is_copy_constructible_v<strata::MpiRequest>);
//! strata::MpiRequest empty;
//! assert(empty.done() && empty.test());
//! \endcode
class MpiRequest {
 public:
  MpiRequest() = default;
  MpiRequest(MpiRequest&& other) noexcept
      : comm_(std::exchange(other.comm_, nullptr)),
        req_(std::exchange(other.req_, MPI_REQUEST_NULL)),
        op_(other.op_),
        finish_(std::exchange(other.finish_, nullptr)),
        out_(std::exchange(other.out_, nullptr)),
        count_(std::exchange(other.count_, 0)),
        state_(std::exchange(other.state_, State::complete)) {}
  MpiRequest& operator=(MpiRequest&& other) noexcept {
    if (this != &other) {
      settle();
      comm_ = std::exchange(other.comm_, nullptr);
      req_ = std::exchange(other.req_, MPI_REQUEST_NULL);
      op_ = other.op_;
      finish_ = std::exchange(other.finish_, nullptr);
      out_ = std::exchange(other.out_, nullptr);
      count_ = std::exchange(other.count_, 0);
      state_ = std::exchange(other.state_, State::complete);
    }
    return *this;
  }
  MpiRequest(const MpiRequest&) = delete;
  MpiRequest& operator=(const MpiRequest&) = delete;
  ~MpiRequest() { settle(); }

  //! Progresses the collective; true once it has completed.
  bool test();
  //! Returns once the collective has completed; throws on a deadline or an MPI failure.
  void wait();
  //! Whether the collective has completed (true for an empty request).
  [[nodiscard]] bool done() const noexcept { return state_ == State::complete; }

 private:
  friend class MpiComm;
  // abandoned: a wait failed; MPI still holds the request, which can no longer be completed.
  enum class State : std::uint8_t { complete, pending, abandoned };
  using Finish = void (*)(void* out, std::size_t count, int group) noexcept;

  MpiRequest(MpiComm& comm, std::string_view op, MPI_Request req, Finish finish, void* out,
             std::size_t count) noexcept
      : comm_(&comm),
        req_(req),
        op_(op),
        finish_(finish),
        out_(out),
        count_(count),
        state_(State::pending) {}

  void complete() noexcept;
  void abandon();
  [[noreturn]] void refuse() const;
  void settle() noexcept;

  MpiComm* comm_ = nullptr;
  MPI_Request req_ = MPI_REQUEST_NULL;
  std::string_view op_;  // a collective_name: static storage
  Finish finish_ = nullptr;
  void* out_ = nullptr;
  std::size_t count_ = 0;
  State state_ = State::complete;
};

//! One rank's handle on an MPI communicator; models `strata::communicator`. It works on its own
//! duplicate of the communicator it is given (so its error handler and its traffic never touch
//! the caller's), owns that duplicate, and frees it on destruction. Movable, not copyable. The
//! collectives, their checks and messages are those of every backend (`detail::CollectiveFacade`).
//! It also starts all-reduce, reduce-scatter and all-gather without waiting for them
//! (`async_communicator_for`, `MpiRequest`).
//!
//! \code
//! static_assert(strata::communicator<strata::MpiComm>);
//! static_assert(strata::async_communicator_for<strata::MpiComm, double>);
//! static_assert(!std::is_copy_constructible_v<strata::MpiComm>);
//! \endcode
class MpiComm : public detail::CollectiveFacade<MpiComm> {
 public:
  template <class T>
  static constexpr bool accepts = comm_value<T>;
  using stream_type = void;

  //! Collective over `comm`: duplicates it.
  explicit MpiComm(MPI_Comm comm, MpiOptions options = {}) : options_(options) {
    int initialized = 0;
    MPI_Initialized(&initialized);
    if (initialized == 0) {
      throw mpi_error("MpiComm", -1, "MPI is not initialised (use MpiEnvironment or MPI_Init)",
                      MPI_SUCCESS);
    }
    // Non-blocking, so that a rank that never joins makes the others time out, not hang.
    MPI_Request req = MPI_REQUEST_NULL;
    check("MpiComm", "MPI_Comm_idup", MPI_Comm_idup(comm, &comm_, &req));
    wait("MpiComm", req);
    adopt();
  }

  //! Collective over every process: a duplicate of `MPI_COMM_WORLD`.
  [[nodiscard]] static MpiComm world(MpiOptions options = {}) {
    return MpiComm(MPI_COMM_WORLD, options);
  }

  MpiComm(MpiComm&& other) noexcept
      : comm_(std::exchange(other.comm_, MPI_COMM_NULL)),
        options_(other.options_),
        rank_(other.rank_),
        size_(other.size_),
        broken_(std::move(other.broken_)) {}
  MpiComm& operator=(MpiComm&& other) noexcept {
    if (this != &other) {
      release();
      comm_ = std::exchange(other.comm_, MPI_COMM_NULL);
      options_ = other.options_;
      rank_ = other.rank_;
      size_ = other.size_;
      broken_ = std::move(other.broken_);
    }
    return *this;
  }
  MpiComm(const MpiComm&) = delete;
  MpiComm& operator=(const MpiComm&) = delete;
  ~MpiComm() { release(); }

  [[nodiscard]] int rank() const noexcept { return rank_; }
  [[nodiscard]] int size() const noexcept { return size_; }
  //! The communicator strata uses (its own duplicate), for code that mixes in raw MPI calls.
  [[nodiscard]] MPI_Comm native() const noexcept { return comm_; }
  [[nodiscard]] const MpiOptions& options() const noexcept { return options_; }

  //! Ends every process of the job: for a rank that cannot go on and must not leave its peers
  //! waiting.
  [[noreturn]] void abort(int code = 1) const {
    MPI_Abort(comm_ == MPI_COMM_NULL ? MPI_COMM_WORLD : comm_, code);
    std::abort();  // MPI_Abort does not return; this keeps the promise if an MPI does
  }

  // --- started collectives -----------------------------------------------------------------------
  // Each checks its arguments and agrees with the other members exactly as the blocking form
  // does (the agreement itself waits, under the deadline), so a bad or mismatched start throws
  // the same usage_error on every member and starts nothing; then it posts the collective and
  // returns without waiting for it.

  //! Starts the in-place all-reduce of `buf`: the returned request completes it. `buf` belongs
  //! to the request until it has completed.
  //!
  //! \code
  //! // Overlaps the reduction with work that does not touch the buffer: compiled here, run
  //! // under mpirun in the MPI suites.
  //! auto step = [](strata::MpiComm& comm, std::span<double> grads, bool (*compute)()) {
  //!   strata::MpiRequest r = comm.start_all_reduce(grads, strata::ReduceOp::average);
  //!   while (compute()) r.test();  // MPI progresses the reduction inside test()
  //!   r.wait();
  //! };
  //! (void)step;
  //! \endcode
  template <comm_value T>
  [[nodiscard]] MpiRequest start_all_reduce(std::span<T> buf, ReduceOp op) {
    Call c = detail::make_call<T>(Collective::all_reduce, buf.size(), buf.size(), op);
    return start(c, static_cast<const T*>(buf.data()), buf.data());
  }

  //! Starts `reduce_scatter(in, out, op)`; `in.size() == out.size() * size()`.
  template <comm_value T>
  [[nodiscard]] MpiRequest start_reduce_scatter(std::span<const T> in, std::span<T> out,
                                                ReduceOp op) {
    Call c = detail::make_call<T>(Collective::reduce_scatter, in.size(), out.size(), op);
    c.problem = detail::check_scatter(in.size(), out.size(), static_cast<std::size_t>(size_));
    return start(c, in.data(), out.data());
  }

  //! Starts `all_gather(in, out)`; `out.size() == in.size() * size()`.
  template <comm_value T>
  [[nodiscard]] MpiRequest start_all_gather(std::span<const T> in, std::span<T> out) {
    Call c = detail::make_call<T>(Collective::all_gather, in.size(), out.size());
    c.problem = detail::check_gather(in.size(), out.size(), static_cast<std::size_t>(size_));
    return start(c, in.data(), out.data());
  }

  // --- pipelined all-reduce -----------------------------------------------------------------------

  //! The all-reduce of `in` into `out` (same size; `in` may be `out` itself, but must not
  //! otherwise overlap it), cut into segments of `segment_elements` (the last may be shorter; 0:
  //! one segment) so that the caller's production of `in` and consumption of `out` overlap the
  //! transfer: `fill(begin, end, progress)` must write `in[begin, end)` (it may have done so
  //! already), `drain(begin, end, progress)` may read `out[begin, end)` from then on, and both
  //! call `progress()` now and then, since MPI moves data only inside MPI calls. Segment k is
  //! posted as soon as `fill` returned for it; segments are filled and drained in order, and
  //! segment k is drained only once its reduction completed (`ReduceOp::average` applied),
  //! between later fills or after the last one.
  //!
  //! - Checks and agreement as `all_reduce(in, out, op)`, once for the whole call: a bad or
  //!   mismatched call is the same `usage_error` on every member, before anything is posted. The
  //!   agreement is latency only, so the first segment is filled while it is under way (unless
  //!   this member's own arguments are invalid): a call that fails it may have run that `fill`,
  //!   but no `drain`. Every member must pass the same `segment_elements` (a mismatch is an MPI
  //!   error or a timeout).
  //! - Each wait is under the deadline, as for a blocking collective, with the same errors;
  //!   segments still pending then are left to MPI and the communicator is unusable. A failure
  //!   may come after some segments were drained: a caller that must leave its data unchanged on
  //!   failure writes it only after the call returned (the averagers reduce in place in their
  //!   staging buffer and unpack afterwards).
  //! - `fill` and `drain` should not throw: if one does, the segments already posted are completed
  //!   before the exception propagates, and if some were never posted, the peers wait for them
  //!   until their deadlines and this communicator is marked unusable.
  //! - Each segment is one `MPI_Iallreduce`, with the algorithm choice of every all-reduce here
  //!   (on OpenMPI, reduce-scatter + all-gather for large segments: see the top of this file).
  //!   In place saves a pass: out of place, that algorithm first copies its input.
  //!
  //! \code
  //! // Doubles each rank's values on their way in and reads the sums as they arrive: compiled
  //! // here, run under mpirun in the MPI suites.
  //! auto run = [](strata::MpiComm& comm, std::span<const double> mine) {
  //!   std::vector<double> in(mine.size()), out(mine.size());
  //!   double total = 0;
  //!   comm.all_reduce_pipelined(
  //!       std::span<const double>(in), std::span<double>(out), strata::ReduceOp::sum, 1024,
  //!       [&](std::size_t b, std::size_t e, auto&& progress) {
  //!         for (std::size_t i = b; i < e; ++i) in[i] = 2 * mine[i];
  //!         progress();
  //!       },
  //!       [&](std::size_t b, std::size_t e, auto&&) {
  //!         for (std::size_t i = b; i < e; ++i) total += out[i];
  //!       });
  //!   return total;
  //! };
  //! (void)run;
  //! \endcode
  template <comm_value T, class Fill, class Drain>
  void all_reduce_pipelined(std::span<const T> in, std::span<T> out, ReduceOp op,
                            std::size_t segment_elements, Fill&& fill, Drain&& drain) {
    Call c = detail::make_call<T>(Collective::all_reduce, in.size(), out.size(), op);
    c.problem = detail::check_same_size(in.size(), out.size());
    const std::string_view name = detail::collective_name(c.op);
    ensure_usable(name);
    if (!c.problem) check_limits(c);

    const std::size_t total = in.size();
    const std::size_t segment = segment_elements == 0 ? total : std::min(segment_elements, total);
    const std::size_t count = total == 0 ? 0 : total / segment + (total % segment != 0 ? 1 : 0);
    const auto begin = [&](std::size_t k) { return k * segment; };
    const auto end = [&](std::size_t k) { return std::min(total, (k + 1) * segment); };
    std::vector<MpiRequest> requests;
    requests.reserve(count);
    std::size_t drained = 0;
    std::size_t oldest = 0;  // the first posted segment not known to be complete
    // Testing a request that already completed makes no MPI call, so progress tests the oldest
    // one still pending: any MPI call progresses every pending collective.
    const auto progress = [&] {
      while (oldest < requests.size() && requests[oldest].done()) ++oldest;
      if (oldest < requests.size()) requests[oldest].test();
    };
    const bool first_early = count > 0 && !c.problem;
    try {
      // The agreement is latency only: the first segment is filled while it is under way.
      agree_while(c, [&](MPI_Request& req) {
        if (!first_early) return;
        fill(begin(0), end(0), [&] {
          int done = 0;
          check(name, "MPI_Test", MPI_Test(&req, &done, MPI_STATUS_IGNORE));
        });
      });
      for (std::size_t k = 0; k < count; ++k) {
        if (k > 0 || !first_early) fill(begin(k), end(k), progress);
        Call part = c;
        part.in = part.out = end(k) - begin(k);
        requests.push_back(start_posted(part, in.data() + begin(k), out.data() + begin(k)));
        while (drained < requests.size() && requests[drained].test()) {
          drain(begin(drained), end(drained), progress);
          ++drained;
        }
      }
      for (; drained < count; ++drained) {
        requests[drained].wait();
        drain(begin(drained), end(drained), progress);
      }
    } catch (const usage_error&) {
      throw;  // the members disagreed: nothing was posted, on any member
    } catch (...) {
      const bool all_posted = requests.size() == count;
      requests.clear();  // completes what was posted, or abandons it if the communicator broke
      if (!all_posted && broken_.empty()) broken_ = "a pipelined all_reduce was left unfinished";
      throw;
    }
  }

 private:
  friend class detail::CollectiveFacade<MpiComm>;
  friend class MpiRequest;
  using Call = detail::Call;
  using Collective = detail::Collective;

  struct adopt_tag {};
  MpiComm(MPI_Comm owned, MpiOptions options, adopt_tag) : comm_(owned), options_(options) {
    adopt();
  }

  void adopt() {
    check("MpiComm", "MPI_Comm_set_errhandler", MPI_Comm_set_errhandler(comm_, MPI_ERRORS_RETURN));
    check("MpiComm", "MPI_Comm_rank", MPI_Comm_rank(comm_, &rank_));
    check("MpiComm", "MPI_Comm_size", MPI_Comm_size(comm_, &size_));
  }

  void release() noexcept {
    if (comm_ == MPI_COMM_NULL) return;
    int finalized = 0;
    MPI_Finalized(&finalized);
    // A broken communicator has a collective still pending: freeing it would wait for it.
    if (finalized == 0 && broken_.empty()) MPI_Comm_free(&comm_);
    comm_ = MPI_COMM_NULL;
  }

  // --- for the facade ---------------------------------------------------------------------------
  [[nodiscard]] int error_rank() const noexcept { return rank_; }

  void ensure_usable(std::string_view op) const {
    if (!broken_.empty()) throw error(op, rank_, "the communicator is unusable since " + broken_);
  }

  // MPI counts elements in int.
  void check_limits(Call& c) const {
    c.problem = detail::check_limit(std::max(c.in, c.out), static_cast<std::size_t>(INT_MAX));
  }

  void agree(const Call& c) {
    if (c.op != Collective::split) {
      agree_by_exchange(c, options_.verify_arguments);
      return;
    }
    try {  // see transport_split
      agree_by_exchange(c, options_.verify_arguments);
    } catch (const timeout_error& e) {
      std::fprintf(stderr, "%s; a split cannot be left safely: aborting the job\n", e.what());
      abort(1);
    }
  }

  // The agreement, as agree() runs it, with `meanwhile(req)` run while the exchange `req` is
  // under way (it may test `req`); without the exchange, `meanwhile` runs first, then this
  // member's own problem, if any, is reported.
  template <class Meanwhile>
  void agree_while(const Call& c, Meanwhile&& meanwhile) {
    if (!options_.verify_arguments) {
      MPI_Request none = MPI_REQUEST_NULL;
      meanwhile(none);
      agree_by_exchange(c, false);
      return;
    }
    const auto gather = [&](std::span<const std::int64_t> mine, std::span<std::int64_t> all) {
      const std::string_view op = detail::collective_name(c.op);
      MPI_Request req = MPI_REQUEST_NULL;
      check(op, "MPI_Iallgather",
            MPI_Iallgather(mine.data(), static_cast<int>(mine.size()), MPI_INT64_T, all.data(),
                           static_cast<int>(mine.size()), MPI_INT64_T, comm_, &req));
      try {
        meanwhile(req);
      } catch (...) {
        wait(op, req);  // the peers complete the exchange; this member leaves afterwards
        throw;
      }
      wait(op, req);
    };
    const auto exchange = [&](std::span<const std::int64_t> mine, std::span<std::int64_t> theirs) {
      exchange_words(detail::collective_name(c.op), mine, theirs);
    };
    if (auto why = detail::agree(c, rank_, size_, gather, exchange)) fail(c, *why);
  }

  void gather_words(std::string_view op, std::span<const std::int64_t> mine,
                    std::span<std::int64_t> all) {
    MPI_Request req = MPI_REQUEST_NULL;
    check(op, "MPI_Iallgather",
          MPI_Iallgather(mine.data(), static_cast<int>(mine.size()), MPI_INT64_T, all.data(),
                         static_cast<int>(mine.size()), MPI_INT64_T, comm_, &req));
    wait(op, req);
  }

  void exchange_words(std::string_view op, std::span<const std::int64_t> mine,
                      std::span<std::int64_t> theirs) {
    MPI_Request req = MPI_REQUEST_NULL;
    check(op, "MPI_Ialltoall",
          MPI_Ialltoall(mine.data(), 1, MPI_INT64_T, theirs.data(), 1, MPI_INT64_T, comm_, &req));
    wait(op, req);
  }

  // What the facade's dispatch does before the transport (ensure_usable, check_limits, agree),
  // then the transport's own post; the request does the rest of the transport.
  template <comm_value T>
  MpiRequest start(Call& c, const T* in, T* out) {
    const std::string_view op = detail::collective_name(c.op);
    ensure_usable(op);
    if (!c.problem) check_limits(c);
    agree(c);
    return start_posted(c, in, out);
  }

  // Posts a collective whose call was checked and agreed already.
  template <comm_value T>
  MpiRequest start_posted(const Call& c, const T* in, T* out) {
    const std::string_view op = detail::collective_name(c.op);
    const MPI_Request req = post(c, in, out);
    if (!averages(c)) return MpiRequest(*this, op, req, nullptr, nullptr, 0);
    return MpiRequest(*this, op, req, &detail::mpi::scale_average<T>, out, reduced(c));
  }

  // The collectives whose non-blocking call needs nothing to outlive it but the buffers.
  template <comm_value T>
  MPI_Request post(const Call& c, const T* in, T* out) {
    const std::string_view op = detail::collective_name(c.op);
    const MPI_Datatype type = detail::mpi::datatype<T>();
    const int count = static_cast<int>(c.in);
    MPI_Request req = MPI_REQUEST_NULL;
    switch (c.op) {
      case Collective::all_reduce: {
        const detail::mpi::NbcAllReduceAlgorithm::Scope algorithm(
            detail::mpi::NbcAllReduceAlgorithm::wanted(c.in * sizeof(T), size_));
        check(op, "MPI_Iallreduce",
              MPI_Iallreduce(in == out ? MPI_IN_PLACE : in, out, count, type,
                             detail::mpi::reduction(c.reduce), comm_, &req));
        break;
      }
      case Collective::broadcast:
        check(op, "MPI_Ibcast", MPI_Ibcast(out, count, type, c.root, comm_, &req));
        break;
      case Collective::all_gather:
        check(op, "MPI_Iallgather", MPI_Iallgather(in, count, type, out, count, type, comm_, &req));
        break;
      case Collective::reduce_scatter:
        check(op, "MPI_Ireduce_scatter_block",
              MPI_Ireduce_scatter_block(in, out, static_cast<int>(c.out), type,
                                        detail::mpi::reduction(c.reduce), comm_, &req));
        break;
      case Collective::all_to_all: {
        const int block = count / size_;
        check(op, "MPI_Ialltoall", MPI_Ialltoall(in, block, type, out, block, type, comm_, &req));
        break;
      }
      case Collective::all_to_all_v:
      case Collective::barrier:
      case Collective::split: break;
    }
    return req;
  }

  // Whether the result is an average, scaled once the sum has arrived, and how many elements of
  // the output hold it.
  static bool averages(const Call& c) noexcept {
    return (c.op == Collective::all_reduce || c.op == Collective::reduce_scatter) &&
           c.reduce == ReduceOp::average;
  }
  static std::size_t reduced(const Call& c) noexcept {
    return c.op == Collective::reduce_scatter ? c.out : c.in;
  }

  template <comm_value T>
  void transport(const Call& c, const T* in, T* out) {
    const std::string_view op = detail::collective_name(c.op);
    if (c.op == Collective::barrier || c.op == Collective::split) return;
    if (c.op == Collective::all_to_all_v) {
      transport_uneven(c, in, out);
      return;
    }
    MPI_Request req = post(c, in, out);
    wait(op, req);
    if (averages(c)) detail::mpi::scale_average<T>(out, reduced(c), size_);
  }

  template <comm_value T>
  void transport_uneven(const Call& c, const T* in, T* out) {
    const std::string_view op = detail::collective_name(c.op);
    const MPI_Datatype type = detail::mpi::datatype<T>();
    // Every count and offset is at most a buffer's size, which check_limits bounded.
    const auto n = static_cast<std::size_t>(size_);
    std::vector<int> sc(n), sd(n), rc(n), rd(n);
    for (std::size_t j = 0; j < n; ++j) {
      sc[j] = static_cast<int>(c.send_counts[j]);
      sd[j] = static_cast<int>(c.layout.send_offsets[j]);
      rc[j] = static_cast<int>(c.recv_counts[j]);
      rd[j] = static_cast<int>(c.layout.recv_offsets[j]);
    }
    MPI_Request req = MPI_REQUEST_NULL;
    check(op, "MPI_Ialltoallv",
          MPI_Ialltoallv(in, sc.data(), sd.data(), type, out, rc.data(), rd.data(), type, comm_,
                         &req));
    wait(op, req);  // the count arrays must outlive the request
  }

  // With verify_arguments the agreement was itself a barrier: an all-gather completes on a
  // member only once every member has contributed.
  void transport_barrier(const Call&) {
    if (options_.verify_arguments) return;
    timed_barrier();
  }

  void timed_barrier() {
    MPI_Request req = MPI_REQUEST_NULL;
    check("barrier", "MPI_Ibarrier", MPI_Ibarrier(comm_, &req));
    wait("barrier", req);
  }

  // MPI_Comm_split blocks with no deadline. The agreement's exchange (or, without it, a timed
  // barrier) first shows that every member entered split. That is not proof against a member
  // whose deadline passed just as the exchange completed elsewhere: it would give up while its
  // peers enter MPI_Comm_split and wait for it forever. So a member that misses the deadline
  // here ends the job (MPI_Abort) rather than leave its peers in a call that cannot time out.
  MpiComm transport_split(const Call&, int color, int key) {
    if (!options_.verify_arguments) {
      try {
        timed_barrier();
      } catch (const timeout_error& e) {
        std::fprintf(stderr, "%s; a split cannot be left safely: aborting the job\n", e.what());
        abort(1);
      }
    }
    MPI_Comm sub = MPI_COMM_NULL;
    check("split", "MPI_Comm_split", MPI_Comm_split(comm_, color, key, &sub));
    return MpiComm(sub, options_, adopt_tag{});
  }

  // --- MPI calls ----------------------------------------------------------------------------------
  void check(std::string_view op, std::string_view call, int rc) const {
    if (rc != MPI_SUCCESS) {
      throw mpi_error(op, rank_, std::string(call) + ": " + detail::mpi::error_string(rc), rc);
    }
  }

  // Polls the request until it completes or the deadline passes. MPI progresses a non-blocking
  // collective only inside MPI calls, so the loop keeps calling MPI_Test, as MPI_Wait would.
  void wait(std::string_view op, MPI_Request& req) {
    const detail::Deadline deadline(options_.timeout);
    detail::Poller poller;
    for (;;) {
      int done = 0;
      check(op, "MPI_Test", MPI_Test(&req, &done, MPI_STATUS_IGNORE));
      if (done != 0) return;
      if (deadline.passed()) {
        broken_ = "a " + std::string(op) + " timed out";
        const std::string why =
            deadline.expired() + "; MPI cannot tell which peers had not arrived, and cannot " +
            "cancel the request: it stays pending and may still write into this call's buffers, " +
            "so the communicator is unusable and the safe way on is to end the job (abort())";
        if (options_.abort_on_timeout) {
          std::fprintf(stderr, "strata: %.*s on rank %d: %s; aborting the job\n",
                       static_cast<int>(op.size()), op.data(), rank_, why.c_str());
          abort(1);
        }
        throw timeout_error(op, rank_, why);
      }
      poller.pause();
    }
  }

  MPI_Comm comm_ = MPI_COMM_NULL;
  MpiOptions options_;
  int rank_ = -1;  // -1 until the communicator exists: errors before that name no rank
  int size_ = 0;
  std::string broken_;  // why the communicator can no longer be used; empty while it can
};

//! An MPI collective can fail half-way (a peer dies mid-transfer), so code that must leave its
//! data unchanged on failure works on a copy (see `BasicAverager`).
template <>
struct communicator_traits<MpiComm> {
  static constexpr bool all_or_nothing = false;
  static constexpr MemorySpace memory_space = MemorySpace::host;
  using stream_type = void;
};

// --- MpiRequest, which needs the whole MpiComm ---------------------------------------------------

inline bool MpiRequest::test() {
  if (state_ == State::complete) return true;
  // Once the communicator is unusable (another request timed out), waiting for this one could
  // only cost another full deadline.
  if (state_ == State::pending && !comm_->broken_.empty()) state_ = State::abandoned;
  if (state_ == State::abandoned) refuse();
  int flag = 0;
  try {
    comm_->check(op_, "MPI_Test", MPI_Test(&req_, &flag, MPI_STATUS_IGNORE));
  } catch (...) {
    abandon();
    throw;
  }
  if (flag == 0) return false;
  complete();
  return true;
}

inline void MpiRequest::wait() {
  if (state_ == State::complete) return;
  if (state_ == State::pending && !comm_->broken_.empty()) state_ = State::abandoned;
  if (state_ == State::abandoned) refuse();
  try {
    comm_->wait(op_, req_);
  } catch (...) {
    abandon();
    throw;
  }
  complete();
}

inline void MpiRequest::complete() noexcept {
  state_ = State::complete;
  if (finish_ != nullptr) finish_(out_, count_, comm_->size_);
}

// MPI may still write into the buffers of a request that failed, so, as after a timeout, nothing
// more may be posted on the communicator.
inline void MpiRequest::abandon() {
  state_ = State::abandoned;
  if (comm_->broken_.empty()) comm_->broken_ = "a started " + std::string(op_) + " failed";
}

inline void MpiRequest::refuse() const {
  throw error(
      op_, comm_->rank_,
      "the request can no longer complete: the communicator is unusable since " + comm_->broken_);
}

inline void MpiRequest::settle() noexcept {
  if (state_ != State::pending) return;
  if (!comm_->broken_.empty()) {  // see test()
    state_ = State::abandoned;
    return;
  }
  try {
    wait();
  } catch (...) {  // wait() marked the communicator unusable
  }
}

static_assert(communicator<MpiComm>);
static_assert(async_communicator_for<MpiComm, float> && async_communicator_for<MpiComm, double> &&
              async_communicator_for<MpiComm, std::int32_t> &&
              async_communicator_for<MpiComm, std::int64_t>);

}  // namespace strata
