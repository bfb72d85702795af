#include <doctest/doctest.h>

#include <strata/comm/local.hpp>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdint>
#include <cstring>
#include <random>
#include <span>
#include <stdexcept>
#include <string>
#include <thread>
#include <type_traits>
#include <vector>

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

// --- all_reduce_tensors --------------------------------------------------------------------------

namespace {

// Tensor lists of every shape the walk must handle: none at all, only empty tensors, fewer
// elements than ranks, one tensor spanning many chunks, many tiny tensors (more pieces than a
// chunk holds), and random mixes with empty tensors among them. The same on every rank.
std::vector<std::vector<std::size_t>> tensor_shapes() {
  std::vector<std::vector<std::size_t>> shapes = {
      {}, {0, 0, 0}, {1}, {0, 3, 0}, {2048 * 3 + 5}, {4096 * 5 + 3}, {4096, 0, 1, 2047, 2049}};
  std::vector<std::size_t> tiny;
  for (std::size_t t = 0; t < 700; ++t) tiny.push_back(t % 5 == 0 ? 0 : 1 + t % 3);
  shapes.push_back(tiny);
  std::mt19937_64 rng(20240611);
  for (int list = 0; list < 5; ++list) {
    std::vector<std::size_t> sizes(rng() % 60);
    for (std::size_t& s : sizes) {
      const auto kind = rng() % 10;
      s = kind < 2 ? 0 : (kind < 7 ? 1 + rng() % 100 : 100 + rng() % 6000);
    }
    shapes.push_back(sizes);
  }
  return shapes;
}

template <class T>
T random_value(std::mt19937_64& rng) {
  if constexpr (std::is_floating_point_v<T>) {
    return static_cast<T>(std::uniform_real_distribution<double>(-100.0, 100.0)(rng));
  } else {
    return static_cast<T>(static_cast<std::int64_t>(rng() % 2001) - 1000);
  }
}

template <class T>
std::vector<unsigned char> bytes_of(const std::vector<T>& v) {
  std::vector<unsigned char> b(v.size() * sizeof(T));
  if (!v.empty()) std::memcpy(b.data(), v.data(), b.size());
  return b;
}

// Every member's tensors after all_reduce_tensors equal, bit for bit, what packing them, an
// all_reduce of the packed buffer and unpacking give; and every member holds the same bits.
template <class T>
void tensors_match_flat(strata::LocalComm& comm, std::vector<std::vector<unsigned char>>& seen) {
  const auto shapes = tensor_shapes();
  const auto me = static_cast<std::size_t>(comm.rank());
  for (std::size_t s = 0; s < shapes.size(); ++s) {
    for (const auto op : {strata::ReduceOp::sum, strata::ReduceOp::average, strata::ReduceOp::min,
                          strata::ReduceOp::max}) {
      std::mt19937_64 rng(1000 * s + 17 * me + static_cast<std::size_t>(op));
      std::vector<std::vector<T>> storage;
      for (const std::size_t size : shapes[s]) {
        storage.emplace_back(size);
        for (T& x : storage.back()) x = random_value<T>(rng);
      }
      std::vector<T> flat;
      for (const auto& t : storage) flat.insert(flat.end(), t.begin(), t.end());
      std::vector<std::span<T>> tensors(storage.begin(), storage.end());

      comm.all_reduce_tensors(std::span<const std::span<T>>(tensors), op);
      comm.all_reduce(std::span<T>(flat), op);

      std::vector<T> got;
      for (const auto& t : storage) got.insert(got.end(), t.begin(), t.end());
      CAPTURE(s);
      CAPTURE(strata::to_string(op));
      CAPTURE(strata::type_name<T>());
      CHECK(bytes_of(got) == bytes_of(flat));
      seen[me] = bytes_of(got);
      comm.barrier();
      CHECK(seen[me] == seen[0]);
      comm.barrier();  // nobody overwrites its entry while a peer still compares
    }
  }
}

// Rank `who` of a group of n: "rank 2".
std::string rank_of(int r) { return "rank " + std::to_string(r); }

}  // namespace

TEST_CASE("local backend: all_reduce_tensors equals pack, all_reduce and unpack, bit for bit") {
  conformance::for_each_world("local", conformance::sizes_up_to(16), [](int n) {
    std::vector<std::vector<unsigned char>> seen(static_cast<std::size_t>(n));
    strata::LocalWorld(n).run([&](strata::LocalComm& comm) {
      tensors_match_flat<float>(comm, seen);
      tensors_match_flat<double>(comm, seen);
      tensors_match_flat<std::int32_t>(comm, seen);
      tensors_match_flat<std::int64_t>(comm, seen);
    });
  });
}

TEST_CASE("local backend: all_reduce_tensors averages the way the averagers unpack") {
  // Sum times 1/n for floating point: the averager's pack, sum and scaled unpack give the same.
  strata::LocalWorld(3).run([](strata::LocalComm& comm) {
    std::vector<double> a{0.1 * (comm.rank() + 1), 1.0 / (comm.rank() + 3)}, b{};
    std::vector<double> c{2.0 / 7 * comm.rank()};
    const std::vector<std::span<double>> list{a, b, c};
    std::vector<double> flat{a[0], a[1], c[0]};
    comm.all_reduce(std::span<double>(flat), strata::ReduceOp::sum);
    comm.all_reduce_tensors(std::span<const std::span<double>>(list), strata::ReduceOp::average);
    const double inv = 1.0 / 3;
    CHECK(a[0] == flat[0] * inv);
    CHECK(a[1] == flat[1] * inv);
    CHECK(c[0] == flat[2] * inv);
    // Integers: the truncated quotient.
    std::vector<std::int32_t> i{comm.rank() == 0 ? -7 : 1};  // sum -5: -1, not -2
    const std::vector<std::span<std::int32_t>> ints{i};
    comm.all_reduce_tensors(std::span<const std::span<std::int32_t>>(ints),
                            strata::ReduceOp::average);
    CHECK(i[0] == -1);
  });
}

TEST_CASE(
    "local backend: all_reduce_tensors lists that disagree fail everywhere, nothing written") {
  conformance::for_each_world("local", {2, 3, 5, 16}, [](int n) {
    strata::LocalWorld(n).run([n](strata::LocalComm& comm) {
      const int bad = n - 1;
      const bool mine = comm.rank() == bad;
      const std::string who = rank_of(bad);
      const std::string op = "all_reduce_tensors";
      std::vector<float> a(10, float(comm.rank())), b(0), c(3000, 1.0f + comm.rank());
      const auto before_a = a;
      const auto before_c = c;
      auto unchanged = [&] {
        CHECK(a == before_a);
        CHECK(c == before_c);
      };
      auto call = [&](std::vector<std::span<float>> list,
                      strata::ReduceOp reduce = strata::ReduceOp::average) {
        comm.all_reduce_tensors(std::span<const std::span<float>>(list), reduce);
      };

      // One tensor fewer.
      conformance::expect_usage_error(
          comm.rank(), op,
          "rank 0 and " + who + " disagree: rank 0 passed 3 tensors, " + who + " passed 2", [&] {
            mine ? call({a, c}) : call({a, b, c});
          });
      unchanged();
      // Same count and total, different sizes: the first tensor that differs is named.
      conformance::expect_usage_error(
          comm.rank(), op,
          "rank 0 and " + who + " disagree: tensor 0 has 10 elements on rank 0, 9 on " + who, [&] {
            mine ? call({std::span<float>(a).first(9), std::span<float>(a).subspan(9), c})
                 : call({a, b, c});
          });
      unchanged();
      // Tensors that overlap on one member.
      conformance::expect_usage_error(comm.rank(), op, who + ": tensors 0 and 2 overlap", [&] {
        mine ? call({a, b, std::span<float>(a).subspan(9)}) : call({a, b, std::span<float>(c)});
      });
      unchanged();
      // A different reduction.
      conformance::expect_usage_error(
          comm.rank(), op,
          "rank 0 and " + who + " disagree: rank 0 reduces with average, " + who + " with max",
          [&] {
            call({a, b, c}, mine ? strata::ReduceOp::max : strata::ReduceOp::average);
          });
      unchanged();
      // A different element type.
      std::vector<double> d(10, 1.0);
      const std::vector<std::span<double>> doubles{d};
      conformance::expect_usage_error(
          comm.rank(), op,
          "rank 0 and " + who + " disagree: rank 0 passed float elements, " + who +
              " passed double",
          [&] {
            if (mine) {
              comm.all_reduce_tensors(std::span<const std::span<double>>(doubles),
                                      strata::ReduceOp::sum);
            } else {
              call({a}, strata::ReduceOp::sum);
            }
          });
      unchanged();
      CHECK(d == std::vector<double>(10, 1.0));
      // A flat all_reduce of the same elements is another operation; each member names its own.
      std::vector<float> flat(3010, 1.0f);
      conformance::expect_usage_error(
          comm.rank(), mine ? "all_reduce" : op,
          "rank 0 and " + who + " disagree: rank 0 called all_reduce_tensors, " + who +
              " called all_reduce",
          [&] {
            if (mine) {
              comm.all_reduce(std::span<float>(flat), strata::ReduceOp::average);
            } else {
              call({a, b, c});
            }
          });
      unchanged();
      CHECK(flat == std::vector<float>(3010, 1.0f));
      // Every member but the last calls the flat all_reduce alike: the rule walks past the
      // members that agree with member 0 (they passed no tensor list) to the one that differs.
      if (n >= 3) {
        conformance::expect_usage_error(
            comm.rank(), mine ? op : "all_reduce",
            "rank 0 and " + who + " disagree: rank 0 called all_reduce, " + who +
                " called all_reduce_tensors",
            [&] {
              if (mine) {
                call({a, b, c});
              } else {
                comm.all_reduce(std::span<float>(flat), strata::ReduceOp::average);
              }
            });
        unchanged();
        CHECK(flat == std::vector<float>(3010, 1.0f));
      }
      conformance::still_usable(comm);
    });
  });
}

TEST_CASE("local backend: all_reduce_tensors writes nothing when a member leaves or times out") {
  SUBCASE("a member returns early") {
    std::vector<int> untouched(4, 0);
    CHECK_THROWS_AS(strata::LocalWorld(4).run([&](strata::LocalComm& comm) {
      if (comm.rank() == 2) return;
      std::vector<double> a(5000, comm.rank()), b(7, comm.rank());
      const std::vector<std::span<double>> list{a, b};
      try {
        comm.all_reduce_tensors(std::span<const std::span<double>>(list), strata::ReduceOp::sum);
      } catch (const strata::error& e) {
        CHECK(std::string(e.what()).find(
                  "all_reduce_tensors waited for rank(s) 2, which already returned") !=
              std::string::npos);
        untouched[static_cast<std::size_t>(comm.rank())] =
            std::count(a.begin(), a.end(), double(comm.rank())) == 5000 &&
            std::count(b.begin(), b.end(), double(comm.rank())) == 7;
        throw;
      }
    }),
                    strata::error);
    CHECK(untouched == std::vector<int>{1, 1, 0, 1});
  }
  SUBCASE("a member arrives after the deadline") {
    strata::LocalOptions opts;
    opts.timeout = 200ms;
    std::vector<std::string> messages(3);
    std::vector<int> untouched(3, 0);
    CHECK_THROWS_AS(strata::LocalWorld(3, opts).run([&](strata::LocalComm& comm) {
      if (comm.rank() == 1) std::this_thread::sleep_for(600ms);
      std::vector<float> a(100, 1.0f), b(0);
      const std::vector<std::span<float>> list{a, b};
      try {
        comm.all_reduce_tensors(std::span<const std::span<float>>(list), strata::ReduceOp::max);
      } catch (const strata::error& e) {
        messages[static_cast<std::size_t>(comm.rank())] = e.what();
        untouched[static_cast<std::size_t>(comm.rank())] =
            std::count(a.begin(), a.end(), 1.0f) == 100;
        throw;
      }
    }),
                    strata::timeout_error);
    CHECK(untouched == std::vector<int>{1, 1, 1});
    CHECK(messages[0].find("timed out after 200 ms in all_reduce_tensors waiting for rank(s) 1") !=
          std::string::npos);
  }
  SUBCASE("a failure elsewhere never leaves it half done") {
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
        std::vector<std::vector<double>> storage;
        for (std::size_t t = 0; t < 64; ++t) storage.emplace_back(t % 7 == 0 ? 0 : 1 << 15, 1.0);
        std::vector<std::span<double>> list(storage.begin(), storage.end());
        const auto r = static_cast<std::size_t>(comm.rank());
        try {
          pair.all_reduce_tensors(std::span<const std::span<double>>(list), strata::ReduceOp::sum);
          outcome[r] = 1;
        } catch (const strata::error&) {
          outcome[r] = 0;
        }
        std::size_t reduced = 0;
        std::size_t total = 0;
        for (const auto& t : storage) {
          reduced += static_cast<std::size_t>(std::count(t.begin(), t.end(), 2.0));
          total += t.size();
        }
        state[r] = reduced == total ? 1 : (reduced == 0 ? 0 : 2);
        comm.barrier();  // fails: rank 2 is gone
      }));
      CHECK(outcome[0] == outcome[1]);
      CHECK(state[0] == outcome[0]);
      CHECK(state[1] == outcome[1]);
    }
  }
}
