// The NCCL communicator's own logic, run across 1 to 16 ranks on host threads: the communicator
// is the one users get (BasicNcclComm), the runtime under it is the host double of
// fake_runtime.hpp. Everything but the NCCL and CUDA calls themselves is exercised here: the
// collective conformance suite, bootstrap, grouping, counts checking, deadlines, aborts,
// asynchronous errors, and the device averager's own paths with CUDA graph capture and replay
// (the averager conformance on this double is tests/averaging/nccl_averager_test.cpp).
#include <doctest/doctest.h>

#include <strata/averaging/device_averager.hpp>
#include <strata/comm/local.hpp>
#include <strata/comm/nccl.hpp>
#include <strata/hierarchy/runtime_hierarchy.hpp>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cmath>
#include <mutex>
#include <set>
#include <string>
#include <thread>
#include <vector>

#include "../averaging/nccl_harness.hpp"
#include "../comm/conformance.hpp"
#include "fake_runtime.hpp"

namespace {

using averager_harness::FakeNccl;
using averager_harness::HostStreamKernels;
using namespace std::chrono_literals;

// The conformance suite reads results on the host right after each call, as with the host
// backends; a device communicator's results are there once its stream is synchronised.
class Synchronous {
 public:
  explicit Synchronous(FakeNccl comm) : comm_(std::move(comm)) {}
  [[nodiscard]] int rank() const { return comm_.rank(); }
  [[nodiscard]] int size() const { return comm_.size(); }

  template <class T>
  void all_reduce(std::span<T> buf, strata::ReduceOp op) {
    comm_.all_reduce(buf, op);
    comm_.synchronize();
  }
  template <class T>
  void all_reduce(std::span<const T> in, std::span<T> out, strata::ReduceOp op) {
    comm_.all_reduce(in, out, op);
    comm_.synchronize();
  }
  template <class T>
  void broadcast(std::span<T> buf, int root) {
    comm_.broadcast(buf, root);
    comm_.synchronize();
  }
  template <class T>
  void all_gather(std::span<const T> in, std::span<T> out) {
    comm_.all_gather(in, out);
    comm_.synchronize();
  }
  template <class T>
  void reduce_scatter(std::span<const T> in, std::span<T> out, strata::ReduceOp op) {
    comm_.reduce_scatter(in, out, op);
    comm_.synchronize();
  }
  template <class T>
  void all_to_all(std::span<const T> in, std::span<T> out) {
    comm_.all_to_all(in, out);
    comm_.synchronize();
  }
  template <class T>
  void all_to_all(std::span<const T> in, std::span<const std::size_t> sc, std::span<T> out,
                  std::span<const std::size_t> rc) {
    comm_.all_to_all(in, sc, out, rc);
    comm_.synchronize();
  }
  void barrier() { comm_.barrier(); }
  Synchronous split(int color, int key) { return Synchronous(comm_.split(color, key)); }

 private:
  FakeNccl comm_;
};
static_assert(strata::communicator<Synchronous>);
static_assert(strata::communicator<FakeNccl>);
static_assert(strata::device_communicator<FakeNccl>);

strata::NcclOptions quick(std::chrono::milliseconds timeout = 10s) {
  strata::NcclOptions o;
  o.timeout = timeout;
  return o;
}

// Records one message per rank, for checks that every rank failed alike.
struct Messages {
  std::mutex m;
  std::vector<std::string> text;
  void add(const std::string& s) {
    std::lock_guard lk(m);
    text.push_back(s);
  }
};

// Each rank that waited for a peer that never came (with a 300 ms deadline) failed: it may time
// out itself, or see another waiter's abort as a remote error first.
void expect_lost_peer(const Messages& messages, std::size_t waiters) {
  REQUIRE(messages.text.size() == waiters);
  for (const std::string& m : messages.text) {
    const bool timed_out = m.find("timed out after 300 ms") != std::string::npos;
    const bool remote = m.find("asynchronous NCCL error") != std::string::npos;
    CHECK_MESSAGE((timed_out || remote), m);
  }
}

using FakeAverager =
    averager_harness::FakeDeviceAverager<strata::RuntimeSchedule<strata::AbsolutePhase>>;

}  // namespace

TEST_CASE("nccl backend (host double): the conformance suite on world sizes 1 to 16") {
  // The default: calls are not checked across ranks, except the uneven all-to-all's counts.
  conformance::for_each_world("nccl", conformance::sizes_up_to(16), [](int n) {
    strata::LocalWorld(n).run([](strata::LocalComm& host) {
      Synchronous comm(fake::bootstrap(host, quick()));
      CHECK(comm.rank() == host.rank());
      CHECK(comm.size() == host.size());
      conformance::run_collectives(comm);
    });
  });
  // With verify_arguments, also one rank's bad arguments fail every rank alike.
  conformance::for_each_world("nccl, verify on", conformance::sizes_up_to(16), [](int n) {
    strata::LocalWorld(n).run([](strata::LocalComm& host) {
      strata::NcclOptions options = quick();
      options.verify_arguments = true;
      Synchronous comm(fake::bootstrap(host, options));
      conformance::run_all(comm);
    });
  });
}

TEST_CASE(
    "nccl backend (host double): with verify_arguments, one rank's wrong size fails every rank") {
  strata::LocalWorld(4).run([](strata::LocalComm& host) {
    strata::NcclOptions options = quick();
    options.verify_arguments = true;
    FakeNccl comm = fake::bootstrap(host, options);
    const int me = comm.rank();
    std::vector<float> in(6, 1.0f), out(me == 2 ? 7 : 6, -1.0f);
    host.barrier();
    const long executed = fake::stats().collectives.load();
    host.barrier();
    try {
      comm.all_reduce(std::span<const float>(in), std::span<float>(out), strata::ReduceOp::sum);
      FAIL("no error");
    } catch (const strata::usage_error& e) {
      CHECK(e.operation() == "all_reduce");
      CHECK(e.rank() == me);
      CHECK(e.cause() == "rank 2: input has 6 elements but output has 7");
    }
    comm.synchronize();
    host.barrier();
    // Only the agreement's all-gather ran, once per rank: the all-reduce was never enqueued.
    CHECK(fake::stats().collectives.load() - executed == 4);
    for (const float x : out) CHECK(x == -1.0f);
    CHECK(comm.broken().empty());
    // Still usable, with the right sizes, on the communicator's stream.
    out.resize(6);
    comm.all_reduce(std::span<const float>(in), std::span<float>(out), strata::ReduceOp::sum);
    comm.synchronize();
    for (const float x : out) CHECK(x == 4.0f);
  });
}

TEST_CASE("nccl backend (host double): half and bfloat16 reduce like NCCL") {
  strata::LocalWorld(5).run([](strata::LocalComm& host) {
    FakeNccl comm = fake::bootstrap(host, quick());
    std::vector<__half> h(64);
    std::vector<__nv_bfloat16> b(64);
    for (std::size_t i = 0; i < h.size(); ++i) {
      h[i] = __float2half(static_cast<float>(comm.rank() + 1) * 0.25f + static_cast<float>(i));
      b[i] = __float2bfloat16(static_cast<float>(comm.rank()) - static_cast<float>(i));
    }
    comm.all_reduce(std::span<__half>(h), strata::ReduceOp::sum);
    comm.all_reduce(std::span<__nv_bfloat16>(b), strata::ReduceOp::max);
    comm.synchronize();
    for (std::size_t i = 0; i < h.size(); ++i) {
      // Serial reference: the ranks' values added in rank order, rounding to half after each.
      float acc = __half2float(__float2half(0.25f + static_cast<float>(i)));
      for (int r = 1; r < 5; ++r) {
        acc = __half2float(__float2half(
            acc +
            __half2float(__float2half(static_cast<float>(r + 1) * 0.25f + static_cast<float>(i)))));
      }
      CHECK(__half2float(h[i]) == acc);
      CHECK(__bfloat162float(b[i]) ==
            __bfloat162float(__float2bfloat16(4.0f - static_cast<float>(i))));
    }
  });
}

TEST_CASE("nccl backend (host double): many tensors go out as one group") {
  strata::LocalWorld(4).run([](strata::LocalComm& host) {
    FakeNccl comm = fake::bootstrap(host, quick());
    std::vector<std::vector<double>> storage{std::vector<double>(3), std::vector<double>(0),
                                             std::vector<double>(100)};
    std::vector<std::span<double>> tensors;
    for (auto& s : storage) {
      for (std::size_t i = 0; i < s.size(); ++i) s[i] = comm.rank() * 10.0 + static_cast<double>(i);
      tensors.emplace_back(s);
    }
    host.barrier();
    const long groups_before = fake::stats().groups.load();
    host.barrier();
    comm.all_reduce_many(std::span<const std::span<double>>(tensors), strata::ReduceOp::average);
    comm.synchronize();
    host.barrier();
    // Four ranks, one group each: the three tensors never went out one by one.
    CHECK(fake::stats().groups.load() - groups_before == 4);
    for (const auto& s : storage) {
      for (std::size_t i = 0; i < s.size(); ++i) {
        CHECK(s[i] == doctest::Approx(15.0 + static_cast<double>(i)).epsilon(1e-14));
      }
    }
  });
}

TEST_CASE("nccl backend (host double): split shares the stream and orders members by key") {
  strata::LocalWorld(6).run([](strata::LocalComm& host) {
    FakeNccl comm = fake::bootstrap(host, quick());
    FakeNccl sub = comm.split(comm.rank() % 2, -comm.rank());
    CHECK(sub.stream() == comm.stream());
    CHECK(sub.size() == 3);
    CHECK(sub.rank() == 2 - comm.rank() / 2);
    std::vector<std::int32_t> v{comm.rank()};
    sub.all_reduce(std::span<std::int32_t>(v), strata::ReduceOp::sum);
    sub.synchronize();
    CHECK(v[0] == (comm.rank() % 2 == 0 ? 0 + 2 + 4 : 1 + 3 + 5));
    CHECK_THROWS_WITH_AS(comm.split(-1, 0), doctest::Contains("color -1 is negative"),
                         strata::usage_error);
  });
}

TEST_CASE("nccl backend (host double): a peer that never joins makes the wait fail, not hang") {
  Messages messages;
  strata::LocalWorld(3).run([&](strata::LocalComm& host) {
    FakeNccl comm = fake::bootstrap(host, quick(300ms));
    std::vector<float> v(10, 1.0f);
    if (comm.rank() != 2) {
      comm.all_reduce(std::span<float>(v), strata::ReduceOp::sum);  // rank 2 never comes
      const auto start = std::chrono::steady_clock::now();
      try {
        comm.synchronize();
        messages.add("no error");
      } catch (const strata::error& e) {
        messages.add(e.what());
        CHECK(std::chrono::steady_clock::now() - start < 5s);
        CHECK(!comm.broken().empty());
        CHECK_THROWS_WITH_AS(comm.all_reduce(std::span<float>(v), strata::ReduceOp::sum),
                             doctest::Contains("unusable since"), strata::error);
      }
      CHECK(v[0] == 1.0f);  // nothing was written
    }
    host.barrier();
  });
  expect_lost_peer(messages, 2);
}

TEST_CASE("nccl backend (host double): a rank that aborts makes its peers fail with an error") {
  Messages messages;
  strata::LocalWorld(4).run([&](strata::LocalComm& host) {
    FakeNccl comm = fake::bootstrap(host, quick(20s));
    std::vector<double> v(8, 2.0);
    if (comm.rank() == 3) {
      host.barrier();
      comm.abort();
      CHECK_THROWS_WITH_AS(comm.barrier(), doctest::Contains("abort() was called"), strata::error);
      return;
    }
    comm.all_reduce(std::span<double>(v), strata::ReduceOp::sum);
    host.barrier();
    const auto start = std::chrono::steady_clock::now();
    try {
      comm.synchronize();
      messages.add("no error");
    } catch (const strata::nccl_error& e) {
      messages.add(e.what());
      CHECK(e.code() == ncclRemoteError);
    }
    // Well before the 20 s deadline: the abort was seen, not waited out.
    CHECK(std::chrono::steady_clock::now() - start < 10s);
  });
  REQUIRE(messages.text.size() == 3);
  for (const std::string& m : messages.text) {
    CHECK_MESSAGE(m.find("asynchronous NCCL error") != std::string::npos, m);
  }
}

TEST_CASE("nccl backend (host double): creation waits for every rank under a deadline") {
  const ncclUniqueId id = FakeNccl::unique_id();
  // Two ranks are expected, only one joins.
  CHECK_THROWS_WITH_AS((void)FakeNccl::from_unique_id(id, 0, 2, quick(200ms)),
                       doctest::Contains("timed out after 200 ms"), strata::timeout_error);
  CHECK_THROWS_WITH_AS((void)FakeNccl::from_unique_id(id, 2, 2, quick()),
                       doctest::Contains("rank 2 is not a rank of a world of 2"),
                       std::invalid_argument);
}

TEST_CASE("nccl backend (host double): a bootstrap whose id cannot be made fails on every rank") {
  Messages messages;
  fake::Runtime::fail_unique_id = true;
  strata::LocalWorld(3).run([&](strata::LocalComm& host) {
    try {
      (void)fake::bootstrap(host, quick());
      messages.add("no error");
    } catch (const strata::nccl_error& e) {
      messages.add(e.what());
    }
  });
  REQUIRE(messages.text.size() == 3);
  for (const std::string& m : messages.text) {
    CHECK_MESSAGE(m.find("rank 0 could not make the unique id") != std::string::npos, m);
  }
}

TEST_CASE("nccl backend (host double): bad arguments throw before anything is enqueued") {
  strata::LocalWorld(2).run([](strata::LocalComm& host) {
    FakeNccl comm = fake::bootstrap(host, quick());
    std::vector<float> a(4), b(5);
    CHECK_THROWS_WITH_AS(
        comm.all_reduce(std::span<const float>(a), std::span<float>(b), strata::ReduceOp::sum),
        doctest::Contains("input has 4 elements but output has 5"), strata::usage_error);
    CHECK_THROWS_WITH_AS(comm.broadcast(std::span<float>(a), 2),
                         doctest::Contains("root 2 is not a rank"), strata::usage_error);
    CHECK_THROWS_WITH_AS(comm.all_gather(std::span<const float>(a), std::span<float>(b)),
                         doctest::Contains("it needs 4 x 2"), strata::usage_error);
    const std::vector<std::size_t> counts{1, 1};
    CHECK_THROWS_WITH_AS(comm.all_to_all(std::span<const float>(a), std::span(counts),
                                         std::span<float>(b), std::span(counts)),
                         doctest::Contains("counts add up to 2 sent and 2 received"),
                         strata::usage_error);
    // Still usable: argument errors do not break the communicator.
    comm.barrier();
    CHECK(comm.broken().empty());
  });
}

TEST_CASE("nccl backend (host double): unchecked uneven counts never wait for the stream") {
  strata::LocalWorld(3).run([](strata::LocalComm& host) {
    strata::NcclOptions opts = quick();
    opts.check_counts = false;
    FakeNccl comm = fake::bootstrap(host, opts);
    const auto n = static_cast<std::size_t>(comm.size());
    const auto me = static_cast<std::size_t>(comm.rank());
    std::vector<std::size_t> send(n), recv(n);
    for (std::size_t j = 0; j < n; ++j) {
      send[j] = conformance::uneven(me, j);
      recv[j] = conformance::uneven(j, me);
    }
    std::size_t total_send = 0, total_recv = 0;
    for (std::size_t j = 0; j < n; ++j) {
      total_send += send[j];
      total_recv += recv[j];
    }
    std::vector<std::int64_t> in(total_send), out(total_recv, -1);
    for (std::size_t i = 0; i < in.size(); ++i) {
      in[i] = comm.rank() * 1000 + static_cast<std::int64_t>(i);
    }
    // Earlier device work holds the stream until the host lets it go: a call that waited for
    // the stream would never return.
    std::atomic<bool> release{false};
    fake::Runtime::launch_host(comm.stream(), [&release] {
      while (!release) std::this_thread::yield();
    });
    comm.all_to_all(std::span<const std::int64_t>(in), std::span<const std::size_t>(send),
                    std::span<std::int64_t>(out), std::span<const std::size_t>(recv));
    CHECK(fake::Runtime::stream_query(comm.stream()) == cudaErrorNotReady);
    release = true;
    comm.synchronize();
    // Serial reference: what each sender's block for this rank holds.
    std::size_t k = 0;
    for (std::size_t j = 0; j < n; ++j) {
      std::size_t offset = 0;
      for (std::size_t d = 0; d < me; ++d) offset += conformance::uneven(j, d);
      for (std::size_t e = 0; e < recv[j]; ++e, ++k) {
        CHECK(out[k] ==
              static_cast<std::int64_t>(j) * 1000 + static_cast<std::int64_t>(offset + e));
      }
    }
  });
}

// The means of float and double tensors, with and without graphs, are the averager conformance
// (tests/averaging/nccl_averager_test.cpp); here, one graph per level, and half tensors.
TEST_CASE("device averager (host double): one graph per level, and half tensors") {
  for (const bool graphs : {false, true}) {
    CAPTURE(graphs);
    strata::LocalWorld(8).run([&](strata::LocalComm& host) {
      FakeNccl world = fake::bootstrap(host, quick());
      strata::DeviceAveragerOptions opts;
      opts.use_graphs = graphs;
      FakeAverager avg(world,
                       strata::RuntimeSchedule<strata::AbsolutePhase>(
                           strata::RuntimeHierarchy::parse("1:2,2:4,4:8"), /*warmup=*/0),
                       opts);
      std::vector<float> a(5, 1.0f), b(300, 2.0f);
      std::vector<__half> h(7);
      std::vector<std::span<float>> params{a, b};
      std::vector<std::span<__half>> hparams{h};
      const int r = world.rank();
      const std::size_t expected[] = {2, 0, 1, 0, 2, 0, 1, 0, 2};
      for (std::size_t step = 0; step < 9; ++step) {
        CHECK(avg.average(params, world.stream()) == expected[step]);
        avg.synchronize();
      }
      // Three levels ran: one graph each when enabled.
      CHECK(avg.graphs() == (graphs ? 3u : 0u));
      CHECK(avg.step() == 9);
      // Half tensors and the in-place form, on the same averager.
      for (std::size_t i = 0; i < h.size(); ++i) h[i] = __float2half(static_cast<float>(r));
      CHECK(avg.average(hparams, world.stream()) == 0);  // step 9: pairs
      std::vector<double> flat(33, static_cast<double>(r));
      CHECK(avg.average(std::span<double>(flat), world.stream()) == 1);  // step 10: fours
      avg.synchronize();
      const float pair = static_cast<float>(r / 2 * 2) + 0.5f;
      for (const __half& x : h) CHECK(__half2float(x) == __half2float(__float2half(pair)));
      const double four = static_cast<double>(r / 4 * 4) + 1.5;
      for (double x : flat) CHECK(x == doctest::Approx(four).epsilon(1e-15));
      CHECK(avg.graphs() == (graphs ? 5u : 0u));
    });
  }
}

TEST_CASE("device averager (host double): replayed graphs enqueue no NCCL call") {
  strata::LocalWorld(4).run([&](strata::LocalComm& host) {
    FakeNccl world = fake::bootstrap(host, quick());
    FakeAverager avg(
        world,
        strata::RuntimeSchedule<strata::AbsolutePhase>(strata::RuntimeHierarchy::parse("1:4"), 0),
        strata::DeviceAveragerOptions{true});
    std::vector<double> w(64, static_cast<double>(world.rank()));
    std::vector<std::span<double>> params{w};
    avg.average(params, world.stream());  // captures
    avg.synchronize();
    host.barrier();
    const long launches_before = fake::stats().graph_launches.load();
    const long kernels_before = HostStreamKernels<double>::launches.load();
    host.barrier();
    for (int i = 0; i < 5; ++i) avg.average(params, world.stream());
    avg.synchronize();
    host.barrier();
    CHECK(fake::stats().graph_launches.load() - launches_before == 4 * 5);
    CHECK(HostStreamKernels<double>::launches.load() == kernels_before);  // nothing re-enqueued
    for (double x : w) CHECK(x == 1.5);
    host.barrier();
    // The tensors move: the graph is captured again for the new buffers.
    std::vector<double> moved(64, static_cast<double>(world.rank() * 2));
    std::vector<std::span<double>> params2{moved};
    avg.average(params2, world.stream());
    avg.synchronize();
    CHECK(avg.graphs() == 1);
    for (double x : moved) CHECK(x == 3.0);
  });
}

// A failed averaging changes nothing on every backend (the averager conformance); on a device
// communicator that fails during capture, the capture must also end.
TEST_CASE("device averager (host double): a call on an aborted communicator ends its capture") {
  strata::LocalWorld(2).run([&](strata::LocalComm& host) {
    FakeNccl world = fake::bootstrap(host, quick());
    FakeAverager avg(
        world,
        strata::RuntimeSchedule<strata::AbsolutePhase>(strata::RuntimeHierarchy::parse("1:2"), 0),
        strata::DeviceAveragerOptions{true});
    std::vector<float> w(16, static_cast<float>(world.rank()));
    std::vector<std::span<float>> params{w};
    host.barrier();
    world.abort();
    CHECK_THROWS_AS(avg.average(params, world.stream()), strata::error);
    CHECK(avg.step() == 0);
    for (float x : w) CHECK(x == static_cast<float>(world.rank()));
    // The failed capture was ended: the stream is not left capturing.
    cudaError_t q = cudaErrorNotReady;
    while ((q = fake::Runtime::stream_query(world.stream())) == cudaErrorNotReady) {
      std::this_thread::yield();
    }
    CHECK(q == cudaSuccess);
  });
}

TEST_CASE(
    "device averager (host double): a replayed graph is not launched on an aborted communicator") {
  strata::LocalWorld(2).run([&](strata::LocalComm& host) {
    FakeNccl world = fake::bootstrap(host, quick());
    FakeAverager avg(
        world,
        strata::RuntimeSchedule<strata::AbsolutePhase>(strata::RuntimeHierarchy::parse("1:2"), 0),
        strata::DeviceAveragerOptions{true});
    std::vector<float> w(16, static_cast<float>(world.rank()));
    std::vector<std::span<float>> params{w};
    avg.average(params, world.stream());  // captured and launched
    avg.synchronize();
    CHECK(avg.graphs() == 1);
    host.barrier();
    const long cancelled = fake::stats().cancelled.load();
    if (world.rank() == 0) world.abort();
    host.barrier();
    if (world.rank() == 0) {
      CHECK_THROWS_WITH_AS(avg.average(params, world.stream()),
                           doctest::Contains("unusable since abort() was called"), strata::error);
      CHECK(avg.step() == 1);
    } else {
      // The peer learns of the abort from NCCL's asynchronous error, at the latest when it waits.
      bool failed = false;
      try {
        avg.average(params, world.stream());
        avg.synchronize();
      } catch (const strata::error& e) {
        failed = std::string(e.what()).find("asynchronous NCCL error") != std::string::npos ||
                 std::string(e.what()).find("unusable") != std::string::npos;
      }
      CHECK(failed);
      // Work enqueued before the fault may still run: wait for it before `w` goes away.
      while (fake::Runtime::stream_query(world.stream()) == cudaErrorNotReady) {
        std::this_thread::yield();
      }
    }
    host.barrier();
    CHECK(fake::stats().cancelled.load() == cancelled);  // no work ever reached the aborted member
    // Rank 0 threw before enqueuing anything. Rank 1's step was enqueued before the fault was
    // known, so its tensors are not to be trusted (as on a GPU): only rank 0's are checked.
    if (world.rank() == 0) {
      for (float x : w) CHECK(x == 0.5f);  // the first step's mean, untouched since
    }
  });
}

TEST_CASE(
    "device averager (host double): a fault on a subgroup's communicator surfaces and aborts all "
    "levels") {
  strata::LocalWorld(4).run([&](strata::LocalComm& host) {
    FakeNccl world = fake::bootstrap(host, quick(20s));
    FakeAverager avg(world,
                     strata::RuntimeSchedule<strata::AbsolutePhase>(
                         strata::RuntimeHierarchy::parse("1:2,2:4"), 1),  // step 1: pairs
                     strata::DeviceAveragerOptions{false});
    std::vector<double> w(8, static_cast<double>(world.rank()));
    std::vector<std::span<double>> params{w};
    CHECK(!avg.average(params, world.stream()));  // warm-up
    if (world.rank() == 1) {
      avg.level_comm(0).abort();  // rank 1 gives up on its pair
      return;
    }
    if (world.rank() == 0) {
      bool threw = false;
      try {
        avg.average(params, world.stream());  // the pair's collective: rank 1 never comes
        avg.synchronize();
      } catch (const strata::nccl_error& e) {
        threw = true;
        CHECK(e.code() == ncclRemoteError);
      }
      CHECK(threw);
      // The fault surfaces at the call or at the next synchronisation (when the peer's abort is
      // seen while the members compare their calls, before this rank issued its collective, the
      // call fails first); the synchronisation aborts every level either way.
      try {
        avg.synchronize();
      } catch (const strata::error&) {
      }
      CHECK(!avg.level_comm(0).broken().empty());
      CHECK(!avg.level_comm(1).broken().empty());  // every level was aborted
      // The unpack enqueued before the fault may still run: wait for it before `w` goes away.
      while (fake::Runtime::stream_query(world.stream()) == cudaErrorNotReady) {
        std::this_thread::yield();
      }
    }
  });
}

TEST_CASE(
    "nccl backend (host double): counts that would overflow and moved-from communicators are "
    "errors") {
  strata::LocalWorld(2).run([](strata::LocalComm& host) {
    FakeNccl comm = fake::bootstrap(host, quick());
    std::vector<float> a(2), b(2);
    const std::vector<std::size_t> huge{static_cast<std::size_t>(-1), 3};
    const std::vector<std::size_t> ok{1, 1};
    CHECK_THROWS_WITH_AS(comm.all_to_all(std::span<const float>(a), std::span(huge),
                                         std::span<float>(b), std::span(ok)),
                         doctest::Contains("exceeds the buffers"), strata::usage_error);
    FakeNccl moved = std::move(comm);
    CHECK_THROWS_WITH_AS(comm.all_reduce(std::span<float>(a), strata::ReduceOp::sum),
                         doctest::Contains("moved from"), strata::error);
    moved.barrier();
  });
}

// Every backend takes its default deadline from the one constant of the front end.
static_assert(strata::NcclOptions{}.timeout == strata::detail::default_timeout);

// --- NCCL as it really behaves: each test fails on the behaviour the double used to allow -------

TEST_CASE("nccl double: a split completes asynchronously, the parent reports it in progress") {
  strata::LocalWorld(2).run([](strata::LocalComm& host) {
    FakeNccl comm = fake::bootstrap(host, quick());
    fake::Comm* child = nullptr;
    // Rank 1 alone has called: NCCL returns at once, writes no handle, and the parent is busy.
    if (comm.rank() == 1) {
      CHECK(fake::Runtime::split(comm.native(), 0, 0, &child, false) == ncclSuccess);
      CHECK(child == nullptr);
      ncclResult_t state = ncclSuccess;
      CHECK(fake::Runtime::async_error(comm.native(), &state) == ncclSuccess);
      CHECK(state == ncclInProgress);
    }
    host.barrier();
    if (comm.rank() == 0)
      CHECK(fake::Runtime::split(comm.native(), 0, 0, &child, false) == ncclSuccess);
    // Once both have called, the handle arrives and the parent is ready again.
    ncclResult_t state = ncclInProgress;
    while (state == ncclInProgress) {
      (void)fake::Runtime::async_error(comm.native(), &state);
      std::this_thread::yield();
    }
    CHECK(state == ncclSuccess);
    REQUIRE(child != nullptr);
    int size = 0;
    CHECK(fake::Runtime::count(child, &size) == ncclSuccess);
    CHECK(size == 2);
    (void)fake::Runtime::destroy(child);
  });
}

TEST_CASE("nccl double: a communicator answers count and rank only once it is ready") {
  const ncclUniqueId id = FakeNccl::unique_id();
  fake::Comm* c = nullptr;
  CHECK(fake::Runtime::init_rank(&c, 2, id, 0, false) == ncclInProgress);
  int n = 0;
  CHECK(fake::Runtime::count(c, &n) == ncclInvalidArgument);
  CHECK(fake::Runtime::user_rank(c, &n) == ncclInvalidArgument);
  (void)fake::Runtime::abort(c);
}

TEST_CASE("nccl backend (host double): split waits for the parent before it reads the child") {
  // Every level below the world is a split: with a split that completes asynchronously, reading
  // the child's handle before the parent is ready finds none.
  strata::LocalWorld(6).run([](strata::LocalComm& host) {
    FakeNccl comm = fake::bootstrap(host, quick());
    if (comm.rank() == 5) std::this_thread::sleep_for(50ms);  // the others wait in the split
    FakeNccl sub = comm.split(comm.rank() / 3, comm.rank());
    CHECK(sub.size() == 3);
    CHECK(sub.rank() == comm.rank() % 3);
    std::vector<std::int64_t> v{comm.rank()};
    sub.all_reduce(std::span<std::int64_t>(v), strata::ReduceOp::sum);
    sub.synchronize();
    CHECK(v[0] == (comm.rank() < 3 ? 0 + 1 + 2 : 3 + 4 + 5));
  });
}

TEST_CASE("nccl backend (host double): a split that a member never joins times out, not hangs") {
  Messages messages;
  strata::LocalWorld(3).run([&](strata::LocalComm& host) {
    FakeNccl comm = fake::bootstrap(host, quick(300ms));
    if (comm.rank() != 2) {
      const auto start = std::chrono::steady_clock::now();
      try {
        (void)comm.split(0, 0);
        messages.add("no error");
      } catch (const strata::timeout_error& e) {
        messages.add(e.what());
      }
      CHECK(std::chrono::steady_clock::now() - start < 5s);
      CHECK(!comm.broken().empty());
    }
    host.barrier();
  });
  REQUIRE(messages.text.size() == 2);
  for (const std::string& m : messages.text) {
    CHECK_MESSAGE(m.find("split on rank") != std::string::npos, m);
    CHECK_MESSAGE(m.find("timed out after 300 ms") != std::string::npos, m);
  }
}

TEST_CASE("nccl double: a copy into pageable memory blocks the host until it is done") {
  strata::LocalWorld(1).run([](strata::LocalComm& host) {
    FakeNccl comm = fake::bootstrap(host, quick());
    const strata::DeviceGuard<fake::Runtime> on(comm.device());
    strata::DeviceBuffer<int, fake::Runtime> device(4);
    std::atomic<bool> release{false};
    fake::Runtime::launch_host(comm.stream(), [&release] {
      while (!release) std::this_thread::yield();
    });
    std::vector<int> pageable(4);
    std::thread later([&release] {
      std::this_thread::sleep_for(50ms);
      release = true;
    });
    const long waits = fake::stats().pageable_waits.load();
    (void)fake::Runtime::memcpy_async(pageable.data(), device.data(), 16, comm.stream());
    CHECK(release.load());  // it could only return after the stream ran the copy
    CHECK(fake::stats().pageable_waits.load() == waits + 1);
    later.join();
  });
}

TEST_CASE("nccl backend (host double): the uneven counts check never blocks past its deadline") {
  // The check copies the gathered counts back to the host. Into pageable memory that copy would
  // return only once done, behind an all-gather a missing peer never joins: no deadline could end
  // the wait. Through the communicator's pinned words, the wait is polled and times out.
  Messages messages;
  const long waits = fake::stats().pageable_waits.load();
  strata::LocalWorld(3).run([&](strata::LocalComm& host) {
    FakeNccl comm = fake::bootstrap(host, quick(300ms));
    if (comm.rank() != 2) {
      const std::vector<std::size_t> one{1, 1, 1};
      std::vector<float> in(3, 1.0f), out(3);
      try {
        comm.all_to_all(std::span<const float>(in), std::span<const std::size_t>(one),
                        std::span<float>(out), std::span<const std::size_t>(one));
        messages.add("no error");
      } catch (const strata::error& e) {
        messages.add(e.what());
      }
    }
    host.barrier();
  });
  CHECK(fake::stats().pageable_waits.load() == waits);
  expect_lost_peer(messages, 2);
}

TEST_CASE("nccl double: two members of one communicator on one device are refused") {
  Messages messages;
  strata::LocalWorld(2).run([&](strata::LocalComm& host) {
    strata::NcclOptions same = quick(2s);
    same.device = 3;
    try {
      FakeNccl comm = strata::nccl_bootstrap<fake::Runtime>(host, same);
      messages.add("no error");
    } catch (const strata::nccl_error& e) {
      messages.add(e.what());
    }
  });
  REQUIRE(messages.text.size() == 2);
  for (const std::string& m : messages.text) {
    CHECK_MESSAGE(m.find("Duplicate GPU detected") != std::string::npos, m);
  }
}

TEST_CASE("nccl double: an unsafe call during a capture invalidates it") {
  strata::LocalWorld(1).run([](strata::LocalComm& host) {
    FakeNccl comm = fake::bootstrap(host, quick());
    CHECK(fake::Graphs::begin_capture(comm.stream()) == cudaSuccess);
    CHECK(fake::Runtime::stream_query(comm.stream()) == cudaErrorStreamCaptureUnsupported);
    fake::Graph* g = nullptr;
    CHECK(fake::Graphs::end_capture(comm.stream(), &g) == cudaErrorStreamCaptureInvalidated);
    CHECK(g == nullptr);
  });
}

TEST_CASE("nccl backend (host double): everything lands on the communicator's device") {
  // The calling thread makes another device current between calls: the communicator and the
  // averager still allocate and enqueue on theirs, and leave the thread's choice as it was.
  strata::LocalWorld(2).run([](strata::LocalComm& host) {
    FakeNccl world = fake::bootstrap(host, quick());
    CHECK(world.device() == host.rank());
    FakeAverager avg(
        world,
        strata::RuntimeSchedule<strata::AbsolutePhase>(strata::RuntimeHierarchy::parse("1:2"), 0),
        strata::DeviceAveragerOptions{true});
    const int elsewhere = 10 + host.rank();
    REQUIRE(fake::Runtime::set_device(elsewhere) == cudaSuccess);
    std::vector<float> w(40, static_cast<float>(host.rank()));
    std::vector<std::span<float>> params{w};
    CHECK(avg.average(params, world.stream()) == 0);
    avg.synchronize();
    for (float x : w) CHECK(x == 0.5f);
    world.barrier();  // allocates the communicator's scratch words
    int current = -1;
    (void)fake::Runtime::get_device(&current);
    CHECK(current == elsewhere);
    (void)fake::Runtime::set_device(0);
  });
}

TEST_CASE("device averager (host double): half tensors near the top of their range average") {
  // 60000 on every rank: a half sum of 4 ranks overflows to inf before any scaling.
  strata::LocalWorld(4).run([](strata::LocalComm& host) {
    FakeNccl world = fake::bootstrap(host, quick());
    FakeAverager avg(world, strata::RuntimeSchedule<strata::AbsolutePhase>(
                                strata::RuntimeHierarchy::parse("1:4"), 0));
    const float big = host.rank() % 2 == 0 ? 60000.0f : 61000.0f;
    std::vector<__half> h(9, __float2half(big));
    std::vector<std::span<__half>> params{h};
    CHECK(avg.average(params, world.stream()) == 0);
    avg.synchronize();
    // Serial reference: NCCL's average scales each input by 1/4 in float, rounds to half, and
    // adds in rank order, rounding to half after each addition.
    float acc = 0.0f;
    for (int r = 0; r < 4; ++r) {
      const float x = __half2float(__float2half(r % 2 == 0 ? 60000.0f : 61000.0f));
      acc = __half2float(__float2half(acc + x * 0.25f));
    }
    for (const __half& x : h) {
      CHECK(std::isfinite(__half2float(x)));
      CHECK(__half2float(x) == acc);
    }
  });
}

TEST_CASE("nccl backend (host double): another thread can make a waiting rank give up") {
  strata::LocalWorld(2).run([](strata::LocalComm& host) {
    FakeNccl comm = fake::bootstrap(host, quick(20s));
    if (comm.rank() == 0) {
      std::vector<float> v(8, 1.0f);
      comm.all_reduce(std::span<float>(v), strata::ReduceOp::sum);  // rank 1 never joins
      std::thread watchdog([&comm] {
        std::this_thread::sleep_for(100ms);
        comm.request_abort();
      });
      const auto start = std::chrono::steady_clock::now();
      CHECK_THROWS_WITH_AS(comm.synchronize(), doctest::Contains("request_abort() was called"),
                           strata::error);
      CHECK(std::chrono::steady_clock::now() - start < 5s);  // not the 20 s deadline
      watchdog.join();
      CHECK(!comm.broken().empty());
    }
    host.barrier();
  });
}

TEST_CASE(
    "device averager (host double): a buffer reallocated at the same address is captured anew") {
  // NCCL registers the buffers of captured collectives; a replay over a new allocation at the old
  // address would use a stale registration.
  strata::LocalWorld(2).run([](strata::LocalComm& host) {
    FakeNccl world = fake::bootstrap(host, quick());
    const strata::DeviceGuard<fake::Runtime> on(world.device());
    FakeAverager avg(
        world,
        strata::RuntimeSchedule<strata::AbsolutePhase>(strata::RuntimeHierarchy::parse("1:2"), 0),
        strata::DeviceAveragerOptions{true});
    std::uint64_t first_id = 0;
    std::uint64_t second_id = 0;
    float* first_address = nullptr;
    {
      strata::DeviceBuffer<float, fake::Runtime> flat(64);
      std::fill(flat.data(), flat.data() + 64, static_cast<float>(host.rank()));
      avg.average(flat.span(), world.stream());
      avg.synchronize();
      (void)fake::Runtime::buffer_id(flat.data(), &first_id);
      first_address = flat.data();
    }
    CHECK(avg.graphs() == 1);
    host.barrier();
    const long captures = fake::stats().captures.load();
    host.barrier();
    strata::DeviceBuffer<float, fake::Runtime> again(64);
    (void)fake::Runtime::buffer_id(again.data(), &second_id);
    CHECK(second_id != first_id);
    std::fill(again.data(), again.data() + 64, static_cast<float>(2 * host.rank()));
    avg.average(again.span(), world.stream());
    avg.synchronize();
    for (std::size_t i = 0; i < 64; ++i) CHECK(again.data()[i] == 1.0f);
    // Whether or not malloc gave the old address back (it usually does), the step was captured
    // anew for the new allocation, and the graph of the freed buffer is gone.
    host.barrier();
    CHECK(fake::stats().captures.load() - captures == 2);
    CHECK(avg.graphs() == 1);
    MESSAGE("same address reused: " << (again.data() == first_address));
  });
}

// --- NCCL's blocking mode (NcclOptions::blocking) ------------------------------------------------

TEST_CASE("nccl double: a call before the previous one was seen complete is refused") {
  // NCCL's contract in non-blocking mode: after ncclInProgress, poll ncclCommGetAsyncError until
  // it reports success before the next call; a call before that is an invalid argument.
  strata::LocalWorld(2).run([](strata::LocalComm& host) {
    FakeNccl comm = fake::bootstrap(host, quick());
    const strata::DeviceGuard<fake::Runtime> on(comm.device());
    strata::DeviceBuffer<float, fake::Runtime> v(4);
    CHECK(fake::Runtime::all_reduce(v.data(), v.data(), 4, ncclFloat32, ncclSum, comm.native(),
                                    comm.stream()) == ncclInProgress);
    CHECK(fake::Runtime::all_reduce(v.data(), v.data(), 4, ncclFloat32, ncclSum, comm.native(),
                                    comm.stream()) == ncclInvalidArgument);
    CHECK(fake::Runtime::error_string(ncclInvalidArgument, comm.native())
              .find("before the previous operation returned ncclSuccess") != std::string::npos);
    ncclResult_t state = ncclSuccess;
    CHECK(fake::Runtime::async_error(comm.native(), &state) == ncclSuccess);
    CHECK(state == ncclInProgress);
    CHECK(fake::Runtime::async_error(comm.native(), &state) == ncclSuccess);
    CHECK(state == ncclSuccess);
    comm.synchronize();
  });
}

TEST_CASE(
    "nccl backend (host double): an exception inside a group leaves the communicator usable") {
  // The group's destructor ends it on the error path; NCCL answers ncclInProgress for the part
  // already enqueued, and the communicator takes no call until that is seen complete. A
  // destructor that ignored the answer left the next call to fail with "invalid argument".
  strata::LocalWorld(2).run([](strata::LocalComm& host) {
    FakeNccl comm = fake::bootstrap(host, quick());
    std::vector<double> a(3, comm.rank() + 1.0), b(5, 7.0);
    const std::vector<std::span<double>> tensors{a, b};
    host.barrier();
    if (comm.rank() == 0) fake::Runtime::launch_latency_us = 50'000;  // NCCL's thread is slow
    host.barrier();
    fake::Runtime::throw_at_collective() = 2;  // the second tensor's enqueue throws
    CHECK_THROWS_AS(
        comm.all_reduce_many(std::span<const std::span<double>>(tensors), strata::ReduceOp::sum),
        std::bad_alloc);
    CHECK(comm.broken().empty());
    // At once, without a synchronize: the call must not meet the group still in progress.
    comm.all_reduce(std::span<double>(b), strata::ReduceOp::sum);
    comm.synchronize();
    CHECK(comm.broken().empty());
    for (const double x : a) CHECK(x == 3.0);  // the part enqueued before the exception ran
    for (const double x : b) CHECK(x == 14.0);
    host.barrier();
    if (comm.rank() == 0) fake::Runtime::launch_latency_us = 0;
  });
}

TEST_CASE("nccl backend (host double, blocking mode): the conformance suite on worlds 1 to 16") {
  // Nothing returns ncclInProgress: no NCCL thread and no poll per call. Splits inherit the mode.
  const long before = fake::stats().in_progress.load();
  conformance::for_each_world("nccl blocking, verify on", conformance::sizes_up_to(16), [](int n) {
    strata::LocalWorld(n).run([](strata::LocalComm& host) {
      strata::NcclOptions options = quick();
      options.verify_arguments = true;
      options.blocking = true;
      Synchronous comm(fake::bootstrap(host, options));
      conformance::run_all(comm);
    });
  });
  CHECK(fake::stats().in_progress.load() == before);
  strata::LocalWorld(4).run([](strata::LocalComm& host) {
    strata::NcclOptions options = quick();
    options.blocking = true;
    FakeNccl comm = fake::bootstrap(host, options);
    FakeNccl sub = comm.split(comm.rank() % 2, comm.rank());
    CHECK(sub.options().blocking);
    std::vector<double> v(6, comm.rank());
    sub.all_reduce(std::span<double>(v), strata::ReduceOp::sum);
    sub.synchronize();
    for (const double x : v) CHECK(x == (comm.rank() % 2 == 0 ? 2.0 : 4.0));
  });
  // The same work in the default mode goes through NCCL's in-progress path.
  strata::LocalWorld(2).run([](strata::LocalComm& host) {
    FakeNccl comm = fake::bootstrap(host, quick());
    std::vector<double> v(6, 1.0);
    comm.all_reduce(std::span<double>(v), strata::ReduceOp::sum);
    comm.synchronize();
  });
  CHECK(fake::stats().in_progress.load() > before);
}

TEST_CASE(
    "nccl backend (host double, blocking mode): a peer that stops after connecting times out") {
  // Once connected, a blocking collective returns when enqueued; the wait for the stream is
  // polled as in the default mode, so a missing peer is a timeout_error, not a hang.
  Messages messages;
  strata::LocalWorld(3).run([&](strata::LocalComm& host) {
    strata::NcclOptions options = quick(300ms);
    options.blocking = true;
    FakeNccl comm = fake::bootstrap(host, options);
    std::vector<float> v(10, 1.0f);
    comm.all_reduce(std::span<float>(v), strata::ReduceOp::sum);  // connects every member
    comm.synchronize();
    CHECK(v[0] == 3.0f);
    if (comm.rank() != 2) {
      comm.all_reduce(std::span<float>(v), strata::ReduceOp::sum);  // rank 2 never comes
      try {
        comm.synchronize();
        messages.add("no error");
      } catch (const strata::error& e) {
        messages.add(e.what());
        CHECK(!comm.broken().empty());
      }
      CHECK(v[0] == 3.0f);
    }
    host.barrier();
  });
  expect_lost_peer(messages, 2);
}

TEST_CASE("nccl backend (host double, blocking mode): a deadline of zero is refused") {
  // The watchdog would end the process during the first call that waits inside NCCL.
  strata::NcclOptions options = quick(0ms);
  options.blocking = true;
  CHECK_THROWS_WITH_AS(
      (void)FakeNccl::from_unique_id(FakeNccl::unique_id(), 0, 1, options),
      doctest::Contains("a blocking communicator needs a positive timeout, not 0 ms"),
      std::invalid_argument);
}
