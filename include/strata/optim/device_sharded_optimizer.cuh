#pragma once
//! \file
//! `CudaShardedOptimizer`: `DeviceShardedOptimizer` with its steps launched on CUDA streams
//! (nvcc). Thrust runs each step with `thrust::cuda::par_nosync` on the stream; streams are
//! ordered with a CUDA event, so that neither the host nor a stream waits longer than the data
//! needs.

#include <thrust/execution_policy.h>
#include <thrust/system/cuda/execution_policy.h>

#include <cuda_runtime.h>

#include <cstddef>
#include <memory>

#include "strata/cuda/error.hpp"
#include "strata/optim/device_sharded_optimizer.hpp"

namespace strata::optim {

//! Launches a `DeviceShardedOptimizer` step on CUDA streams: `f(policy)` with Thrust's
//! non-blocking CUDA policy on the stream (the step's algorithms allocate no temporaries), and
//! `order(from, to)` as `cudaEventRecord` on `from` and `cudaStreamWaitEvent` on `to`. One event
//! serves every order: a wait takes the event's state when it is enqueued. Squared norms are
//! summed by up to 16384 threads per range, each over at least 512 elements, strided so that
//! neighbouring threads read neighbouring elements. Make the optimizer's device current when
//! the first order runs (the optimizer's calls do): the event belongs to that device.
//!
//! \code
//! strata::optim::CudaOptimizerLauncher launcher;
//! static_assert(std::is_move_constructible_v<strata::optim::CudaOptimizerLauncher>);
//! static_assert(strata::optim::CudaOptimizerLauncher::max_lanes == 16384);
//! \endcode
class CudaOptimizerLauncher {
 public:
  static constexpr std::size_t max_lanes = 16384;
  static constexpr std::size_t min_lane_elements = 512;

  template <class F>
  void launch(cudaStream_t stream, F&& f) {
    f(thrust::cuda::par_nosync.on(stream));
  }

  void order(cudaStream_t from, cudaStream_t to) {
    if (from == to) return;
    if (!event_) {
      cudaEvent_t e = nullptr;
      cuda_check("cudaEventCreateWithFlags", -1,
                 cudaEventCreateWithFlags(&e, cudaEventDisableTiming));
      event_.reset(e);
    }
    cuda_check("cudaEventRecord", -1, cudaEventRecord(event_.get(), from));
    cuda_check("cudaStreamWaitEvent", -1, cudaStreamWaitEvent(to, event_.get(), 0));
  }

 private:
  struct Destroy {
    void operator()(cudaEvent_t e) const noexcept { (void)cudaEventDestroy(e); }
  };
  std::unique_ptr<CUevent_st, Destroy> event_;
};

//! The sharded optimizer on CUDA: `Comm` is `NcclComm` (or another device communicator on the
//! CUDA runtime), `Update` one of `Sgd`, `Adam`, `Lamb` or a `device_elementwise_update`.
//!
//! \code
//! #include <strata/comm/nccl.hpp>
//! using Opt = strata::optim::CudaShardedOptimizer<float, strata::NcclComm, strata::optim::Adam>;
//! static_assert(std::is_same_v<Opt::value_type, float>);
//! \endcode
template <class T, class Comm, class Update>
using CudaShardedOptimizer = DeviceShardedOptimizer<T, Comm, Update, CudaOptimizerLauncher>;

}  // namespace strata::optim
