// The backend-independent suites over MPI with real processes, plus what only MPI has. The
// world size is the process count: each suite's case names it ("mpi, world 8").
#include <doctest/doctest.h>

#include <strata/comm/level_comms.hpp>
#include <strata/comm/mpi.hpp>

#include <chrono>
#include <random>
#include <string>
#include <thread>
#include <vector>

#include "../averaging/averager_conformance.hpp"
#include "../averaging/host_harness.hpp"
#include "../comm/conformance.hpp"

namespace {

namespace ac = averager_conformance;

int processes() {
  int n = 0;
  MPI_Comm_size(MPI_COMM_WORLD, &n);
  return n;
}

// The averager harness over MPI: every process is one rank of the one world the job has.
struct MpiHarness {
  static constexpr std::string_view name = "mpi";
  using Rank = averager_harness::HostRank<strata::MpiComm>;
  static std::vector<int> world_sizes() { return {processes()}; }
  template <class F>
  static void run(int n, F&& f) {
    // A rank whose check fails and leaves makes the others fail within a minute, not hang.
    strata::MpiOptions options;
    options.timeout = std::chrono::minutes(1);
    strata::MpiComm world(MPI_COMM_WORLD, options);
    REQUIRE(world.size() == n);
    Rank r(world);
    f(r);
  }
};

// Compile-time hierarchies for the process counts the suite runs with.
using H1 = strata::Hierarchy<strata::Level<3, 1>>;
using H2 = strata::Hierarchy<strata::Level<2, 1>, strata::Level<3, 2>>;
using H3 = strata::Hierarchy<strata::Level<1, 1>, strata::Level<4, 3>>;
using H4 = strata::Hierarchy<strata::Level<2, 2>, strata::Level<5, 4>>;
using H8 = strata::Hierarchy<strata::Level<2, 2>, strata::Level<3, 4>, strata::Level<5, 8>>;
using H16 = strata::Hierarchy<strata::Level<2, 4>, strata::Level<3, 8>, strata::Level<5, 16>>;

}  // namespace

TEST_CASE("MPI backend: the collective conformance suite") {
  conformance::for_each_world("mpi", {processes()}, [](int) {
    auto world = strata::MpiComm::world();
    conformance::run_all(world);
  });
}

TEST_CASE("averagers: the serial mean on random hierarchies (mpi)") {
  ac::random_hierarchies<MpiHarness>(/*seed=*/7, /*trials=*/3);
  ac::random_hierarchies<MpiHarness, float>(/*seed=*/8, /*trials=*/1);
}

TEST_CASE("averagers: a failed averaging leaves the parameters and the step as they were (mpi)") {
  ac::failed_averaging<MpiHarness>();
}

TEST_CASE("averagers: a restored averager continues the same schedule (mpi)") {
  ac::restore<MpiHarness>();
}

TEST_CASE("averagers: the hierarchy is checked against the world size (mpi)") {
  ac::world_size_check<MpiHarness>();
}

TEST_CASE("averagers: a warm-up-relative period counts from the end of warm-up (mpi)") {
  ac::warmup_relative<MpiHarness>();
}

TEST_CASE("averagers: compile-time hierarchies average like their run-time twins (mpi)") {
  ac::compile_time_hierarchy<MpiHarness, H1>();
  ac::compile_time_hierarchy<MpiHarness, H2>();
  ac::compile_time_hierarchy<MpiHarness, H3>();
  ac::compile_time_hierarchy<MpiHarness, H4>();
  ac::compile_time_hierarchy<MpiHarness, H8>();
  ac::compile_time_hierarchy<MpiHarness, H16>();
}

TEST_CASE("averagers: post-local SGD syncs gradients over the world, then per node (mpi)") {
  ac::post_local<MpiHarness>();
}

TEST_CASE("MPI backend: level communicators are contiguous blocks") {
  auto world = strata::MpiComm::world();
  const int n = world.size();
  if (n % 2 != 0 || n == 2) return;
  const strata::LevelSpec levels[] = {{1, 2}, {2, static_cast<std::size_t>(n)}};
  strata::LevelComms comms(world, levels);
  CHECK(comms.level(0).size() == 2);
  CHECK(comms.level(0).rank() == world.rank() % 2);
  CHECK(&comms.level(1) == &world);
}

// One rank's bad arguments are part of the conformance suite; here, errors every rank makes
// alike, and the full text of one.
TEST_CASE("MPI backend: misuse is a usage_error on every rank, and the communicator stays usable") {
  auto world = strata::MpiComm::world();
  std::vector<double> a(3), b(4);
  try {
    world.broadcast(std::span<double>(a), world.size());
    FAIL("no error");
  } catch (const strata::usage_error& e) {
    CHECK(std::string(e.what()) == "strata: broadcast on rank " + std::to_string(world.rank()) +
                                       ": rank 0: root " + std::to_string(world.size()) +
                                       " is not a rank of a group of " +
                                       std::to_string(world.size()));
  }
  CHECK_THROWS_AS(
      world.all_reduce(std::span<const double>(a), std::span<double>(b), strata::ReduceOp::sum),
      strata::usage_error);
  CHECK_THROWS_AS(world.split(-2, 0), strata::usage_error);
  // Uneven counts that disagree: named by the first receiver, then the sender.
  const auto n = static_cast<std::size_t>(world.size());
  std::vector<std::size_t> send(n, 1), recv(n, 1);
  if (world.rank() == 0) recv[n - 1] = 2;
  std::vector<float> in(n), out(n + (world.rank() == 0 ? 1 : 0));
  try {
    world.all_to_all(std::span<const float>(in), std::span<const std::size_t>(send),
                     std::span<float>(out), std::span<const std::size_t>(recv));
    FAIL("no error");
  } catch (const strata::usage_error& e) {
    CHECK(std::string(e.cause()) == "counts disagree: rank " + std::to_string(n - 1) +
                                        " sends 1 elements to rank 0, which expects 2");
  }
  world.all_reduce(std::span<float>(in), strata::ReduceOp::sum);  // still usable
}

TEST_CASE("MPI backend: a collective that a peer does not join times out instead of hanging") {
  auto world = strata::MpiComm::world();
  if (world.size() < 2) return;
  strata::MpiOptions quick;
  quick.timeout = std::chrono::milliseconds(300);
  strata::MpiComm comm(world.native(), quick);
  const auto start = std::chrono::steady_clock::now();
  if (comm.rank() == 0) {
    try {
      comm.barrier();
      FAIL("no timeout");
    } catch (const strata::timeout_error& e) {
      CHECK(std::string(e.what()).find("strata: barrier on rank 0: timed out after 300 ms") == 0);
    }
    CHECK(std::chrono::steady_clock::now() - start < std::chrono::seconds(5));
    // The communicator is now unusable, and says so.
    try {
      comm.barrier();
      FAIL("no error");
    } catch (const strata::error& e) {
      CHECK(std::string(e.what()).find("unusable since a barrier timed out") != std::string::npos);
    }
  } else {
    // The peers arrive late, so that the pending barrier completes and the job ends cleanly.
    std::this_thread::sleep_for(std::chrono::milliseconds(800));
    comm.barrier();
  }
  world.barrier();
}

TEST_CASE("MPI backend: communicators move") {
  auto world = strata::MpiComm::world();
  strata::MpiComm a = world.split(0, world.rank());
  strata::MpiComm b = std::move(a);
  CHECK(b.size() == world.size());
  std::vector<std::int64_t> x{1};
  b.all_reduce(std::span<std::int64_t>(x), strata::ReduceOp::sum);
  CHECK(x[0] == world.size());
}

// Every backend takes its default deadline from the one constant of the front end.
static_assert(strata::MpiOptions{}.timeout == strata::detail::default_timeout);
