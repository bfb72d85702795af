// Averagers on the local backend against an independent serial computation, over random valid
// hierarchies and every world size from 1 to 16.
#include <doctest/doctest.h>

#include <strata/averaging/averager.hpp>
#include <strata/averaging/post_local_sgd.hpp>
#include <strata/comm/local.hpp>

#include "averager_conformance.hpp"

#include <cmath>
#include <cstring>
#include <optional>
#include <random>
#include <vector>

namespace {

using namespace averager_conformance;

struct Trace {
  // [step][rank] snapshots and the level each rank reported.
  std::vector<std::vector<Params>> before, after;
  std::vector<std::vector<std::optional<std::size_t>>> level;
  Trace(std::size_t steps, int n)
      : before(steps, std::vector<Params>(static_cast<std::size_t>(n))),
        after(steps, std::vector<Params>(static_cast<std::size_t>(n))),
        level(steps, std::vector<std::optional<std::size_t>>(static_cast<std::size_t>(n))) {}
};

template <class MakeAverager>
Trace run_trace(int n, std::size_t steps, MakeAverager make) {
  Trace trace(steps, n);
  strata::LocalWorld(n).run([&](strata::LocalComm& comm) {
    auto avg = make(comm);
    const int r = comm.rank();
    Params p = initial(r);
    auto s = spans(p);
    for (std::size_t step = 0; step < steps; ++step) {
      local_step(p, r, step);
      trace.before[step][static_cast<std::size_t>(r)] = p;
      trace.level[step][static_cast<std::size_t>(r)] = avg.average(s);
      trace.after[step][static_cast<std::size_t>(r)] = p;
    }
  });
  return trace;
}

void check_trace(const Trace& trace, const std::vector<strata::LevelSpec>& levels,
                 std::size_t warmup, int n) {
  for (std::size_t step = 0; step < trace.before.size(); ++step) {
    CAPTURE(step);
    const auto level = expected_level(levels, warmup, step);
    for (int r = 0; r < n; ++r) {
      const auto ur = static_cast<std::size_t>(r);
      REQUIRE(trace.level[step][ur] == level);
      const Params& after = trace.after[step][ur];
      if (!level) {
        REQUIRE(after == trace.before[step][ur]);  // untouched, bitwise
        continue;
      }
      const std::size_t g = levels[*level].group_size;
      const std::size_t first = (ur / g) * g;
      for (std::size_t t = 0; t < after.size(); ++t) {
        for (std::size_t i = 0; i < after[t].size(); ++i) {
          double sum = 0;
          for (std::size_t m = first; m < first + g; ++m) sum += trace.before[step][m][t][i];
          const double mean = sum / static_cast<double>(g);
          if (std::abs(after[t][i] - mean) > 1e-12 * std::max(1.0, std::abs(mean))) {
            CAPTURE(r);
            CAPTURE(t);
            CAPTURE(i);
            REQUIRE(after[t][i] == doctest::Approx(mean).epsilon(1e-12));
          }
          // Every member of the group holds the same bits.
          const double lead = trace.after[step][first][t][i];
          REQUIRE(std::memcmp(&after[t][i], &lead, sizeof(double)) == 0);
        }
      }
    }
  }
}

}  // namespace

TEST_CASE("hierarchical averaging matches the serial mean on random hierarchies, worlds 1..16") {
  std::mt19937_64 rng(7);
  for (int n = 1; n <= 16; ++n) {
    for (int trial = 0; trial < 3; ++trial) {
      const auto levels = random_levels(rng, static_cast<std::size_t>(n));
      const std::size_t warmup = rng() % 5;
      const strata::RuntimeHierarchy h(levels);
      CAPTURE(n);
      CAPTURE(h.to_string());
      CAPTURE(warmup);
      const std::size_t steps = 3 * h.hyper_period() + warmup + 1;
      const Trace trace = run_trace(n, steps, [&](strata::LocalComm& comm) {
        return strata::RuntimeHierarchicalAverager<strata::LocalComm>(comm, h, warmup);
      });
      check_trace(trace, levels, warmup, n);
    }
  }
}

TEST_CASE("compile-time hierarchies average like their run-time twins, bit for bit") {
  using H = strata::Hierarchy<strata::Level<2, 3>, strata::Level<3, 6>, strata::Level<5, 12>>;
  const std::vector<strata::LevelSpec> levels(H::levels.begin(), H::levels.end());
  const Trace ct = run_trace(12, 40, [](strata::LocalComm& comm) {
    return strata::HierarchicalAverager<H, strata::LocalComm>(comm, 4);
  });
  check_trace(ct, levels, 4, 12);
  const Trace rt = run_trace(12, 40, [](strata::LocalComm& comm) {
    return strata::RuntimeHierarchicalAverager<strata::LocalComm>(
        comm, strata::RuntimeHierarchy::from<H>(), 4);
  });
  CHECK(ct.after == rt.after);
}

TEST_CASE("an arena is averaged in place, with the same bits as packed tensors") {
  const int n = 8;
  const auto h = strata::RuntimeHierarchy::parse("1:2,2:4,4:8");
  std::vector<Params> packed(n), arena_result(n);
  strata::LocalWorld(n).run([&](strata::LocalComm& comm) {
    strata::RuntimeHierarchicalAverager<strata::LocalComm> a(comm, h), b(comm, h);
    const int r = comm.rank();
    Params p = initial(r);
    auto s = spans(p);
    strata::ParameterArena<double> arena(1024);
    std::vector<std::span<double>> in_arena;
    for (std::size_t t = 0; t < p.size(); ++t) {
      in_arena.push_back(arena.allocate(p[t].size()));
      std::copy(p[t].begin(), p[t].end(), in_arena.back().begin());
    }
    for (std::size_t step = 0; step < 12; ++step) {
      local_step(p, r, step);
      for (std::size_t t = 0; t < p.size(); ++t) {
        for (std::size_t i = 0; i < p[t].size(); ++i) {
          in_arena[t][i] -= 0.05 * gradient(r, t, i, step);
        }
      }
      const auto la = a.average(s);
      const auto lb = b.average(arena);
      CHECK(la == lb);
    }
    packed[static_cast<std::size_t>(r)] = p;
    Params q;
    for (auto t : in_arena) q.emplace_back(t.begin(), t.end());
    arena_result[static_cast<std::size_t>(r)] = q;
  });
  CHECK(packed == arena_result);
}

TEST_CASE("a restored averager continues the same schedule") {
  const int n = 6;
  const auto h = strata::RuntimeHierarchy::parse("2:3,3:6");
  std::vector<Params> straight(n), resumed(n);
  strata::LocalWorld(n).run([&](strata::LocalComm& comm) {
    const int r = comm.rank();
    {
      strata::RuntimeHierarchicalAverager<strata::LocalComm> avg(comm, h, 1);
      Params p = initial(r);
      auto s = spans(p);
      for (std::size_t step = 0; step < 20; ++step) {
        local_step(p, r, step);
        avg.average(s);
      }
      straight[static_cast<std::size_t>(r)] = p;
    }
    Params p = initial(r);
    auto s = spans(p);
    strata::AveragerState saved;
    {
      strata::RuntimeHierarchicalAverager<strata::LocalComm> avg(comm, h, 1);
      for (std::size_t step = 0; step < 7; ++step) {
        local_step(p, r, step);
        avg.average(s);
      }
      saved = avg.state();
    }
    CHECK(saved == strata::AveragerState{7, 1, "2:3,3:6", "absolute"});
    strata::RuntimeHierarchicalAverager<strata::LocalComm> restarted(comm, h, 1);
    restarted.restore(saved);
    CHECK(restarted.step() == 7);
    for (std::size_t step = 7; step < 20; ++step) {
      local_step(p, r, step);
      restarted.average(s);
    }
    resumed[static_cast<std::size_t>(r)] = p;

    strata::RuntimeHierarchicalAverager<strata::LocalComm> other(
        comm, strata::RuntimeHierarchy::parse("2:3,4:6"), 1);
    CHECK_THROWS_WITH_AS(other.restore(saved),
                         "averager: cannot restore a state of hierarchy 2:3,3:6, warm-up 1, phase "
                         "absolute into hierarchy 2:3,4:6, warm-up 1, phase absolute",
                         std::invalid_argument);
  });
  CHECK(straight == resumed);
}

TEST_CASE("plain local SGD counts its period from the end of warm-up") {
  for (int n : {1, 3, 5}) {
    const Trace trace = run_trace(n, 15, [](strata::LocalComm& comm) {
      return strata::PeriodicAverager<strata::LocalComm>(comm, 4, 3);
    });
    for (std::size_t step = 0; step < 15; ++step) {
      CAPTURE(step);
      const bool due = step >= 3 && (step - 3) % 4 == 0;
      CHECK(trace.level[step][0] == (due ? std::optional<std::size_t>(0) : std::nullopt));
    }
  }
}

TEST_CASE("post-local SGD: world gradients in warm-up, then per node or none") {
  const int n = 8;
  for (bool intra : {true, false}) {
    CAPTURE(intra);
    strata::LocalWorld(n).run([&](strata::LocalComm& comm) {
      strata::RuntimeHierarchicalAverager<strata::LocalComm> avg(
          comm, strata::RuntimeHierarchy::parse("2:4,4:8"), 2);
      strata::PostLocalGradientSync sync(avg, comm, 4, intra);
      const int r = comm.rank();
      std::vector<double> w{0.0};
      for (std::size_t step = 0; step < 6; ++step) {
        std::vector<double> g{double(r) * double(step + 1)};
        std::vector<std::span<double>> grads{g};
        const auto where = sync.sync(grads);
        if (step < 2) {
          CHECK(where == strata::GradientSync::world);
          CHECK(g[0] == doctest::Approx(3.5 * double(step + 1)));
        } else if (intra) {
          CHECK(where == strata::GradientSync::node);
          const double node_mean = (r < 4 ? 1.5 : 5.5) * double(step + 1);
          CHECK(g[0] == doctest::Approx(node_mean));
        } else {
          CHECK(where == strata::GradientSync::none);
          CHECK(g[0] == double(r) * double(step + 1));
        }
        avg.average(std::span<double>(w));
      }
    });
  }
}

TEST_CASE("a failed averaging leaves the parameters and the step as they were") {
  strata::LocalOptions opts;
  opts.timeout = std::chrono::milliseconds(300);
  const auto h = strata::RuntimeHierarchy::parse("1:4");  // every step: the whole world
  std::vector<int> unchanged(4, 0);
  CHECK_THROWS(strata::LocalWorld(4, opts).run([&](strata::LocalComm& comm) {
    strata::RuntimeHierarchicalAverager<strata::LocalComm> avg(comm, h);
    Params p = initial(comm.rank());
    auto s = spans(p);
    avg.average(s);  // step 0
    if (comm.rank() == 3) throw std::runtime_error("rank 3 lost its GPU");
    const Params before = p;
    try {
      avg.average(s);
    } catch (const strata::error&) {
      unchanged[static_cast<std::size_t>(comm.rank())] = (p == before) && avg.step() == 1;
      throw;
    }
  }));
  CHECK(unchanged == std::vector<int>{1, 1, 1, 0});
}

TEST_CASE("an averager checks the hierarchy against the world size") {
  strata::LocalWorld(6).run([](strata::LocalComm& comm) {
    CHECK_THROWS_WITH_AS(strata::RuntimeHierarchicalAverager<strata::LocalComm>(
                             comm, strata::RuntimeHierarchy::parse("2:4,4:8")),
                         "Hierarchy: level 1 group size 8 is not the world size 6; the largest "
                         "group must span the whole world",
                         std::invalid_argument);
  });
}

TEST_CASE("the backend-independent averager conformance on the local backend, worlds 1..16") {
  std::mt19937_64 rng(11);
  for (int n = 1; n <= 16; ++n) {
    const strata::RuntimeHierarchy h(random_levels(rng, static_cast<std::size_t>(n)));
    const std::size_t warmup = rng() % 4;
    CAPTURE(n);
    CAPTURE(h.to_string());
    strata::LocalWorld(n).run([&](strata::LocalComm& comm) {
      averager_conformance::matches_serial(comm, h, warmup, 2 * h.hyper_period() + warmup + 1);
    });
  }
}
