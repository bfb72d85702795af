// The averager harness of the NCCL backend on its host double (averager_conformance.hpp): ranks
// are threads of a LocalWorld that bootstrap the fake NCCL, the averager is `DeviceAverager`
// with `HostStreamKernels` and `fake::Graphs`, and tensors live in `DeviceBuffer`s of the fake
// runtime, written and read through stream-ordered copies. Variants replay each level from a
// captured graph, or check every call across ranks (`NcclOptions::verify_arguments`).
#pragma once

#include <strata/averaging/device_averager.hpp>
#include <strata/comm/local.hpp>
#include <strata/comm/nccl.hpp>
#include <strata/cuda/device_buffer.hpp>
#include <strata/kernels/fused.hpp>

#include <atomic>
#include <chrono>
#include <cstddef>
#include <memory>
#include <optional>
#include <span>
#include <string_view>
#include <utility>
#include <vector>

#include "../comm/conformance.hpp"
#include "../nccl/fake_runtime.hpp"
#include "device_rank.hpp"

namespace averager_harness {

using FakeNccl = strata::BasicNcclComm<fake::Runtime>;

// "Kernels" for the device averager on the host double: the host algorithm (the same plans and
// Thrust functors as the CUDA path) run in stream order on the fake stream.
template <class T>
class HostStreamKernels {
 public:
  void upload(const strata::FusedPlan<T>& plan, fake::Stream* s) {
    std::vector<strata::TensorChunk<T>> chunks(plan.chunks().begin(), plan.chunks().end());
    const std::size_t total = plan.total_elements();
    fake::Runtime::launch_host(s, [this, chunks = std::move(chunks), total] {
      table_ = chunks;
      total_ = total;
    });
    ++launches;
  }
  void pack(std::span<T> flat, fake::Stream* s) {
    fake::Runtime::launch_host(s, [this, flat] { strata::pack(thrust::host, table(), flat); });
    ++launches;
  }
  void unpack(std::span<const T> flat, strata::fused_factor_t<T> f, fake::Stream* s) {
    fake::Runtime::launch_host(s,
                               [this, flat, f] { strata::unpack(thrust::host, flat, table(), f); });
    ++launches;
  }
  void scale(std::span<T> data, strata::fused_factor_t<T> f, fake::Stream* s) {
    fake::Runtime::launch_host(s, [data, f] { strata::scale(thrust::host, data, f); });
    ++launches;
  }
  static inline std::atomic<long> launches{0};

 private:
  strata::ChunkTable<T> table() const { return {table_.data(), table_.size(), total_}; }
  std::vector<strata::TensorChunk<T>> table_;
  std::size_t total_ = 0;
};

template <class S>
using FakeDeviceAverager = strata::DeviceAverager<S, FakeNccl, HostStreamKernels, fake::Graphs>;

// A rank that owns its fake communicator (the shared DeviceRank only refers to one).
template <bool Graphs, bool Verify>
class NcclRank
    : private std::unique_ptr<FakeNccl>,
      public DeviceRank<FakeNccl, HostStreamKernels, fake::Graphs, Graphs, strata::LocalComm> {
 public:
  NcclRank(strata::LocalComm& host, FakeNccl comm)
      : std::unique_ptr<FakeNccl>(std::make_unique<FakeNccl>(std::move(comm))),
        DeviceRank<FakeNccl, HostStreamKernels, fake::Graphs, Graphs, strata::LocalComm>(**this,
                                                                                         host) {}
};

// The NCCL host double, worlds of 1 to 16. `Graphs`: the averager replays each level from a
// captured graph; `Verify`: the communicator checks every call across ranks; `Blocking`: NCCL's
// blocking mode (NcclOptions::blocking).
template <bool Graphs, bool Verify = false, bool Blocking = false>
struct NcclHarness {
  static constexpr std::string_view name =
      Blocking ? (Graphs ? "nccl blocking with graphs" : "nccl blocking")
      : Graphs ? (Verify ? "nccl with graphs, verify on" : "nccl with graphs")
               : (Verify ? "nccl, verify on" : "nccl");
  using Rank = NcclRank<Graphs, Verify>;
  static std::vector<int> world_sizes() { return conformance::sizes_up_to(16); }
  template <class F>
  static void run(int n, F&& f) {
    strata::LocalWorld(n).run([&](strata::LocalComm& host) {
      strata::NcclOptions options;
      options.timeout = std::chrono::seconds(20);
      options.verify_arguments = Verify;
      options.blocking = Blocking;
      Rank r(host, fake::bootstrap(host, options));
      f(r);
    });
  }
};

}  // namespace averager_harness
