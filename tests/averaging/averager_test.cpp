// The averager conformance on the local backend, worlds 1 to 16, and what only it can show: a
// peer that fails mid-run, and the convenience averagers that are host-only.
#include <doctest/doctest.h>

#include <strata/averaging/averager.hpp>
#include <strata/comm/local.hpp>

#include <chrono>
#include <cstddef>
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
