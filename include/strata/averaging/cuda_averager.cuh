#pragma once
//! \file
//! Device averagers on CUDA and NCCL (targets `strata::nccl`, nvcc): `DeviceAverager` with the
//! fused multi-tensor kernels of `strata/kernels/multi_tensor.cuh`, under the names of the host
//! averagers.

#include <cstddef>
#include <span>
#include <utility>

#include <cuda_runtime_api.h>

#include "strata/averaging/device_averager.hpp"
#include "strata/comm/nccl.hpp"
#include "strata/hierarchy/hierarchy.hpp"
#include "strata/hierarchy/runtime_hierarchy.hpp"
#include "strata/kernels/multi_tensor.cuh"
#include "strata/schedule/phase.hpp"
#include "strata/schedule/schedule.hpp"

namespace strata {

//! The fused CUDA kernels as a `DeviceAverager` uses them: the plan's chunk table lives on the
//! device (uploaded once per set of tensors), and pack, unpack and scale are one launch each.
//!
//! \code
//! static_assert(strata::fused_device_kernels<strata::CudaFusedKernels, float, cudaStream_t>);
//! static_assert(strata::fused_device_kernels<strata::CudaFusedKernels, __nv_bfloat16, cudaStream_t>);
//! \endcode
template <class T>
class CudaFusedKernels {
 public:
  void upload(const FusedPlan<T>& plan, cudaStream_t stream) { table_.assign(plan, stream); }
  void pack(std::span<T> flat, cudaStream_t stream) { device_pack(table_, flat, stream); }
  void unpack(std::span<const T> flat, fused_factor_t<T> factor, cudaStream_t stream) {
    device_unpack(flat, table_, stream, factor);
  }
  void scale(std::span<T> data, fused_factor_t<T> factor, cudaStream_t stream) {
    device_scale(data, factor, stream);
  }

 private:
  DeviceChunkTable<T> table_;
};

//! Hierarchical SGD on the device with a compile-time hierarchy: the schedule of
//! `HierarchicalAverager`, step for step.
//!
//! \code
//! using H = strata::Hierarchy<strata::Level<2, 8>, strata::Level<4, 32>>;
//! static_assert(std::is_same_v<strata::CudaHierarchicalAverager<H>::comm_type, strata::NcclComm>);
//! \endcode
template <hierarchy_type H, phase_policy P = AbsolutePhase, device_communicator Comm = NcclComm>
class CudaHierarchicalAverager : public DeviceAverager<Schedule<H, P>, Comm, CudaFusedKernels> {
 public:
  explicit CudaHierarchicalAverager(Comm& world, std::size_t warmup = 0,
                                    DeviceAveragerOptions options = {})
      : DeviceAverager<Schedule<H, P>, Comm, CudaFusedKernels>(world, Schedule<H, P>(warmup),
                                                               options) {}
};

//! Hierarchical SGD on the device with a hierarchy read at run time.
template <phase_policy P = AbsolutePhase, device_communicator Comm = NcclComm>
class CudaRuntimeHierarchicalAverager
    : public DeviceAverager<RuntimeSchedule<P>, Comm, CudaFusedKernels> {
 public:
  CudaRuntimeHierarchicalAverager(Comm& world, RuntimeHierarchy hierarchy, std::size_t warmup = 0,
                                  DeviceAveragerOptions options = {})
      : DeviceAverager<RuntimeSchedule<P>, Comm, CudaFusedKernels>(
            world, RuntimeSchedule<P>(std::move(hierarchy), warmup), options) {}
};

//! Plain local SGD on the device: the whole world averages every `period` steps after warm-up,
//! as PyTorch's `PeriodicModelAverager`.
template <device_communicator Comm = NcclComm>
class CudaPeriodicAverager
    : public DeviceAverager<RuntimeSchedule<WarmupRelativePhase>, Comm, CudaFusedKernels> {
 public:
  CudaPeriodicAverager(Comm& world, std::size_t period, std::size_t warmup = 0,
                       DeviceAveragerOptions options = {})
      : DeviceAverager<RuntimeSchedule<WarmupRelativePhase>, Comm, CudaFusedKernels>(
            world,
            RuntimeSchedule<WarmupRelativePhase>(
                RuntimeHierarchy({LevelSpec{period, static_cast<std::size_t>(world.size())}}),
                warmup),
            options) {}
};

}  // namespace strata
