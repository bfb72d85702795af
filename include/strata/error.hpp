#pragma once
//! \file
//! The root of strata's exception hierarchy.

#include <stdexcept>
#include <string>
#include <string_view>

namespace strata {

//! Base of everything strata reports about a group of ranks: a backend that failed, a deadline
//! that passed, a peer that failed or left, the members' arguments to a collective that are
//! invalid or disagree. The error policy (docs/errors.md): misuse that types can catch does not
//! compile; a caller's bad input to a function that involves no other rank (configuration text,
//! a plan, a kernel's sizes) is a `std::invalid_argument` naming the entity and the rule;
//! everything that concerns the group is a `strata::error` that names the operation, the rank
//! that reports it and the cause.
//!
//! \code
//! try { throw strata::error("all_reduce", 3, "peer 5 timed out after 30 s"); }
//! catch (const strata::error& e) { assert(e.rank() == 3); }
//! \endcode
class error : public std::runtime_error {
 public:
  //! `operation` is what was being done, `rank` the rank that reports it (-1 when none applies),
  //! `cause` why it failed; `what()` joins all three into one line.
  error(std::string_view operation, int rank, std::string_view cause)
      : std::runtime_error(format(operation, rank, cause)),
        operation_(operation),
        rank_(rank),
        cause_(cause) {}

  [[nodiscard]] const std::string& operation() const noexcept { return operation_; }
  [[nodiscard]] int rank() const noexcept { return rank_; }
  [[nodiscard]] const std::string& cause() const noexcept { return cause_; }

 private:
  static std::string format(std::string_view operation, int rank, std::string_view cause) {
    std::string s = "strata: ";
    s += operation;
    if (rank >= 0) {
      s += " on rank ";
      s += std::to_string(rank);
    }
    s += ": ";
    s += cause;
    return s;
  }

  std::string operation_;
  int rank_;
  std::string cause_;
};

//! A failure that a library (MPI, NCCL, CUDA) reported with a status code: `code()` is the
//! library's own code, and the cause carries the library's own message. Each backend's error is
//! its own type derived from it (`mpi_error`, `nccl_error`, `cuda_error`).
//!
//! \code
//! struct my_library_error : strata::coded_error<int> {
//!   using coded_error::coded_error;
//! };
//! my_library_error e("all_reduce", 0, "my_allreduce: connection reset", 104);
//! assert(e.code() == 104);
//! \endcode
template <class Code>
class coded_error : public error {
 public:
  coded_error(std::string_view operation, int rank, std::string_view cause, Code code)
      : error(operation, rank, cause), code_(code) {}
  [[nodiscard]] Code code() const noexcept { return code_; }

 private:
  Code code_;
};

//! The arguments of a collective are wrong: one member's are invalid (sizes that do not fit,
//! a root outside the group), or the members' calls disagree (operation, element type,
//! reduction, root, counts). Every member of the collective throws it with the same cause, which
//! names the member and the rule, and nothing is written; the communicator stays usable.
//!
//! \code
//! try { throw strata::usage_error("all_reduce", 1, "rank 2: input has 3 elements, output 4"); }
//! catch (const strata::error& e) { assert(e.cause().starts_with("rank 2")); }
//! \endcode
class usage_error : public error {
 public:
  using error::error;
};

//! A deadline passed: a collective, a set-up or a wait did not complete within the
//! communicator's timeout (a peer that stalls or never joins). The cause says how long was
//! waited and, where the backend can tell, for whom.
//!
//! \code
//! strata::timeout_error e("all_reduce", 0, "timed out after 500 ms waiting for rank(s) 3");
//! assert(e.rank() == 0 && e.operation() == "all_reduce");
//! \endcode
class timeout_error : public error {
 public:
  using error::error;
};

}  // namespace strata
