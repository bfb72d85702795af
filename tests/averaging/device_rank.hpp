// One rank of the averager conformance harness (averager_conformance.hpp) for a device
// communicator: `DeviceAverager` over `Comm` with `Kernels` and the graph policy `Graphs`,
// tensors in `DeviceBuffer`s of the communicator's runtime on the communicator's device, written
// and read through stream-ordered copies on its stream, and the test's own exchanges over a host
// communicator. The NCCL host double (nccl_harness.hpp) and the real NCCL on one GPU
// (tests/gpu/nccl_multiprocess_test.cu) both use it.
#pragma once

#include <strata/averaging/device_averager.hpp>
#include <strata/cuda/device_buffer.hpp>
#include <strata/cuda/runtime.hpp>

#include <cstddef>
#include <optional>
#include <span>
#include <utility>
#include <vector>

namespace averager_harness {

template <class T, class Runtime>
struct DeviceApart {
  std::vector<strata::DeviceBuffer<T, Runtime>> buffers;
  std::vector<std::span<T>> spans;
};

template <class T, class Runtime>
struct DeviceTogether {
  strata::DeviceBuffer<T, Runtime> buffer;
  std::vector<std::span<T>> spans;
  [[nodiscard]] std::size_t elements() const noexcept { return buffer.size(); }
};

template <class Comm, template <class> class Kernels, class Graphs, bool UseGraphs, class Host>
class DeviceRank {
  using Runtime = typename Comm::runtime_type;

 public:
  template <class T>
  using Params = std::vector<std::vector<T>>;

  DeviceRank(Comm& comm, Host& host) : comm_(&comm), host_(&host) {}

  [[nodiscard]] int rank() const { return comm_->rank(); }
  [[nodiscard]] int size() const { return comm_->size(); }
  [[nodiscard]] Comm& comm() { return *comm_; }

  template <class S>
  strata::DeviceAverager<S, Comm, Kernels, Graphs> averager(S schedule) {
    strata::DeviceAveragerOptions options;
    options.use_graphs = UseGraphs;
    return {*comm_, std::move(schedule), options};
  }

  // A user's tensors live on the communicator's device.
  template <class T>
  DeviceApart<T, Runtime> separate(const Params<T>& p) {
    const strata::DeviceGuard<Runtime> on(comm_->device());
    DeviceApart<T, Runtime> b;
    for (const auto& t : p) {
      b.buffers.emplace_back(t.size(), rank());
      b.spans.push_back(b.buffers.back().span());
    }
    write(b, p);
    return b;
  }

  template <class T>
  DeviceTogether<T, Runtime> packed(const Params<T>& p) {
    const strata::DeviceGuard<Runtime> on(comm_->device());
    std::size_t total = 0;
    for (const auto& t : p) total += t.size();
    DeviceTogether<T, Runtime> b{strata::DeviceBuffer<T, Runtime>(total, rank()), {}};
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
    comm_->synchronize();
  }

  template <class B>
  auto read(const B& b) {
    using T = typename decltype(b.spans)::value_type::value_type;
    Params<T> p;
    for (const std::span<T> t : b.spans) {
      p.emplace_back(t.size());
      copy(p.back().data(), t.data(), t.size_bytes());
    }
    comm_->synchronize();
    return p;
  }

  template <class A, class T>
  std::optional<std::size_t> average(A& avg, DeviceApart<T, Runtime>& b) {
    const auto level = avg.average(b.spans, comm_->stream());
    avg.synchronize();
    return level;
  }
  template <class A, class T>
  std::optional<std::size_t> average(A& avg, DeviceTogether<T, Runtime>& b) {
    const auto level = avg.average(b.buffer.span(), comm_->stream());
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
    if (bytes == 0) return;
    Runtime::check("cudaMemcpyAsync", rank(),
                   Runtime::memcpy_async(dst, src, bytes, comm_->stream()));
  }

  Comm* comm_;
  Host* host_;
};

}  // namespace averager_harness
