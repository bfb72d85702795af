#pragma once
//! \file
//! `strata::NcclRuntime`: the NCCL and CUDA calls an `NcclComm` makes, as a policy (target
//! `strata::nccl`). Host code: it builds with g++ against the CUDA and NCCL headers.

#include <nccl.h>

#include <cstddef>
#include <string>

#include "strata/cuda/runtime.hpp"

namespace strata {

//! The NCCL calls of an `NcclComm`, each forwarding to the library, on top of the CUDA runtime
//! calls of `CudaRuntime`. A test double with the same members (`tests/nccl/fake_runtime.hpp`)
//! runs the same communicator on host threads. Every NCCL status the communicator reports is
//! described by `error_string`, so that the communicator itself calls neither library directly.
//!
//! \code
//! static_assert(std::is_same_v<strata::NcclRuntime::comm_handle, ncclComm_t>);
//! static_assert(std::is_same_v<strata::NcclRuntime::stream_handle, cudaStream_t>);
//! static_assert(strata::cuda_runtime_policy<strata::NcclRuntime>);
//! \endcode
struct NcclRuntime : CudaRuntime {
  using comm_handle = ncclComm_t;

  static ncclResult_t get_unique_id(ncclUniqueId* id) { return ncclGetUniqueId(id); }
  //! Non-blocking unless `blocking` (`NcclOptions::blocking`): then strata polls every wait
  //! against its deadline.
  static ncclConfig_t config(bool blocking) {
    ncclConfig_t config = NCCL_CONFIG_INITIALIZER;
    config.blocking = blocking ? 1 : 0;
    return config;
  }
  static ncclResult_t init_rank(comm_handle* comm, int size, const ncclUniqueId& id, int rank,
                                bool blocking) {
    ncclConfig_t c = config(blocking);
    return ncclCommInitRankConfig(comm, size, id, rank, &c);
  }
  static ncclResult_t split(comm_handle comm, int color, int key, comm_handle* child,
                            bool blocking) {
    ncclConfig_t c = config(blocking);
    return ncclCommSplit(comm, color, key, child, &c);
  }
  static ncclResult_t async_error(comm_handle comm, ncclResult_t* state) {
    return ncclCommGetAsyncError(comm, state);
  }
  static ncclResult_t user_rank(comm_handle comm, int* rank) {
    return ncclCommUserRank(comm, rank);
  }
  static ncclResult_t count(comm_handle comm, int* size) { return ncclCommCount(comm, size); }
  static ncclResult_t finalize(comm_handle comm) { return ncclCommFinalize(comm); }
  static ncclResult_t destroy(comm_handle comm) { return ncclCommDestroy(comm); }
  static ncclResult_t abort(comm_handle comm) { return ncclCommAbort(comm); }
  //! NCCL's text for `code`, and NCCL's last error message when `comm` is not null.
  static std::string error_string(ncclResult_t code, comm_handle comm) {
    std::string s = ncclGetErrorString(code);
    const char* last = ncclGetLastError(comm);
    if (last != nullptr && *last != '\0') {
      s += " (";
      s += last;
      s += ')';
    }
    return s;
  }

  static ncclResult_t all_reduce(const void* in, void* out, std::size_t count, ncclDataType_t type,
                                 ncclRedOp_t op, comm_handle comm, stream_handle stream) {
    return ncclAllReduce(in, out, count, type, op, comm, stream);
  }
  static ncclResult_t broadcast(const void* in, void* out, std::size_t count, ncclDataType_t type,
                                int root, comm_handle comm, stream_handle stream) {
    return ncclBroadcast(in, out, count, type, root, comm, stream);
  }
  static ncclResult_t all_gather(const void* in, void* out, std::size_t count, ncclDataType_t type,
                                 comm_handle comm, stream_handle stream) {
    return ncclAllGather(in, out, count, type, comm, stream);
  }
  static ncclResult_t reduce_scatter(const void* in, void* out, std::size_t count,
                                     ncclDataType_t type, ncclRedOp_t op, comm_handle comm,
                                     stream_handle stream) {
    return ncclReduceScatter(in, out, count, type, op, comm, stream);
  }
  static ncclResult_t send(const void* data, std::size_t count, ncclDataType_t type, int peer,
                           comm_handle comm, stream_handle stream) {
    return ncclSend(data, count, type, peer, comm, stream);
  }
  static ncclResult_t recv(void* data, std::size_t count, ncclDataType_t type, int peer,
                           comm_handle comm, stream_handle stream) {
    return ncclRecv(data, count, type, peer, comm, stream);
  }
  static ncclResult_t group_start() { return ncclGroupStart(); }
  static ncclResult_t group_end() { return ncclGroupEnd(); }
};

}  // namespace strata
