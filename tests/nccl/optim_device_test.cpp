// DeviceShardedOptimizer on the host double of NCCL and CUDA (fake_runtime.hpp): streams are
// worker threads, so a host read of device memory before the stream reached it, or a stream that
// does not wait for another's data, shows as a wrong result. Where the launcher sums each norm
// in one lane, the device functors do the host optimizer's arithmetic in its order, compiled by
// the same compiler: the results must be ShardedOptimizer's (on the local backend) bit for bit.
// With several lanes per norm the sums are re-associated: 1e-12 relative.
#include <doctest/doctest.h>
#include <strata/comm/local.hpp>
#include <strata/comm/nccl.hpp>
#include <strata/cuda/device_buffer.hpp>
#include <strata/optim/adam.hpp>
#include <strata/optim/device_sharded_optimizer.hpp>
#include <strata/optim/lamb.hpp>
#include <strata/optim/sgd.hpp>
#include <strata/optim/sharded_optimizer.hpp>

#include <thrust/execution_policy.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cmath>
#include <cstdint>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <thread>
#include <vector>

#include "fake_runtime.hpp"

namespace {

using strata::optim::ShardSchedule;

// The double's runtime, counting on each rank's thread the calls that would make the host wait
// for the device: stream queries (every synchronize polls them) and copies into host memory.
struct CountingRuntime : fake::Runtime {
  static inline thread_local long queries = 0;
  static inline thread_local long reads = 0;
  static cudaError_t stream_query(fake::Stream* s) {
    ++queries;
    return fake::Runtime::stream_query(s);
  }
  static cudaError_t memcpy_async(void* dst, const void* src, std::size_t bytes, fake::Stream* s) {
    if (fake::detail::device_of(dst) < 0) ++reads;
    return fake::Runtime::memcpy_async(dst, src, bytes, s);
  }
};

using Comm = strata::BasicNcclComm<CountingRuntime>;
template <class T>
using Buf = strata::DeviceBuffer<T, CountingRuntime>;

// Runs each step's Thrust work in stream order on the fake stream; orders streams with a flag
// that the waiting stream spins on (the double's CUDA event). `Lanes` threads at most per norm.
template <std::size_t Lanes = 1, std::size_t Least = 1>
struct HostStreamLauncher {
  static constexpr std::size_t max_lanes = Lanes;
  static constexpr std::size_t min_lane_elements = Least;
  template <class F>
  void launch(fake::Stream* s, F f) {
    fake::Runtime::launch_host(s, [f] { f(thrust::host); });
  }
  void order(fake::Stream* from, fake::Stream* to) {
    auto reached = std::make_shared<std::atomic<bool>>(false);
    fake::Runtime::launch_host(from, [reached] { reached->store(true); });
    fake::Runtime::launch_host(to, [reached] {
      while (!reached->load()) std::this_thread::yield();
    });
  }
};

Comm bootstrap(strata::LocalComm& host) {
  strata::NcclOptions options;
  options.device = host.rank();
  return strata::nccl_bootstrap<CountingRuntime>(host, options);
}

template <class T>
void to_device(Comm& comm, Buf<T>& dst, const std::vector<T>& src) {
  dst.resize(std::max<std::size_t>(src.size(), 1), comm.rank());
  if (src.empty()) return;
  strata::PinnedBuffer<T, CountingRuntime> staging(src.size());
  std::copy(src.begin(), src.end(), staging.data());
  CountingRuntime::check("memcpy", comm.rank(),
                         CountingRuntime::memcpy_async(dst.data(), staging.data(),
                                                       src.size() * sizeof(T), comm.stream()));
  comm.synchronize(comm.stream());
}

// Read on `stream`: what work enqueued there sees.
template <class T>
std::vector<T> to_host(Comm& comm, const T* src, std::size_t n, fake::Stream* stream) {
  std::vector<T> out(n);
  if (n == 0) return out;
  strata::PinnedBuffer<T, CountingRuntime> staging(n);
  CountingRuntime::check("memcpy", comm.rank(),
                         CountingRuntime::memcpy_async(staging.data(), src, n * sizeof(T), stream));
  comm.synchronize(stream);
  std::copy(staging.data(), staging.data() + n, out.begin());
  return out;
}

template <class T>
T param_init(std::size_t t, std::size_t i) {
  return static_cast<T>(std::sin(0.37 * double(i + 1) + double(t)));
}

template <class T>
T grad_at(std::size_t t, std::size_t i, int rank, std::size_t step) {
  return static_cast<T>(
      std::cos(0.11 * double(i + 1) * double(rank + 1) + 0.7 * double(t) + 1.3 * double(step)) *
      (1.0 + 0.5 * double(step)));
}

// Tensors in device memory, one buffer each (an empty tensor keeps a one-element buffer).
template <class T>
struct DeviceTensors {
  std::vector<Buf<T>> bufs;
  std::vector<std::span<T>> spans;
  DeviceTensors(Comm& comm, const std::vector<std::vector<T>>& host) : bufs(host.size()) {
    for (std::size_t t = 0; t < host.size(); ++t) {
      to_device(comm, bufs[t], host[t]);
      spans.emplace_back(bufs[t].data(), host[t].size());
    }
  }
  std::vector<std::vector<T>> read(Comm& comm, fake::Stream* stream) const {
    std::vector<std::vector<T>> out;
    for (const std::span<T> s : spans) out.push_back(to_host(comm, s.data(), s.size(), stream));
    return out;
  }
};

bool same(double got, double want, double tol) {
  if (std::isnan(want)) return std::isnan(got);
  if (tol == 0) return got == want;
  return std::fabs(got - want) <= tol * std::max(1.0, std::fabs(want));
}

struct Case {
  int world = 1;
  ShardSchedule schedule = ShardSchedule::flat;
  std::size_t ranks_per_node = 0;
  std::size_t bucket_bytes = 0;
  std::optional<double> clip = std::nullopt;
  bool track = false;
  bool own_stream = false;  // gradients produced on a stream of the caller's, late
  bool scrambled = false;   // gradients marked in another order than the ready order
};

// Steps of the device optimizer and of the host one on the same gradients; every step the
// parameters, the norm and the clipping factor, at the end the state, compared to `tol`
// (0: bit for bit). No call of a step may wait for the device or read from it.
template <class T, class Update, class HostUpdate, class Launcher = HostStreamLauncher<>>
void same_as_host(const Case& c, Update update, HostUpdate host_update,
                  const std::vector<std::size_t>& sizes, std::size_t steps = 3, double tol = 0.0) {
  CAPTURE(c.world);
  CAPTURE(strata::optim::to_string(c.schedule));
  CAPTURE(c.ranks_per_node);
  CAPTURE(c.bucket_bytes);
  strata::LocalWorld(c.world).run([&](strata::LocalComm& host) {
    Comm comm = bootstrap(host);
    const strata::DeviceGuard<CountingRuntime> on(comm.device());
    const int rank = host.rank();
    strata::optim::ShardedOptions options{.schedule = c.schedule,
                                          .ranks_per_node = c.ranks_per_node,
                                          .bucket_bytes = c.bucket_bytes,
                                          .alignment_bytes = 32,
                                          .clip_norm = c.clip,
                                          .track_grad_norm = c.track};
    std::vector<std::vector<T>> values(sizes.size());
    for (std::size_t t = 0; t < sizes.size(); ++t)
      for (std::size_t i = 0; i < sizes[t]; ++i) values[t].push_back(param_init<T>(t, i));
    std::vector<std::span<T>> host_spans(values.begin(), values.end());
    strata::optim::ShardedOptimizer<T, strata::LocalComm, HostUpdate> ref(host, host_spans,
                                                                          host_update, options);
    DeviceTensors<T> params(comm, values);
    strata::optim::DeviceShardedOptimizer<T, Comm, Update, Launcher> dev(comm, params.spans, update,
                                                                         options);
    fake::Stream* stream = comm.stream();
    if (c.own_stream)
      CountingRuntime::check("stream", rank, CountingRuntime::stream_create(&stream));
    std::vector<Buf<T>> grad_bufs(sizes.size());
    for (std::size_t t = 0; t < sizes.size(); ++t)
      grad_bufs[t].resize(std::max<std::size_t>(sizes[t], 1), rank);
    std::vector<std::size_t> order(ref.layout().ready_order().begin(),
                                   ref.layout().ready_order().end());
    if (c.scrambled) std::reverse(order.begin(), order.end());
    for (std::size_t step = 0; step < steps; ++step) {
      CAPTURE(step);
      std::vector<std::vector<T>> grads(sizes.size());
      for (std::size_t t = 0; t < sizes.size(); ++t)
        for (std::size_t i = 0; i < sizes[t]; ++i) grads[t].push_back(grad_at<T>(t, i, rank, step));
      const strata::optim::StepReport want = ref.step(grads);
      if (c.own_stream) {
        // The "backward" writes each gradient on the caller's stream, a little late: the
        // reduction must wait for it on the device, not on the host.
        for (std::size_t t = 0; t < sizes.size(); ++t) {
          auto g = std::make_shared<std::vector<T>>(grads[t]);
          T* dst = grad_bufs[t].data();
          fake::Runtime::launch_host(stream, [g, dst] {
            std::this_thread::sleep_for(std::chrono::microseconds(200));
            std::copy(g->begin(), g->end(), dst);
          });
        }
      } else {
        for (std::size_t t = 0; t < sizes.size(); ++t) to_device(comm, grad_bufs[t], grads[t]);
      }
      const long queries = CountingRuntime::queries, reads = CountingRuntime::reads;
      for (std::size_t t : order) {
        dev.grad_ready(t, std::span<const T>(grad_bufs[t].data(), sizes[t]), stream);
      }
      dev.finish_step(stream);
      CHECK(CountingRuntime::queries == queries);  // no wait for the device
      CHECK(CountingRuntime::reads == reads);      // no copy from it
      const auto got = params.read(comm, stream);
      for (std::size_t t = 0; t < sizes.size(); ++t) {
        for (std::size_t i = 0; i < sizes[t]; ++i) {
          if (!same(double(got[t][i]), double(values[t][i]), tol)) {
            FAIL("tensor " << t << " element " << i << ": " << got[t][i] << " on the device, "
                           << values[t][i] << " on the host");
          }
        }
      }
      const strata::optim::StepReport report = dev.report();
      CHECK(same(report.grad_norm, want.grad_norm, tol));
      CHECK(same(report.clip_factor, want.clip_factor, tol));
      if (!c.scrambled) CHECK(report.buckets_started_early == want.buckets_started_early);
      CHECK(report.traffic.intra == want.traffic.intra);
      CHECK(report.traffic.inter == want.traffic.inter);
    }
    const strata::optim::ShardedState<T> a = ref.state(), b = dev.state();
    CHECK(b.steps == a.steps);
    CHECK(b.layout == a.layout);
    CHECK(b.shard == a.shard);
    REQUIRE(b.values.size() == a.values.size());
    for (std::size_t i = 0; i < a.values.size(); ++i) {
      if (!same(double(b.values[i]), double(a.values[i]), tol)) {
        FAIL("state value " << i << ": " << b.values[i] << " on the device, " << a.values[i]
                            << " on the host");
      }
    }
    CHECK(dev.steps_taken() == steps);
    if (c.own_stream) {
      comm.synchronize(stream);
      CountingRuntime::check("stream", rank, CountingRuntime::stream_destroy(stream));
    }
  });
}

const std::vector<std::size_t> some_sizes{37, 5, 0, 130, 64, 9};

// p -= lr * sign(g), with one state value counting the steps: a caller's update on both paths.
struct DeviceSign {
  static constexpr std::size_t state_size = 1;
  double lr = 0.05;
  STRATA_HOST_DEVICE void operator()(std::uint64_t step, double& p, double g, double* state,
                                     std::size_t) const {
    p -= lr * double((g > 0) - (g < 0));
    state[0] = double(step);
  }
};
struct HostSign {
  static constexpr std::size_t state_size = 1, norm_slots = 0;
  double lr = 0.05;
  void compute(const strata::optim::ShardContext<double>& c, std::span<double>) const {
    for (std::size_t i = 0; i < c.grads.size(); ++i) {
      c.new_params[i] -= lr * double((c.grads[i] > 0) - (c.grads[i] < 0));
      c.new_state[i] = double(c.step);
    }
  }
  void apply(const strata::optim::ShardContext<double>&, std::span<const double>) const {}
};

}  // namespace

TEST_CASE("device sharded optimizer (host double): the host optimizer's results, bit for bit") {
  using strata::optim::Adam;
  using strata::optim::Lamb;
  using strata::optim::Sgd;
  SUBCASE("flat, Adam, every world from 1 to 8, one bucket and several") {
    for (int w = 1; w <= 8; ++w) {
      same_as_host<double>({.world = w}, Adam{.lr = 0.01, .weight_decay = 0.01},
                           Adam{.lr = 0.01, .weight_decay = 0.01}, some_sizes);
      same_as_host<double>({.world = w, .bucket_bytes = 400, .track = true}, Adam{.lr = 0.02},
                           Adam{.lr = 0.02}, some_sizes);
    }
  }
  SUBCASE("hierarchical, every node size that divides worlds 2 to 8, buckets, clipping") {
    for (int w = 2; w <= 8; ++w) {
      for (std::size_t g = 1; g <= std::size_t(w); ++g) {
        if (std::size_t(w) % g != 0) continue;
        same_as_host<double>({.world = w,
                              .schedule = ShardSchedule::hierarchical,
                              .ranks_per_node = g,
                              .bucket_bytes = 512,
                              .clip = 0.5},
                             Lamb{.lr = 0.01, .weight_decay = 0.1},
                             Lamb{.lr = 0.01, .weight_decay = 0.1}, some_sizes, 2);
      }
    }
  }
  SUBCASE("SGD and LAMB, flat and replicated, clipping and tracking") {
    for (int w : {1, 3, 4, 7}) {
      same_as_host<double>({.world = w, .bucket_bytes = 300, .clip = 1.0},
                           Sgd{.lr = 0.1, .weight_decay = 0.01},
                           Sgd{.lr = 0.1, .weight_decay = 0.01}, some_sizes);
      same_as_host<double>({.world = w, .clip = 0.3}, Lamb{.lr = 0.05}, Lamb{.lr = 0.05},
                           some_sizes);
      same_as_host<double>(
          {.world = w, .schedule = ShardSchedule::replicated, .bucket_bytes = 256, .clip = 0.7},
          Adam{.lr = 0.01}, Adam{.lr = 0.01}, some_sizes);
      same_as_host<double>({.world = w, .schedule = ShardSchedule::replicated, .track = true},
                           Lamb{.lr = 0.01, .weight_decay = 0.05},
                           Lamb{.lr = 0.01, .weight_decay = 0.05}, some_sizes);
    }
  }
  SUBCASE("float") {
    same_as_host<float>({.world = 4, .bucket_bytes = 128, .clip = 0.5}, Adam{.lr = 0.01},
                        Adam{.lr = 0.01}, some_sizes);
    same_as_host<float>(
        {.world = 6, .schedule = ShardSchedule::hierarchical, .ranks_per_node = 3, .clip = 0.5},
        Lamb{.lr = 0.01}, Lamb{.lr = 0.01}, some_sizes);
    same_as_host<float>({.world = 2, .track = true}, Sgd{.lr = 0.1}, Sgd{.lr = 0.1}, some_sizes);
  }
  SUBCASE("gradients on the caller's stream, late, and marked out of order") {
    same_as_host<double>({.world = 4, .bucket_bytes = 200, .clip = 0.5, .own_stream = true},
                         Adam{.lr = 0.01}, Adam{.lr = 0.01}, some_sizes);
    same_as_host<double>({.world = 4,
                          .schedule = ShardSchedule::hierarchical,
                          .ranks_per_node = 2,
                          .bucket_bytes = 200,
                          .own_stream = true,
                          .scrambled = true},
                         Lamb{.lr = 0.01}, Lamb{.lr = 0.01}, some_sizes);
  }
  SUBCASE("a caller's element-wise update") {
    same_as_host<double>({.world = 3, .bucket_bytes = 256}, DeviceSign{}, HostSign{}, some_sizes);
  }
}

TEST_CASE(
    "device sharded optimizer (host double): norms summed in several lanes agree to 1e-12 "
    "relative") {
  using L = HostStreamLauncher<4, 3>;
  same_as_host<double, strata::optim::Lamb, strata::optim::Lamb, L>(
      {.world = 4, .bucket_bytes = 400, .clip = 0.5}, {.lr = 0.01}, {.lr = 0.01}, some_sizes, 3,
      1e-12);
  same_as_host<double, strata::optim::Adam, strata::optim::Adam, L>(
      {.world = 6, .schedule = ShardSchedule::hierarchical, .ranks_per_node = 3, .clip = 0.5},
      {.lr = 0.01}, {.lr = 0.01}, some_sizes, 3, 1e-12);
}

namespace {

using Dev =
    strata::optim::DeviceShardedOptimizer<double, Comm, strata::optim::Adam, HostStreamLauncher<>>;

// One good step, then a step with `bad` applied on rank `bad_rank`: every rank must report the
// same problem from check(), with the parameters, state and step count of the good step; a
// clean step after it commits as the host's (which throws at once on its bad step) does.
template <class Bad>
void bad_step_everywhere(int world, int bad_rank, ShardSchedule schedule, Bad bad,
                         const std::string& expected) {
  CAPTURE(world);
  strata::LocalWorld(world).run([&](strata::LocalComm& host) {
    Comm comm = bootstrap(host);
    const strata::DeviceGuard<CountingRuntime> on(comm.device());
    const int rank = host.rank();
    const std::vector<std::size_t> sizes{6, 10, 3};
    const strata::optim::ShardedOptions options{
        .schedule = schedule, .ranks_per_node = 2, .bucket_bytes = 64, .clip_norm = 1.0};
    std::vector<std::vector<double>> values(sizes.size());
    for (std::size_t t = 0; t < sizes.size(); ++t)
      for (std::size_t i = 0; i < sizes[t]; ++i) values[t].push_back(param_init<double>(t, i));
    std::vector<std::span<double>> host_spans(values.begin(), values.end());
    strata::optim::ShardedOptimizer ref(host, host_spans, strata::optim::Adam{.lr = 0.1}, options);
    DeviceTensors<double> params(comm, values);
    Dev dev(comm, params.spans, strata::optim::Adam{.lr = 0.1}, options);
    auto grads_of = [&](std::size_t step) {
      std::vector<std::vector<double>> g(sizes.size());
      for (std::size_t t = 0; t < sizes.size(); ++t)
        for (std::size_t i = 0; i < sizes[t]; ++i)
          g[t].push_back(grad_at<double>(t, i, rank, step));
      return g;
    };
    std::vector<Buf<double>> bufs(sizes.size() + 1);
    auto upload = [&](const std::vector<std::vector<double>>& g) {
      for (std::size_t t = 0; t < sizes.size(); ++t) to_device(comm, bufs[t], g[t]);
      to_device(comm, bufs[sizes.size()], std::vector<double>(16, 1.0));  // a gradient too long
    };
    auto grad_span = [&](std::size_t t) {
      return std::span<const double>(bufs[t].data(), sizes[t]);
    };
    // Step 1, clean.
    auto g = grads_of(0);
    ref.step(g);
    upload(g);
    for (std::size_t t : dev.layout().ready_order()) dev.grad_ready(t, grad_span(t));
    dev.finish_step();
    dev.check();
    const auto after_one = params.read(comm, comm.stream());
    const auto state_one = dev.state();
    // Step 2: rank `bad_rank` misbehaves; nobody waits inside the step.
    g = grads_of(1);
    upload(g);
    const long queries = CountingRuntime::queries, reads = CountingRuntime::reads;
    if (rank == bad_rank) {
      bad(dev, grad_span, std::span<const double>(bufs[sizes.size()].data(), 16));
    } else {
      for (std::size_t t : dev.layout().ready_order()) dev.grad_ready(t, grad_span(t));
      dev.finish_step();
    }
    CHECK(CountingRuntime::queries == queries);
    CHECK(CountingRuntime::reads == reads);
    std::string what;
    try {
      dev.check();
    } catch (const strata::usage_error& e) {
      what = e.cause();
    }
    CHECK(what == expected);
    CHECK(params.read(comm, comm.stream()) == after_one);
    const auto state_two = dev.state();
    CHECK(state_two.values == state_one.values);
    CHECK(state_two.steps == 1);
    CHECK(dev.steps_taken() == 1);
    CHECK_NOTHROW(dev.check());  // read once, then forgotten
    // The host optimizer refuses its step 2 on every rank alike and commits nothing.
    if (rank == bad_rank) {
      auto wrong = g;
      wrong[1].push_back(0.0);
      CHECK_THROWS_AS(ref.step(wrong), strata::usage_error);
    } else {
      CHECK_THROWS_AS(ref.step(g), strata::usage_error);
    }
    // Step 3, clean: both continue from step 1.
    g = grads_of(2);
    ref.step(g);
    upload(g);
    for (std::size_t t : dev.layout().ready_order()) dev.grad_ready(t, grad_span(t));
    dev.finish_step();
    dev.check();
    CHECK(params.read(comm, comm.stream()) ==
          std::vector<std::vector<double>>(values.begin(), values.end()));
    CHECK(dev.state().values == ref.state().values);
    CHECK(dev.steps_taken() == 2);
  });
}

}  // namespace

TEST_CASE(
    "device sharded optimizer (host double): bad input on one rank fails on every rank with "
    "nothing committed") {
  using Span = std::span<const double>;
  using GradSpan = std::function<Span(std::size_t)>;
  SUBCASE("a gradient of the wrong size") {
    for (const ShardSchedule s :
         {ShardSchedule::flat, ShardSchedule::hierarchical, ShardSchedule::replicated}) {
      bad_step_everywhere(
          4, 2, s,
          [](Dev& d, const GradSpan& grad, Span longer) {
            for (std::size_t t : d.layout().ready_order())
              d.grad_ready(t, t == 1 ? longer.first(11) : grad(t));
            d.finish_step();
          },
          "rank 2: the gradient of tensor 1 has 11 elements, the tensor 10");
    }
  }
  SUBCASE("an index out of range, a tensor marked twice, a tensor never marked") {
    bad_step_everywhere(
        2, 1, ShardSchedule::flat,
        [](Dev& d, const GradSpan& grad, Span) {
          d.grad_ready(7, grad(0));
          for (std::size_t t : d.layout().ready_order()) d.grad_ready(t, grad(t));
          d.finish_step();
        },
        "rank 1: gradient index 7 is not below the 3 parameter tensors");
    bad_step_everywhere(
        4, 0, ShardSchedule::hierarchical,
        [](Dev& d, const GradSpan& grad, Span) {
          for (std::size_t t : d.layout().ready_order()) d.grad_ready(t, grad(t));
          d.grad_ready(2, grad(2));
          d.finish_step();
        },
        "rank 0: the gradient of tensor 2 was marked twice");
    bad_step_everywhere(
        6, 5, ShardSchedule::flat,
        [](Dev& d, const GradSpan& grad, Span) {
          for (std::size_t t : d.layout().ready_order())
            if (t != 0) d.grad_ready(t, grad(t));
          d.finish_step();
        },
        "rank 5: the gradient of tensor 0 was never marked");
  }
  SUBCASE("a step with the wrong number of gradients") {
    bad_step_everywhere(
        3, 1, ShardSchedule::flat,
        [](Dev& d, const GradSpan& grad, Span) {
          d.step(std::vector<Span>{grad(0), grad(1)});
        },
        "rank 1: the step has 2 gradients for 3 parameter tensors");
  }
}

TEST_CASE(
    "device sharded optimizer (host double): ranks that pass different tensors or settings "
    "throw the same error at construction") {
  strata::LocalWorld(3).run([](strata::LocalComm& host) {
    Comm comm = bootstrap(host);
    const strata::DeviceGuard<CountingRuntime> on(comm.device());
    std::vector<std::vector<double>> values{std::vector<double>(host.rank() == 2 ? 9 : 10, 1.0),
                                            std::vector<double>(4, 1.0)};
    DeviceTensors<double> params(comm, values);
    std::string what;
    try {
      Dev dev(comm, params.spans, strata::optim::Adam{});
    } catch (const strata::usage_error& e) {
      what = e.cause();
    }
    CHECK(what == "rank 2 passes 2 tensors of 13 elements, rank 0 2 of 14");
    values[0].resize(10);
    DeviceTensors<double> same_size(comm, values);
    what.clear();
    try {
      strata::optim::ShardedOptions o;
      if (host.rank() == 1) o.clip_norm = 1.0;
      Dev dev(comm, same_size.spans, strata::optim::Adam{}, o);
    } catch (const strata::usage_error& e) {
      what = e.cause();
    }
    CHECK(what == "rank 1 clips or tracks the gradient norm differently");
    what.clear();
    try {
      strata::optim::ShardedOptions o;
      o.schedule = ShardSchedule::hierarchical;
      o.ranks_per_node = 2;
      Dev dev(comm, same_size.spans, strata::optim::Adam{}, o);
    } catch (const strata::usage_error& e) {
      what = e.cause();
    }
    CHECK(what ==
          "the hierarchical schedule needs nodes that divide the world: 2 ranks per node, "
          "3 ranks");
    // A ready order that is no permutation on one rank: that rank joins the agreement and every
    // rank refuses, instead of one throwing alone and the others waiting.
    what.clear();
    try {
      strata::optim::ShardedOptions o;
      if (host.rank() == 1) o.ready_order = {0, 0};
      Dev dev(comm, same_size.spans, strata::optim::Adam{}, o);
    } catch (const strata::usage_error& e) {
      what = e.cause();
    }
    if (host.rank() == 1) {
      CHECK(what.starts_with("rank 1: ShardLayout: the ready order is not a permutation"));
    } else {
      CHECK(what == "rank 1 passes an invalid tensor list, ready order or setting");
    }
  });
}

TEST_CASE(
    "device sharded optimizer (host double): state saved and restored, across the device and "
    "host optimizers") {
  strata::LocalWorld(4).run([](strata::LocalComm& host) {
    Comm comm = bootstrap(host);
    const strata::DeviceGuard<CountingRuntime> on(comm.device());
    const int rank = host.rank();
    const std::vector<std::size_t> sizes{20, 7, 33};
    strata::optim::ShardedOptions options;
    options.schedule = ShardSchedule::hierarchical;
    options.ranks_per_node = 2;
    options.bucket_bytes = 160;
    std::vector<std::vector<double>> values(sizes.size());
    for (std::size_t t = 0; t < sizes.size(); ++t)
      for (std::size_t i = 0; i < sizes[t]; ++i) values[t].push_back(param_init<double>(t, i));
    std::vector<std::span<double>> host_spans(values.begin(), values.end());
    strata::optim::ShardedOptimizer ref(host, host_spans, strata::optim::Adam{.lr = 0.05}, options);
    DeviceTensors<double> params(comm, values);
    std::vector<Buf<double>> bufs(sizes.size());
    auto run_steps = [&](Dev& dev, std::size_t from, std::size_t to) {
      for (std::size_t step = from; step < to; ++step) {
        std::vector<std::vector<double>> g(sizes.size());
        std::vector<std::span<const double>> spans;
        for (std::size_t t = 0; t < sizes.size(); ++t) {
          for (std::size_t i = 0; i < sizes[t]; ++i)
            g[t].push_back(grad_at<double>(t, i, rank, step));
          to_device(comm, bufs[t], g[t]);
          spans.emplace_back(bufs[t].data(), sizes[t]);
        }
        ref.step(g);
        dev.step(spans);
      }
    };
    strata::optim::ShardedState<double> saved;
    {
      Dev dev(comm, params.spans, strata::optim::Adam{.lr = 0.05}, options);
      run_steps(dev, 0, 2);
      saved = dev.state();
      const auto want = ref.state();
      CHECK(saved.values == want.values);
      CHECK(saved.steps == 2);
      CHECK(saved.layout == want.layout);
      CHECK(saved.schedule == want.schedule);
    }
    // A fresh device optimizer resumes from the saved state, the host one from its own.
    Dev dev(comm, params.spans, strata::optim::Adam{.lr = 0.05}, options);
    dev.load(saved);
    CHECK(dev.steps_taken() == 2);
    run_steps(dev, 2, 4);
    CHECK(params.read(comm, comm.stream()) == values);
    CHECK(dev.state().values == ref.state().values);
    // The host optimizer's state loads into the device optimizer.
    dev.load(ref.state());
    CHECK(dev.state().values == ref.state().values);
    // One rank's state of another shard: every rank refuses, nothing changes.
    strata::optim::ShardedState<double> other = ref.state();
    if (rank == 3) other.shard = 0;
    std::string what;
    try {
      dev.load(other);
    } catch (const strata::usage_error& e) {
      what = e.cause();
    }
    CHECK(what.rfind("rank 3: ", 0) == 0);
    CHECK(dev.state().values == ref.state().values);
  });
}

TEST_CASE(
    "device sharded optimizer (host double): the norm in device memory, for device work after "
    "the step") {
  strata::LocalWorld(2).run([](strata::LocalComm& host) {
    Comm comm = bootstrap(host);
    const strata::DeviceGuard<CountingRuntime> on(comm.device());
    std::vector<std::vector<double>> values{std::vector<double>(12, 0.5)};
    DeviceTensors<double> params(comm, values);
    strata::optim::ShardedOptions options;
    options.track_grad_norm = true;
    Dev dev(comm, params.spans, strata::optim::Adam{}, options);
    Buf<double> grad;
    to_device(comm, grad, std::vector<double>(12, 2.0));
    dev.step(std::vector<std::span<const double>>{std::span<const double>(grad.data(), 12)});
    const double on_device = to_host(comm, dev.grad_norm_device(), 1, comm.stream())[0];
    CHECK(on_device == std::sqrt(12 * 4.0));
    CHECK(dev.grad_norm() == on_device);
  });
}

TEST_CASE(
    "device sharded optimizer (host double): gradients on one stream, the step finished on "
    "another, parameters written on the caller's stream") {
  for (const bool grads_elsewhere : {true, false}) {
    CAPTURE(grads_elsewhere);
    strata::LocalWorld(4).run([&](strata::LocalComm& host) {
      Comm comm = bootstrap(host);
      const strata::DeviceGuard<CountingRuntime> on(comm.device());
      const int rank = host.rank();
      fake::Stream* mine = nullptr;
      CountingRuntime::check("stream", rank, CountingRuntime::stream_create(&mine));
      strata::optim::ShardedOptions options;
      options.bucket_bytes = 256;
      options.clip_norm = 0.5;
      std::vector<std::vector<double>> values(some_sizes.size());
      for (std::size_t t = 0; t < some_sizes.size(); ++t)
        for (std::size_t i = 0; i < some_sizes[t]; ++i)
          values[t].push_back(param_init<double>(t, i));
      DeviceTensors<double> params(comm, values);
      std::vector<std::span<double>> host_spans(values.begin(), values.end());
      strata::optim::ShardedOptimizer ref(host, host_spans, strata::optim::Adam{.lr = 0.01},
                                          options);
      Dev dev(comm, params.spans, strata::optim::Adam{.lr = 0.01}, options);
      if (!grads_elsewhere) {
        // The caller rescales the parameters on its stream, late; the step must read the result.
        for (std::size_t t = 0; t < values.size(); ++t) {
          for (double& v : values[t]) v *= 2;
          auto v = std::make_shared<std::vector<double>>(values[t]);
          double* dst = params.spans[t].data();
          fake::Runtime::launch_host(mine, [v, dst] {
            std::this_thread::sleep_for(std::chrono::milliseconds(2));
            std::copy(v->begin(), v->end(), dst);
          });
        }
      }
      std::vector<Buf<double>> bufs(some_sizes.size());
      for (std::size_t t = 0; t < some_sizes.size(); ++t) bufs[t].resize(some_sizes[t] + 1, rank);
      // No wait between the steps: a stream that runs ahead of the data shows in the results.
      for (std::size_t step = 0; step < 4; ++step) {
        std::vector<std::vector<double>> g(some_sizes.size());
        for (std::size_t t = 0; t < some_sizes.size(); ++t)
          for (std::size_t i = 0; i < some_sizes[t]; ++i)
            g[t].push_back(grad_at<double>(t, i, rank, step));
        ref.step(g);
        fake::Stream* grad_stream = grads_elsewhere ? mine : comm.stream();
        for (std::size_t t = 0; t < some_sizes.size(); ++t) {
          auto v = std::make_shared<std::vector<double>>(g[t]);
          double* dst = bufs[t].data();
          fake::Runtime::launch_host(grad_stream,
                                     [v, dst] { std::copy(v->begin(), v->end(), dst); });
        }
        for (std::size_t t : dev.layout().ready_order()) {
          dev.grad_ready(t, std::span<const double>(bufs[t].data(), some_sizes[t]), grad_stream);
        }
        dev.finish_step(grads_elsewhere ? comm.stream() : mine);
      }
      CHECK(params.read(comm, grads_elsewhere ? comm.stream() : mine) == values);
      comm.synchronize(mine);
      CountingRuntime::check("stream", rank, CountingRuntime::stream_destroy(mine));
    });
  }
}
