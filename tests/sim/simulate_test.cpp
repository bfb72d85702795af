// The clock simulation: runs worked out by hand, and an independent plain loop over random
// configurations.
#include <doctest/doctest.h>

#include <algorithm>
#include <cstdint>
#include <random>
#include <set>
#include <stdexcept>
#include <strata/sim/simulate.hpp>
#include <vector>

using strata::RuntimeHierarchy;
using strata::sim::CostModel;
using strata::sim::DelayModel;
using strata::sim::GroupAssignment;
using strata::sim::Method;
using strata::sim::simulate;
using strata::sim::SyncKind;

namespace {

// One link of `bandwidth` bytes/s and no latency, everything priced with it.
CostModel flat_cost(double model_bytes, double bandwidth, std::size_t node = 1) {
  CostModel c;
  c.model_bytes = model_bytes;
  c.ranks_per_node = node;
  c.intra_node = {bandwidth, 0.0};
  c.inter_node = {bandwidth, 0.0};
  return c;
}

}  // namespace

TEST_CASE("two ranks, one late step: the wait and the finish, by hand") {
  // 1 s steps; rank 1 is 3 s late at step 1; the pair averages at steps 0 and 2 (period 2),
  // each averaging 2 * 1/2 * 1 MB over 1 GB/s = 1 ms.
  const DelayModel d{.step_s = 1.0, .events = {{1, 1, 3.0}}};
  const auto m = Method::hierarchical(RuntimeHierarchy::parse("2:2"));
  const auto run = simulate(m, d, flat_cost(1e6, 1e9), 4, 1);
  // step 0: both at 1, average -> 1.001. step 1: 2.001 and 5.001. step 2: 3.001 and 6.001,
  // average -> 6.002 (rank 0 waited 3). step 3: 7.002.
  CHECK(run.seconds == doctest::Approx(7.002));
  CHECK(run.seconds_per_step() == doctest::Approx(7.002 / 4));
  REQUIRE(run.syncs.size() == 1);
  CHECK(run.syncs[0].kind == SyncKind::model_average);
  CHECK(run.syncs[0].count == 2);
  CHECK(run.syncs[0].wait_s == doctest::Approx(1.5));  // 3 s over 2 ranks
  CHECK(run.syncs[0].comm_s == doctest::Approx(0.002));
}

TEST_CASE("local SGD with warm-up and intra-node gradients, by hand") {
  // 4 ranks on 2 nodes of 2; 1 s steps; rank 3 is 1 s late at step 2. Warm-up 2: world gradient
  // all-reduce at steps 0 and 1; then node gradient all-reduces at every step, and the world
  // averages at steps 2 and 4 (period 2 from the end of warm-up).
  CostModel c;
  c.model_bytes = 1e6;
  c.ranks_per_node = 2;
  c.intra_node = {1e9, 0.0};  // T(2) = 1 MB / 1 GB/s = 1 ms, exposed half: 0.5 ms
  c.inter_node = {1e8, 0.0};  // T(4) = 1.5 MB / 100 MB/s = 15 ms, exposed half: 7.5 ms
  c.backward_overlap = 0.5;
  const DelayModel d{.step_s = 1.0, .events = {{3, 2, 1.0}}};
  const auto m = Method::local_sgd(4, 2, /*warmup=*/2).with_intra_node_gradients();
  const auto run = simulate(m, d, c, 6, 7);
  // s0: 1 -> 1.0075. s1: 2.0075 -> 2.015. s2: 3.015 (rank 3: 4.015); node gradients: node 0 at
  // 3.0155, node 1 at 4.0155 (rank 2 waits 1); world average: 4.0305 (ranks 0, 1 wait 1 each).
  // s3: 5.0305 -> 5.031. s4: 6.031 -> 6.0315 -> 6.0465. s5: 7.0465 -> 7.047.
  CHECK(run.seconds == doctest::Approx(7.047));
  REQUIRE(run.syncs.size() == 3);
  CHECK(run.syncs[0].kind == SyncKind::model_average);
  CHECK(run.syncs[0].count == 2);
  CHECK(run.syncs[0].wait_s == doctest::Approx(0.5));
  CHECK(run.syncs[0].comm_s == doctest::Approx(0.030));
  CHECK(run.syncs[1].kind == SyncKind::world_gradients);
  CHECK(run.syncs[1].count == 2);
  CHECK(run.syncs[1].wait_s == 0.0);
  CHECK(run.syncs[1].comm_s == doctest::Approx(0.015));
  CHECK(run.syncs[2].kind == SyncKind::node_gradients);
  CHECK(run.syncs[2].count == 4);
  CHECK(run.syncs[2].wait_s == doctest::Approx(0.25));
  CHECK(run.syncs[2].comm_s == doctest::Approx(0.002));
  CHECK(run.syncs[2].label() == "node gradients (g=2)");
}

TEST_CASE("synchronous SGD without stragglers: the step time plus the exposed all-reduce") {
  CostModel c;
  c.model_bytes = 8e6;
  c.ranks_per_node = 4;
  c.intra_node = {4e9, 1e-5};
  c.inter_node = {1e9, 1e-4};
  c.backward_overlap = 0.5;
  // T(8) = 14 x 100 us + 1.75 x 8 MB / 1 GB/s = 15.4 ms; half of it is exposed.
  const auto run = simulate(Method::synchronous(8), DelayModel{.step_s = 0.05}, c, 100, 3);
  CHECK(run.seconds_per_step() == doctest::Approx(0.05 + 0.5 * 15.4e-3));
  REQUIRE(run.syncs.size() == 1);
  CHECK(run.syncs[0].kind == SyncKind::world_gradients);
  CHECK(run.syncs[0].count == 100);
  CHECK(run.syncs[0].wait_s == 0.0);
}

TEST_CASE("a persistent straggler sets the pace whatever the groups") {
  // Every rank attends a collective at the same steps and pays the same for it, so no clock ever
  // passes the slowest rank's: it never waits, and finishes last, at its own compute plus its
  // communication. Over 16 steps of 1:2,2:4,4:8 the world averages at 0, 4, 8, 12, groups of 4
  // at 2, 6, 10, 14 and pairs at the 8 odd steps.
  CostModel c;
  c.model_bytes = 8e6;
  c.ranks_per_node = 4;
  c.intra_node = {4e9, 1e-5};
  c.inter_node = {1e9, 1e-4};
  const double t2 = 2e-5 + 8e6 / 4e9;           // pairs, inside a node
  const double t4 = 6e-5 + 1.5 * 8e6 / 4e9;     // whole nodes
  const double t8 = 1.4e-3 + 1.75 * 8e6 / 1e9;  // two nodes
  const DelayModel d{.step_s = 1.0, .slow_ranks = {5}, .slow_factor = 1.5};
  const auto m = Method::hierarchical(RuntimeHierarchy::parse("1:2,2:4,4:8"));
  const double expected = 16 * 1.5 + 8 * t2 + 4 * t4 + 4 * t8;
  CHECK(simulate(m, d, c, 16, 1).seconds == doctest::Approx(expected));
  for (std::uint64_t seed = 1; seed <= 5; ++seed) {
    CHECK(simulate(m.with_groups(GroupAssignment::shuffled), d, c, 16, seed).seconds ==
          doctest::Approx(expected));
  }
}

TEST_CASE("shuffled groups help when a persistent straggler's partner is late") {
  // 4 ranks, one per node; rank 0 takes 2 s a step, the others 1 s; rank 1 is 5 s late at step
  // 1. Pairs average every step after step 0, where the world averages.
  const DelayModel d{.step_s = 1.0, .slow_ranks = {0}, .slow_factor = 2.0, .events = {{1, 1, 5.0}}};
  const auto fixed = Method::hierarchical(RuntimeHierarchy::parse("1:2,100:4"));
  const CostModel free;
  // Contiguous pairs {0,1}, {2,3}. s0: 2, 1, 1, 1 -> all 2. s1: rank 0 at 4, rank 1 at 8 -> both
  // 8 (rank 0 waits 4). From then on rank 0 leads its pair: 8 + 6 x 2 = 20.
  CHECK(simulate(fixed, d, free, 8, 1).seconds == 20.0);
  // Shuffled pairs put rank 0 with rank 1 at step 1 only once in three; otherwise rank 0 may
  // meet the late ranks after it has caught up some of its lag. Never worse than 20 here, never
  // better than rank 0's own 16 s of compute.
  const auto shuffled = fixed.with_groups(GroupAssignment::shuffled);
  double sum = 0.0;
  std::size_t better = 0;
  for (std::uint64_t seed = 1; seed <= 30; ++seed) {
    const double t = simulate(shuffled, d, free, 8, seed).seconds;
    CHECK(t >= 16.0);
    CHECK(t <= 20.0);
    sum += t;
    better += t < 20.0;
  }
  CHECK(sum / 30 < 20.0);
  CHECK(better >= 10);
}

TEST_CASE("shuffled assignments are permutations that keep groups node-aligned") {
  std::vector<std::size_t> order(16);
  // Groups of 2 inside nodes of 4: every rank stays in its node.
  strata::detail::shuffled_order(order, 2, 4, 9, 3);
  CHECK(std::set<std::size_t>(order.begin(), order.end()).size() == 16);
  for (std::size_t i = 0; i < 16; ++i) CHECK(order[i] / 4 == i / 4);
  // Groups of 8 over nodes of 4: whole nodes move together.
  strata::detail::shuffled_order(order, 8, 4, 9, 3);
  CHECK(std::set<std::size_t>(order.begin(), order.end()).size() == 16);
  for (std::size_t n = 0; n < 4; ++n) {
    for (std::size_t i = 1; i < 4; ++i) CHECK(order[n * 4 + i] == order[n * 4] + i);
    CHECK(order[n * 4] % 4 == 0);
  }
  // Another step, another assignment; the same step and seed, the same one.
  std::vector<std::size_t> again(16);
  std::vector<std::size_t> other(16);
  strata::detail::shuffled_order(again, 8, 4, 9, 3);
  strata::detail::shuffled_order(other, 8, 4, 9, 4);
  CHECK(again == order);
  bool differs = false;
  for (std::uint64_t step = 4; step < 20 && !differs; ++step) {
    strata::detail::shuffled_order(other, 8, 4, 9, step);
    differs = other != order;
  }
  CHECK(differs);
}

TEST_CASE("a seed determines the run") {
  const DelayModel d{
      .step_s = 0.055, .straggler_rate = 0.02, .straggler_delay_s = 1.0, .lognormal_sigma = 0.2};
  const auto m = Method::hierarchical(RuntimeHierarchy::parse("2:8,4:32,8:64"))
                     .with_groups(GroupAssignment::shuffled);
  const CostModel c = CostModel::t4_resnet18();
  const auto a = simulate(m, d, c, 300, 11);
  const auto b = simulate(m, d, c, 300, 11);
  const auto other = simulate(m, d, c, 300, 12);
  CHECK(a.seconds == b.seconds);
  for (std::size_t i = 0; i < a.syncs.size(); ++i) CHECK(a.syncs[i].wait_s == b.syncs[i].wait_s);
  CHECK(a.seconds != other.seconds);
}

// ------------------------------------------------------------------------------------------------
// An independent reference: the rules of the model written as a plain loop, with its own level
// rule, its own groups and its own cost formula; the delays come from DelayModel::step_time.

namespace {

struct Config {
  std::size_t world;
  std::size_t node;
  std::vector<strata::LevelSpec> levels;  // empty: synchronous SGD
  bool relative;                          // local SGD's phase origin
  std::size_t warmup;
  bool intra;
};

double ring_time(const CostModel& c, std::size_t g) {
  if (g <= 1) return 0.0;
  const bool inside = g <= c.ranks_per_node && c.ranks_per_node % g == 0;
  const auto& link = inside ? c.intra_node : c.inter_node;
  const double steps = 2.0 * static_cast<double>(g - 1);
  return link.latency_s * steps +
         steps / static_cast<double>(g) * c.model_bytes / link.bandwidth_bytes_per_s;
}

long naive_level(const Config& k, std::size_t s) {
  if (k.levels.empty() || s < k.warmup) return -1;
  const std::size_t t = k.relative ? s - k.warmup : s;
  long found = -1;
  for (std::size_t i = 0; i < k.levels.size(); ++i) {
    if (t % k.levels[i].period == 0) found = static_cast<long>(i);
  }
  return found;
}

void meet(std::vector<double>& clock, std::size_t g, double comm) {
  for (std::size_t first = 0; first < clock.size(); first += g) {
    double last = 0.0;
    for (std::size_t r = first; r < first + g; ++r) last = std::max(last, clock[r]);
    for (std::size_t r = first; r < first + g; ++r) clock[r] = last + comm;
  }
}

double naive_run(const Config& k, const DelayModel& d, const CostModel& c, std::size_t steps,
                 std::uint64_t seed) {
  std::vector<double> clock(k.world, 0.0);
  for (std::size_t s = 0; s < steps; ++s) {
    for (std::size_t r = 0; r < k.world; ++r) clock[r] += d.step_time(seed, r, s);
    if (k.levels.empty() || s < k.warmup) {
      meet(clock, k.world, (1.0 - c.backward_overlap) * ring_time(c, k.world));
    } else if (k.intra) {
      meet(clock, k.node, (1.0 - c.backward_overlap) * ring_time(c, k.node));
    }
    const long l = naive_level(k, s);
    if (l >= 0) {
      const std::size_t g = k.levels[static_cast<std::size_t>(l)].group_size;
      meet(clock, g, ring_time(c, g));
    }
  }
  return *std::max_element(clock.begin(), clock.end());
}

}  // namespace

TEST_CASE("simulate agrees with a plain loop on random configurations") {
  std::mt19937_64 rng(2024);
  const auto pick = [&](std::size_t lo, std::size_t hi) {
    return std::uniform_int_distribution<std::size_t>(lo, hi)(rng);
  };
  const std::vector<std::size_t> worlds{1, 2, 3, 4, 6, 8, 12, 16, 24, 32};
  for (int trial = 0; trial < 300; ++trial) {
    CAPTURE(trial);
    Config k;
    k.world = worlds[pick(0, worlds.size() - 1)];
    std::vector<std::size_t> divisors;
    for (std::size_t g = 1; g <= k.world; ++g) {
      if (k.world % g == 0) divisors.push_back(g);
    }
    k.node = divisors[pick(0, divisors.size() - 1)];
    const std::size_t kind = pick(0, 2);  // synchronous, local, hierarchical
    k.relative = kind == 1;
    k.warmup = kind == 0 ? 0 : pick(0, 5);
    k.intra = kind != 0 && pick(0, 1) == 1;
    if (kind == 1) {
      k.levels = {{pick(1, 6), k.world}};
    } else if (kind == 2) {
      // A chain of divisors ending at the world, with increasing periods.
      std::vector<std::size_t> sizes{k.world};
      while (sizes.front() > 1 && pick(0, 2) != 0) {
        std::vector<std::size_t> smaller;
        for (const std::size_t g : divisors) {
          if (g < sizes.front() && sizes.front() % g == 0) smaller.push_back(g);
        }
        sizes.insert(sizes.begin(), smaller[pick(0, smaller.size() - 1)]);
      }
      std::size_t period = 0;
      for (const std::size_t g : sizes) {
        period += pick(1, 3);
        k.levels.push_back({period, g});
      }
    }
    DelayModel d;
    d.step_s = 0.01 * static_cast<double>(pick(1, 10));
    d.straggler_rate = 0.05 * static_cast<double>(pick(0, 4));
    d.straggler_delay_s = 0.1 * static_cast<double>(pick(0, 10));
    if (pick(0, 1) == 1) {
      d.slow_ranks = {pick(0, k.world - 1)};
      d.slow_factor = 1.0 + 0.25 * static_cast<double>(pick(0, 4));
    }
    d.lognormal_sigma = pick(0, 1) == 1 ? 0.3 : 0.0;
    if (pick(0, 1) == 1) d.events = {{pick(0, k.world - 1), pick(0, 20), 0.5}};
    CostModel c;
    c.model_bytes = 1e6 * static_cast<double>(pick(0, 50));
    c.ranks_per_node = k.node;
    c.intra_node = {1e9 * static_cast<double>(pick(1, 20)),
                    1e-6 * static_cast<double>(pick(0, 20))};
    c.inter_node = {1e8 * static_cast<double>(pick(1, 40)),
                    1e-5 * static_cast<double>(pick(0, 20))};
    c.backward_overlap = 0.25 * static_cast<double>(pick(0, 4));
    const std::size_t steps = pick(1, 60);
    const std::uint64_t seed = pick(0, 1000);

    Method m = Method::synchronous(k.world);
    if (kind == 1) m = Method::local_sgd(k.world, k.levels[0].period, k.warmup);
    if (kind == 2) m = Method::hierarchical(RuntimeHierarchy(k.levels), k.warmup);
    if (k.intra) m = m.with_intra_node_gradients();
    const double expected = naive_run(k, d, c, steps, seed);
    CHECK(simulate(m, d, c, steps, seed).seconds == doctest::Approx(expected).epsilon(1e-12));
  }
}

TEST_CASE("long runs, whose schedule the simulator reads in pieces, agree with the plain loop") {
  Config k{8, 2, {{3, 2}, {5, 4}, {7, 8}}, false, 4, true};
  const DelayModel d{.step_s = 0.01, .straggler_rate = 0.01, .straggler_delay_s = 0.2};
  CostModel c;
  c.model_bytes = 1e6;
  c.ranks_per_node = 2;
  c.intra_node = {1e10, 1e-6};
  c.inter_node = {1e9, 1e-5};
  c.backward_overlap = 0.5;
  const auto m =
      Method::hierarchical(RuntimeHierarchy(k.levels), k.warmup).with_intra_node_gradients();
  for (const std::size_t steps : {4095, 4096, 4097, 10'001}) {
    CAPTURE(steps);
    CHECK(simulate(m, d, c, steps, 5).seconds ==
          doctest::Approx(naive_run(k, d, c, steps, 5)).epsilon(1e-12));
  }
}

TEST_CASE("bad runs are refused with a message") {
  const DelayModel d{.step_s = 1.0};
  CHECK_THROWS_WITH_AS((void)simulate(Method::synchronous(4), d, CostModel{}, 0, 1),
                       "simulate: steps is 0", std::invalid_argument);
  CostModel c;
  c.ranks_per_node = 4;
  CHECK_THROWS_WITH_AS((void)simulate(Method::synchronous(6), d, c, 10, 1),
                       "NodeTopology: world size 6 is not a multiple of 4 ranks per node",
                       std::invalid_argument);
  const DelayModel slow{.step_s = 1.0, .slow_ranks = {8}, .slow_factor = 2.0};
  CHECK_THROWS_WITH_AS((void)simulate(Method::synchronous(8), slow, CostModel{}, 10, 1),
                       "DelayModel: slow rank 8 is outside a world of 8 ranks",
                       std::invalid_argument);
  CHECK_THROWS_WITH_AS((void)Method::local_sgd(8, 0), "Method: local SGD period is 0",
                       std::invalid_argument);
  CHECK_THROWS_WITH_AS((void)Method::synchronous(0), "Method: world size is 0",
                       std::invalid_argument);
  CHECK_THROWS_AS((void)Method::synchronous(8).with_intra_node_gradients(), std::invalid_argument);
  CHECK_THROWS_WITH_AS((void)Method::local_sgd(8, 4).with_groups(GroupAssignment::shuffled),
                       "Method: shuffled groups need a hierarchy; synchronous and local SGD have "
                       "one group, the world",
                       std::invalid_argument);
}

// ------------------------------------------------------------------------------------------------
// Streaming fragments and compressed wires.

TEST_CASE("simulate, streaming: a delay lets the others run ahead of a late rank, by hand") {
  // Two ranks, 1 s steps, rank 1 three seconds late at step 0; one fragment (the whole model) of
  // period 4 starts at step 0 and is applied at the end of step tau. Its all-reduce is
  // 2 * 1/2 * 1 MB over 1 GB/s = 1 ms and starts when rank 1 posts, at 4 s: done at 4.001.
  const DelayModel d{.step_s = 1.0, .events = {{1, 0, 3.0}}};
  const CostModel c = flat_cost(1e6, 1e9);
  const auto plain = Method::local_sgd(2, 4);

  // tau = 0: rank 0 waits at step 0 from 1 s to 4.001 s, as in plain local SGD.
  const auto blocking = simulate(plain.with_streaming(1, 0), d, c, 4, 1);
  CHECK(blocking.seconds == doctest::Approx(7.001));
  CHECK(blocking.syncs[0].count == 1);
  CHECK(blocking.syncs[0].wait_s == doctest::Approx(1.5));    // 3 s over 2 ranks
  CHECK(blocking.syncs[0].comm_s == doctest::Approx(0.001));  // both see the whole transfer

  // tau = 1, 2, 3: rank 0 computes tau more steps (reaching 1 + tau s) before it waits for
  // 4.001 s; rank 1, at 4 + tau s by then, never waits and never sees the transfer, so the run
  // ends with rank 1's own 7 s.
  for (std::size_t tau = 1; tau <= 3; ++tau) {
    CAPTURE(tau);
    const auto run = simulate(plain.with_streaming(1, tau), d, c, 4, 1);
    CHECK(run.seconds == doctest::Approx(7.0));
    CHECK(run.syncs[0].count == 1);
    CHECK(run.syncs[0].wait_s == doctest::Approx((3.0 - static_cast<double>(tau)) / 2));
    CHECK(run.syncs[0].comm_s == doctest::Approx(0.0005));  // rank 0's 1 ms, over 2 ranks
  }
}

TEST_CASE("simulate, streaming: F fragments each move 1/F of the model, and a delay hides them") {
  // Four ranks, no stragglers, 1 s steps; T(4) of the whole model = 1.5 x 4 MB / 1 GB/s = 6 ms.
  const DelayModel d{.step_s = 1.0};
  const CostModel c = flat_cost(4e6, 1e9);
  const auto plain = Method::local_sgd(4, 4);
  // Blocking: F fragments of 6/F ms each, F per period: the same time as plain local SGD.
  for (const std::size_t f : {1, 2, 4}) {
    CAPTURE(f);
    const auto run = simulate(plain.with_streaming(f, 0), d, c, 8, 1);
    CHECK(run.seconds == doctest::Approx(8.012));
    CHECK(run.syncs[0].count == 2 * f);
    CHECK(run.syncs[0].comm_s == doctest::Approx(0.012));
    CHECK(run.syncs[0].wait_s == 0.0);
  }
  // A delay of one step hides every transfer behind the next step's compute.
  for (const std::size_t f : {1, 2}) {
    CAPTURE(f);
    const auto run = simulate(plain.with_streaming(f, 1), d, c, 8, 1);
    CHECK(run.seconds == 8.0);
    CHECK(run.syncs[0].count == 2 * f);
    CHECK(run.syncs[0].comm_s == doctest::Approx(0.0));
  }
  // A fragment whose application would fall past the last step is not waited for: over 5 steps
  // with F = 1, tau = 1, the fragment of step 4 never lands.
  const auto cut = simulate(plain.with_streaming(1, 1), d, c, 5, 1);
  CHECK(cut.seconds == 5.0);
  CHECK(cut.syncs[0].count == 1);
}

TEST_CASE("simulate, streaming: one fragment without delay is the plain method, exactly") {
  std::mt19937_64 rng(77);
  const auto pick = [&](std::size_t lo, std::size_t hi) {
    return std::uniform_int_distribution<std::size_t>(lo, hi)(rng);
  };
  for (int trial = 0; trial < 200; ++trial) {
    CAPTURE(trial);
    const std::size_t node = std::size_t{1} << pick(0, 2);
    const std::size_t world = node * pick(1, 4);
    const std::size_t period = pick(1, 6);
    const std::size_t warmup = pick(0, 5);
    Method m = pick(0, 1) == 1
                   ? Method::local_sgd(world, period, warmup)
                   : Method::hierarchical(
                         RuntimeHierarchy(std::vector<strata::LevelSpec>{{period, world}}), warmup);
    if (pick(0, 1) == 1) m = m.with_intra_node_gradients();
    DelayModel d;
    d.step_s = 0.01 * static_cast<double>(pick(1, 10));
    d.straggler_rate = 0.1 * static_cast<double>(pick(0, 3));
    d.straggler_delay_s = 0.1 * static_cast<double>(pick(0, 10));
    d.lognormal_sigma = pick(0, 1) == 1 ? 0.3 : 0.0;
    CostModel c;
    c.model_bytes = 1e6 * static_cast<double>(pick(0, 50));
    c.ranks_per_node = node;
    c.intra_node = {1e9, 1e-6 * static_cast<double>(pick(0, 20))};
    c.inter_node = {1e8 * static_cast<double>(pick(1, 40)), 1e-5};
    c.backward_overlap = 0.5;
    const std::size_t steps = pick(1, 40);
    const std::uint64_t seed = pick(0, 1000);
    const auto a = simulate(m, d, c, steps, seed);
    const auto b = simulate(m.with_streaming(1, 0), d, c, steps, seed);
    CHECK(a.seconds == b.seconds);
    REQUIRE(a.syncs.size() == b.syncs.size());
    for (std::size_t i = 0; i < a.syncs.size(); ++i) {
      CHECK(a.syncs[i].count == b.syncs[i].count);
      CHECK(a.syncs[i].wait_s == b.syncs[i].wait_s);
      CHECK(a.syncs[i].comm_s == b.syncs[i].comm_s);
    }
  }
}

TEST_CASE("simulate, streaming: a larger delay never makes a run slower") {
  // Straggler-free: 8 ranks on nodes of 4, a transfer longer than a step (80 ms vs 50 ms) so
  // that each extra step of delay hides more of it.
  CostModel c;
  c.model_bytes = 40e6;
  c.ranks_per_node = 4;
  c.intra_node = {1e10, 0.0};
  c.inter_node = {0.875e9, 0.0};  // T(8) = 1.75 x 40 MB / 0.875 GB/s = 80 ms
  const DelayModel even{.step_s = 0.05};
  for (const std::size_t f : {1, 2}) {
    const auto base = Method::local_sgd(8, 8).with_streaming(f, 0);
    double previous = simulate(base, even, c, 64, 1).seconds;
    for (std::size_t tau = 1; tau < 8 / f; ++tau) {
      CAPTURE(f);
      CAPTURE(tau);
      const double t =
          simulate(Method::local_sgd(8, 8).with_streaming(f, tau), even, c, 64, 1).seconds;
      // Each fragment costs max(0, 80 / F ms - tau x 50 ms) of waiting, once per fragment.
      const double per = std::max(0.0, 0.08 / static_cast<double>(f) - 0.05 * tau);
      CHECK(t == doctest::Approx(64 * 0.05 + 8.0 * static_cast<double>(f) * per));
      CHECK(t <= previous);
      previous = t;
    }
  }
  // With stragglers too: waiting later never moves a clock forward.
  const DelayModel late{
      .step_s = 0.05, .straggler_rate = 0.1, .straggler_delay_s = 0.3, .lognormal_sigma = 0.2};
  for (std::uint64_t seed = 1; seed <= 10; ++seed) {
    double previous = 0.0;
    for (std::size_t tau = 0; tau < 6; ++tau) {
      const auto m =
          Method::hierarchical(RuntimeHierarchy::parse("12:8"), 2).with_streaming(2, tau);
      const double t = simulate(m, late, c, 100, seed).seconds;
      if (tau > 0) CHECK(t <= previous);
      previous = t;
    }
  }
}

TEST_CASE("simulate, streaming: fragments start on the method's phase") {
  // Local SGD counts from the end of warm-up, a hierarchy P:N from step 0.
  const auto local = Method::local_sgd(4, 4, /*warmup=*/3).with_streaming(2, 1);
  CHECK(!local.fragment_at(2));
  CHECK(local.fragment_at(3) == 0u);
  CHECK(!local.fragment_at(4));
  CHECK(local.fragment_at(5) == 1u);
  CHECK(local.fragment_at(7) == 0u);
  const auto absolute =
      Method::hierarchical(RuntimeHierarchy::parse("4:4"), /*warmup=*/3).with_streaming(2, 1);
  CHECK(!absolute.fragment_at(2));
  CHECK(!absolute.fragment_at(3));
  CHECK(absolute.fragment_at(4) == 0u);
  CHECK(absolute.fragment_at(6) == 1u);
  CHECK(!Method::local_sgd(4, 4).fragment_at(0));  // no streaming, no fragments
  CHECK(local.streaming());
  CHECK(local.fragments() == 2);
  CHECK(local.fragment_delay() == 1);
  CHECK(!Method::local_sgd(4, 4).streaming());
  CHECK(Method::local_sgd(4, 4).fragments() == 1);
  CHECK(absolute.name() == "hierarchical SGD 4:4, warm-up 3, 2 fragments, delay 1");
  CHECK(Method::local_sgd(4, 4).with_streaming(1).name() ==
        "local SGD (period 4), 1 fragment, delay 0");
}

TEST_CASE("simulate, streaming and wires: bad settings are refused with a message") {
  CHECK_THROWS_WITH_AS((void)Method::synchronous(4).with_streaming(1),
                       "Method: streaming fragments need a one-level schedule (local SGD or a "
                       "hierarchy P:N), not synchronous SGD",
                       std::invalid_argument);
  CHECK_THROWS_WITH_AS(
      (void)Method::hierarchical(RuntimeHierarchy::parse("2:2,4:4")).with_streaming(2),
      "Method: streaming fragments need a one-level schedule (local SGD or a "
      "hierarchy P:N), not 2:2,4:4",
      std::invalid_argument);
  CHECK_THROWS_WITH_AS((void)Method::local_sgd(4, 6).with_streaming(4),
                       "Method: the fragment count F = 4 must divide the period P = 6",
                       std::invalid_argument);
  CHECK_THROWS_WITH_AS((void)Method::local_sgd(4, 6).with_streaming(0),
                       "Method: the fragment count F = 0 must divide the period P = 6",
                       std::invalid_argument);
  CHECK_THROWS_WITH_AS((void)Method::local_sgd(4, 6).with_streaming(3, 2),
                       "Method: the fragment delay 2 must be below P/F = 2", std::invalid_argument);
  CHECK_NOTHROW((void)Method::local_sgd(4, 6).with_streaming(3, 1));
  CHECK_THROWS_WITH_AS((void)Method::synchronous(4).with_wire(0, strata::WireFormat::bf16),
                       "Method: a wire format applies to a level that averages the model; "
                       "synchronous SGD has none",
                       std::invalid_argument);
  CHECK_THROWS_WITH_AS((void)Method::local_sgd(4, 2).with_wire(1, strata::WireFormat::bf16),
                       "Method: level 1 is beyond the method's 1 levels", std::invalid_argument);
}

TEST_CASE("simulate, a compressed wire is priced by the bytes compressed_average sends") {
  // Four ranks, one per node, averaging every step; 1024 float values (4096 bytes) at 1 MB/s.
  // Ring: 1.5 x 4096 B = 6.144 ms. bf16: chunks of 256 values, 512 B each, sent 3 + 3 times =
  // 3072 B. int8: chunks of 256 values, 256 + 4 B, 65 words, x 6 = 1560 B.
  const DelayModel d{.step_s = 1.0};
  const CostModel c = flat_cost(4096, 1e6);
  const auto m = Method::local_sgd(4, 1);
  using strata::WireFormat;
  CHECK(simulate(m, d, c, 2, 1).seconds == doctest::Approx(2 + 2 * 6.144e-3));
  CHECK(simulate(m.with_wire(0, WireFormat::bf16), d, c, 2, 1).seconds ==
        doctest::Approx(2 + 2 * 3.072e-3));
  CHECK(simulate(m.with_wire(0, WireFormat::int8), d, c, 2, 1).seconds ==
        doctest::Approx(2 + 2 * 1.560e-3));
  CHECK(simulate(m.with_wire(0, WireFormat::bf16).with_wire(0, WireFormat::native), d, c, 2, 1)
            .seconds == doctest::Approx(2 + 2 * 6.144e-3));
  // Two fragments of 512 values in bf16: chunks of 128 values, 256 B, x 6 = 1536 B each.
  const auto frag = Method::local_sgd(4, 2).with_streaming(2).with_wire(0, WireFormat::bf16);
  CHECK(simulate(frag, d, c, 2, 1).seconds == doctest::Approx(2 + 2 * 1.536e-3));
  CHECK(frag.name() == "local SGD (period 2), 2 fragments, delay 0, bf16 wire");
  // One level of several: only that level's time changes.
  const auto h = Method::hierarchical(RuntimeHierarchy::parse("1:2,2:4"));
  const double t2 = 4096 / 1e6;  // a pair: 2 x 1/2 x 4096 B
  CHECK(simulate(h, d, c, 2, 1).seconds == doctest::Approx(2 + t2 + 6.144e-3));
  CHECK(simulate(h.with_wire(1, WireFormat::bf16), d, c, 2, 1).seconds ==
        doctest::Approx(2 + t2 + 3.072e-3));
  CHECK(h.with_wire(1, WireFormat::bf16).name() ==
        "hierarchical SGD 1:2,2:4, bf16 wire at level 1");
}

TEST_CASE("simulate, streaming in a compressed wire: the world meets at the fragment's start") {
  // StreamingAverager completes a compressed fragment's exchange at its start, whatever the
  // delay: the delay hides nothing, and ranks wait for a late one at once.
  using strata::WireFormat;
  // Fragments start at 1 + 4k (local SGD of period 8 after one warm-up step, F = 2); ranks 1
  // and 2 are late at two of them.
  const DelayModel late{.step_s = 1.0, .events = {{1, 5, 3.0}, {2, 13, 0.5}}};
  const CostModel c = flat_cost(4096, 1e6);
  const auto plain = Method::local_sgd(4, 8, /*warmup=*/1);
  for (const WireFormat wire : {WireFormat::bf16, WireFormat::fp16, WireFormat::int8}) {
    CAPTURE(strata::wire_name(wire));
    const auto blocking = simulate(plain.with_streaming(2, 0).with_wire(0, wire), late, c, 20, 1);
    for (std::size_t tau = 1; tau < 4; ++tau) {
      CAPTURE(tau);
      const auto delayed =
          simulate(plain.with_streaming(2, tau).with_wire(0, wire), late, c, 20, 1);
      CHECK(delayed.seconds == blocking.seconds);
      CHECK(delayed.syncs[0].count == blocking.syncs[0].count);
      CHECK(delayed.syncs[0].wait_s == blocking.syncs[0].wait_s);
      CHECK(delayed.syncs[0].comm_s == blocking.syncs[0].comm_s);
    }
  }
  // In the native wire the same delay does hide the late rank and the transfer.
  const auto native0 = simulate(plain.with_streaming(2, 0), late, c, 20, 1);
  const auto native1 = simulate(plain.with_streaming(2, 1), late, c, 20, 1);
  CHECK(native1.seconds < native0.seconds);

  // By hand: 4 ranks, 1 s steps, no stragglers, local SGD of period 2 from step 0, one fragment,
  // delay 1, int8: 1560 B at 1 MB/s = 1.56 ms at steps 0, 2 and 4, each counted where it runs,
  // the last one too although its application (step 5) is past the end of a 5-step run.
  const DelayModel even{.step_s = 1.0};
  const auto m = Method::local_sgd(4, 2).with_streaming(1, 1).with_wire(0, WireFormat::int8);
  const auto run = simulate(m, even, c, 5, 1);
  CHECK(run.seconds == doctest::Approx(5 + 3 * 1.56e-3));
  CHECK(run.syncs[0].count == 3);
  CHECK(run.syncs[0].comm_s == doctest::Approx(3 * 1.56e-3));
  CHECK(run.syncs[0].wait_s == 0.0);
  const auto at_once = simulate(
      Method::local_sgd(4, 2).with_streaming(1, 0).with_wire(0, WireFormat::int8), even, c, 5, 1);
  CHECK(at_once.seconds == run.seconds);
  CHECK(at_once.syncs[0].count == 3);
}

TEST_CASE("simulate: a model above 1e18 bytes is refused") {
  const DelayModel d{.step_s = 1.0};
  CostModel c = flat_cost(2e18, 1e9);
  CHECK_THROWS_WITH_AS(
      (void)simulate(Method::local_sgd(4, 2), d, c, 4, 1),
      "CostModel: model bytes 2e+18 is above the largest the simulator counts, 1e+18",
      std::invalid_argument);
  c.model_bytes = CostModel::max_model_bytes;
  CHECK_NOTHROW(
      (void)simulate(Method::local_sgd(4, 2).with_wire(0, strata::WireFormat::int8), d, c, 4, 1));
}

TEST_CASE("simulate, streaming agrees with a plain loop on random configurations") {
  // The reference lists every fragment start in advance (origin + k P + f P/F) and keeps a queue
  // of results in flight, each landing at the end of its step + tau.
  std::mt19937_64 rng(4242);
  const auto pick = [&](std::size_t lo, std::size_t hi) {
    return std::uniform_int_distribution<std::size_t>(lo, hi)(rng);
  };
  for (int trial = 0; trial < 200; ++trial) {
    CAPTURE(trial);
    const std::size_t node = std::size_t{1} << pick(0, 2);
    const std::size_t world = node * pick(1, 4);
    std::vector<std::size_t> fs;
    const std::size_t period = pick(1, 12);
    for (std::size_t f = 1; f <= period; ++f) {
      if (period % f == 0) fs.push_back(f);
    }
    const std::size_t frags = fs[pick(0, fs.size() - 1)];
    const std::size_t tau = pick(0, period / frags - 1);
    const std::size_t warmup = pick(0, 5);
    const bool relative = pick(0, 1) == 1;
    const bool intra = pick(0, 1) == 1;
    Method m = relative
                   ? Method::local_sgd(world, period, warmup)
                   : Method::hierarchical(
                         RuntimeHierarchy(std::vector<strata::LevelSpec>{{period, world}}), warmup);
    if (intra) m = m.with_intra_node_gradients();
    m = m.with_streaming(frags, tau);
    DelayModel d;
    d.step_s = 0.01 * static_cast<double>(pick(1, 10));
    d.straggler_rate = 0.1 * static_cast<double>(pick(0, 3));
    d.straggler_delay_s = 0.1 * static_cast<double>(pick(0, 10));
    d.lognormal_sigma = pick(0, 1) == 1 ? 0.3 : 0.0;
    CostModel c;
    c.model_bytes = 1e6 * static_cast<double>(pick(0, 50));
    c.ranks_per_node = node;
    c.intra_node = {1e9, 1e-6 * static_cast<double>(pick(0, 20))};
    c.inter_node = {1e8 * static_cast<double>(pick(1, 40)), 1e-5};
    c.backward_overlap = 0.25 * static_cast<double>(pick(0, 4));
    const std::size_t steps = pick(1, 60);
    const std::uint64_t seed = pick(0, 1000);

    std::set<std::size_t> starts;
    const std::size_t origin = relative ? warmup : 0;
    for (std::size_t k = 0; origin + k * period < steps; ++k) {
      for (std::size_t f = 0; f < frags; ++f) {
        const std::size_t t = origin + k * period + f * (period / frags);
        if (t >= warmup && t < steps) starts.insert(t);
      }
    }
    CostModel piece = c;
    piece.model_bytes = c.model_bytes / static_cast<double>(frags);
    const double comm = ring_time(piece, world);
    std::vector<std::pair<std::size_t, double>> flight;  // (due step, completion)
    std::vector<double> clock(world, 0.0);
    std::size_t landed = 0;
    for (std::size_t s = 0; s < steps; ++s) {
      for (std::size_t r = 0; r < world; ++r) clock[r] += d.step_time(seed, r, s);
      if (s < warmup) {
        meet(clock, world, (1.0 - c.backward_overlap) * ring_time(c, world));
      } else if (intra) {
        meet(clock, node, (1.0 - c.backward_overlap) * ring_time(c, node));
      }
      if (starts.count(s) != 0) {
        flight.emplace_back(s + tau, *std::max_element(clock.begin(), clock.end()) + comm);
      }
      for (const auto& [due, done] : flight) {
        if (due != s) continue;
        for (double& x : clock) x = std::max(x, done);
        ++landed;
      }
    }
    const auto run = simulate(m, d, c, steps, seed);
    CHECK(run.seconds ==
          doctest::Approx(*std::max_element(clock.begin(), clock.end())).epsilon(1e-12));
    CHECK(run.syncs[0].count == landed);
  }
}
