#pragma once
//! \file
//! Started collectives: a communicator that can start a collective and return before it
//! completes, so that its caller computes while the data moves (docs/communicators.md,
//! "Started collectives"). The MPI backend has them; the local backend completes every
//! collective inside the call, and NCCL's collectives are stream-ordered and return before they
//! complete anyway.

#include <concepts>
#include <span>

#include "strata/comm/communicator.hpp"

namespace strata {

//! A started collective: `test()` progresses it and says whether it completed; `wait()` blocks
//! until it completes (under the communicator's deadline) and throws as the blocking collective
//! would. Movable; the buffers it was started on belong to it until it completed.
//!
//! \code
//! struct Finished {  // a request for a collective that completed when it was started
//!   bool test() { return true; }
//!   void wait() {}
//! };
//! static_assert(strata::collective_request<Finished>);
//! static_assert(!strata::collective_request<int>);
//! \endcode
template <class R>
concept collective_request = std::movable<R> && requires(R& r) {
  { r.test() } -> std::same_as<bool>;
  r.wait();
};

//! `C` can start these collectives for element type `T` without waiting for them. A start
//! checks its arguments and the members' agreement as the blocking form does, with the same
//! messages: a bad or mismatched start throws the same `strata::usage_error` on every member, and
//! nothing is started.
//!
//! \code
//! #include <strata/comm/local.hpp>
//! // The local backend completes every collective inside the call: nothing to start.
//! static_assert(strata::communicator_for<strata::LocalComm, float>);
//! static_assert(!strata::async_communicator_for<strata::LocalComm, float>);
//! \endcode
template <class C, class T>
concept async_communicator_for = communicator_for<C, T> &&
    requires(C& c, std::span<T> buf, std::span<const T> in, ReduceOp op) {
  { c.start_all_reduce(buf, op) } -> collective_request;  // in place
  { c.start_reduce_scatter(in, buf, op) } -> collective_request;
  { c.start_all_gather(in, buf) } -> collective_request;
};

}  // namespace strata
