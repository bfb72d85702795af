// The NCCL communicator and the CUDA device averager on one GPU (one rank): every collective
// through the real libraries, the averager's kernels, and graph capture and replay. Several ranks
// need several GPUs; the communicator's multi-rank logic is covered on the host double
// (tests/nccl) and on one GPU with several processes (tests/gpu). Compiled in every build; run
// (label gpu) where a GPU is, skipped (exit 77) elsewhere.
#include <strata/averaging/cuda_averager.cuh>
#include <strata/comm/nccl.hpp>
#include <strata/cuda/device_buffer.hpp>

#include <cuda_runtime.h>

#include <cstdio>
#include <exception>
#include <string>
#include <vector>

namespace {

int failures = 0;

void expect(bool ok, const std::string& what) {
  if (!ok) {
    ++failures;
    std::fprintf(stderr, "FAILED: %s\n", what.c_str());
  }
}

// Host memory is pageable and the communicator's stream does not wait for the legacy stream, so
// every copy is enqueued on the stream that later reads or writes the buffer (the communicator's),
// and the host reads only after that stream is synchronised.
template <class T>
strata::DeviceBuffer<T> device_copy(const std::vector<T>& host, strata::NcclComm& comm) {
  strata::DeviceBuffer<T> d(host.size());
  if (!host.empty()) {
    strata::cuda_check("cudaMemcpyAsync", 0,
                       cudaMemcpyAsync(d.data(), host.data(), host.size() * sizeof(T),
                                       cudaMemcpyHostToDevice, comm.stream()));
  }
  return d;
}

template <class T>
std::vector<T> host_copy(const strata::DeviceBuffer<T>& d, strata::NcclComm& comm) {
  std::vector<T> h(d.size());
  if (!h.empty()) {
    strata::cuda_check(
        "cudaMemcpyAsync", 0,
        cudaMemcpyAsync(h.data(), d.data(), d.size_bytes(), cudaMemcpyDeviceToHost, comm.stream()));
  }
  comm.synchronize();
  return h;
}

void collectives(strata::NcclComm& comm) {
  std::vector<float> h(1000);
  for (std::size_t i = 0; i < h.size(); ++i) h[i] = static_cast<float>(i) * 0.5f;
  const strata::DeviceBuffer<float> d = device_copy(h, comm);
  const std::span<float> buf = d.span();
  comm.all_reduce(buf, strata::ReduceOp::sum);
  comm.all_reduce(buf, strata::ReduceOp::average);
  comm.broadcast(buf, 0);
  std::vector<std::size_t> counts{h.size()};
  const strata::DeviceBuffer<float> out(h.size());
  const std::span<float> o = out.span();
  comm.all_to_all(std::span<const float>(buf), std::span<const std::size_t>(counts), o,
                  std::span<const std::size_t>(counts));
  comm.all_gather(std::span<const float>(o), buf);
  expect(host_copy(d, comm) == h,
         "one rank's all_reduce/broadcast/all_to_all/all_gather are the identity");
  comm.barrier();
  strata::NcclComm sub = comm.split(0, 0);
  expect(sub.size() == 1 && sub.rank() == 0 && sub.stream() == comm.stream(), "split of one rank");
}

template <class T>
void averager(strata::NcclComm& world, bool graphs) {
  strata::DeviceAveragerOptions opts;
  opts.use_graphs = graphs;
  // The buffers outlive the averager, which waits for its streams when it is destroyed.
  std::vector<std::vector<T>> host;
  std::vector<strata::DeviceBuffer<T>> device;
  std::vector<std::span<T>> params;
  strata::CudaPeriodicAverager<> avg(world, /*period=*/1, /*warmup=*/0, opts);
  const std::size_t sizes[] = {1, 0, 4097, 70001, 33};
  for (std::size_t k = 0; k < std::size(sizes); ++k) {
    std::vector<T> h(sizes[k]);
    for (std::size_t i = 0; i < h.size(); ++i)
      h[i] = static_cast<T>(static_cast<float>((k * 31 + i) % 1000) * 0.25f);
    device.push_back(device_copy(h, world));
    params.push_back(device.back().span());
    host.push_back(std::move(h));
  }
  for (int step = 0; step < 4; ++step) avg.average(params, world.stream());
  avg.synchronize();
  expect(avg.graphs() == (graphs ? 1u : 0u), "one graph for the one level");
  bool same = true;
  for (std::size_t k = 0; k < host.size(); ++k) {
    const std::vector<T> back = host_copy(device[k], world);
    for (std::size_t i = 0; i < back.size(); ++i) {
      same = same && static_cast<float>(back[i]) == static_cast<float>(host[k][i]);
    }
  }
  expect(same, std::string("the mean over one rank is the tensors themselves (graphs ") +
                   (graphs ? "on" : "off") + ")");
}

}  // namespace

int main() {
  try {
    if (!strata::cuda_device_present()) {
      std::printf("skipped: no CUDA device\n");
      return 77;
    }
    const ncclUniqueId id = strata::NcclComm::unique_id();
    strata::NcclOptions opts;
    opts.device = 0;
    opts.timeout = std::chrono::seconds(60);
    strata::NcclComm world = strata::NcclComm::from_unique_id(id, 0, 1, opts);
    collectives(world);
    for (bool graphs : {false, true}) {
      averager<float>(world, graphs);
      averager<double>(world, graphs);
      averager<__half>(world, graphs);
      averager<__nv_bfloat16>(world, graphs);
    }
  } catch (const std::exception& e) {
    std::fprintf(stderr, "FAILED with an exception: %s\n", e.what());
    return 1;
  }
  if (failures != 0) return 1;
  std::printf("NCCL communicator and device averager agree with the host reference\n");
  return 0;
}
