#pragma once
//! \file
//! `strata::nccl_bootstrap`: an NCCL communicator over the ranks of any host communicator
//! (target `strata::nccl`).

#include <nccl.h>

#include <array>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <span>
#include <string>

#include "strata/comm/communicator.hpp"
#include "strata/comm/nccl/communicator.hpp"
#include "strata/comm/nccl/error.hpp"
#include "strata/comm/nccl/runtime.hpp"

namespace strata {

//! Collective over `host`, any host communicator (`MpiComm` across processes and nodes,
//! `LocalComm` across the GPUs of one process): rank 0 of `host` makes the unique id, `host`
//! broadcasts it, and every rank joins an NCCL communicator of the same ranks in the same order.
//! If rank 0 cannot make the id, every rank throws the same error instead of waiting.
//!
//! \code
//! #include <strata/comm/local.hpp>
//! using Made = decltype(strata::nccl_bootstrap(std::declval<strata::LocalComm&>()));
//! static_assert(std::is_same_v<Made, strata::NcclComm>);
//! \endcode
template <class Runtime = NcclRuntime, communicator HostComm>
[[nodiscard]] BasicNcclComm<Runtime> nccl_bootstrap(HostComm& host, NcclOptions options = {}) {
  // Word 0 says whether rank 0 has an id (1) or why not (the negated NCCL code); the id follows.
  constexpr std::size_t words = 1 + (sizeof(ncclUniqueId) + 7) / 8;
  std::array<std::int64_t, words> message{};
  if (host.rank() == 0) {
    ncclUniqueId id{};
    const ncclResult_t rc = Runtime::get_unique_id(&id);
    message[0] = rc == ncclSuccess ? 1 : -static_cast<std::int64_t>(rc);
    std::memcpy(&message[1], &id, sizeof(id));
  }
  host.broadcast(std::span<std::int64_t>(message), 0);
  if (message[0] != 1) {
    const auto rc = static_cast<ncclResult_t>(-message[0]);
    throw nccl_error("nccl_bootstrap", host.rank(),
                     "rank 0 could not make the unique id: ncclGetUniqueId: " +
                         Runtime::error_string(rc, typename Runtime::comm_handle{}),
                     rc);
  }
  ncclUniqueId id{};
  std::memcpy(&id, &message[1], sizeof(id));
  return BasicNcclComm<Runtime>::from_unique_id(id, host.rank(), host.size(), options);
}

}  // namespace strata
