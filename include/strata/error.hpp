#pragma once
//! \file
//! The root of strata's exception hierarchy.

#include <stdexcept>
#include <string>
#include <string_view>

namespace strata {

//! Base of every run-time failure strata reports (backend faults, timeouts, peers that fail).
//! Misuse that types can catch never gets here: it does not compile. Bad configuration text is a
//! `std::invalid_argument`, because it is the caller's input that is wrong, not the system.
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

}  // namespace strata
