// TorchComm over PyTorch's gloo process groups: the backend-independent suites (collectives,
// averagers, the sharded optimizer) with ranks as threads of this process, each holding a gloo
// process group of its own over one in-memory store (c10d::HashStore), connected over loopback
// TCP as separate processes would be; then what only this backend has: deadlines with a rank
// that never arrives, and the process group's own failures.
//
// PyTorch's headers come first: they bring glog, whose CHECK macros doctest's replace here.
#include <strata/torch/comm.hpp>
#include <strata/torch/gloo.hpp>
#include <torch/csrc/distributed/c10d/HashStore.hpp>

#include "glog_macros_off.hpp"

#include <doctest/doctest.h>

#include <strata/averaging/averager.hpp>
#include <strata/optim/adam.hpp>
#include <strata/optim/sharded_optimizer.hpp>

#include <chrono>
#include <cstddef>
#include <cstring>
#include <exception>
#include <string>
#include <thread>
#include <vector>

#include "../averaging/averager_conformance.hpp"
#include "../averaging/host_harness.hpp"
#include "../comm/conformance.hpp"
#include "../optim/serial_updates.hpp"

namespace {

using namespace std::chrono_literals;
namespace ac = averager_conformance;

// Runs `f(comm)` on n threads, each rank of one gloo world; rethrows the first rank's exception.
// A rank that fails leaves the others to their deadline (`timeout`), so nothing hangs.
template <class F>
void gloo_world(int n, F&& f, std::chrono::milliseconds timeout = 60s, bool verify = true) {
  auto store = c10::make_intrusive<c10d::HashStore>();
  std::vector<std::exception_ptr> errors(static_cast<std::size_t>(n));
  std::vector<std::thread> ranks;
  for (int r = 0; r < n; ++r) {
    ranks.emplace_back([&, r] {
      try {
        auto group = strata::make_gloo_group(store, r, n, timeout);
        strata::TorchComm comm = strata::gloo_comm(group, store, verify);
        f(comm);
      } catch (...) {
        errors[static_cast<std::size_t>(r)] = std::current_exception();
      }
    });
  }
  for (auto& t : ranks) t.join();
  for (auto& e : errors) {
    if (e) std::rethrow_exception(e);
  }
}

// The averager harness (averager_conformance.hpp) over gloo worlds of 1 to 8 ranks.
struct TorchHarness {
  static constexpr std::string_view name = "torch";
  using Rank = averager_harness::HostRank<strata::TorchComm>;
  static std::vector<int> world_sizes() { return conformance::sizes_up_to(8); }
  template <class F>
  static void run(int n, F&& f) {
    gloo_world(n, [&](strata::TorchComm& comm) {
      Rank r(comm);
      f(r);
    });
  }
};

}  // namespace

TEST_CASE("torch backend: the collective conformance suite on gloo worlds of 1 to 8") {
  conformance::for_each_world("torch", conformance::sizes_up_to(8), [](int n) {
    gloo_world(n, [](strata::TorchComm& comm) { conformance::run_all(comm); });
  });
}

// The device communicator's own code (staging on the device, reductions as tensor operations,
// the device's stream settled at the end) on the CPU "device", over gloo: everything but the
// CUDA stream itself.
TEST_CASE("torch backend: the device communicator's conformance suite, on the CPU device") {
  conformance::for_each_world("torch device", {1, 2, 3, 4, 7}, [](int n) {
    auto store = c10::make_intrusive<c10d::HashStore>();
    std::vector<std::exception_ptr> errors(static_cast<std::size_t>(n));
    std::vector<std::thread> ranks;
    for (int r = 0; r < n; ++r) {
      ranks.emplace_back([&, r] {
        try {
          auto group = strata::make_gloo_group(store, r, n, 60s);
          strata::TorchDeviceComm comm(group, store,
                                       strata::gloo_group_factory(group->getOptions()),
                                       c10::Device(c10::kCPU));
          CHECK(comm.device().is_cpu());
          conformance::run_all(comm);
          std::vector<float> x{float(r)}, y{1.0f, 2.0f * float(r)};
          std::vector<std::span<float>> list{x, y};
          comm.all_reduce_tensors(std::span<const std::span<float>>(list),
                                  strata::ReduceOp::average);
          CHECK(x[0] == doctest::Approx((n - 1) / 2.0));
          CHECK(y[0] == doctest::Approx(1.0));
          CHECK(y[1] == doctest::Approx(n - 1.0));
        } catch (...) {
          errors[static_cast<std::size_t>(r)] = std::current_exception();
        }
      });
    }
    for (auto& t : ranks) t.join();
    for (auto& e : errors) {
      if (e) std::rethrow_exception(e);
    }
  });
}

TEST_CASE("torch backend: the conformance suite without argument agreement") {
  conformance::for_each_world("torch, unverified", {1, 3, 4}, [](int n) {
    gloo_world(
        n,
        [](strata::TorchComm& comm) {
          // Every collective but the disagreements, which only the agreement can see.
          conformance::all_reduce<double>(comm);
          conformance::all_reduce<std::int32_t>(comm);
          conformance::broadcast<double>(comm);
          conformance::all_gather<float>(comm);
          conformance::reduce_scatter<double>(comm);
          conformance::all_to_all<std::int64_t>(comm);
          conformance::all_to_all_uneven<float>(comm);
          conformance::split(comm);
          comm.barrier();
        },
        60s, false);
  });
}

// Gloo's ring all-reduce sums each element in an order that depends on where its chunk falls in
// the buffer: the tensor-list path and the arena path (whose buffer holds padding) agree to
// rounding, not bit for bit.
template <>
inline constexpr bool averager_conformance::size_independent_sums<strata::TorchComm> = false;

TEST_CASE("averagers: the serial mean on random hierarchies (torch)") {
  ac::random_hierarchies<TorchHarness>(/*seed=*/7, /*trials=*/2);
  ac::random_hierarchies<TorchHarness, float>(/*seed=*/8, /*trials=*/1);
}

TEST_CASE("averagers: a failed averaging leaves the parameters and the step as they were (torch)") {
  ac::failed_averaging<TorchHarness>();
}

TEST_CASE("averagers: a restored averager continues the same schedule (torch)") {
  ac::restore<TorchHarness>();
}

TEST_CASE("averagers: post-local SGD syncs gradients over the world, then per node (torch)") {
  ac::post_local<TorchHarness>();
}

TEST_CASE("sharded optimizer: flat and hierarchical Adam over gloo against the serial Adam") {
  namespace opt = strata::optim;
  for (const std::size_t w : {std::size_t{2}, std::size_t{4}}) {
    for (const std::size_t node : {std::size_t{0}, std::size_t{2}}) {
      CAPTURE(w);
      CAPTURE(node);
      const serial::Problem p{{100, 37, 1000, 0, 5}, w, 77};
      constexpr std::uint64_t steps = 3;
      const auto e =
          serial::run(p, serial::AdamRef{.lr = 0.01, .weight_decay = 0.1}, steps, std::nullopt);
      opt::ShardedOptions o;
      o.schedule = node == 0 ? opt::ShardSchedule::flat : opt::ShardSchedule::hierarchical;
      o.ranks_per_node = node;
      o.bucket_bytes = 64 * sizeof(double);
      std::vector<double> errors(w);
      gloo_world(static_cast<int>(w), [&](strata::TorchComm& comm) {
        const auto got = serial::drive<double>(comm, p, opt::Adam{.lr = 0.01, .weight_decay = 0.1},
                                               o, steps, serial::Marking::ready_order);
        errors[static_cast<std::size_t>(comm.rank())] = serial::max_error(got.params, e.params);
      });
      for (const double err : errors) CHECK(err <= 1e-12);
    }
  }
}

TEST_CASE(
    "torch backend: a rank that never arrives is a timeout, and the communicator is unusable") {
  gloo_world(
      2,
      [](strata::TorchComm& comm) {
        std::vector<double> v(4, 1.0);
        if (comm.rank() == 1) {
          // Arrives only after rank 0 gave up, so its own all-reduce fails too (rank 0 left).
          std::this_thread::sleep_for(800ms);
          return;
        }
        const auto start = std::chrono::steady_clock::now();
        try {
          comm.all_reduce(std::span<double>(v), strata::ReduceOp::sum);
          FAIL("no timeout");
        } catch (const strata::timeout_error& e) {
          CHECK(std::string(e.what()).starts_with("strata: all_reduce on rank 0: timed out after"));
        }
        CHECK(std::chrono::steady_clock::now() - start < 5s);
        CHECK(v == std::vector<double>(4, 1.0));  // untouched
        CHECK(!comm.broken().empty());
        CHECK_THROWS_WITH_AS(
            comm.barrier(),
            "strata: barrier on rank 0: the communicator is unusable since an all_reduce timed out",
            strata::error);
      },
      300ms);
}

TEST_CASE("torch backend: without a store it runs collectives but cannot split") {
  auto store = c10::make_intrusive<c10d::HashStore>();
  auto group = strata::make_gloo_group(store, 0, 1, 10s);
  strata::TorchComm comm(group);
  std::vector<float> v{1.5f, 2.5f};
  comm.all_reduce(std::span<float>(v), strata::ReduceOp::average);
  CHECK(v == std::vector<float>{1.5f, 2.5f});
  CHECK_THROWS_WITH_AS(comm.split(0, 0),
                       "strata: split on rank 0: this TorchComm was made without a store and a "
                       "group factory, so it cannot create process groups",
                       strata::usage_error);
  CHECK_THROWS_AS(strata::TorchComm(c10::intrusive_ptr<c10d::ProcessGroup>()),
                  std::invalid_argument);
}

TEST_CASE("torch backend: splits of splits rendezvous under keys of their own") {
  gloo_world(8, [](strata::TorchComm& world) {
    // Two splits of the same colors one after the other, then a split of a split: each
    // rendezvous must find its own peers, not the previous group's.
    strata::TorchComm a = world.split(world.rank() % 2, world.rank());
    strata::TorchComm b = world.split(world.rank() % 2, -world.rank());
    strata::TorchComm c = a.split(a.rank() / 2, 0);
    CHECK(a.size() == 4);
    CHECK(b.rank() == 3 - a.rank());
    CHECK(c.size() == 2);
    std::vector<std::int64_t> v{world.rank()};
    c.all_reduce(std::span<std::int64_t>(v), strata::ReduceOp::sum);
    // a holds the world ranks p, p + 2, p + 4, p + 6 of one parity p; c pairs its first two and
    // its last two.
    const int p = world.rank() % 2;
    const int first = a.rank() < 2 ? p : p + 4;
    CHECK(v[0] == first + first + 2);
  });
}

TEST_CASE("torch backend: all_reduce_tensors averages a tensor list, and refuses what differs") {
  gloo_world(3, [](strata::TorchComm& comm) {
    const int me = comm.rank();
    std::vector<double> a{1.0 * me, 2.0}, b{3.0 * me};
    std::vector<std::span<double>> list{a, b};
    comm.all_reduce_tensors(std::span<const std::span<double>>(list), strata::ReduceOp::average);
    CHECK(a == std::vector<double>{1.0, 2.0});
    CHECK(b == std::vector<double>{3.0});

    // One member passes one tensor fewer, then one a longer tensor: every member throws the same
    // message, and nothing is written.
    std::vector<std::span<double>> fewer{a};
    conformance::expect_usage_error(
        me, "all_reduce_tensors",
        "rank 0 and rank 2 disagree: rank 0 passed 2 tensors, rank 2 passed 1", [&] {
          comm.all_reduce_tensors(std::span<const std::span<double>>(me == 2 ? fewer : list),
                                  strata::ReduceOp::sum);
        });
    std::vector<double> longer{5.0, 6.0};
    std::vector<std::span<double>> other{a, longer};
    conformance::expect_usage_error(
        me, "all_reduce_tensors",
        "rank 0 and rank 1 disagree: tensor 1 has 1 elements on rank 0, 2 on rank 1", [&] {
          comm.all_reduce_tensors(std::span<const std::span<double>>(me == 1 ? other : list),
                                  strata::ReduceOp::sum);
        });
    CHECK(a == std::vector<double>{1.0, 2.0});
    // Overlapping tensors on one member.
    std::vector<std::span<double>> overlapping{std::span<double>(a),
                                               std::span<double>(a).subspan(1)};
    conformance::expect_usage_error(
        me, "all_reduce_tensors", "rank 2: tensors 0 and 1 overlap", [&] {
          comm.all_reduce_tensors(std::span<const std::span<double>>(me == 2 ? overlapping : list),
                                  strata::ReduceOp::sum);
        });
    // A member that calls the flat all-reduce instead fails alike, on both sides.
    std::string what;
    try {
      if (me == 0) {
        comm.all_reduce(std::span<double>(a), strata::ReduceOp::sum);
      } else {
        comm.all_reduce_tensors(std::span<const std::span<double>>(fewer), strata::ReduceOp::sum);
      }
    } catch (const strata::usage_error& e) {
      what = e.cause();
    }
    CHECK(what.starts_with("rank 0 and rank 1 disagree: rank 0 called "));
    CHECK(a == std::vector<double>{1.0, 2.0});
    comm.barrier();  // still usable
  });
}

TEST_CASE("torch backend: a peer that left is the process group's error, and nothing is written") {
  gloo_world(
      2,
      [](strata::TorchComm& comm) {
        if (comm.rank() == 1) return;  // leaves: its process group closes its connections
        std::this_thread::sleep_for(300ms);
        std::vector<double> v{1.0, 2.0, 3.0};
        std::vector<std::span<double>> list{v};
        const auto start = std::chrono::steady_clock::now();
        try {
          comm.all_reduce_tensors(std::span<const std::span<double>>(list),
                                  strata::ReduceOp::average);
          FAIL("no error");
        } catch (const strata::timeout_error& e) {
          FAIL("a timeout, not the process group's own error: " << e.what());
        } catch (const strata::torch_error& e) {
          CHECK(std::string(e.what()).starts_with("strata: all_reduce_tensors on rank 0: "));
        }
        CHECK(std::chrono::steady_clock::now() - start < 20s);
        CHECK(v == std::vector<double>{1.0, 2.0, 3.0});
        CHECK(!comm.broken().empty());
      },
      30s);
}

TEST_CASE("torch backend: collectives of one family on two threads never share a staging tensor") {
  // Without the agreement, the world's all-reduce holds its staging tensor while it waits.
  gloo_world(
      2,
      [](strata::TorchComm& world) {
        // A group of one, sharing the world's staging cache.
        strata::TorchComm self = world.split(world.rank(), 0);
        std::vector<double> w(1000, 1.0);
        std::thread slow([&] {
          if (world.rank() == 1) std::this_thread::sleep_for(400ms);
          world.all_reduce(std::span<double>(w), strata::ReduceOp::sum);
        });
        if (world.rank() == 0) {
          // While the world's all-reduce waits for rank 1 on its staging tensor, the group of one
          // reduces other values: they must land in tensors of their own.
          std::this_thread::sleep_for(100ms);
          for (int k = 0; k < 5; ++k) {
            std::vector<double> x(1000, 25.0 + k);
            std::vector<std::span<double>> list{x};
            self.all_reduce_tensors(std::span<const std::span<double>>(list),
                                    strata::ReduceOp::average);
            CHECK(x == std::vector<double>(1000, 25.0 + k));
          }
        }
        slow.join();
        CHECK(w == std::vector<double>(1000, 2.0));
      },
      60s, /*verify=*/false);
}
