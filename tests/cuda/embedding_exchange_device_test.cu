// The device embedding exchange on one GPU (one rank of NCCL): every step's Thrust work on the
// CUDA stream, NCCL's all-to-alls and all-reduce, against the host path (EmbeddingExchange with
// de-duplication) on the same plan and batches. Several ranks run in tests/gpu (one process per
// rank) and on the host double (tests/nccl). Skipped (77) without a GPU.
#include <doctest/doctest.h>

#include <strata/comm/local.hpp>
#include <strata/comm/nccl.hpp>
#include <strata/cuda/device_buffer.hpp>
#include <strata/embedding/device_exchange.cuh>
#include <strata/embedding/exchange.hpp>

#include <cuda_runtime.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <span>
#include <string>
#include <vector>

namespace embedding_device {

template <class T>
strata::DeviceBuffer<T> to_device(const std::vector<T>& host, strata::NcclComm& comm) {
  strata::DeviceBuffer<T> d(std::max<std::size_t>(host.size(), 1));
  if (!host.empty()) {
    strata::cuda_check("cudaMemcpyAsync", 0,
                       cudaMemcpyAsync(d.data(), host.data(), host.size() * sizeof(T),
                                       cudaMemcpyHostToDevice, comm.stream()));
  }
  comm.synchronize();
  return d;
}

template <class T>
std::vector<T> to_host(const strata::DeviceBuffer<T>& d, std::size_t n, strata::NcclComm& comm) {
  std::vector<T> h(n);
  if (n != 0) {
    strata::cuda_check(
        "cudaMemcpyAsync", 0,
        cudaMemcpyAsync(h.data(), d.data(), n * sizeof(T), cudaMemcpyDeviceToHost, comm.stream()));
  }
  comm.synchronize();
  return h;
}

double init(std::size_t j, std::size_t i, std::size_t d) {
  return std::cos(0.001 * double(i + 1) * double(d + 1) + 0.1 * double(j + 1));
}

bool close(double a, double b) { return std::fabs(a - b) <= 1e-12 * std::max(1.0, std::fabs(b)); }

strata::NcclComm one_rank() {
  strata::NcclOptions opts;
  opts.device = 0;
  return strata::NcclComm::from_unique_id(strata::NcclComm::unique_id(), 0, 1, opts);
}

void same_as_host(strata::Pooling pooling, std::size_t samples, std::size_t hotness) {
  const auto plan = strata::ShardingPlan::parse(
      "0: 100000x64 table; 1: 5000x32 column:1; 2: 64x16 row; 3: 1000x16 dp", 1);
  strata::NcclComm comm = one_rank();
  strata::DeviceExchangeOptions opt;
  opt.pooling = pooling;
  opt.max_samples = samples;
  opt.max_hotness = hotness;
  opt.check_each_step = false;
  strata::CudaEmbeddingExchange<strata::NcclComm, double> dev(comm, plan, opt);
  dev.initialize(init);
  strata::LocalWorld(1).run([&](strata::LocalComm& host) {
    strata::EmbeddingExchange<strata::LocalComm, double> ref(host, plan, {pooling, true, false});
    ref.initialize(init);
    const std::size_t width = ref.output_width();
    for (std::size_t step = 0; step < 4; ++step) {
      std::vector<std::int64_t> ids;
      for (std::size_t j = 0; j < plan.num_tables(); ++j)
        for (std::size_t x = 0; x < samples * hotness; ++x) {
          const std::uint64_t h = (x + 1 + step * 7919 + j * 104729) * 0x9E3779B97F4A7C15ull;
          ids.push_back(std::int64_t((h >> 20) % plan.table(j).rows >> ((h >> 9) % 8)));
        }
      std::vector<double> out(samples * width), grad(samples * width);
      for (std::size_t i = 0; i < grad.size(); ++i) grad[i] = std::sin(0.001 * double(i + step));
      ref.forward({ids, plan.num_tables(), samples, hotness}, out);
      ref.backward(grad, strata::Sgd{0.05});
      auto d_ids = to_device(ids, comm);
      auto d_grad = to_device(grad, comm);
      strata::DeviceBuffer<double> d_out(samples * width);
      dev.forward(std::span<const std::int64_t>(d_ids.data(), ids.size()), samples, hotness,
                  d_out.span(), comm.stream());
      dev.backward(std::span<const double>(d_grad.data(), grad.size()),
                   strata::DeviceSgd<double>{0.05}, comm.stream());
      dev.check(comm.stream());
      const auto got = to_host(d_out, out.size(), comm);
      bool ok = true;
      for (std::size_t i = 0; i < out.size(); ++i) ok = ok && close(got[i], out[i]);
      CHECK_MESSAGE(ok, "forward of step " << step);
    }
    for (std::size_t j = 0; j < plan.num_tables(); ++j) {
      const auto want = ref.gather_table(j, 0);
      const auto got = dev.local_table(j);
      bool ok = got.size() == want.size();
      for (std::size_t i = 0; ok && i < want.size(); ++i) ok = close(got[i], want[i]);
      CHECK_MESSAGE(ok, "table " << j << " after the updates");
    }
  });
}

TEST_CASE("device embedding exchange on one GPU: the host path's results") {
  same_as_host(strata::Pooling::sum, 512, 1);
  same_as_host(strata::Pooling::mean, 256, 4);
}

TEST_CASE("device embedding exchange on one GPU: a bad id is reported and changes nothing") {
  const auto plan = strata::ShardingPlan::parse("0: 100x8 table; 1: 10x4 dp", 1);
  strata::NcclComm comm = one_rank();
  strata::DeviceExchangeOptions opt;
  opt.max_samples = 4;
  opt.check_each_step = false;
  strata::CudaEmbeddingExchange<strata::NcclComm, double> dev(comm, plan, opt);
  dev.initialize(init);
  const auto before = dev.local_table(0);
  const std::vector<std::int64_t> ids{1, 2, 100, 3, 0, 0, 0, 0};
  auto d_ids = to_device(ids, comm);
  strata::DeviceBuffer<double> d_out(4 * dev.output_width());
  auto d_grad = to_device(std::vector<double>(4 * dev.output_width(), 1.0), comm);
  dev.forward(std::span<const std::int64_t>(d_ids.data(), ids.size()), 4, 1, d_out.span(),
              comm.stream());
  dev.backward(std::span<const double>(d_grad.data(), 4 * dev.output_width()),
               strata::DeviceSgd<double>{1.0}, comm.stream());
  std::string what;
  try {
    dev.check(comm.stream());
  } catch (const strata::usage_error& e) {
    what = e.cause();
  }
  CHECK(what == "rank 0: table 0, lookup 2: id 100 is outside the table's 100 rows");
  CHECK(dev.local_table(0) == before);
}

}  // namespace embedding_device
