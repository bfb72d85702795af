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
#include <optional>
#include <span>
#include <string_view>
#include <utility>
#include <vector>

#include "../comm/conformance.hpp"
#include "../nccl/fake_runtime.hpp"

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

template <class T>
using DeviceMemory = strata::DeviceBuffer<T, fake::Runtime>;

// Tensors in separate device buffers.
template <class T>
struct DeviceApart {
  std::vector<DeviceMemory<T>> buffers;
  std::vector<std::span<T>> spans;
};

// Tensors back to back in one device buffer, which the in-place path averages whole.
template <class T>
struct DeviceTogether {
  DeviceMemory<T> buffer;
  std::vector<std::span<T>> spans;
  [[nodiscard]] std::size_t elements() const noexcept { return buffer.size(); }
};

template <bool Graphs, bool Verify>
class NcclRank {
 public:
  template <class T>
  using Params = std::vector<std::vector<T>>;

  NcclRank(strata::LocalComm& host, FakeNccl comm) : host_(&host), comm_(std::move(comm)) {}

  [[nodiscard]] int rank() const { return comm_.rank(); }
  [[nodiscard]] int size() const { return comm_.size(); }
  [[nodiscard]] FakeNccl& comm() { return comm_; }

  template <class S>
  FakeDeviceAverager<S> averager(S schedule) {
    strata::DeviceAveragerOptions options;
    options.use_graphs = Graphs;
    return FakeDeviceAverager<S>(comm_, std::move(schedule), options);
  }

  // A user's tensors live on the communicator's device.
  template <class T>
  DeviceApart<T> separate(const Params<T>& p) {
    const strata::DeviceGuard<fake::Runtime> on(comm_.device());
    DeviceApart<T> b;
    for (const auto& t : p) {
      b.buffers.emplace_back(t.size(), rank());
      b.spans.push_back(b.buffers.back().span());
    }
    write(b, p);
    return b;
  }

  template <class T>
  DeviceTogether<T> packed(const Params<T>& p) {
    const strata::DeviceGuard<fake::Runtime> on(comm_.device());
    std::size_t total = 0;
    for (const auto& t : p) total += t.size();
    DeviceTogether<T> b{DeviceMemory<T>(total, rank()), {}};
    std::size_t at = 0;
    for (const auto& t : p) {
      b.spans.push_back(b.buffer.span().subspan(at, t.size()));
      at += t.size();
    }
    write(b, p);
    return b;
  }

  // Host to device on the communicator's stream, complete when it returns.
  template <class B, class T>
  void write(B& b, const Params<T>& p) {
    for (std::size_t t = 0; t < p.size(); ++t) {
      copy(b.spans[t].data(), p[t].data(), p[t].size() * sizeof(T));
    }
    comm_.synchronize();
  }

  template <class B>
  auto read(const B& b) {
    using T = typename decltype(b.spans)::value_type::value_type;
    Params<T> p;
    for (const std::span<T> t : b.spans) {
      p.emplace_back(t.size());
      copy(p.back().data(), t.data(), t.size_bytes());
    }
    comm_.synchronize();
    return p;
  }

  template <class A, class T>
  std::optional<std::size_t> average(A& avg, DeviceApart<T>& b) {
    const auto level = avg.average(b.spans, comm_.stream());
    avg.synchronize();
    return level;
  }
  template <class A, class T>
  std::optional<std::size_t> average(A& avg, DeviceTogether<T>& b) {
    const auto level = avg.average(b.buffer.span(), comm_.stream());
    avg.synchronize();
    return level;
  }

  template <class T>
  std::vector<T> gather(std::span<const T> mine) {
    std::vector<T> all(mine.size() * static_cast<std::size_t>(host_->size()));
    host_->all_gather(mine, std::span<T>(all));
    return all;
  }

 private:
  void copy(void* dst, const void* src, std::size_t bytes) {
    fake::Runtime::check("cudaMemcpyAsync", rank(),
                         fake::Runtime::memcpy_async(dst, src, bytes, comm_.stream()));
  }

  strata::LocalComm* host_;
  FakeNccl comm_;
};

// The NCCL host double, worlds of 1 to 16. `Graphs`: the averager replays each level from a
// captured graph; `Verify`: the communicator checks every call across ranks.
template <bool Graphs, bool Verify = false>
struct NcclHarness {
  static constexpr std::string_view name =
      Graphs ? (Verify ? "nccl with graphs, verify on" : "nccl with graphs")
             : (Verify ? "nccl, verify on" : "nccl");
  using Rank = NcclRank<Graphs, Verify>;
  static std::vector<int> world_sizes() { return conformance::sizes_up_to(16); }
  template <class F>
  static void run(int n, F&& f) {
    strata::LocalWorld(n).run([&](strata::LocalComm& host) {
      strata::NcclOptions options;
      options.timeout = std::chrono::seconds(20);
      options.verify_arguments = Verify;
      Rank r(host, fake::bootstrap(host, options));
      f(r);
    });
  }
};

}  // namespace averager_harness
