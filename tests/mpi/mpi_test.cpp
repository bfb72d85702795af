// The backend-independent suites over MPI with real processes, plus what only MPI has.
#include <doctest/doctest.h>

#include <strata/comm/level_comms.hpp>
#include <strata/comm/mpi.hpp>

#include <chrono>
#include <random>
#include <string>
#include <thread>

#include "../averaging/averager_conformance.hpp"
#include "../comm/conformance.hpp"


TEST_CASE("MPI backend: the collective conformance suite") {
  auto world = strata::MpiComm::world();
  conformance::run_all(world);
}

TEST_CASE("MPI backend: the averager conformance suite") {
  auto world = strata::MpiComm::world();
  const auto n = static_cast<std::size_t>(world.size());
  std::mt19937_64 rng(5);
  for (int trial = 0; trial < 4; ++trial) {
    const strata::RuntimeHierarchy h(averager_conformance::random_levels(rng, n));
    const std::size_t warmup = rng() % 4;
    CAPTURE(h.to_string());
    averager_conformance::matches_serial(world, h, warmup, 2 * h.hyper_period() + warmup + 1);
  }
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
  CHECK_THROWS_AS(world.all_reduce(std::span<const double>(a), std::span<double>(b),
                                   strata::ReduceOp::sum),
                  strata::usage_error);
  CHECK_THROWS_AS(world.split(-2, 0), strata::usage_error);
  // One rank alone passes a buffer of another size: every rank learns it, none waits for a
  // deadline, and nothing is written.
  const int bad = world.size() - 1;
  std::vector<float> x(world.rank() == bad ? 5 : 4, 1.0f);
  try {
    world.all_reduce(std::span<float>(x), strata::ReduceOp::sum);
    CHECK(world.size() == 1);  // alone, the sizes cannot disagree
  } catch (const strata::usage_error& e) {
    CHECK(std::string(e.cause()) == "rank 0 and rank " + std::to_string(bad) +
                                        " disagree: rank 0 passed 4 elements, rank " +
                                        std::to_string(bad) + " passed 5");
  }
  for (float v : x) CHECK(v == 1.0f);
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
