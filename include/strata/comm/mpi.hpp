#pragma once
//! \file
//! The MPI backend: a communicator over an `MPI_Comm`, for CPU clusters (target `strata::mpi`).
//!
//! Every collective is MPI's non-blocking form (`MPI_Iallreduce`, `MPI_Ibcast`, ...) polled with
//! `MPI_Test` against the communicator's deadline, so that no call waits forever. The library's
//! own algorithms run underneath; for the record, what an MPI library typically does per
//! operation (n ranks, c elements of s bytes):
//!
//! | operation | usual algorithm | steps | bytes sent per rank |
//! | --- | --- | --- | --- |
//! | `all_reduce` | recursive doubling (small), ring / Rabenseifner (large) | log2 n / 2(n-1) | c·s·log2 n / 2(n-1)/n·c·s |
//! | `broadcast` | binomial tree (small), scatter + all-gather (large) | log2 n / ~2 log2 n | up to c·s |
//! | `all_gather` | recursive doubling or ring | log2 n / n-1 | (n-1)·c·s |
//! | `reduce_scatter` | recursive halving or ring | log2 n / n-1 | (n-1)/n·c·s (c = the whole input) |
//! | `all_to_all` | pairwise exchange | n-1 | what it sends to the others |
//! | `all_to_all` (uneven) | pairwise exchange, after an all-to-all of the counts | n-1 (+n-1) | what it sends (+n counts) |
//! | `barrier` | dissemination | log2 n | 0 |
//!
//! Errors: the communicator's error handler returns codes, and every failure becomes a
//! `strata::mpi_error` naming the operation, the rank and MPI's own error string. A timeout
//! leaves MPI's request pending (MPI cannot cancel a collective), so the communicator is marked
//! broken and every later call on it throws; `abort()` ends the job cleanly.

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

#include "strata/comm/communicator.hpp"
#include "strata/error.hpp"

namespace strata {

//! A failure reported by MPI, or a timeout of an MPI collective; `code()` is MPI's error code
//! (`MPI_SUCCESS` for a timeout).
//!
//! \code
//! strata::mpi_error e("all_reduce", 3, "MPI_ERR_TRUNCATE: message truncated", MPI_ERR_TRUNCATE);
//! assert(e.rank() == 3 && e.code() == MPI_ERR_TRUNCATE);
//! \endcode
class mpi_error : public error {
 public:
  mpi_error(std::string_view operation, int rank, std::string_view cause, int code)
      : error(operation, rank, cause), code_(code) {}
  [[nodiscard]] int code() const noexcept { return code_; }

 private:
  int code_;
};

//! Settings of an `MpiComm`.
//!
//! \code
//! strata::MpiOptions opts;
//! opts.timeout = std::chrono::seconds(30);
//! assert(opts.timeout.count() == 30000);
//! \endcode
struct MpiOptions {
  //! How long one collective may take before it fails. Generous by default: a rank may
  //! legitimately compute for minutes between collectives.
  std::chrono::milliseconds timeout = std::chrono::minutes(5);
  //! Call `MPI_Abort` on a timeout instead of throwing: for jobs where a stuck collective means
  //! the whole job should end now rather than unwind.
  bool abort_on_timeout = false;
};

namespace detail::mpi {

inline std::string error_string(int code) {
  char text[MPI_MAX_ERROR_STRING];
  int length = 0;
  if (MPI_Error_string(code, text, &length) != MPI_SUCCESS) return "MPI error " + std::to_string(code);
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

// The sum divided by n with the rounding the local backend uses: times 1/n for floating point,
// the truncated quotient for integers.
template <comm_value T>
void finish_average(std::span<T> data, int n) {
  if constexpr (std::is_floating_point_v<T>) {
    const T inv = T(1) / static_cast<T>(n);
    for (T& x : data) x *= inv;
  } else {
    for (T& x : data) x /= static_cast<T>(n);
  }
}

}  // namespace detail::mpi

//! Initialises MPI for programs that want strata to own it, and finalises it on destruction.
//! Programs that already call `MPI_Init` themselves do not need it: `MpiComm` never initialises
//! or finalises MPI on its own.
//!
//! \code
//! // int main(int argc, char** argv) {
//! //   strata::MpiEnvironment env(argc, argv);
//! //   strata::MpiComm world = strata::MpiComm::world();
//! // }
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

//! One rank's handle on an MPI communicator; models `strata::communicator`. It works on its own
//! duplicate of the communicator it is given (so its error handler and its traffic never touch
//! the caller's), owns that duplicate, and frees it on destruction. Movable, not copyable.
//!
//! \code
//! static_assert(strata::communicator<strata::MpiComm>);
//! static_assert(!std::is_copy_constructible_v<strata::MpiComm>);
//! \endcode
class MpiComm {
 public:
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
    start("MPI_Comm_idup", MPI_Comm_idup(comm, &comm_, &req));
    wait("MPI_Comm_idup", req);
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

  //! An MPI collective can fail half-way (a peer dies mid-transfer), so code that must leave its
  //! data unchanged on failure works on a copy: see `BasicAverager`.
  static constexpr bool all_or_nothing = false;

  template <comm_value T>
  void all_reduce(std::span<T> buf, ReduceOp op) {
    ensure_usable("all_reduce");
    MPI_Request req = MPI_REQUEST_NULL;
    const int count = to_int("all_reduce", buf.size());
    start("all_reduce", MPI_Iallreduce(MPI_IN_PLACE, buf.data(), count, detail::mpi::datatype<T>(),
                                       detail::mpi::reduction(op), comm_, &req));
    wait("all_reduce", req);
    if (op == ReduceOp::average) detail::mpi::finish_average(buf, size_);
  }

  template <comm_value T>
  void all_reduce(std::span<const T> in, std::span<T> out, ReduceOp op) {
    ensure_usable("all_reduce");
    if (in.size() != out.size()) {
      fail("all_reduce", "input has " + std::to_string(in.size()) + " elements but output has " +
                             std::to_string(out.size()));
    }
    if (static_cast<const void*>(in.data()) == static_cast<const void*>(out.data())) {
      all_reduce(out, op);
      return;
    }
    MPI_Request req = MPI_REQUEST_NULL;
    const int count = to_int("all_reduce", in.size());
    start("all_reduce", MPI_Iallreduce(in.data(), out.data(), count, detail::mpi::datatype<T>(),
                                       detail::mpi::reduction(op), comm_, &req));
    wait("all_reduce", req);
    if (op == ReduceOp::average) detail::mpi::finish_average(out, size_);
  }

  template <comm_value T>
  void broadcast(std::span<T> buf, int root) {
    ensure_usable("broadcast");
    if (root < 0 || root >= size_) {
      fail("broadcast", "root " + std::to_string(root) + " is not a rank of a group of " +
                            std::to_string(size_));
    }
    MPI_Request req = MPI_REQUEST_NULL;
    start("broadcast", MPI_Ibcast(buf.data(), to_int("broadcast", buf.size()),
                                  detail::mpi::datatype<T>(), root, comm_, &req));
    wait("broadcast", req);
  }

  template <comm_value T>
  void all_gather(std::span<const T> in, std::span<T> out) {
    ensure_usable("all_gather");
    if (out.size() != in.size() * static_cast<std::size_t>(size_)) {
      fail("all_gather", "output has " + std::to_string(out.size()) + " elements; it needs " +
                             std::to_string(in.size()) + " x " + std::to_string(size_));
    }
    MPI_Request req = MPI_REQUEST_NULL;
    const int count = to_int("all_gather", in.size());
    to_int("all_gather", out.size());
    start("all_gather", MPI_Iallgather(in.data(), count, detail::mpi::datatype<T>(), out.data(),
                                       count, detail::mpi::datatype<T>(), comm_, &req));
    wait("all_gather", req);
  }

  template <comm_value T>
  void reduce_scatter(std::span<const T> in, std::span<T> out, ReduceOp op) {
    ensure_usable("reduce_scatter");
    if (in.size() != out.size() * static_cast<std::size_t>(size_)) {
      fail("reduce_scatter", "input has " + std::to_string(in.size()) + " elements; it needs " +
                                 std::to_string(out.size()) + " x " + std::to_string(size_));
    }
    MPI_Request req = MPI_REQUEST_NULL;
    to_int("reduce_scatter", in.size());
    start("reduce_scatter",
          MPI_Ireduce_scatter_block(in.data(), out.data(), to_int("reduce_scatter", out.size()),
                                    detail::mpi::datatype<T>(), detail::mpi::reduction(op), comm_,
                                    &req));
    wait("reduce_scatter", req);
    if (op == ReduceOp::average) detail::mpi::finish_average(out, size_);
  }

  template <comm_value T>
  void all_to_all(std::span<const T> in, std::span<T> out) {
    ensure_usable("all_to_all");
    const auto n = static_cast<std::size_t>(size_);
    if (in.size() != out.size() || in.size() % n != 0) {
      fail("all_to_all", "input has " + std::to_string(in.size()) + " and output " +
                             std::to_string(out.size()) +
                             " elements; both must be the same multiple of " + std::to_string(n));
    }
    MPI_Request req = MPI_REQUEST_NULL;
    const int block = to_int("all_to_all", in.size() / n);
    to_int("all_to_all", in.size());
    start("all_to_all", MPI_Ialltoall(in.data(), block, detail::mpi::datatype<T>(), out.data(),
                                      block, detail::mpi::datatype<T>(), comm_, &req));
    wait("all_to_all", req);
  }

  //! Uneven blocks. The counts are first exchanged (one all-to-all of n counts) and checked on
  //! every rank; when any pair disagrees, every rank throws the same error and nothing is
  //! written, instead of MPI truncating or reading past a buffer.
  template <comm_value T>
  void all_to_all(std::span<const T> in, std::span<const std::size_t> send_counts,
                  std::span<T> out, std::span<const std::size_t> recv_counts) {
    constexpr std::string_view op = "all_to_all (uneven)";
    ensure_usable(op);
    const auto n = static_cast<std::size_t>(size_);
    if (send_counts.size() != n || recv_counts.size() != n) {
      fail(op, "needs one send and one receive count per member (" + std::to_string(n) +
                   "), got " + std::to_string(send_counts.size()) + " and " +
                   std::to_string(recv_counts.size()));
    }
    std::vector<int> sc(n), sd(n), rc(n), rd(n);
    std::size_t sent = 0;
    std::size_t received = 0;
    for (std::size_t j = 0; j < n; ++j) {
      sc[j] = to_int(op, send_counts[j]);
      rc[j] = to_int(op, recv_counts[j]);
      sd[j] = to_int(op, sent);
      rd[j] = to_int(op, received);
      sent += send_counts[j];
      received += recv_counts[j];
    }
    if (sent != in.size() || received != out.size()) {
      fail(op, "counts add up to " + std::to_string(sent) + " sent and " +
                   std::to_string(received) + " received, but the buffers hold " +
                   std::to_string(in.size()) + " and " + std::to_string(out.size()));
    }
    check_uneven_counts(op, sc, rc);
    MPI_Request req = MPI_REQUEST_NULL;
    start(op, MPI_Ialltoallv(in.data(), sc.data(), sd.data(), detail::mpi::datatype<T>(),
                             out.data(), rc.data(), rd.data(), detail::mpi::datatype<T>(), comm_,
                             &req));
    wait(op, req);
  }

  void barrier() {
    ensure_usable("barrier");
    MPI_Request req = MPI_REQUEST_NULL;
    start("barrier", MPI_Ibarrier(comm_, &req));
    wait("barrier", req);
  }

  //! Collective: `MPI_Comm_split`. Colors must be non-negative.
  MpiComm split(int color, int key) {
    if (color < 0) fail("split", "color " + std::to_string(color) + " is negative");
    ensure_usable("split");
    // MPI_Comm_split blocks with no deadline; a timed exchange first makes sure that every member
    // has arrived, so that the split itself cannot wait for a rank that never comes.
    int mine[2] = {color, key};
    std::vector<int> all(2 * static_cast<std::size_t>(size_));
    MPI_Request req = MPI_REQUEST_NULL;
    start("split", MPI_Iallgather(mine, 2, MPI_INT, all.data(), 2, MPI_INT, comm_, &req));
    wait("split", req);
    MPI_Comm sub = MPI_COMM_NULL;
    check("split", MPI_Comm_split(comm_, color, key, &sub));
    return MpiComm(sub, options_, adopt_tag{});
  }

  //! Ends every process of the job: for a rank that cannot go on and must not leave its peers
  //! waiting.
  [[noreturn]] void abort(int code = 1) const {
    MPI_Abort(comm_ == MPI_COMM_NULL ? MPI_COMM_WORLD : comm_, code);
    std::abort();  // MPI_Abort does not return; this keeps the promise if an MPI does
  }

 private:
  struct adopt_tag {};
  MpiComm(MPI_Comm owned, MpiOptions options, adopt_tag) : comm_(owned), options_(options) {
    adopt();
  }

  void adopt() {
    check("MPI_Comm_set_errhandler", MPI_Comm_set_errhandler(comm_, MPI_ERRORS_RETURN));
    check("MPI_Comm_rank", MPI_Comm_rank(comm_, &rank_));
    check("MPI_Comm_size", MPI_Comm_size(comm_, &size_));
  }

  void release() noexcept {
    if (comm_ == MPI_COMM_NULL) return;
    int finalized = 0;
    MPI_Finalized(&finalized);
    // A broken communicator has a collective still pending: freeing it would wait for it.
    if (finalized == 0 && broken_.empty()) MPI_Comm_free(&comm_);
    comm_ = MPI_COMM_NULL;
  }

  [[noreturn]] void fail(std::string_view op, const std::string& why, int code = MPI_SUCCESS) const {
    throw mpi_error(op, rank_, why, code);
  }

  void check(std::string_view op, int rc) const {
    if (rc != MPI_SUCCESS) fail(op, detail::mpi::error_string(rc), rc);
  }

  void ensure_usable(std::string_view op) const {
    if (!broken_.empty()) {
      fail(op, "the communicator is unusable since " + broken_);
    }
  }

  int to_int(std::string_view op, std::size_t count) const {
    if (count > static_cast<std::size_t>(INT_MAX)) {
      fail(op, std::to_string(count) + " elements exceed MPI's int count limit of " +
                   std::to_string(INT_MAX));
    }
    return static_cast<int>(count);
  }

  // `rc` is the result of posting a non-blocking call; callers check `ensure_usable` before
  // posting, since a broken communicator must not post anything.
  void start(std::string_view op, int rc) { check(op, rc); }

  // Polls the request until it completes or the deadline passes. MPI progresses a non-blocking
  // collective only inside MPI calls, so the loop keeps calling MPI_Test, as MPI_Wait would;
  // between polls it yields the core, which an oversubscribed node (more ranks than cores) needs.
  void wait(std::string_view op, MPI_Request& req) {
    const auto deadline = std::chrono::steady_clock::now() + options_.timeout;
    for (std::size_t polls = 0;; ++polls) {
      int done = 0;
      check(op, MPI_Test(&req, &done, MPI_STATUS_IGNORE));
      if (done != 0) return;
      const auto now = std::chrono::steady_clock::now();
      if (now >= deadline) {
        broken_ = "a " + std::string(op) + " timed out";
        const std::string why =
            "timed out after " + std::to_string(options_.timeout.count()) + " ms; MPI cannot " +
            "tell which peers had not arrived, and cannot cancel the request: it stays pending " +
            "and may still write into this call's buffers, so the communicator is unusable and " +
            "the safe way on is to end the job (abort())";
        if (options_.abort_on_timeout) {
          std::fprintf(stderr, "strata: %.*s on rank %d: %s; aborting the job\n",
                       static_cast<int>(op.size()), op.data(), rank_, why.c_str());
          abort(1);
        }
        fail(op, why);
      }
      if (polls >= 64) std::this_thread::yield();
    }
  }

  // Every rank learns what each peer will send it, compares with what it expects, and the job
  // agrees on the first disagreement (lowest receiver, then sender), so all ranks throw the same
  // message before anything moves.
  void check_uneven_counts(std::string_view op, const std::vector<int>& send,
                           const std::vector<int>& recv) {
    const auto n = static_cast<std::size_t>(size_);
    std::vector<int> incoming(n);
    MPI_Request req = MPI_REQUEST_NULL;
    start(op, MPI_Ialltoall(send.data(), 1, MPI_INT, incoming.data(), 1, MPI_INT, comm_, &req));
    wait(op, req);
    // key = receiver * n + sender of my first mismatch, or n*n when none.
    long long mine[3] = {static_cast<long long>(n * n), 0, 0};
    for (std::size_t j = 0; j < n; ++j) {
      if (incoming[j] != recv[j]) {
        mine[0] = static_cast<long long>(static_cast<std::size_t>(rank_) * n + j);
        mine[1] = incoming[j];
        mine[2] = recv[j];
        break;
      }
    }
    long long first = 0;
    start(op, MPI_Iallreduce(&mine[0], &first, 1, MPI_LONG_LONG, MPI_MIN, comm_, &req));
    wait(op, req);
    if (first == static_cast<long long>(n * n)) return;
    const auto receiver = static_cast<int>(static_cast<std::size_t>(first) / n);
    const auto sender = static_cast<int>(static_cast<std::size_t>(first) % n);
    long long detail[2] = {mine[1], mine[2]};
    start(op, MPI_Ibcast(detail, 2, MPI_LONG_LONG, receiver, comm_, &req));
    wait(op, req);
    fail(op, "counts disagree: rank " + std::to_string(sender) + " sends " +
                 std::to_string(detail[0]) + " elements to rank " + std::to_string(receiver) +
                 ", which expects " + std::to_string(detail[1]));
  }

  MPI_Comm comm_ = MPI_COMM_NULL;
  MpiOptions options_;
  int rank_ = -1;  // -1 until the communicator exists: errors before that name no rank
  int size_ = 0;
  std::string broken_;  // why the communicator can no longer be used; empty while it can
};

static_assert(communicator<MpiComm>);

}  // namespace strata
