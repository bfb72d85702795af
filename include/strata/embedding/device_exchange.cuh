#pragma once
//! \file
//! `CudaEmbeddingExchange`: `DeviceEmbeddingExchange` with its steps launched on CUDA streams
//! (nvcc). Thrust runs each step with `thrust::cuda::par_nosync` on the caller's stream, and its
//! temporaries come from a caching allocator, so that a warm step neither allocates nor waits.

#include <thrust/device_vector.h>
#include <thrust/execution_policy.h>
#include <thrust/system/cuda/execution_policy.h>

#include <cuda_runtime.h>

#include <memory>

#include "strata/embedding/device_exchange.hpp"
#include "strata/kernels/dedup.hpp"

namespace strata {

//! Launches a `DeviceEmbeddingExchange` step on a CUDA stream: `f(policy)` with Thrust's
//! non-blocking CUDA policy on `stream`, its temporaries cached from step to step.
//!
//! \code
//! strata::CudaLauncher launcher;
//! static_assert(std::is_move_constructible_v<strata::CudaLauncher>);
//! \endcode
class CudaLauncher {
 public:
  template <class F>
  void launch(cudaStream_t stream, F&& f) {
    f(thrust::cuda::par_nosync(*scratch_).on(stream));
  }

 private:
  // Held by pointer: Thrust keeps a reference to the allocator, which must not move.
  std::unique_ptr<ScratchAllocator<thrust::device_vector>> scratch_ =
      std::make_unique<ScratchAllocator<thrust::device_vector>>();
};

//! The device embedding exchange on CUDA: `Comm` is `NcclComm` (or another device communicator
//! on the CUDA runtime).
//!
//! \code
//! #include <strata/comm/nccl.hpp>
//! using Exchange = strata::CudaEmbeddingExchange<strata::NcclComm, float>;
//! static_assert(std::is_same_v<Exchange::value_type, float>);
//! \endcode
template <class Comm, class T>
using CudaEmbeddingExchange = DeviceEmbeddingExchange<Comm, T, CudaLauncher>;

}  // namespace strata
