// The device sharded optimizer on one GPU (one rank of NCCL): every step's Thrust work on CUDA
// streams, the streams ordered by events, NCCL's reduce-scatter, all-reduces and all-gathers,
// against the host optimizer (ShardedOptimizer on the local backend) on the same tensors and
// gradients. On the GPU nvcc contracts multiply-adds, the device's pow may round differently
// and the norms are summed in parallel lanes, so doubles agree to 1e-12 relative and floats to
// 1e-5. Several ranks run on the host double (tests/nccl). Skipped (77) without a GPU.
#include <doctest/doctest.h>

#include <strata/comm/local.hpp>
#include <strata/comm/nccl.hpp>
#include <strata/cuda/device_buffer.hpp>
#include <strata/optim/device_sharded_optimizer.cuh>
#include <strata/optim/sharded_optimizer.hpp>

#include <cuda_runtime.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <optional>
#include <span>
#include <string>
#include <vector>

#include "stream.hpp"

namespace optim_device {

using strata::optim::ShardSchedule;

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
std::vector<T> to_host(const T* d, std::size_t n, cudaStream_t stream, strata::NcclComm& comm) {
  std::vector<T> h(n);
  if (n != 0) {
    strata::cuda_check("cudaMemcpyAsync", 0,
                       cudaMemcpyAsync(h.data(), d, n * sizeof(T), cudaMemcpyDeviceToHost, stream));
  }
  comm.synchronize(stream);
  return h;
}

strata::NcclComm one_rank() {
  strata::NcclOptions opts;
  opts.device = 0;
  return strata::NcclComm::from_unique_id(strata::NcclComm::unique_id(), 0, 1, opts);
}

bool close(double got, double want, double tol) {
  if (std::isnan(want)) return std::isnan(got);
  return std::fabs(got - want) <= tol * std::max(1.0, std::fabs(want));
}

// p -= lr * sign(g): a caller's element-wise update, on the device and on the host.
struct DeviceSign {
  static constexpr std::size_t state_size = 0;
  double lr = 0.05;
  STRATA_HOST_DEVICE void operator()(std::uint64_t, double& p, double g, double*,
                                     std::size_t) const {
    p -= lr * double((g > 0) - (g < 0));
  }
};
struct HostSign {
  static constexpr std::size_t state_size = 0, norm_slots = 0;
  double lr = 0.05;
  void compute(const strata::optim::ShardContext<double>& c, std::span<double>) const {
    for (std::size_t i = 0; i < c.grads.size(); ++i)
      c.new_params[i] -= lr * double((c.grads[i] > 0) - (c.grads[i] < 0));
  }
  void apply(const strata::optim::ShardContext<double>&, std::span<const double>) const {}
};

template <class T, class Update, class HostUpdate>
void same_as_host(Update update, HostUpdate host_update, strata::optim::ShardedOptions options,
                  bool own_stream, double tol) {
  const std::vector<std::size_t> sizes{1000, 5, 0, 70000, 4096, 33};
  strata::NcclComm comm = one_rank();
  cuda_test::Stream mine;
  const cudaStream_t stream = own_stream ? cudaStream_t(mine) : comm.stream();
  std::vector<std::vector<T>> values(sizes.size());
  for (std::size_t t = 0; t < sizes.size(); ++t)
    for (std::size_t i = 0; i < sizes[t]; ++i)
      values[t].push_back(static_cast<T>(std::sin(0.37 * double(i + 1) + double(t))));
  std::vector<strata::DeviceBuffer<T>> params;
  std::vector<std::span<T>> spans;
  for (std::size_t t = 0; t < sizes.size(); ++t) {
    params.push_back(to_device(values[t], comm));
    spans.emplace_back(params.back().data(), sizes[t]);
  }
  strata::optim::CudaShardedOptimizer<T, strata::NcclComm, Update> dev(comm, spans, update,
                                                                       options);
  strata::LocalWorld(1).run([&](strata::LocalComm& host) {
    std::vector<std::span<T>> host_spans(values.begin(), values.end());
    strata::optim::ShardedOptimizer<T, strata::LocalComm, HostUpdate> ref(host, host_spans,
                                                                          host_update, options);
    for (std::size_t step = 0; step < 4; ++step) {
      std::vector<std::vector<T>> grads(sizes.size());
      std::vector<strata::DeviceBuffer<T>> d_grads;
      for (std::size_t t = 0; t < sizes.size(); ++t) {
        for (std::size_t i = 0; i < sizes[t]; ++i) {
          grads[t].push_back(static_cast<T>(
              std::cos(0.011 * double(i + 1) + 0.7 * double(t) + 1.3 * double(step)) *
              (1.0 + 0.5 * double(step))));
        }
        d_grads.push_back(to_device(grads[t], comm));
      }
      const strata::optim::StepReport want = ref.step(grads);
      for (std::size_t t : dev.layout().ready_order()) {
        dev.grad_ready(t, std::span<const T>(d_grads[t].data(), sizes[t]), stream);
      }
      dev.finish_step(stream);
      bool ok = true;
      for (std::size_t t = 0; t < sizes.size(); ++t) {
        const auto got = to_host(params[t].data(), sizes[t], stream, comm);
        for (std::size_t i = 0; i < sizes[t]; ++i) ok = ok && close(got[i], values[t][i], tol);
      }
      CHECK_MESSAGE(ok, "parameters after step " << step);
      const strata::optim::StepReport report = dev.report();
      CHECK(close(report.grad_norm, want.grad_norm, tol));
      CHECK(close(report.clip_factor, want.clip_factor, tol));
      const double on_device = to_host(dev.grad_norm_device(), 1, stream, comm)[0];
      CHECK(close(on_device, want.grad_norm, tol));
    }
    const auto a = ref.state(), b = dev.state();
    CHECK(b.steps == a.steps);
    REQUIRE(b.values.size() == a.values.size());
    bool ok = true;
    for (std::size_t i = 0; i < a.values.size(); ++i)
      ok = ok && close(b.values[i], a.values[i], tol);
    CHECK_MESSAGE(ok, "optimizer state");
  });
}

strata::optim::ShardedOptions options_of(ShardSchedule s, std::size_t bucket_bytes,
                                         std::optional<double> clip, bool track) {
  strata::optim::ShardedOptions o;
  o.schedule = s;
  o.ranks_per_node = s == ShardSchedule::hierarchical ? 1 : 0;
  o.bucket_bytes = bucket_bytes;
  o.clip_norm = clip;
  o.track_grad_norm = track;
  return o;
}

TEST_CASE("device sharded optimizer on one GPU: the host optimizer's results") {
  using strata::optim::Adam;
  using strata::optim::Lamb;
  using strata::optim::Sgd;
  same_as_host<double>(Adam{.lr = 0.01, .weight_decay = 0.01},
                       Adam{.lr = 0.01, .weight_decay = 0.01},
                       options_of(ShardSchedule::flat, 1 << 16, 0.5, false), false, 1e-12);
  same_as_host<double>(Lamb{.lr = 0.01, .weight_decay = 0.1}, Lamb{.lr = 0.01, .weight_decay = 0.1},
                       options_of(ShardSchedule::hierarchical, 1 << 15, 1.0, false), true, 1e-12);
  same_as_host<double>(Sgd{.lr = 0.1, .weight_decay = 0.01}, Sgd{.lr = 0.1, .weight_decay = 0.01},
                       options_of(ShardSchedule::replicated, 0, std::nullopt, true), true, 1e-12);
  same_as_host<double>(DeviceSign{}, HostSign{}, options_of(ShardSchedule::flat, 4096, 0.5, false),
                       false, 1e-12);
  same_as_host<float>(Adam{.lr = 0.01}, Adam{.lr = 0.01},
                      options_of(ShardSchedule::flat, 1 << 14, 0.5, false), true, 1e-5);
  same_as_host<float>(Lamb{.lr = 0.01}, Lamb{.lr = 0.01},
                      options_of(ShardSchedule::flat, 0, std::nullopt, true), false, 1e-5);
}

TEST_CASE("device sharded optimizer on one GPU: a bad gradient is reported and commits nothing") {
  strata::NcclComm comm = one_rank();
  const std::vector<double> init(100, 0.25);
  auto param = to_device(init, comm);
  std::vector<std::span<double>> spans{std::span<double>(param.data(), init.size())};
  strata::optim::CudaShardedOptimizer<double, strata::NcclComm, strata::optim::Adam> dev(
      comm, spans, strata::optim::Adam{.lr = 0.1});
  auto grad = to_device(std::vector<double>(101, 1.0), comm);
  dev.grad_ready(0, std::span<const double>(grad.data(), 101));
  dev.finish_step();
  std::string what;
  try {
    dev.check();
  } catch (const strata::usage_error& e) {
    what = e.cause();
  }
  CHECK(what == "rank 0: the gradient of tensor 0 has 101 elements, the tensor 100");
  CHECK(to_host(param.data(), init.size(), comm.stream(), comm) == init);
  CHECK(dev.steps_taken() == 0);
  dev.grad_ready(0, std::span<const double>(grad.data(), 100));
  dev.finish_step();
  dev.check();
  CHECK(dev.steps_taken() == 1);
  CHECK(to_host(param.data(), init.size(), comm.stream(), comm)[0] < 0.25);
}

}  // namespace optim_device
