// The averager conformance on the local backend, worlds 1 to 16, and what only it can show: a
// peer that fails mid-run, and the convenience averagers that are host-only.
#include <doctest/doctest.h>

#include <strata/averaging/averager.hpp>
#include <strata/comm/local.hpp>

#include <chrono>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <optional>
#include <stdexcept>
#include <type_traits>
#include <vector>

#include "averager_conformance.hpp"
#include "host_harness.hpp"

namespace {

namespace ac = averager_conformance;
using Local = averager_harness::LocalHarness;

}  // namespace

TEST_CASE("averagers: the serial mean on random hierarchies (local)") {
  ac::random_hierarchies<Local>(/*seed=*/7, /*trials=*/3);
  ac::random_hierarchies<Local, float>(/*seed=*/8, /*trials=*/1);
}

TEST_CASE("averagers: a failed averaging leaves the parameters and the step as they were (local)") {
  ac::failed_averaging<Local>();
}

TEST_CASE("averagers: a restored averager continues the same schedule (local)") {
  ac::restore<Local>();
}

TEST_CASE("averagers: the hierarchy is checked against the world size (local)") {
  ac::world_size_check<Local>();
}

TEST_CASE("averagers: a warm-up-relative period counts from the end of warm-up (local)") {
  ac::warmup_relative<Local>();
}

TEST_CASE("averagers: compile-time hierarchies average like their run-time twins (local)") {
  using H = strata::Hierarchy<strata::Level<2, 3>, strata::Level<3, 6>, strata::Level<5, 12>>;
  ac::compile_time_hierarchy<Local, H>();
}

TEST_CASE("averagers: post-local SGD syncs gradients over the world, then per node (local)") {
  ac::post_local<Local>();
}

TEST_CASE("averagers: a peer that fails leaves the parameters and the step as they were") {
  strata::LocalOptions opts;
  opts.timeout = std::chrono::milliseconds(300);
  const auto h = strata::RuntimeHierarchy::parse("1:4");  // every step: the whole world
  std::vector<int> unchanged(4, 0);
  CHECK_THROWS(strata::LocalWorld(4, opts).run([&](strata::LocalComm& comm) {
    strata::RuntimeHierarchicalAverager<strata::LocalComm> avg(comm, h);
    auto p = ac::initial<double>(comm.rank());
    std::vector<std::span<double>> s(p.begin(), p.end());
    avg.average(s);  // step 0
    if (comm.rank() == 3) throw std::runtime_error("rank 3 lost its GPU");
    const auto before = p;
    try {
      avg.average(s);
    } catch (const strata::error&) {
      unchanged[static_cast<std::size_t>(comm.rank())] = (p == before) && avg.step() == 1;
      throw;
    }
  }));
  CHECK(unchanged == std::vector<int>{1, 1, 1, 0});
}

TEST_CASE("averagers: PeriodicAverager is plain local SGD over the whole world") {
  using Periodic = strata::PeriodicAverager<strata::LocalComm>;
  static_assert(
      std::is_base_of_v<strata::BasicAverager<strata::RuntimeSchedule<strata::WarmupRelativePhase>,
                                              strata::LocalComm>,
                        Periodic>);
  strata::LocalWorld(3).run([](strata::LocalComm& comm) {
    Periodic avg(comm, /*period=*/4, /*warmup=*/3);
    CHECK(avg.state() == strata::AveragerState{0, 3, "4:3", "warm-up relative"});
    std::vector<double> w{double(comm.rank())};
    for (std::size_t step = 0; step < 4; ++step) {
      const bool due = step == 3;
      CHECK(avg.average(std::span<double>(w)) ==
            (due ? std::optional<std::size_t>(0) : std::nullopt));
    }
    CHECK(w[0] == 1.0);
  });
}

TEST_CASE("averagers: levels over several nodes average hierarchically, as the flat average") {
  // 2:2,4:8,8:16 on nodes of 4: level 0 lies inside a node (flat), levels 1 and 2 span nodes.
  for (const std::size_t node : {std::size_t{2}, std::size_t{4}}) {
    strata::LocalWorld(16).run([&](strata::LocalComm& world) {
      const auto h = strata::RuntimeHierarchy::parse("1:2,2:8,4:16");
      strata::RuntimeHierarchicalAverager<strata::LocalComm> flat(world, h);
      strata::RuntimeHierarchicalAverager<strata::LocalComm> hier(
          world, h, 0, strata::AveragerOptions{.ranks_per_node = node});
      CHECK(!hier.hierarchical(0));
      CHECK(hier.hierarchical(1));
      CHECK(hier.hierarchical(2));
      const int r = world.rank();
      std::vector<double> a(37), b(37);
      std::vector<float> fa(5), fb(5);
      std::vector<std::int64_t> ia(3), ib(3);
      for (int step = 0; step < 5; ++step) {
        for (std::size_t i = 0; i < a.size(); ++i)
          a[i] = b[i] = std::sin(0.3 * (r + 1) * (i + 1) + step);
        for (std::size_t i = 0; i < fa.size(); ++i) fa[i] = fb[i] = static_cast<float>(r * 3 + i);
        for (std::size_t i = 0; i < ia.size(); ++i)
          ia[i] = ib[i] = r * 7 + static_cast<std::int64_t>(i);
        std::vector<std::span<double>> ta{a}, tb{b};
        const auto la = flat.average(ta);
        const auto lb = hier.average(tb);
        CHECK(la == lb);
        for (std::size_t i = 0; i < a.size(); ++i)
          CHECK(b[i] == doctest::Approx(a[i]).epsilon(1e-13));
        flat.average(std::span<float>(fa));
        hier.average(std::span<float>(fb));
        for (std::size_t i = 0; i < fa.size(); ++i)
          CHECK(fb[i] == doctest::Approx(fa[i]).epsilon(1e-6));
        flat.average(std::span<std::int64_t>(ia));
        hier.average(std::span<std::int64_t>(ib));
        CHECK(ia == ib);  // one truncating division of the same sum
      }
      // Every member of the world holds the same values after the last (world-level) step.
      std::vector<double> lo = b, hi = b;
      world.all_reduce(std::span<double>(lo), strata::ReduceOp::min);
      world.all_reduce(std::span<double>(hi), strata::ReduceOp::max);
      CHECK(lo == hi);
    });
  }
}
