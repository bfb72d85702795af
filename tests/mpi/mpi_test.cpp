// The backend-independent suites over MPI with real processes, plus what only MPI has. The
// world size is the process count: each suite's case names it ("mpi, world 8").
#include <doctest/doctest.h>

#include <strata/comm/async.hpp>
#include <strata/comm/level_comms.hpp>
#include <strata/comm/local.hpp>
#include <strata/comm/mpi.hpp>

#include <algorithm>
#include <chrono>
#include <cstdint>
#include <iterator>
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

// --- started collectives -------------------------------------------------------------------------

namespace {

// Different on every rank and element, and small integers, so that sums are exact in every type.
template <class T>
std::vector<T> rank_values(int rank, std::size_t count) {
  std::vector<T> v(count);
  for (std::size_t i = 0; i < count; ++i) {
    v[i] = static_cast<T>(rank * 7 + static_cast<int>(i % 13) - 5);
  }
  return v;
}

// Something to do while a request is pending; the request's test() keeps MPI progressing it.
double compute(std::size_t steps) {
  double x = 1.0;
  for (std::size_t i = 0; i < steps; ++i) x = x * 0.999 + 1e-3;
  return x;
}

template <class T>
void started_equals_blocking(strata::MpiComm& world, strata::ReduceOp op) {
  CAPTURE(strata::type_name<T>());
  CAPTURE(strata::to_string(op));
  const auto n = static_cast<std::size_t>(world.size());
  const std::size_t block = 5;
  const std::vector<T> input = rank_values<T>(world.rank(), block * n);

  std::vector<T> blocking = input;
  std::vector<T> started = input;
  world.all_reduce(std::span<T>(blocking), op);
  strata::MpiRequest r = world.start_all_reduce(std::span<T>(started), op);
  double sink = 0;
  while (!r.test()) sink += compute(100);
  CHECK(r.done());
  CHECK(started == blocking);
  if (op == strata::ReduceOp::sum) {
    const auto ranks = static_cast<T>(n * (n - 1) / 2);
    CHECK(started[0] == static_cast<T>(ranks * 7 - static_cast<T>(5 * n)));
  }

  std::vector<T> rs_blocking(block), rs_started(block);
  world.reduce_scatter(std::span<const T>(input), std::span<T>(rs_blocking), op);
  strata::MpiRequest rs =
      world.start_reduce_scatter(std::span<const T>(input), std::span<T>(rs_started), op);
  rs.wait();
  CHECK(rs.done());
  CHECK(rs_started == rs_blocking);

  const std::vector<T> mine(input.begin(), input.begin() + block);
  std::vector<T> ag_blocking(block * n), ag_started(block * n);
  world.all_gather(std::span<const T>(mine), std::span<T>(ag_blocking));
  strata::MpiRequest ag =
      world.start_all_gather(std::span<const T>(mine), std::span<T>(ag_started));
  ag.wait();
  CHECK(ag_started == ag_blocking);
  CHECK(sink >= 0);
}

}  // namespace

static_assert(strata::collective_request<strata::MpiRequest>);
static_assert(!std::is_copy_constructible_v<strata::MpiRequest> &&
              !std::is_copy_assignable_v<strata::MpiRequest>);
static_assert(strata::async_communicator_for<strata::MpiComm, float> &&
              strata::async_communicator_for<strata::MpiComm, std::int64_t>);
// The local backend completes every collective inside the call: it has nothing to start.
static_assert(strata::communicator<strata::LocalComm>);
static_assert(!strata::async_communicator_for<strata::LocalComm, float> &&
              !strata::async_communicator_for<strata::LocalComm, double>);

TEST_CASE("MPI backend: started collectives give the blocking collectives' results") {
  auto world = strata::MpiComm::world();
  for (const strata::ReduceOp op : {strata::ReduceOp::sum, strata::ReduceOp::average}) {
    started_equals_blocking<double>(world, op);
    started_equals_blocking<std::int64_t>(world, op);
  }
  started_equals_blocking<float>(world, strata::ReduceOp::max);
  started_equals_blocking<std::int32_t>(world, strata::ReduceOp::min);
}

TEST_CASE("MPI backend: started collectives pending at once complete in any order") {
  auto world = strata::MpiComm::world();
  const int r = world.rank();
  const auto n = static_cast<std::size_t>(world.size());
  const auto sum_of_ranks = static_cast<std::int64_t>(n * (n - 1) / 2);

  std::vector<double> a(7, double(r));
  std::vector<std::int64_t> b_in(3 * n), b_out(3);
  for (std::size_t i = 0; i < b_in.size(); ++i) b_in[i] = static_cast<std::int64_t>(i) * 10 + r;
  const std::vector<float> c_in{float(r), float(-r)};
  std::vector<float> c_out(2 * n);

  strata::MpiRequest ra = world.start_all_reduce(std::span<double>(a), strata::ReduceOp::sum);
  strata::MpiRequest rb =
      world.start_reduce_scatter(std::span<const std::int64_t>(b_in),
                                 std::span<std::int64_t>(b_out), strata::ReduceOp::average);
  strata::MpiRequest rc =
      world.start_all_gather(std::span<const float>(c_in), std::span<float>(c_out));
  // A blocking collective while three are pending.
  std::vector<std::int64_t> x{r};
  world.all_reduce(std::span<std::int64_t>(x), strata::ReduceOp::sum);
  CHECK(x[0] == sum_of_ranks);

  rc.wait();
  rb.wait();
  ra.wait();
  CHECK((ra.done() && rb.done() && rc.done()));
  for (const double v : a) CHECK(v == double(sum_of_ranks));
  // Block r of the sum: 10·(3r + i)·n + sum of ranks, averaged (truncated) over n.
  for (std::size_t i = 0; i < 3; ++i) {
    const auto element = static_cast<std::int64_t>(3 * static_cast<std::size_t>(r) + i);
    const auto members = static_cast<std::int64_t>(n);
    CHECK(b_out[i] == (element * 10 * members + sum_of_ranks) / members);
  }
  for (std::size_t j = 0; j < n; ++j) {
    CHECK(c_out[2 * j] == float(j));
    CHECK(c_out[2 * j + 1] == -float(j));
  }
}

TEST_CASE("MPI backend: test() completes a started collective, and scales an average once") {
  auto world = strata::MpiComm::world();
  const auto n = static_cast<std::int64_t>(world.size());
  // Scaling twice would divide by n again: visible for every n > 1.
  std::vector<std::int64_t> x(1000, (world.rank() + 1) * n * n);
  strata::MpiRequest req =
      world.start_all_reduce(std::span<std::int64_t>(x), strata::ReduceOp::average);
  const auto deadline = std::chrono::steady_clock::now() + std::chrono::minutes(1);
  double sink = 0;
  while (!req.test()) {
    REQUIRE(std::chrono::steady_clock::now() < deadline);
    sink += compute(1000);
  }
  CHECK(req.done());
  CHECK(req.test());
  req.wait();
  const std::int64_t expected = n * (n + 1) / 2 * n;
  CHECK(x.front() == expected);
  CHECK(x.back() == expected);
  CHECK(sink >= 0);
}

TEST_CASE("MPI backend: a bad or mismatched start is a usage_error on every rank") {
  auto world = strata::MpiComm::world();
  const int r = world.rank();
  const int n = world.size();
  const std::string last = std::to_string(n - 1);
  // Pending while the bad starts fail: the failed agreement leaves it alone.
  std::vector<double> pending_buf{double(r)};
  strata::MpiRequest pending =
      world.start_all_reduce(std::span<double>(pending_buf), strata::ReduceOp::sum);

  // One rank's own arguments are invalid: every rank names it.
  std::vector<float> in(2 * static_cast<std::size_t>(n)), out(r == n - 1 ? 3 : 2);
  try {
    strata::MpiRequest bad = world.start_reduce_scatter(
        std::span<const float>(in), std::span<float>(out), strata::ReduceOp::sum);
    FAIL("no error");
  } catch (const strata::usage_error& e) {
    CHECK(e.operation() == "reduce_scatter");
    CHECK(e.cause() == "rank " + last + ": input has " + std::to_string(2 * n) +
                           " elements; it needs 3 x " + std::to_string(n));
  }
  std::vector<float> gathered(static_cast<std::size_t>(n) + (r == 0 ? 1 : 0));
  CHECK_THROWS_AS(
      (void)world.start_all_gather(std::span<const float>(in).first(1), std::span<float>(gathered)),
      strata::usage_error);

  if (n > 1) {
    // Valid on each rank, but rank 1 passes more elements than the others.
    std::vector<std::int64_t> y(r == 1 ? 5 : 4);
    try {
      strata::MpiRequest bad =
          world.start_all_reduce(std::span<std::int64_t>(y), strata::ReduceOp::max);
      FAIL("no error");
    } catch (const strata::usage_error& e) {
      CHECK(e.cause() == "rank 0 and rank 1 disagree: rank 0 passed 4 elements, rank 1 passed 5");
    }
    // Different operations.
    const std::vector<std::int64_t> one{r};
    std::vector<std::int64_t> z(static_cast<std::size_t>(n));
    try {
      strata::MpiRequest bad =
          r == 0 ? world.start_all_gather(std::span<const std::int64_t>(one),
                                          std::span<std::int64_t>(z))
                 : world.start_all_reduce(std::span<std::int64_t>(z), strata::ReduceOp::sum);
      FAIL("no error");
    } catch (const strata::usage_error& e) {
      CHECK(e.cause() ==
            "rank 0 and rank 1 disagree: rank 0 called all_gather, rank 1 called all_reduce");
    }
  }
  pending.wait();
  CHECK(pending_buf[0] == double(n) * (n - 1) / 2);
  // Still usable.
  std::vector<std::int32_t> w{1};
  world.start_all_reduce(std::span<std::int32_t>(w), strata::ReduceOp::sum).wait();
  CHECK(w[0] == n);
}

TEST_CASE("MPI backend: a started collective that is destroyed or replaced is completed") {
  auto world = strata::MpiComm::world();
  const auto n = static_cast<std::int64_t>(world.size());
  const std::int64_t expected = n * (n + 1) / 2 * n;
  std::vector<std::int64_t> x{(world.rank() + 1) * n * n};
  {
    strata::MpiRequest req =
        world.start_all_reduce(std::span<std::int64_t>(x), strata::ReduceOp::average);
  }
  CHECK(x[0] == expected);  // averaged once, by the destructor

  // Moved: the new owner completes it, the old one is empty.
  std::vector<double> in{double(world.rank())}, out(static_cast<std::size_t>(n));
  strata::MpiRequest a =
      world.start_all_gather(std::span<const double>(in), std::span<double>(out));
  strata::MpiRequest b = std::move(a);
  CHECK(a.done());  // NOLINT(bugprone-use-after-move): a moved-from request is empty
  CHECK(a.test());
  CHECK(!b.done());
  b.wait();
  CHECK(out.back() == double(n - 1));

  // Assigned over: the pending request is completed first.
  std::vector<std::int64_t> first{1}, second{2};
  strata::MpiRequest c =
      world.start_all_reduce(std::span<std::int64_t>(first), strata::ReduceOp::sum);
  c = world.start_all_reduce(std::span<std::int64_t>(second), strata::ReduceOp::sum);
  CHECK(first[0] == n);
  c.wait();
  CHECK(second[0] == 2 * n);
}

TEST_CASE("MPI backend: a started collective that a peer does not join times out in wait()") {
  auto world = strata::MpiComm::world();
  if (world.size() < 2) return;
  // Without the agreement, rank 0 posts at once; the peers post late, with time to spare.
  strata::MpiOptions options;
  options.verify_arguments = false;
  options.timeout = world.rank() == 0 ? std::chrono::milliseconds(300) : std::chrono::minutes(1);
  strata::MpiComm comm(world.native(), options);
  // Static: MPI still owns rank 0's abandoned request and may write into it at any time.
  static double buffer[4];
  std::fill(std::begin(buffer), std::end(buffer), 1.0);
  if (comm.rank() == 0) {
    strata::MpiRequest req =
        comm.start_all_reduce(std::span<double>(buffer), strata::ReduceOp::sum);
    try {
      req.wait();
      FAIL("no timeout");
    } catch (const strata::timeout_error& e) {
      CHECK(std::string(e.what()).find("strata: all_reduce on rank 0: timed out after 300 ms") ==
            0);
    }
    CHECK(!req.done());
    try {
      req.test();
      FAIL("no error");
    } catch (const strata::error& e) {
      CHECK(std::string(e.what()).find("unusable since a all_reduce timed out") !=
            std::string::npos);
    }
    CHECK_THROWS_AS((void)comm.start_all_gather(std::span<const double>(buffer).first(0),
                                                std::span<double>(buffer).first(0)),
                    strata::error);
  } else {
    std::this_thread::sleep_for(std::chrono::milliseconds(800));
    comm.start_all_reduce(std::span<double>(buffer), strata::ReduceOp::sum).wait();
  }
  world.barrier();
}

// Every backend takes its default deadline from the one constant of the front end.
static_assert(strata::MpiOptions{}.timeout == strata::detail::default_timeout);
