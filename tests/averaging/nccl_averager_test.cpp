// The averager conformance on the NCCL host double: DeviceAverager over the fake NCCL, worlds 1
// to 16, with and without graph replay. The device-only paths (graph counts, half precision,
// aborts) are in tests/nccl/nccl_test.cpp.
#include <doctest/doctest.h>

#include "averager_conformance.hpp"
#include "nccl_harness.hpp"

namespace {

namespace ac = averager_conformance;
using Nccl = averager_harness::NcclHarness</*Graphs=*/false>;
using NcclGraphs = averager_harness::NcclHarness</*Graphs=*/true>;
using NcclVerify = averager_harness::NcclHarness</*Graphs=*/false, /*Verify=*/true>;
using NcclGraphsVerify = averager_harness::NcclHarness</*Graphs=*/true, /*Verify=*/true>;
using NcclBlocking = averager_harness::NcclHarness<false, false, /*Blocking=*/true>;
using NcclBlockingGraphs = averager_harness::NcclHarness<true, false, /*Blocking=*/true>;

}  // namespace

TEST_CASE("averagers: the serial mean on random hierarchies (nccl)") {
  ac::random_hierarchies<Nccl>(/*seed=*/7, /*trials=*/2);
  ac::random_hierarchies<NcclGraphs>(/*seed=*/7, /*trials=*/1);
  ac::random_hierarchies<Nccl, float>(/*seed=*/8, /*trials=*/1);
  ac::random_hierarchies<NcclGraphs, float>(/*seed=*/8, /*trials=*/1);
  // NCCL's blocking mode: the same means, every level a blocking split.
  ac::random_hierarchies<NcclBlocking>(/*seed=*/9, /*trials=*/1);
  ac::random_hierarchies<NcclBlockingGraphs>(/*seed=*/9, /*trials=*/1);
}

// Only a communicator that checks calls across ranks fails every member alike: without
// verify_arguments the other ranks' collective would wait for the one that threw. With graphs,
// the check runs before the level's graph is captured.
TEST_CASE("averagers: a failed averaging leaves the parameters and the step as they were (nccl)") {
  ac::failed_averaging<NcclVerify>();
  ac::failed_averaging<NcclGraphsVerify>();
}

TEST_CASE("averagers: a restored averager continues the same schedule (nccl)") {
  ac::restore<Nccl>();
  ac::restore<NcclGraphs>();
}

TEST_CASE("averagers: the hierarchy is checked against the world size (nccl)") {
  ac::world_size_check<Nccl>();
}

TEST_CASE("averagers: a warm-up-relative period counts from the end of warm-up (nccl)") {
  ac::warmup_relative<Nccl>();
  ac::warmup_relative<NcclGraphs>();
}

TEST_CASE("averagers: compile-time hierarchies average like their run-time twins (nccl)") {
  using H = strata::Hierarchy<strata::Level<2, 3>, strata::Level<3, 6>, strata::Level<5, 12>>;
  ac::compile_time_hierarchy<Nccl, H>();
  ac::compile_time_hierarchy<NcclGraphs, H>();
}
