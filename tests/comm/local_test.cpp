#include <doctest/doctest.h>

#include <strata/comm/local.hpp>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstring>
#include <stdexcept>
#include <string>
#include <thread>

#include "conformance.hpp"

using namespace std::chrono_literals;

TEST_CASE("local backend: the conformance suite on world sizes 1 to 16") {
  conformance::for_each_world("local", conformance::sizes_up_to(16), [](int n) {
    strata::LocalWorld(n).run([](strata::LocalComm& comm) { conformance::run_all(comm); });
  });
}

TEST_CASE("local backend: results are bitwise identical on every member and every run") {
  const int n = 7;
  const std::size_t count = 100'003;
  std::vector<std::vector<double>> results(2 * n);
  for (int run = 0; run < 2; ++run) {
    strata::LocalWorld(n).run([&](strata::LocalComm& comm) {
      std::vector<double> x(count);
      for (std::size_t i = 0; i < count; ++i)
        x[i] = conformance::input<double>(comm.rank(), i) * 1e-3;
      comm.all_reduce(std::span<double>(x), strata::ReduceOp::average);
      results[static_cast<std::size_t>(run * n + comm.rank())] = std::move(x);
    });
  }
  for (const auto& r : results) {
    CHECK(std::memcmp(r.data(), results[0].data(), count * sizeof(double)) == 0);
  }
}

TEST_CASE("local backend: a rank that throws makes every peer fail, and run rethrows its error") {
  strata::LocalWorld world(6);
  std::atomic<int> peers_failed{0};
  std::vector<std::string> messages(6);
  try {
    world.run([&](strata::LocalComm& comm) {
      std::vector<float> x(10, 1.0f);
      comm.all_reduce(std::span<float>(x), strata::ReduceOp::sum);
      if (comm.rank() == 4) throw std::runtime_error("out of memory on rank 4");
      try {
        comm.all_reduce(std::span<float>(x), strata::ReduceOp::sum);  // rank 4 never arrives
      } catch (const strata::error& e) {
        messages[static_cast<std::size_t>(comm.rank())] = e.what();
        ++peers_failed;
        comm.barrier();  // later collectives fail too
      }
    });
    FAIL("run did not throw");
  } catch (const std::runtime_error& e) {
    CHECK(std::string(e.what()) == "out of memory on rank 4");
  }
  CHECK(peers_failed == 5);
  for (int r = 0; r < 6; ++r) {
    if (r == 4) continue;
    CAPTURE(r);
    CHECK(messages[static_cast<std::size_t>(r)] == "strata: all_reduce on rank " +
                                                       std::to_string(r) +
                                                       ": rank 4 failed: out of memory on rank 4");
  }
}

TEST_CASE("local backend: a collective that nobody else joins times out with the missing ranks") {
  strata::LocalOptions opts;
  opts.timeout = 200ms;
  strata::LocalWorld world(4, opts);
  std::vector<std::string> messages(4);
  const auto start = std::chrono::steady_clock::now();
  CHECK_THROWS_AS(world.run([&](strata::LocalComm& comm) {
    try {
      if (comm.rank() == 2) {
        comm.barrier();  // ranks 0, 1, 3 are busy "computing" past the timeout
      } else {
        std::this_thread::sleep_for(600ms);
        comm.barrier();
      }
    } catch (const strata::error& e) {
      messages[static_cast<std::size_t>(comm.rank())] = e.what();
      throw;
    }
  }),
                  strata::error);
  CHECK(std::chrono::steady_clock::now() - start < 5s);
  CHECK(messages[2] ==
        "strata: barrier on rank 2: timed out after 200 ms in barrier waiting for rank(s) 0, 1, 3");
  for (int r : {0, 1, 3}) {
    CAPTURE(r);
    CHECK(messages[static_cast<std::size_t>(r)] ==
          "strata: barrier on rank " + std::to_string(r) +
              ": rank 2 failed: timed out after 200 ms in barrier waiting for rank(s) 0, 1, 3");
  }
}

TEST_CASE("local backend: a rank that returns early does not leave its peers hanging") {
  strata::LocalWorld world(3);  // default timeout: minutes; the test must end long before
  const auto start = std::chrono::steady_clock::now();
  try {
    world.run([](strata::LocalComm& comm) {
      if (comm.rank() == 0) return;
      comm.barrier();
    });
    FAIL("run did not throw");
  } catch (const strata::error& e) {
    CHECK(std::string(e.what()).find("which already returned from their function") !=
          std::string::npos);
    CHECK(std::string(e.what()).find("rank(s) 0") != std::string::npos);
  }
  CHECK(std::chrono::steady_clock::now() - start < 5s);
}

TEST_CASE("local backend: members that disagree fail together and write nothing") {
  strata::LocalWorld world(3);
  world.run([](strata::LocalComm& comm) {
    std::vector<double> x(comm.rank() == 1 ? 5 : 4, 2.0);
    const auto before = x;
    try {
      comm.all_reduce(std::span<double>(x), strata::ReduceOp::sum);
      FAIL("no error");
    } catch (const strata::error& e) {
      CHECK(std::string(e.what()) == "strata: all_reduce on rank " + std::to_string(comm.rank()) +
                                         ": rank 0 and rank 1 disagree: rank 0 passed 4 "
                                         "elements, rank 1 passed 5");
    }
    CHECK(x == before);
    // A different collective, and a different type, are caught the same way.
    try {
      if (comm.rank() == 0) {
        comm.barrier();
      } else {
        std::vector<float> y(4);
        comm.broadcast(std::span<float>(y), 0);
      }
      FAIL("no error");
    } catch (const strata::error& e) {
      CHECK(std::string(e.what()).find("rank 0 and rank 1 disagree: rank 0 called barrier, rank 1 "
                                       "called broadcast") != std::string::npos);
    }
    // The group is still usable afterwards.
    std::vector<std::int32_t> one{1};
    comm.all_reduce(std::span<std::int32_t>(one), strata::ReduceOp::sum);
    CHECK(one[0] == 3);
  });
}

TEST_CASE("local backend: bad arguments are errors, not crashes") {
  CHECK_THROWS_AS(strata::LocalWorld(0), std::invalid_argument);
  strata::LocalWorld(1).run([](strata::LocalComm& comm) {
    std::vector<double> a(3), b(4);
    CHECK_THROWS_AS(
        comm.all_reduce(std::span<const double>(a), std::span<double>(b), strata::ReduceOp::sum),
        strata::usage_error);
    CHECK_THROWS_AS(comm.broadcast(std::span<double>(a), 1), strata::usage_error);
    CHECK_THROWS_AS(comm.all_gather(std::span<const double>(a), std::span<double>(a.data(), 2)),
                    strata::usage_error);
    CHECK_THROWS_AS(comm.split(-1, 0), strata::usage_error);
  });
}

TEST_CASE("local backend: a world can run several times") {
  strata::LocalWorld world(5);
  for (int i = 0; i < 3; ++i) {
    std::atomic<int> sum{0};
    world.run([&](strata::LocalComm& comm) {
      std::vector<std::int64_t> x{comm.rank()};
      comm.all_reduce(std::span<std::int64_t>(x), strata::ReduceOp::sum);
      sum += static_cast<int>(x[0]);
    });
    CHECK(sum == 5 * 10);
  }
}

TEST_CASE("local backend: one member's bad arguments fail the others at once, not at a deadline") {
  strata::LocalWorld world(4);  // default timeout: minutes; nobody may wait for it
  const auto start = std::chrono::steady_clock::now();
  world.run([](strata::LocalComm& comm) { conformance::bad_arguments_fail_every_member(comm); });
  CHECK(std::chrono::steady_clock::now() - start < 5s);
}

TEST_CASE("local backend: a failure elsewhere never leaves a collective half done") {
  // Ranks 0 and 1 all-reduce a large buffer in their own group while rank 2 fails at about the
  // same moment. Either both complete the all-reduce or both fail before writing anything, and
  // neither returns while the other still uses its buffers.
  for (int trial = 0; trial < 12; ++trial) {
    CAPTURE(trial);
    std::vector<int> outcome(2, -1);  // 1 completed, 0 failed
    std::vector<int> state(2, -1);    // 1 reduced, 0 untouched, 2 mixed
    CHECK_THROWS(strata::LocalWorld(3).run([&](strata::LocalComm& comm) {
      auto pair = comm.split(comm.rank() < 2 ? 0 : 1, comm.rank());
      if (comm.rank() == 2) {
        std::this_thread::sleep_for(std::chrono::microseconds(200 * trial));
        throw std::runtime_error("rank 2 failed");
      }
      std::vector<double> x(1 << 21, double(comm.rank() + 1));
      const auto r = static_cast<std::size_t>(comm.rank());
      try {
        pair.all_reduce(std::span<double>(x), strata::ReduceOp::sum);
        outcome[r] = 1;
      } catch (const strata::error&) {
        outcome[r] = 0;
      }
      const std::size_t reduced = static_cast<std::size_t>(std::count(x.begin(), x.end(), 3.0));
      state[r] = reduced == x.size() ? 1 : (reduced == 0 ? 0 : 2);
      comm.barrier();  // fails: rank 2 is gone
    }));
    CHECK(outcome[0] == outcome[1]);
    CHECK(state[0] == outcome[0]);
    CHECK(state[1] == outcome[1]);
  }
}
