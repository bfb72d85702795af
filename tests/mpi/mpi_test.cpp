// The backend-independent suites over MPI with real processes, plus what only MPI has. The
// world size is the process count: each suite's case names it ("mpi, world 8").
#include <doctest/doctest.h>

#include <strata/averaging/averager.hpp>
#include <strata/comm/async.hpp>
#include <strata/comm/level_comms.hpp>
#include <strata/comm/local.hpp>
#include <strata/comm/mpi.hpp>

#include <algorithm>
#include <chrono>
#include <cstdint>
#include <cstring>
#include <iterator>
#include <limits>
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

// --- pipelined all-reduce ------------------------------------------------------------------------

namespace {

// What a pipelined all-reduce did, as its callbacks saw it.
struct PipelineLog {
  std::vector<std::pair<std::size_t, std::size_t>> filled, drained;
  bool drained_unfinished = false;  // a segment drained before it held the expected values
  bool drained_unfilled = false;    // a segment drained before it was filled
  std::size_t progress_calls = 0;
};

// Runs all_reduce_pipelined with fills that write `input` piece by piece and drains that check
// each segment against `expected` when it arrives. In place when `in_place`.
template <class T>
PipelineLog pipelined(strata::MpiComm& comm, const std::vector<T>& input,
                      const std::vector<T>& expected, strata::ReduceOp op, std::size_t segment,
                      bool in_place) {
  PipelineLog log;
  std::vector<T> in(input.size()), separate(input.size());
  std::vector<T>& out = in_place ? in : separate;
  comm.all_reduce_pipelined(
      std::span<const T>(in), std::span<T>(out), op, segment,
      [&](std::size_t b, std::size_t e, auto&& progress) {
        log.filled.emplace_back(b, e);
        for (std::size_t i = b; i < e; ++i) {
          in[i] = input[i];
          if ((i - b) % 3 == 2) {
            progress();
            ++log.progress_calls;
          }
        }
      },
      [&](std::size_t b, std::size_t e, auto&& progress) {
        progress();
        log.drained.emplace_back(b, e);
        if (log.filled.size() < log.drained.size()) log.drained_unfilled = true;
        for (std::size_t i = b; i < e; ++i) {
          if (out[i] != expected[i]) log.drained_unfinished = true;
        }
      });
  return log;
}

// The segments [0, segment), [segment, 2 segment), ... of `total` elements.
std::vector<std::pair<std::size_t, std::size_t>> segments_of(std::size_t total,
                                                             std::size_t segment) {
  std::vector<std::pair<std::size_t, std::size_t>> s;
  const std::size_t step = segment == 0 ? total : segment;
  for (std::size_t b = 0; b < total; b += step) s.emplace_back(b, std::min(total, b + step));
  return s;
}

template <class T>
void pipelined_equals_blocking(strata::MpiComm& world, strata::ReduceOp op) {
  CAPTURE(strata::type_name<T>());
  CAPTURE(strata::to_string(op));
  const std::size_t total = 1000;
  const std::vector<T> input = rank_values<T>(world.rank(), total);
  std::vector<T> expected = input;
  world.all_reduce(std::span<T>(expected), op);
  for (const std::size_t segment :
       {std::size_t{0}, std::size_t{1}, std::size_t{7}, std::size_t{64}, total, total + 5}) {
    for (const bool in_place : {false, true}) {
      CAPTURE(segment);
      CAPTURE(in_place);
      const PipelineLog log = pipelined(world, input, expected, op, segment, in_place);
      CHECK(log.filled == segments_of(total, segment));
      CHECK(log.drained == log.filled);
      CHECK(!log.drained_unfinished);
      CHECK(!log.drained_unfilled);
    }
  }
}

// A communicator that pipelines an all-reduce without MPI: it sums `size()` copies of each
// segment, drains the first `drain_before_failing` segments, then fails as a peer's failure
// would; or, with `disagree`, fails as a mismatched call does, after filling the first segment.
struct FlakyPipeline {
  int members = 3;
  std::size_t drain_before_failing = 0;
  bool disagree = false;
  std::size_t drained = 0;

  [[nodiscard]] int size() const { return members; }

  template <class T, class Fill, class Drain>
  void all_reduce_pipelined(std::span<const T> in, std::span<T> out, strata::ReduceOp op,
                            std::size_t segment, Fill&& fill, Drain&& drain) {
    const auto nothing = [] {};
    const std::size_t step = segment == 0 ? in.size() : segment;
    if (disagree) {
      fill(0, std::min(step, in.size()), nothing);
      throw strata::usage_error("all_reduce", 0, "rank 0 and rank 1 disagree");
    }
    for (std::size_t b = 0; b < in.size(); b += step) {
      const std::size_t e = std::min(in.size(), b + step);
      fill(b, e, nothing);
      for (std::size_t i = b; i < e; ++i) {
        const T sum = static_cast<T>(in[i] * static_cast<T>(members));
        out[i] = op == strata::ReduceOp::average ? static_cast<T>(sum / members) : sum;
      }
      if (drained == drain_before_failing) {
        throw strata::error("all_reduce", 0, "a peer failed");
      }
      drain(b, e, nothing);
      ++drained;
    }
  }
};

static_assert(strata::detail::pipelines_all_reduce<strata::MpiComm, float>);
static_assert(strata::detail::pipelines_all_reduce<FlakyPipeline, double>);
static_assert(!strata::detail::pipelines_all_reduce<strata::LocalComm, float>);

}  // namespace

TEST_CASE("MPI backend: a pipelined all-reduce gives the blocking all-reduce's result") {
  auto world = strata::MpiComm::world();
  for (const strata::ReduceOp op : {strata::ReduceOp::sum, strata::ReduceOp::average}) {
    pipelined_equals_blocking<double>(world, op);
    pipelined_equals_blocking<std::int64_t>(world, op);
  }
  pipelined_equals_blocking<float>(world, strata::ReduceOp::max);
  pipelined_equals_blocking<std::int32_t>(world, strata::ReduceOp::min);

  // Nothing to reduce: no segment, and still a collective (the agreement).
  std::size_t calls = 0;
  world.all_reduce_pipelined(
      std::span<const float>(), std::span<float>(), strata::ReduceOp::sum, 4,
      [&](std::size_t, std::size_t, auto&&) { ++calls; },
      [&](std::size_t, std::size_t, auto&&) { ++calls; });
  CHECK(calls == 0);
}

TEST_CASE("MPI backend: a mismatched pipelined all-reduce is a usage_error on every rank") {
  auto world = strata::MpiComm::world();
  const int r = world.rank();
  const int n = world.size();
  if (n < 2) return;
  const std::size_t size = r == n - 1 ? 9 : 8;
  std::vector<double> in(size), out(size);
  std::size_t drains = 0;
  try {
    world.all_reduce_pipelined(
        std::span<const double>(in), std::span<double>(out), strata::ReduceOp::sum, 3,
        [](std::size_t, std::size_t, auto&&) {},
        [&](std::size_t, std::size_t, auto&&) { ++drains; });
    FAIL("no error");
  } catch (const strata::usage_error& e) {
    CHECK(e.operation() == "all_reduce");
    CHECK(e.cause() == "rank 0 and rank " + std::to_string(n - 1) +
                           " disagree: rank 0 passed 8 elements, rank " + std::to_string(n - 1) +
                           " passed 9");
  }
  CHECK(drains == 0);
  // One rank's own arguments: the sizes differ. No fill runs there.
  std::vector<double> shorter(r == 0 ? 7 : 8);
  bool filled_on_zero = false;
  CHECK_THROWS_AS(
      world.all_reduce_pipelined(
          std::span<const double>(in).first(8), std::span<double>(shorter), strata::ReduceOp::sum,
          3, [&](std::size_t, std::size_t, auto&&) { filled_on_zero = r == 0; },
          [](std::size_t, std::size_t, auto&&) {}),
      strata::usage_error);
  CHECK(!filled_on_zero);
  std::vector<std::int64_t> x{1};
  world.all_reduce(std::span<std::int64_t>(x), strata::ReduceOp::sum);  // still usable
  CHECK(x[0] == n);
}

TEST_CASE("MPI backend: a pipelined all-reduce that a peer does not join times out") {
  auto world = strata::MpiComm::world();
  if (world.size() < 2) return;
  strata::MpiOptions options;
  options.verify_arguments = false;
  options.timeout = world.rank() == 0 ? std::chrono::milliseconds(300) : std::chrono::minutes(1);
  strata::MpiComm comm(world.native(), options);
  // Static: MPI still owns rank 0's abandoned requests and may write into them at any time.
  static double in[8];
  static double out[8];
  std::fill(std::begin(in), std::end(in), 1.0);
  const auto run = [&] {
    comm.all_reduce_pipelined(
        std::span<const double>(in), std::span<double>(out), strata::ReduceOp::sum, 4,
        [](std::size_t, std::size_t, auto&&) {}, [](std::size_t, std::size_t, auto&&) {});
  };
  if (comm.rank() == 0) {
    const auto start = std::chrono::steady_clock::now();
    try {
      run();
      FAIL("no timeout");
    } catch (const strata::timeout_error& e) {
      CHECK(std::string(e.what()).find("strata: all_reduce on rank 0: timed out after 300 ms") ==
            0);
    }
    CHECK(std::chrono::steady_clock::now() - start < std::chrono::seconds(5));
    CHECK_THROWS_AS(run(), strata::error);  // unusable
  } else {
    std::this_thread::sleep_for(std::chrono::milliseconds(800));
    run();
    CHECK(out[7] == double(comm.size()));
  }
  world.barrier();
}

TEST_CASE("averagers: pipelined averaging over MPI gives the one-segment bits") {
  auto world = strata::MpiComm::world();
  const auto n = static_cast<std::size_t>(world.size());
  const strata::RuntimeHierarchy whole({strata::LevelSpec{1, n}});
  // Sums of these values are exact in float, so every reduction order gives the same bits.
  const auto values = [&](std::size_t t, std::size_t size) {
    std::vector<float> v(size);
    for (std::size_t i = 0; i < size; ++i) {
      v[i] = static_cast<float>((world.rank() + 1) * static_cast<int>(i % 5 + t)) * 0.25f;
    }
    return v;
  };
  const std::vector<std::size_t> sizes{1, 300, 0, 17, 1000, 2};
  const auto run = [&](std::size_t pipeline_bytes) {
    strata::RuntimeHierarchicalAverager<strata::MpiComm> avg(world, whole, 0,
                                                             {.pipeline_bytes = pipeline_bytes});
    std::vector<std::vector<float>> tensors;
    std::vector<std::span<float>> spans;
    for (std::size_t t = 0; t < sizes.size(); ++t) tensors.push_back(values(t, sizes[t]));
    for (auto& t : tensors) spans.emplace_back(t);
    REQUIRE(avg.average(spans) == 0);
    REQUIRE(avg.average(spans) == 0);  // twice: the cached plan and buffers
    return tensors;
  };
  const auto one = run(std::numeric_limits<std::size_t>::max());
  for (const std::size_t bytes :
       {std::size_t{4}, std::size_t{6}, std::size_t{256}, std::size_t{0}}) {
    CAPTURE(bytes);
    CHECK(run(bytes) == one);
  }
  // The mean of the ranks' (r + 1) * c * 0.25 is (n + 1) / 2 * c * 0.25 (here c = 4).
  CHECK(one[1][3] == doctest::Approx(static_cast<double>(n + 1) / 2));

  // Integers: the truncated quotient of each segment's sum.
  strata::RuntimeHierarchicalAverager<strata::MpiComm> avg(world, whole, 0, {.pipeline_bytes = 16});
  std::vector<std::int64_t> a(50, world.rank()), b(3, 7 * world.rank() + 1);
  const std::vector<std::span<std::int64_t>> ints{a, b};
  REQUIRE(avg.average(ints) == 0);
  const auto sum = static_cast<std::int64_t>(n * (n - 1) / 2);
  const auto members = static_cast<std::int64_t>(n);
  CHECK(a[49] == sum / members);
  CHECK(b[2] == (7 * sum + members) / members);
}

TEST_CASE("averagers: a pipelined averaging that fails leaves the tensors as they were") {
  std::vector<double> a{0.1, 0.2, 0.3, 0.4, 0.5}, b{}, c{1e300, -2.5, 3.0};
  const std::vector<double> a0 = a, c0 = c;
  const std::vector<std::span<double>> spans{a, b, c};
  const std::span<const std::span<double>> tensors(spans);
  strata::detail::PackCache<double> cache;
  // 2 elements per segment: segments [0, 2), [2, 4), [4, 6), [6, 8); the failure comes after
  // 0 to 3 of them completed.
  for (std::size_t before = 0; before < 4; ++before) {
    CAPTURE(before);
    FlakyPipeline comm{3, before};
    CHECK_THROWS_AS(strata::detail::fused_average(comm, cache, tensors, 2 * sizeof(double)),
                    strata::error);
    CHECK(comm.drained == before);
    CHECK(std::memcmp(a.data(), a0.data(), a.size() * sizeof(double)) == 0);
    CHECK(std::memcmp(c.data(), c0.data(), c.size() * sizeof(double)) == 0);
  }
  FlakyPipeline disagreeing{3, 0, true};
  CHECK_THROWS_AS(strata::detail::fused_average(disagreeing, cache, tensors, 2 * sizeof(double)),
                  strata::usage_error);
  CHECK(std::memcmp(a.data(), a0.data(), a.size() * sizeof(double)) == 0);
  // And when nothing fails: the mean of three equal copies is the copy, scaled by 3 then 1/3.
  FlakyPipeline fine{3, 100};
  strata::detail::fused_average(fine, cache, tensors, 2 * sizeof(double));
  CHECK(fine.drained == 4);
  CHECK(a[1] == 0.2 * 3 * (1.0 / 3));
  CHECK(c[2] == 3.0);
}

namespace {

// OpenMPI's setting of its non-blocking all-reduce algorithm, read and written through MPI_T;
// -1 where this MPI has none.
class NbcSetting {
 public:
  NbcSetting() {
#if defined(OPEN_MPI)
    int provided = 0;
    int index = -1;
    int count = 0;
    if (MPI_T_init_thread(MPI_THREAD_SINGLE, &provided) != MPI_SUCCESS) return;
    usable_ = MPI_T_cvar_get_index("coll_libnbc_iallreduce_algorithm", &index) == MPI_SUCCESS &&
              MPI_T_cvar_handle_alloc(index, nullptr, &handle_, &count) == MPI_SUCCESS;
#endif
  }
  NbcSetting(const NbcSetting&) = delete;
  NbcSetting& operator=(const NbcSetting&) = delete;
  ~NbcSetting() {
#if defined(OPEN_MPI)
    if (usable_) MPI_T_cvar_handle_free(&handle_);
    MPI_T_finalize();
#endif
  }
  [[nodiscard]] int read() {
    int value = -1;
#if defined(OPEN_MPI)
    if (usable_) MPI_T_cvar_read(handle_, &value);
#endif
    return value;
  }
  void write(int value) {
#if defined(OPEN_MPI)
    if (usable_) MPI_T_cvar_write(handle_, &value);
#else
    (void)value;
#endif
  }

 private:
#if defined(OPEN_MPI)
  MPI_T_cvar_handle handle_ = MPI_T_CVAR_HANDLE_NULL;
#endif
  bool usable_ = false;
};

// Every large all-reduce form, checked against the exact sums of rank_values.
void large_all_reduces(strata::MpiComm& world) {
  const auto n = static_cast<std::int64_t>(world.size());
  const std::size_t count = 300000;  // 2.4 MB of doubles: past the 2 MiB threshold
  const std::vector<double> input = rank_values<double>(world.rank(), count);
  const auto sum_at = [&](std::size_t i) {
    return static_cast<double>(7 * n * (n - 1) / 2 + n * (static_cast<std::int64_t>(i % 13) - 5));
  };
  const auto exact = [&](const std::vector<double>& v) {
    for (std::size_t i = 0; i < v.size(); ++i) {
      if (v[i] != sum_at(i)) return false;
    }
    return true;
  };
  std::vector<double> in_place = input;
  world.all_reduce(std::span<double>(in_place), strata::ReduceOp::sum);
  CHECK(exact(in_place));
  std::vector<double> out(count);
  world.all_reduce(std::span<const double>(input), std::span<double>(out), strata::ReduceOp::sum);
  CHECK(exact(out));
  std::vector<double> started = input;
  world.start_all_reduce(std::span<double>(started), strata::ReduceOp::sum).wait();
  CHECK(exact(started));
  std::vector<double> piped = input;
  world.all_reduce_pipelined(
      std::span<const double>(piped), std::span<double>(piped), strata::ReduceOp::sum,
      count / 3 + 1, [](std::size_t, std::size_t, auto&&) {},
      [](std::size_t, std::size_t, auto&&) {});
  CHECK(exact(piped));
}

}  // namespace

TEST_CASE(
    "MPI backend: large all-reduces are exact, and OpenMPI's algorithm setting is left as it was") {
  auto world = strata::MpiComm::world();
  NbcSetting setting;
  const int before = setting.read();
  large_all_reduces(world);
  CHECK(setting.read() == before);
  if (before == -1) return;  // not OpenMPI: nothing more to see
  // A setting of the user's own (2: reduce to a root and broadcast) stands.
  setting.write(2);
  large_all_reduces(world);
  CHECK(setting.read() == 2);
  setting.write(before);
}
