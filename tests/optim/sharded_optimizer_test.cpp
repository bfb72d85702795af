// ShardedOptimizer on the local backend: every schedule on worlds of 1 to 16 ranks against the
// serial updates of serial_updates.hpp (the mean of the ranks' gradients, clipping, SGD, Adam,
// LAMB written out in double), replicas bitwise identical on every rank; user updates; gradients
// marked in any order; the state held only for the shard; bad input and failing updates refused
// on every rank with nothing changed; checkpoints.
#include <doctest/doctest.h>

#include <strata/comm/local.hpp>
#include <strata/optim/adam.hpp>
#include <strata/optim/lamb.hpp>
#include <strata/optim/sgd.hpp>
#include <strata/optim/sharded_optimizer.hpp>

#include <chrono>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <functional>
#include <limits>
#include <map>
#include <optional>
#include <span>
#include <sstream>
#include <stdexcept>
#include <string>
#include <utility>
#include <vector>

#include "serial_updates.hpp"

namespace {

namespace opt = strata::optim;
using opt::ShardSchedule;
using serial::Marking;
using serial::Problem;
using serial::RankResult;
using serial::Tensors;
using strata::LocalComm;
using strata::LocalWorld;

const std::vector<std::size_t> model_sizes{100, 37, 1000, 0, 5};
constexpr std::size_t small_buckets = 64 * sizeof(double);  // 64 elements: four buckets

struct Schedule {
  ShardSchedule kind = ShardSchedule::flat;
  std::size_t node = 0;  // ranks per node, for hierarchical

  [[nodiscard]] std::string name() const {
    std::string s(opt::to_string(kind));
    if (kind == ShardSchedule::hierarchical) s += " (nodes of " + std::to_string(node) + ")";
    return s;
  }
  // How many shards the parameters are cut into in a world of w.
  [[nodiscard]] std::size_t shards(std::size_t w) const {
    switch (kind) {
      case ShardSchedule::replicated: return 1;
      case ShardSchedule::flat: return w;
      case ShardSchedule::hierarchical: return node;
    }
    return 0;
  }
};

std::vector<Schedule> hierarchical_schedules(std::size_t w) {
  std::vector<Schedule> s;
  for (std::size_t g = 1; g <= w; ++g) {
    if (w % g == 0) s.push_back({ShardSchedule::hierarchical, g});
  }
  return s;
}

opt::ShardedOptions options_for(const Schedule& s, std::size_t bucket_bytes,
                                std::optional<double> clip = std::nullopt, bool track = false) {
  opt::ShardedOptions o;
  o.schedule = s.kind;
  o.ranks_per_node = s.node;
  o.bucket_bytes = bucket_bytes;
  o.clip_norm = clip;
  o.track_grad_norm = track;
  return o;
}

// A user's update with state: sign-SGD on a momentum, m = beta m + g, p -= lr sign(m).
struct SignMomentum {
  static constexpr std::size_t state_size = 1;
  static constexpr std::size_t norm_slots = 0;
  double lr = 0.02;
  double beta = 0.5;

  template <class T>
  void compute(const opt::ShardContext<T>& c, std::span<double>) const {
    for (std::size_t i = 0; i < c.params.size(); ++i) {
      const T m = static_cast<T>(beta) * c.state[i] + c.grads[i];
      c.new_state[i] = m;
      c.new_params[i] = c.params[i] - static_cast<T>(lr) * static_cast<T>((m > 0) - (m < 0));
    }
  }
  template <class T>
  void apply(const opt::ShardContext<T>&, std::span<const double>) const {}
};

struct SignMomentumRef {
  double lr = 0.02, beta = 0.5;
  Tensors m{};
  void step(Tensors& p, const Tensors& g, std::uint64_t) {
    if (m.empty()) {
      for (const auto& t : p) m.emplace_back(t.size(), 0.0);
    }
    for (std::size_t t = 0; t < p.size(); ++t) {
      for (std::size_t i = 0; i < p[t].size(); ++i) {
        m[t][i] = beta * m[t][i] + g[t][i];
        p[t][i] -= lr * static_cast<double>((m[t][i] > 0) - (m[t][i] < 0));
      }
    }
  }
};

// A user's update with a per-tensor norm: p -= lr g / ||g_t|| (tensor-wise normalised SGD). It
// can be told to throw in either phase, to stand for an update that fails on one rank.
struct NormalizedSgd {
  static constexpr std::size_t state_size = 0;
  static constexpr std::size_t norm_slots = 1;
  double lr = 0.1;
  bool fail_compute = false;
  bool fail_apply = false;

  template <class T>
  void compute(const opt::ShardContext<T>& c, std::span<double> partials) const {
    if (fail_compute) throw std::runtime_error("compute ran out of memory");
    for (const opt::ShardSegment& s : c.segments) {
      double sq = 0.0;
      for (std::size_t i = s.offset; i < s.offset + s.length; ++i) {
        sq += static_cast<double>(c.grads[i]) * static_cast<double>(c.grads[i]);
      }
      partials[s.tensor] += sq;
    }
  }
  template <class T>
  void apply(const opt::ShardContext<T>& c, std::span<const double> norms) const {
    if (fail_apply) throw std::runtime_error("apply found a NaN");
    for (const opt::ShardSegment& s : c.segments) {
      const double n = std::sqrt(norms[s.tensor]);
      for (std::size_t i = s.offset; i < s.offset + s.length; ++i) {
        c.new_params[i] = c.params[i] - static_cast<T>(lr / n) * c.grads[i];
      }
    }
  }
};

struct NormalizedSgdRef {
  double lr = 0.1;
  void step(Tensors& p, const Tensors& g, std::uint64_t) {
    for (std::size_t t = 0; t < p.size(); ++t) {
      double sq = 0.0;
      for (double v : g[t]) sq += v * v;
      for (std::size_t i = 0; i < p[t].size(); ++i) p[t][i] -= lr / std::sqrt(sq) * g[t][i];
    }
  }
};

static_assert(opt::shard_update<SignMomentum, double> && opt::shard_update<SignMomentum, float>);
static_assert(opt::shard_update<NormalizedSgd, double>);
static_assert(opt::shard_update<opt::Sgd, double> && opt::shard_update<opt::Adam, float> &&
              opt::shard_update<opt::Lamb, double>);

// One update with its serial twin and its clipping settings.
struct UpdateCase {
  std::string name;
  std::optional<double> clip;
  bool track = false;
  std::size_t state_size = 0;
  std::function<RankResult<double>(LocalComm&, const Problem&, const opt::ShardedOptions&,
                                   std::uint64_t, Marking)>
      run;
  std::function<serial::Trajectory(const Problem&, std::uint64_t)> expect;
};

template <class Update, class Ref>
UpdateCase make_case(std::string name, Update u, Ref ref, std::optional<double> clip, bool track) {
  UpdateCase c;
  c.name = std::move(name);
  c.clip = clip;
  c.track = track;
  c.state_size = Update::state_size;
  c.run = [u](LocalComm& comm, const Problem& p, const opt::ShardedOptions& o, std::uint64_t steps,
              Marking m) { return serial::drive<double>(comm, p, u, o, steps, m); };
  c.expect = [ref, clip](const Problem& p, std::uint64_t steps) {
    return serial::run(p, ref, steps, clip);
  };
  return c;
}

// A clip norm well below the mean gradient's norm (about 25), so that every step clips.
constexpr double tight_clip = 5.0;

std::vector<UpdateCase> standard_cases() {
  return {make_case("sgd, weight decay", opt::Sgd{.lr = 0.05, .weight_decay = 0.1},
                    serial::SgdRef{.lr = 0.05, .weight_decay = 0.1}, std::nullopt, true),
          make_case("adam, clipped", opt::Adam{.lr = 0.01}, serial::AdamRef{.lr = 0.01}, tight_clip,
                    false),
          make_case("adam, weight decay", opt::Adam{.lr = 0.01, .weight_decay = 0.1},
                    serial::AdamRef{.lr = 0.01, .weight_decay = 0.1}, std::nullopt, false),
          make_case("lamb, weight decay, clipped", opt::Lamb{.lr = 0.01, .weight_decay = 0.1},
                    serial::LambRef{.lr = 0.01, .weight_decay = 0.1}, tight_clip, true)};
}

constexpr std::uint64_t steps = 3;

// Runs every case of `cases` with schedule `s` in a world of w, in one LocalWorld, and checks
// each rank against `expected` (one trajectory per case).
void check_schedule(std::size_t w, const Schedule& s, std::size_t bucket_bytes,
                    const std::vector<UpdateCase>& cases,
                    const std::vector<serial::Trajectory>& expected, const Problem& p) {
  std::vector<std::vector<RankResult<double>>> got(cases.size(),
                                                   std::vector<RankResult<double>>(w));
  LocalWorld(static_cast<int>(w)).run([&](LocalComm& comm) {
    const auto r = static_cast<std::size_t>(comm.rank());
    for (std::size_t k = 0; k < cases.size(); ++k) {
      const auto o = options_for(s, bucket_bytes, cases[k].clip, cases[k].track);
      got[k][r] = cases[k].run(comm, p, o, steps, Marking::step);
    }
  });
  for (std::size_t k = 0; k < cases.size(); ++k) {
    const UpdateCase& c = cases[k];
    const serial::Trajectory& e = expected[k];
    CAPTURE(c.name);
    const RankResult<double>& r0 = got[k][0];
    CHECK(serial::max_error(r0.params, e.params) <= 1e-12);
    for (std::size_t r = 0; r < w; ++r) {
      CAPTURE(r);
      const RankResult<double>& rr = got[k][r];
      CHECK(serial::bitwise_equal(rr.params, r0.params));
      // The state lives on the shard only.
      CHECK(rr.shards == s.shards(w));
      CHECK(rr.shard_elements * rr.shards == rr.total_elements);
      CHECK(rr.state_values == c.state_size * rr.shard_elements);
      REQUIRE(rr.reports.size() == steps);
      for (std::size_t t = 0; t < steps; ++t) {
        CAPTURE(t);
        const auto& rep = rr.reports[t];
        if (c.clip || c.track) {
          CHECK(std::abs(rep.grad_norm - e.grad_norms[t]) <= 1e-12 * e.grad_norms[t]);
          CHECK(rep.grad_norm == r0.reports[t].grad_norm);
        } else {
          CHECK(std::isnan(rep.grad_norm));
        }
        const double factor = c.clip ? std::min(1.0, *c.clip / (e.grad_norms[t] + 1e-6)) : 1.0;
        CHECK(std::abs(rep.clip_factor - factor) <= 1e-12);
        // The local backend runs each bucket's reduction inside the grad_ready that fills it.
        CHECK(rep.buckets_started_early == rr.num_buckets);
      }
    }
    // Padding: at most one quantum (shards * 256 bytes of alignment) per bucket.
    const std::size_t quantum = r0.shards * (256 / sizeof(double));
    CHECK(r0.total_elements >= p.elements());
    CHECK(r0.total_elements < p.elements() + r0.num_buckets * quantum);
    CHECK(r0.num_buckets == (bucket_bytes == 0 ? 1u : 4u));
    // The traffic that the step reports is the schedule's.
    const auto& traffic = r0.reports.back().traffic;
    strata::LinkTraffic want;
    if (s.kind == ShardSchedule::hierarchical) {
      want = strata::hierarchical_all_reduce_traffic(r0.total_elements,
                                                     strata::NodeTopology(w, s.node));
    } else {
      want = strata::flat_all_reduce_traffic(r0.total_elements, strata::NodeTopology(w, w), 0);
    }
    CHECK(traffic.intra == want.intra);
    CHECK(traffic.inter == want.inter);
  }
}

const std::vector<std::size_t> worlds{1, 2, 3, 4, 6, 8, 12, 16};

// The serial trajectories of `cases` for a world of w, computed once per world.
std::vector<serial::Trajectory> expectations(const std::vector<UpdateCase>& cases,
                                             const Problem& p) {
  std::vector<serial::Trajectory> e;
  for (const auto& c : cases) e.push_back(c.expect(p, steps));
  return e;
}

// Per rank: how a step that must fail failed, and whether anything changed.
struct Outcome {
  std::string kind;  // "usage_error", "error", "none" or "other: ..."
  std::string what;
  bool params_unchanged = false;
  bool state_unchanged = false;
  bool steps_unchanged = false;
};

template <class F>
Outcome catch_outcome(F&& f) {
  Outcome o;
  try {
    f();
    o.kind = "none";
  } catch (const strata::usage_error& e) {
    o.kind = "usage_error";
    o.what = e.what();
  } catch (const strata::error& e) {
    o.kind = "error";
    o.what = e.what();
  } catch (const std::exception& e) {
    o.kind = std::string("other: ") + e.what();
    o.what = e.what();
  }
  return o;
}

bool contains(const std::string& s, const std::string& part) {
  return s.find(part) != std::string::npos;
}

// A step that must fail: a good step 1, then `bad` (which runs step 2 with some fault on rank
// `faulty`) must throw `kind` on every rank and change nothing, then a good step 2 must give the
// serial two-step result.
template <class Update, class Ref, class Bad>
void check_faulty_step(std::size_t w, const Schedule& s, Update update, Ref ref, std::size_t faulty,
                       const std::string& kind, const std::string& cause, Bad bad) {
  const Problem p{model_sizes, w, 31};
  const auto e = serial::run(p, ref, 2, std::nullopt);
  std::vector<Outcome> outcomes(w);
  std::vector<Tensors> final_params(w);
  LocalWorld(static_cast<int>(w)).run([&](LocalComm& comm) {
    const auto r = static_cast<std::size_t>(comm.rank());
    auto params = serial::initial_params(p);
    const auto sp = serial::spans(params);
    opt::ShardedOptimizer<double, LocalComm, Update> o(comm, sp, update,
                                                       options_for(s, small_buckets));
    o.step(serial::rank_grads<double>(p, 1, r));
    const auto params_before = params;
    const std::vector<double> state_before(o.state_values().begin(), o.state_values().end());
    auto grads = serial::rank_grads<double>(p, 2, r);
    Outcome out = catch_outcome([&] { bad(o, grads, r == faulty); });
    out.params_unchanged = serial::bitwise_equal(params, params_before);
    out.state_unchanged =
        std::vector<double>(o.state_values().begin(), o.state_values().end()) == state_before;
    out.steps_unchanged = o.steps_taken() == 1;
    outcomes[r] = out;
    // Usable afterwards: the update (with any failure switched off) and the step are as before.
    o.update() = update;
    o.step(serial::rank_grads<double>(p, 2, r));
    final_params[r] = params;
  });
  for (std::size_t r = 0; r < w; ++r) {
    CAPTURE(r);
    const Outcome& o = outcomes[r];
    CAPTURE(o.what);
    CHECK(o.kind == kind);
    CHECK(o.params_unchanged);
    CHECK(o.state_unchanged);
    CHECK(o.steps_unchanged);
    CHECK(contains(o.what, "ShardedOptimizer::step on rank " + std::to_string(r)));
    // The faulty rank says why; the others name it.
    if (r == faulty) {
      CHECK(contains(o.what, "rank " + std::to_string(faulty) + ": " + cause));
    } else {
      CHECK(contains(o.what, "rank " + std::to_string(faulty) +
                                 (kind == "usage_error" ? " passed bad input"
                                                        : " failed in its shard update")));
    }
    CHECK(serial::max_error(final_params[r], e.params) <= 1e-12);
  }
}

}  // namespace

TEST_CASE("sharded optimizer: replicated and flat, worlds 1-16, against the serial updates") {
  const auto cases = standard_cases();
  for (const std::size_t w : worlds) {
    const Problem p{model_sizes, w, 7};
    const auto expected = expectations(cases, p);
    for (const Schedule s :
         {Schedule{ShardSchedule::replicated, 0}, Schedule{ShardSchedule::flat, 0}}) {
      for (const std::size_t bucket : {std::size_t{0}, small_buckets}) {
        CAPTURE(w);
        CAPTURE(s.name());
        CAPTURE(bucket);
        check_schedule(w, s, bucket, cases, expected, p);
      }
    }
  }
}

namespace {

void check_hierarchical(std::span<const std::size_t> some_worlds) {
  const auto cases = standard_cases();
  for (const std::size_t w : some_worlds) {
    const Problem p{model_sizes, w, 7};
    const auto expected = expectations(cases, p);
    for (const Schedule& s : hierarchical_schedules(w)) {
      // Small buckets on every node size; one bucket on the largest and smallest.
      std::vector<std::size_t> buckets{small_buckets};
      if (s.node == 1 || s.node == w) buckets.push_back(0);
      for (const std::size_t bucket : buckets) {
        CAPTURE(w);
        CAPTURE(s.name());
        CAPTURE(bucket);
        check_schedule(w, s, bucket, cases, expected, p);
      }
    }
  }
}

}  // namespace

TEST_CASE(
    "sharded optimizer: hierarchical, worlds 1-8, every node size, against the serial updates") {
  const std::size_t some[] = {1, 2, 3, 4, 6, 8};
  check_hierarchical(some);
}

TEST_CASE(
    "sharded optimizer: hierarchical, worlds 12 and 16, every node size, against the serial "
    "updates") {
  const std::size_t some[] = {12, 16};
  check_hierarchical(some);
}

TEST_CASE("sharded optimizer: hierarchical replicas on different nodes hold the same state") {
  const std::size_t w = 6, g = 3;
  const Problem p{model_sizes, w, 5};
  std::vector<std::vector<double>> states(w);
  LocalWorld(static_cast<int>(w)).run([&](LocalComm& comm) {
    auto params = serial::initial_params(p);
    const auto sp = serial::spans(params);
    opt::ShardedOptimizer o(comm, sp, opt::Adam{.lr = 0.01},
                            options_for({ShardSchedule::hierarchical, g}, small_buckets));
    for (std::uint64_t s = 1; s <= 2; ++s) {
      o.step(serial::rank_grads<double>(p, s, static_cast<std::size_t>(comm.rank())));
    }
    states[static_cast<std::size_t>(comm.rank())].assign(o.state_values().begin(),
                                                         o.state_values().end());
  });
  for (std::size_t r = 0; r < w; ++r) {
    CAPTURE(r);
    CHECK(states[r] == states[r % g]);
    if (r % g != 0) CHECK(states[r] != states[0]);
  }
}

TEST_CASE("sharded optimizer: float parameters follow the serial Adam to float accuracy") {
  for (const auto& [w, s] :
       {std::pair<std::size_t, Schedule>{4, {ShardSchedule::flat, 0}},
        std::pair<std::size_t, Schedule>{6, {ShardSchedule::hierarchical, 3}}}) {
    CAPTURE(w);
    CAPTURE(s.name());
    const Problem p{model_sizes, w, 11};
    const auto e =
        serial::run<float>(p, serial::AdamRef{.lr = 0.01, .weight_decay = 0.1}, steps, tight_clip);
    std::vector<RankResult<float>> got(w);
    LocalWorld(static_cast<int>(w)).run([&](LocalComm& comm) {
      auto o = options_for(s, 32 * sizeof(float), tight_clip);
      got[static_cast<std::size_t>(comm.rank())] =
          serial::drive<float>(comm, p, opt::Adam{.lr = 0.01, .weight_decay = 0.1}, o, steps);
    });
    CHECK(serial::max_error(got[0].params, e.params) <= 2e-6);
    CHECK(got[0].num_buckets > 1);
    for (std::size_t r = 0; r < w; ++r) {
      CAPTURE(r);
      CHECK(serial::bitwise_equal(got[r].params, got[0].params));
      CHECK(std::abs(got[r].grad_norms[0] - e.grad_norms[0]) <= 1e-5 * e.grad_norms[0]);
      CHECK(got[r].state_values == 2 * got[r].shard_elements);
    }
  }
}

TEST_CASE("sharded optimizer: user updates, with state and with per-tensor norms") {
  const std::vector<UpdateCase> cases{
      make_case("sign momentum", SignMomentum{}, SignMomentumRef{}, std::nullopt, false),
      make_case("normalized sgd", NormalizedSgd{}, NormalizedSgdRef{}, std::nullopt, true),
      make_case("normalized sgd, clipped", NormalizedSgd{}, NormalizedSgdRef{}, tight_clip, false)};
  for (const auto& [w, s] :
       {std::pair<std::size_t, Schedule>{1, {ShardSchedule::replicated, 0}},
        std::pair<std::size_t, Schedule>{4, {ShardSchedule::replicated, 0}},
        std::pair<std::size_t, Schedule>{5, {ShardSchedule::flat, 0}},
        std::pair<std::size_t, Schedule>{8, {ShardSchedule::hierarchical, 2}},
        std::pair<std::size_t, Schedule>{12, {ShardSchedule::hierarchical, 4}}}) {
    CAPTURE(w);
    CAPTURE(s.name());
    const Problem p{model_sizes, w, 19};
    check_schedule(w, s, small_buckets, cases, expectations(cases, p), p);
  }
}

TEST_CASE("sharded optimizer: gradients marked in any order give the same step") {
  const std::size_t w = 6;
  const Problem p{model_sizes, w, 23};
  const auto e =
      serial::run(p, serial::LambRef{.lr = 0.01, .weight_decay = 0.1}, steps, tight_clip);
  for (const Schedule s :
       {Schedule{ShardSchedule::flat, 0}, Schedule{ShardSchedule::hierarchical, 3},
        Schedule{ShardSchedule::replicated, 0}}) {
    for (const std::vector<std::size_t>& order :
         {std::vector<std::size_t>{}, std::vector<std::size_t>{0, 1, 2, 3, 4},
          std::vector<std::size_t>{2, 0, 4, 1, 3}}) {
      CAPTURE(s.name());
      CAPTURE(order.size());
      std::vector<std::vector<RankResult<double>>> got(3, std::vector<RankResult<double>>(w));
      LocalWorld(static_cast<int>(w)).run([&](LocalComm& comm) {
        const auto r = static_cast<std::size_t>(comm.rank());
        auto o = options_for(s, small_buckets, tight_clip);
        o.ready_order = order;
        const opt::Lamb lamb{.lr = 0.01, .weight_decay = 0.1};
        got[0][r] = serial::drive<double>(comm, p, lamb, o, steps, Marking::step);
        got[1][r] = serial::drive<double>(comm, p, lamb, o, steps, Marking::ready_order);
        got[2][r] = serial::drive<double>(comm, p, lamb, o, steps, Marking::rotated);
      });
      CHECK(serial::max_error(got[0][0].params, e.params) <= 1e-12);
      for (std::size_t r = 0; r < w; ++r) {
        CAPTURE(r);
        for (std::size_t m = 0; m < 3; ++m) {
          CAPTURE(m);
          CHECK(serial::bitwise_equal(got[m][r].params, got[0][0].params));
        }
        // Marked one by one in ready order, every bucket starts inside grad_ready.
        CHECK(got[1][r].reports.back().buckets_started_early == got[1][r].num_buckets);
      }
    }
  }
}

TEST_CASE(
    "sharded optimizer: tensor lists or settings that differ across ranks fail on every rank") {
  const std::size_t w = 4;
  using Tweak = std::function<void(std::vector<std::size_t>&, opt::ShardedOptions&)>;
  const std::vector<std::pair<std::string, Tweak>> tweaks{
      {"a tensor of another size", [](auto& sizes, auto&) { sizes[2] = 999; }},
      {"one tensor more", [](auto& sizes, auto&) { sizes.push_back(3); }},
      {"the same elements in other tensors",
       [](auto& sizes, auto&) {
         sizes[0] = 99;
         sizes[1] = 38;
       }},
      {"another ready order",
       [](auto&, auto& o) {
         o.ready_order = {0, 1, 2, 3, 4};
       }},
      {"another bucket size", [](auto&, auto& o) { o.bucket_bytes = 128; }},
      {"another alignment", [](auto&, auto& o) { o.alignment_bytes = 64; }},
      {"another schedule", [](auto&, auto& o) { o.schedule = ShardSchedule::replicated; }},
      {"another node size",
       [](auto&, auto& o) {
         o.schedule = ShardSchedule::hierarchical;
         o.ranks_per_node = 2;
       }},
      {"clipping", [](auto&, auto& o) { o.clip_norm = 1.0; }},
      {"norm tracking", [](auto&, auto& o) { o.track_grad_norm = true; }},
  };
  for (const auto& [name, tweak] : tweaks) {
    for (const std::size_t odd : {std::size_t{0}, w - 1}) {
      CAPTURE(name);
      CAPTURE(odd);
      std::vector<Outcome> outcomes(w);
      std::vector<int> later_ok(w, 0);
      LocalWorld(static_cast<int>(w)).run([&](LocalComm& comm) {
        const auto r = static_cast<std::size_t>(comm.rank());
        auto sizes = model_sizes;
        auto o = options_for({ShardSchedule::hierarchical, 4}, small_buckets);
        if (r == odd) tweak(sizes, o);
        std::vector<std::vector<double>> params(sizes.size());
        for (std::size_t t = 0; t < sizes.size(); ++t) params[t].assign(sizes[t], 1.0);
        const auto sp = serial::spans(params);
        outcomes[r] = catch_outcome([&] {
          opt::ShardedOptimizer<double, LocalComm, opt::Sgd> bad(comm, sp, opt::Sgd{}, o);
        });
        // The world is still usable.
        const Problem p{model_sizes, w, 3};
        const auto res = serial::drive<double>(comm, p, opt::Sgd{.lr = 0.05},
                                               options_for({ShardSchedule::flat, 0}, 0), 1);
        later_ok[r] =
            serial::max_error(res.params,
                              serial::run(p, serial::SgdRef{.lr = 0.05}, 1, std::nullopt).params) <=
            1e-12;
      });
      for (std::size_t r = 0; r < w; ++r) {
        CAPTURE(r);
        CAPTURE(outcomes[r].what);
        CHECK(outcomes[r].kind == "usage_error");
        CHECK(contains(outcomes[r].what, "ShardedOptimizer on rank " + std::to_string(r) +
                                             ": rank " + std::to_string(odd == 0 ? 1 : odd)));
        CHECK(later_ok[r] == 1);
      }
    }
  }
}

TEST_CASE("sharded optimizer: hierarchical nodes that do not divide the world fail on every rank") {
  for (const auto& [w, g] : {std::pair<std::size_t, std::size_t>{6, 4}, {4, 8}, {3, 2}, {4, 0}}) {
    CAPTURE(w);
    CAPTURE(g);
    std::vector<Outcome> outcomes(w);
    LocalWorld(static_cast<int>(w)).run([&](LocalComm& comm) {
      std::vector<double> a(10, 1.0), b(3, 1.0);
      const std::vector<std::span<double>> sp{a, b};
      outcomes[static_cast<std::size_t>(comm.rank())] = catch_outcome([&] {
        opt::ShardedOptimizer o(comm, sp, opt::Adam{},
                                options_for({ShardSchedule::hierarchical, g}, 0));
      });
      comm.barrier();
    });
    for (std::size_t r = 0; r < w; ++r) {
      CAPTURE(r);
      CHECK(outcomes[r].kind == "usage_error");
      CHECK(outcomes[r].what == "strata: ShardedOptimizer on rank " + std::to_string(r) +
                                    ": the hierarchical schedule needs nodes that divide the "
                                    "world: " +
                                    std::to_string(g) + " ranks per node, " + std::to_string(w) +
                                    " ranks");
    }
  }
}

TEST_CASE(
    "sharded optimizer: a ready order that is no permutation on one rank fails on every rank") {
  // Every other rank waits in the construction's agreement; the odd rank must join it and refuse
  // with the others, not leave them waiting.
  const std::size_t w = 3;
  strata::LocalOptions lo;
  lo.timeout = std::chrono::seconds(2);
  std::vector<Outcome> outcomes(w);
  LocalWorld(static_cast<int>(w), lo).run([&](LocalComm& comm) {
    const auto r = static_cast<std::size_t>(comm.rank());
    std::vector<double> a(10, 1.0), b(3, 1.0);
    const std::vector<std::span<double>> sp{a, b};
    auto o = options_for({ShardSchedule::flat, 0}, 0);
    if (r == 1) o.ready_order = {0, 0};
    outcomes[r] = catch_outcome([&] { opt::ShardedOptimizer x(comm, sp, opt::Sgd{}, o); });
  });
  for (std::size_t r = 0; r < w; ++r) {
    CAPTURE(r);
    CAPTURE(outcomes[r].what);
    CHECK(outcomes[r].kind == "usage_error");
  }
}

TEST_CASE("sharded optimizer: a gradient of the wrong size on one rank fails on every rank") {
  for (const auto& [w, s] : {std::pair<std::size_t, Schedule>{4, {ShardSchedule::flat, 0}},
                             std::pair<std::size_t, Schedule>{6, {ShardSchedule::hierarchical, 3}},
                             std::pair<std::size_t, Schedule>{3, {ShardSchedule::replicated, 0}}}) {
    CAPTURE(w);
    CAPTURE(s.name());
    check_faulty_step(w, s, opt::Adam{.lr = 0.01}, serial::AdamRef{.lr = 0.01}, w - 1,
                      "usage_error", "the gradient of tensor 2 has 999 elements, the tensor 1000",
                      [](auto& o, auto& grads, bool faulty) {
                        if (faulty) grads[2].resize(999);
                        o.step(grads);
                      });
  }
  // The last tensor of the ready order, alone in its bucket, too long on rank 0.
  check_faulty_step(4, {ShardSchedule::hierarchical, 2}, opt::Lamb{.lr = 0.01},
                    serial::LambRef{.lr = 0.01}, 0, "usage_error",
                    "the gradient of tensor 0 has 101 elements, the tensor 100",
                    [](auto& o, auto& grads, bool faulty) {
                      if (faulty) grads[0].push_back(1.0);
                      o.step(grads);
                    });
  // A wrong number of gradients.
  check_faulty_step(4, {ShardSchedule::flat, 0}, opt::Adam{.lr = 0.01}, serial::AdamRef{.lr = 0.01},
                    2, "usage_error", "the step has 4 gradients for 5 parameter tensors",
                    [](auto& o, auto& grads, bool faulty) {
                      if (faulty) grads.pop_back();
                      o.step(grads);
                    });
}

TEST_CASE(
    "sharded optimizer: a tensor never marked, marked twice, or unknown fails on every rank") {
  const Schedule flat{ShardSchedule::flat, 0}, hier{ShardSchedule::hierarchical, 2};
  for (const Schedule& s : {flat, hier}) {
    CAPTURE(s.name());
    check_faulty_step(4, s, opt::Lamb{.lr = 0.01}, serial::LambRef{.lr = 0.01}, 1, "usage_error",
                      "the gradient of tensor 1 was never marked",
                      [](auto& o, auto& grads, bool faulty) {
                        for (std::size_t t : o.layout().ready_order()) {
                          if (!(faulty && t == 1)) o.grad_ready(t, grads[t]);
                        }
                        o.finish_step();
                      });
    check_faulty_step(4, s, opt::Lamb{.lr = 0.01}, serial::LambRef{.lr = 0.01}, 3, "usage_error",
                      "the gradient of tensor 4 was marked twice",
                      [](auto& o, auto& grads, bool faulty) {
                        for (std::size_t t : o.layout().ready_order()) {
                          o.grad_ready(t, grads[t]);
                          if (faulty && t == 4) o.grad_ready(t, grads[t]);
                        }
                        o.finish_step();
                      });
    check_faulty_step(4, s, opt::Adam{.lr = 0.01}, serial::AdamRef{.lr = 0.01}, 0, "usage_error",
                      "gradient index 5 is not below the 5 parameter tensors",
                      [](auto& o, auto& grads, bool faulty) {
                        if (faulty) o.grad_ready(5, grads[0]);
                        for (std::size_t t : o.layout().ready_order()) o.grad_ready(t, grads[t]);
                        o.finish_step();
                      });
  }
}

TEST_CASE("sharded optimizer: an update that throws on one rank fails every rank") {
  const Schedule flat{ShardSchedule::flat, 0}, hier{ShardSchedule::hierarchical, 3},
      repl{ShardSchedule::replicated, 0};
  for (const Schedule& s : {flat, hier, repl}) {
    CAPTURE(s.name());
    check_faulty_step(6, s, NormalizedSgd{}, NormalizedSgdRef{}, 4, "error",
                      "the shard update threw: compute ran out of memory",
                      [](auto& o, auto& grads, bool faulty) {
                        o.update().fail_compute = faulty;
                        o.step(grads);
                      });
    check_faulty_step(6, s, NormalizedSgd{}, NormalizedSgdRef{}, 1, "error",
                      "the shard update threw: apply found a NaN",
                      [](auto& o, auto& grads, bool faulty) {
                        o.update().fail_apply = faulty;
                        o.step(grads);
                      });
  }
}

TEST_CASE("sharded optimizer: a restored state continues the exact trajectory") {
  const std::size_t w = 4;
  const Problem p{model_sizes, w, 41};
  const auto o = options_for({ShardSchedule::hierarchical, 2}, small_buckets, tight_clip);
  const opt::Lamb lamb{.lr = 0.01, .weight_decay = 0.1};
  std::vector<RankResult<double>> straight(w);
  std::vector<Tensors> resumed(w), fresh(w);
  std::vector<int> fields_ok(w, 0);
  LocalWorld(static_cast<int>(w)).run([&](LocalComm& comm) {
    const auto r = static_cast<std::size_t>(comm.rank());
    straight[r] = serial::drive<double>(comm, p, lamb, o, 5);

    auto params = serial::initial_params(p);
    const auto sp = serial::spans(params);
    opt::ShardedOptimizer x(comm, sp, lamb, o);
    x.step(serial::rank_grads<double>(p, 1, r));
    x.step(serial::rank_grads<double>(p, 2, r));
    const auto saved = x.state();
    const auto saved_params = params;
    std::stringstream file;
    opt::write_state(file, saved);
    // Two steps elsewhere, then back.
    x.step(serial::rank_grads<double>(p, 8, r));
    x.step(serial::rank_grads<double>(p, 9, r));
    x.load(saved);
    CHECK(x.steps_taken() == 2);
    params = saved_params;
    for (std::uint64_t s = 3; s <= 5; ++s) x.step(serial::rank_grads<double>(p, s, r));
    resumed[r] = params;

    // A new optimizer from the written checkpoint.
    const auto read = opt::read_state<double>(file);
    fields_ok[r] = read.world_size == w && read.ranks_per_node == 2 &&
                   read.schedule == ShardSchedule::hierarchical && read.layout == saved.layout &&
                   read.shard == r % 2 && read.steps == 2 && read.values == saved.values &&
                   saved.values.size() == 2 * x.layout().shard_elements();
    auto params2 = saved_params;
    const auto sp2 = serial::spans(params2);
    opt::ShardedOptimizer y(comm, sp2, lamb, o);
    y.load(read);
    for (std::uint64_t s = 3; s <= 5; ++s) y.step(serial::rank_grads<double>(p, s, r));
    fresh[r] = params2;
  });
  const auto e = serial::run(p, serial::LambRef{.lr = 0.01, .weight_decay = 0.1}, 5, tight_clip);
  for (std::size_t r = 0; r < w; ++r) {
    CAPTURE(r);
    CHECK(fields_ok[r] == 1);
    CHECK(serial::max_error(straight[r].params, e.params) <= 1e-12);
    CHECK(serial::bitwise_equal(resumed[r], straight[r].params));
    CHECK(serial::bitwise_equal(fresh[r], straight[r].params));
  }
}

TEST_CASE("sharded optimizer: write_state and read_state round trip, for floats too") {
  opt::ShardedState<float> s{.world_size = 12,
                             .ranks_per_node = 4,
                             .schedule = ShardSchedule::hierarchical,
                             .layout = 0x0123456789abcdefull,
                             .shard = 3,
                             .steps = 99,
                             .values = {1.5f, -2.25f, 0.0f, 3e-8f}};
  std::stringstream io;
  opt::write_state(io, s);
  const auto back = opt::read_state<float>(io);
  CHECK(back.world_size == 12);
  CHECK(back.ranks_per_node == 4);
  CHECK(back.schedule == ShardSchedule::hierarchical);
  CHECK(back.layout == 0x0123456789abcdefull);
  CHECK(back.shard == 3);
  CHECK(back.steps == 99);
  CHECK(back.values == s.values);
  // Empty values too.
  std::stringstream io2;
  opt::write_state(io2, opt::ShardedState<double>{});
  CHECK(opt::read_state<double>(io2).values.empty());
}

TEST_CASE("sharded optimizer: read_state refuses what write_state did not write") {
  const opt::ShardedState<double> s{.world_size = 2,
                                    .schedule = ShardSchedule::flat,
                                    .layout = 5,
                                    .shard = 1,
                                    .steps = 3,
                                    .values = {1.0, 2.0, 3.0}};
  std::stringstream good;
  opt::write_state(good, s);
  const std::string bytes = good.str();
  auto refuses = [](const std::string& data) {
    std::stringstream in(data);
    CHECK_THROWS_AS(opt::read_state<double>(in), std::invalid_argument);
  };
  refuses("");
  refuses("this is not a checkpoint of any kind, just text that is long enough");
  refuses(bytes.substr(0, 5));                 // in the magic
  refuses(bytes.substr(0, 30));                // in the header
  refuses(bytes.substr(0, bytes.size() - 1));  // in the values
  std::string other_magic = bytes;
  other_magic[7] = '2';
  refuses(other_magic);
  std::string bad_schedule = bytes;
  bad_schedule[8 + 2 * 8] = 7;  // word 2: the schedule
  refuses(bad_schedule);
  // The right bytes read as another element type.
  std::stringstream in(bytes);
  CHECK_THROWS_AS(opt::read_state<float>(in), std::invalid_argument);
}

TEST_CASE("sharded optimizer: read_state refuses a header that claims more values than exist") {
  // A corrupted count must not become an allocation of that size.
  const opt::ShardedState<double> s{.world_size = 2, .values = {1.0}};
  std::stringstream good;
  opt::write_state(good, s);
  std::string bytes = good.str();
  const std::uint64_t huge = std::uint64_t{1} << 62;
  std::memcpy(bytes.data() + 8 + 7 * 8, &huge, sizeof huge);  // word 7: the value count
  std::stringstream in(bytes);
  CHECK_THROWS_AS(opt::read_state<double>(in), std::invalid_argument);
}

TEST_CASE(
    "sharded optimizer: a state for another world, schedule, node size or shard is refused "
    "on every rank and changes nothing") {
  const Problem p4{model_sizes, 4, 43};
  const opt::Adam adam{.lr = 0.01};
  // States saved after one step in a world of 4 with three schedules.
  const Schedule flat{ShardSchedule::flat, 0}, hier2{ShardSchedule::hierarchical, 2},
      hier4{ShardSchedule::hierarchical, 4}, repl{ShardSchedule::replicated, 0};
  std::map<std::string, std::vector<opt::ShardedState<double>>> saved;
  for (const Schedule& s : {flat, hier2, repl}) saved[s.name()].resize(4);
  LocalWorld(4).run([&](LocalComm& comm) {
    const auto r = static_cast<std::size_t>(comm.rank());
    for (const Schedule& s : {flat, hier2, repl}) {
      auto params = serial::initial_params(p4);
      const auto sp = serial::spans(params);
      opt::ShardedOptimizer x(comm, sp, adam, options_for(s, small_buckets));
      x.step(serial::rank_grads<double>(p4, 1, r));
      saved[s.name()][r] = x.state();
    }
  });

  // Each refusal: world size, schedule, state chooser (which saved state rank r loads).
  using Chooser = std::function<opt::ShardedState<double>(std::size_t)>;
  struct Refusal {
    std::string name;
    std::size_t w;
    Schedule schedule;
    Chooser state;
    std::string cause;
  };
  const std::vector<Refusal> refusals{
      {"another world size", 2, flat, [&](std::size_t r) { return saved.at(flat.name())[r]; },
       "it was saved in a world of 4 ranks, this one has 2"},
      {"another schedule", 4, hier2, [&](std::size_t r) { return saved.at(flat.name())[r]; },
       "it was saved for the flat schedule"},
      {"another node size", 4, hier4, [&](std::size_t r) { return saved.at(hier2.name())[r]; },
       "it was saved for the hierarchical schedule with 2 ranks per node"},
      {"replicated into flat", 4, flat, [&](std::size_t r) { return saved.at(repl.name())[r]; },
       "it was saved for the replicated schedule"},
      {"another rank's shard on rank 2", 4, flat,
       [&](std::size_t r) { return saved.at(flat.name())[r == 2 ? 3 : r]; }, "shard 3"},
      {"another tensor list on rank 0", 4, flat,
       [&](std::size_t r) {
         auto st = saved.at(flat.name())[r];
         if (r == 0) st.layout ^= 1;
         return st;
       },
       "another tensor list"},
      {"another step count on rank 1", 4, flat,
       [&](std::size_t r) {
         auto st = saved.at(flat.name())[r];
         if (r == 1) st.steps = 7;
         return st;
       },
       "saved at different steps (1 to 7)"},
  };
  for (const Refusal& f : refusals) {
    CAPTURE(f.name);
    const Problem p{model_sizes, f.w, 43};
    // The receiving optimizer has taken two steps of its own before the load.
    const auto e = serial::run(p, serial::AdamRef{.lr = 0.01}, 3, std::nullopt);
    std::vector<Outcome> outcomes(f.w);
    std::vector<Tensors> final_params(f.w);
    LocalWorld(static_cast<int>(f.w)).run([&](LocalComm& comm) {
      const auto r = static_cast<std::size_t>(comm.rank());
      auto params = serial::initial_params(p);
      const auto sp = serial::spans(params);
      opt::ShardedOptimizer x(comm, sp, adam, options_for(f.schedule, small_buckets));
      x.step(serial::rank_grads<double>(p, 1, r));
      x.step(serial::rank_grads<double>(p, 2, r));
      const std::vector<double> before(x.state_values().begin(), x.state_values().end());
      const auto st = f.state(r);
      Outcome out = catch_outcome([&] { x.load(st); });
      out.state_unchanged =
          std::vector<double>(x.state_values().begin(), x.state_values().end()) == before;
      out.steps_unchanged = x.steps_taken() == 2;
      outcomes[r] = out;
      x.step(serial::rank_grads<double>(p, 3, r));
      final_params[r] = params;
    });
    bool someone_says_why = false;
    for (std::size_t r = 0; r < f.w; ++r) {
      CAPTURE(r);
      CAPTURE(outcomes[r].what);
      CHECK(outcomes[r].kind == "usage_error");
      CHECK(contains(outcomes[r].what, "ShardedOptimizer::load on rank " + std::to_string(r)));
      CHECK(outcomes[r].state_unchanged);
      CHECK(outcomes[r].steps_unchanged);
      someone_says_why = someone_says_why || contains(outcomes[r].what, f.cause);
      CHECK(serial::max_error(final_params[r], e.params) <= 1e-12);
    }
    CHECK(someone_says_why);
  }
}

TEST_CASE("sharded optimizer: a schedule that differs on one rank is named as the schedule") {
  // The layouts differ too (another shard count), but the cause to report is the schedule.
  const std::size_t w = 4;
  for (const Schedule odd :
       {Schedule{ShardSchedule::replicated, 0}, Schedule{ShardSchedule::flat, 0},
        Schedule{ShardSchedule::hierarchical, 2}}) {
    CAPTURE(odd.name());
    std::vector<Outcome> outcomes(w);
    LocalWorld(static_cast<int>(w)).run([&](LocalComm& comm) {
      const auto r = static_cast<std::size_t>(comm.rank());
      std::vector<double> a(10, 1.0), b(3, 1.0);
      const std::vector<std::span<double>> sp{a, b};
      const Schedule s = r == 2 ? odd : Schedule{ShardSchedule::hierarchical, 4};
      outcomes[r] =
          catch_outcome([&] { opt::ShardedOptimizer x(comm, sp, opt::Sgd{}, options_for(s, 0)); });
    });
    for (std::size_t r = 0; r < w; ++r) {
      CAPTURE(r);
      CHECK(outcomes[r].kind == "usage_error");
      CHECK(outcomes[r].what ==
            "strata: ShardedOptimizer on rank " + std::to_string(r) + ": rank 2 asks for the " +
                std::string(opt::to_string(odd.kind)) + " schedule with " +
                std::to_string(odd.node) + " ranks per node, rank 0 for hierarchical with 4");
    }
  }
}

TEST_CASE("sharded optimizer: buckets smaller than one element hold one tensor each") {
  // A capacity of 1 to 7 bytes is below one double: every tensor is larger than a bucket and
  // gets its own, as with a capacity of one element.
  LocalWorld(2).run([](LocalComm& comm) {
    std::vector<std::vector<double>> params{std::vector<double>(100), std::vector<double>(37),
                                            std::vector<double>(1000), std::vector<double>(5)};
    const auto sp = serial::spans(params);
    for (const std::size_t bytes : {std::size_t{1}, std::size_t{7}, std::size_t{8}}) {
      CAPTURE(bytes);
      opt::ShardedOptimizer x(comm, sp, opt::Sgd{}, options_for({ShardSchedule::flat, 0}, bytes));
      CHECK(x.layout().num_buckets() == 4);
    }
  });
}

TEST_CASE(
    "sharded optimizer: a bad clip norm or an alignment beyond size_t on one rank fails "
    "on every rank") {
  const std::size_t w = 4;
  strata::LocalOptions lo;
  lo.timeout = std::chrono::seconds(2);
  for (int variant = 0; variant < 4; ++variant) {
    CAPTURE(variant);
    std::vector<Outcome> outcomes(w);
    LocalWorld(static_cast<int>(w), lo).run([&](LocalComm& comm) {
      const auto r = static_cast<std::size_t>(comm.rank());
      std::vector<double> a(10, 1.0), b(3, 1.0);
      const std::vector<std::span<double>> sp{a, b};
      auto o = options_for({ShardSchedule::flat, 0}, 0);
      o.clip_norm = 1.0;
      if (r == 2) {
        if (variant == 0) o.clip_norm = -1.0;
        if (variant == 1) o.clip_norm = std::numeric_limits<double>::quiet_NaN();
        if (variant == 2) o.clip_norm = 1.0 + 1e-9;  // differs below any decimal rounding
        if (variant == 3) o.alignment_bytes = std::size_t{1} << 63;
      }
      outcomes[r] = catch_outcome([&] { opt::ShardedOptimizer x(comm, sp, opt::Sgd{}, o); });
    });
    for (std::size_t r = 0; r < w; ++r) {
      CAPTURE(r);
      CAPTURE(outcomes[r].what);
      CHECK(outcomes[r].kind == "usage_error");
      CHECK(outcomes[r].what.find("rank 2") != std::string::npos);
    }
  }
}
