#pragma once
//! \file
//! The `communicator` concept that every backend models, and its vocabulary.

#include <concepts>
#include <cstddef>
#include <cstdint>
#include <span>
#include <string_view>
#include <type_traits>

#include "strata/comm/communicator_traits.hpp"

namespace strata {

//! How `all_reduce` and `reduce_scatter` combine the ranks' values. `average` is the truncated
//! quotient of the sum for integers on every backend. For floating point the local and MPI
//! backends compute the sum times 1/n (the same rounding on every rank); NCCL uses `ncclAvg`,
//! which scales each input by 1/n before summing, so its last bit may differ from theirs.
enum class ReduceOp { sum, average, min, max };

//! The name of a `ReduceOp`, for messages.
//!
//! \code
//! static_assert(strata::to_string(strata::ReduceOp::average) == "average");
//! \endcode
constexpr std::string_view to_string(ReduceOp op) noexcept {
  switch (op) {
    case ReduceOp::sum: return "sum";
    case ReduceOp::average: return "average";
    case ReduceOp::min: return "min";
    case ReduceOp::max: return "max";
  }
  return "unknown";
}

//! The element types every backend moves and reduces: float, double, int32 and int64.
//!
//! \code
//! static_assert(strata::comm_value<float> && strata::comm_value<std::int64_t>);
//! static_assert(!strata::comm_value<char>);
//! \endcode
template <class T>
concept comm_value = std::same_as<T, float> || std::same_as<T, double> ||
    std::same_as<T, std::int32_t> || std::same_as<T, std::int64_t>;

//! The name of a `comm_value` type, for messages.
template <comm_value T>
constexpr std::string_view type_name() noexcept {
  if constexpr (std::same_as<T, float>) return "float";
  else if constexpr (std::same_as<T, double>) return "double";
  else if constexpr (std::same_as<T, std::int32_t>) return "int32";
  else return "int64";
}

//! `C` offers every collective for element type `T`.
template <class C, class T>
concept communicator_for = requires(C& c, std::span<T> buf, std::span<const T> in,
                                    std::span<const std::size_t> counts, ReduceOp op, int root) {
  c.all_reduce(buf, op);      // in place
  c.all_reduce(in, buf, op);  // out of place
  c.broadcast(buf, root);
  c.all_gather(in, buf);                  // out.size() == in.size() * size()
  c.reduce_scatter(in, buf, op);          // in.size() == out.size() * size()
  c.all_to_all(in, buf);                  // equal blocks of in.size() / size()
  c.all_to_all(in, counts, buf, counts);  // uneven: send counts, receive counts
};

//! A group of ranks that run collectives together: the local backend (threads in one process),
//! MPI and NCCL all model it. Every member calls the same collectives in the same order.
//! `split(color, key)` is itself collective and returns the sub-communicator of the ranks that
//! passed the same color (>= 0), ordered by key, then by rank.
//!
//! The contract beyond the signatures (docs/design.md, "The communicator contract"):
//! - arguments: `all_reduce` needs equal sizes, `all_gather` an output of size() inputs,
//!   `reduce_scatter` an input of size() outputs, the equal `all_to_all` equal sizes that divide
//!   by size(), the uneven one size() counts each way that add up to the buffers and agree
//!   pairwise, `broadcast` a root in [0, size()). Members whose calls are invalid or disagree all
//!   throw `strata::usage_error` (backends that cannot check across ranks without a cost say when
//!   they do);
//! - no call waits forever: a deadline turns a missing peer into `strata::timeout_error`;
//! - what a failed collective leaves in the buffers, where they live and on which stream the work
//!   runs is told by `communicator_traits<C>`.
//!
//! \code
//! static_assert(!strata::communicator<int>);
//! \endcode
template <class C>
concept communicator = std::movable<C> && communicator_for<C, float> &&
    communicator_for<C, double> && communicator_for<C, std::int32_t> &&
    communicator_for<C, std::int64_t> && requires(C& c, const C& cc, int color, int key) {
  { cc.rank() } -> std::same_as<int>;
  { cc.size() } -> std::same_as<int>;
  c.barrier();
  { c.split(color, key) } -> std::same_as<C>;
};

}  // namespace strata
