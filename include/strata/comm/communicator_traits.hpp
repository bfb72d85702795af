#pragma once
//! \file
//! `strata::communicator_traits`: what a communicator promises beyond its member functions.

#include <type_traits>

namespace strata {

//! Where a communicator's buffers live.
enum class MemorySpace { host, device };

//! The properties of communicator type `C` that algorithms depend on, part of the `communicator`
//! contract. The primary template gives the safe answers for a type that says nothing (a failed
//! collective may have written part of its buffers; buffers on the host; no streams); every
//! backend specialises it, and so can a user's own communicator (or a wrapper, which forwards
//! the traits of the communicator it wraps).
//!
//! - `all_or_nothing`: a collective either completes or leaves every buffer as it was, so a
//!   caller may let it work on its data in place (the local backend). When false, code that must
//!   keep its data on failure works on a copy (MPI, NCCL: a peer can die mid-transfer).
//! - `memory_space`: `MemorySpace::device` for communicators over device memory (NCCL); host-side
//!   algorithms refuse them at compile time.
//! - `stream_type`: the type of the streams collectives are enqueued on, `void` when collectives
//!   complete before they return.
//!
//! \code
//! struct MyComm;  // a user's communicator over host memory
//! static_assert(!strata::communicator_traits<MyComm>::all_or_nothing);
//! static_assert(strata::communicator_traits<MyComm>::memory_space == strata::MemorySpace::host);
//! static_assert(std::is_void_v<strata::communicator_traits<MyComm>::stream_type>);
//! \endcode
template <class C>
struct communicator_traits {
  static constexpr bool all_or_nothing = false;
  static constexpr MemorySpace memory_space = MemorySpace::host;
  using stream_type = void;
};

//! Whether `C`'s collectives complete or leave every buffer untouched.
//!
//! \code
//! struct MyComm;
//! static_assert(!strata::all_or_nothing_v<MyComm>);
//! \endcode
template <class C>
inline constexpr bool all_or_nothing_v = communicator_traits<C>::all_or_nothing;

//! Whether `C`'s buffers are device memory.
//!
//! \code
//! struct MyComm;
//! static_assert(!strata::device_memory_v<MyComm>);
//! \endcode
template <class C>
inline constexpr bool device_memory_v = communicator_traits<C>::memory_space == MemorySpace::device;

}  // namespace strata
