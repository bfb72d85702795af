// Outer optimizers, compressed wires and streaming fragments against a serial model. Every rank
// simulates the whole world in double (all ranks' parameters, anchors and outer states, the
// schedule rule, group means as plain loops) and checks its own values against it. Compressed
// wires round twice per averaging, so there the model carries a bound per element instead of
// exact values: for the averagers with an outer state it restarts each step from the library's
// state (gathered from every rank), so that each step is checked on its own against a tight
// bound; for streaming fragments, where that state is private, it propagates the bound.
#include <doctest/doctest.h>

#include <strata/averaging/averager.hpp>
#include <strata/averaging/outer.hpp>
#include <strata/averaging/streaming.hpp>
#include <strata/comm/compressed_average.hpp>
#include <strata/comm/local.hpp>
#include <strata/hierarchy/runtime_hierarchy.hpp>

#include <algorithm>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <optional>
#include <random>
#include <span>
#include <stdexcept>
#include <string>
#include <type_traits>
#include <utility>
#include <vector>

#include "../tools/random_levels.hpp"

namespace {

using strata::WireFormat;
using Vec = std::vector<double>;

// --- The parameters and the "training" between averagings ------------------------------------

// Several tensors, so that the averagers pack; 61 elements, a multiple of none of 2 to 8.
const std::vector<std::size_t> small_tensors{1, 17, 40, 3};
// Three int8 blocks, the last one partial.
const std::vector<std::size_t> large_tensors{300, 17, 250};

std::size_t total(const std::vector<std::size_t>& sizes) {
  std::size_t n = 0;
  for (const std::size_t s : sizes) n += s;
  return n;
}

// The initial parameters: the same on every rank (the usual start), or different per rank.
double start_value(bool same_start, int rank, std::size_t i) {
  return std::cos(0.1 * static_cast<double>(i + 1) + (same_start ? 0.0 : 0.7 * (rank + 1)));
}

// The update of step t. In warm-up the world averages its gradients: the update is the same on
// every rank (here it does not depend on the rank, which the mean of equal gradients is).
double update(int rank, std::size_t t, std::size_t i, bool warm) {
  const double r = warm ? 0.0 : static_cast<double>(rank + 1);
  return 0.05 *
         std::sin(0.37 * static_cast<double>(i + 1) + 1.3 * r + 0.71 * static_cast<double>(t));
}

// One rank's tensors, in T.
template <class T>
class Tensors {
 public:
  explicit Tensors(const std::vector<std::size_t>& sizes) {
    for (const std::size_t s : sizes) data_.emplace_back(s);
    for (auto& t : data_) spans_.emplace_back(t);
  }
  Tensors(const Tensors&) = delete;
  Tensors& operator=(const Tensors&) = delete;

  [[nodiscard]] const std::vector<std::span<T>>& spans() const { return spans_; }
  [[nodiscard]] std::span<const std::span<T>> list() const { return spans_; }

  [[nodiscard]] std::vector<T> flat() const {
    std::vector<T> out;
    for (const auto& t : data_) out.insert(out.end(), t.begin(), t.end());
    return out;
  }
  void set(const Vec& flat) {
    std::size_t k = 0;
    for (auto& t : data_) {
      for (T& x : t) x = static_cast<T>(flat[k++]);
    }
  }
  // The local update, rounded to T as a rank's optimizer would.
  void step(int rank, std::size_t t, bool warm) {
    std::size_t k = 0;
    for (auto& tensor : data_) {
      for (T& x : tensor) {
        x = static_cast<T>(static_cast<double>(x) - update(rank, t, k, warm));
        ++k;
      }
    }
  }

 private:
  std::vector<std::vector<T>> data_;
  std::vector<std::span<T>> spans_;
};

template <class T>
double tolerance() {
  return std::is_same_v<T, float> ? 1e-4 : 1e-12;
}

// Elements of `got` farther from `want` than `slack` (per element, may be empty) plus T's
// tolerance.
template <class T>
std::size_t off(std::span<const T> got, const Vec& want, const Vec& slack) {
  std::size_t bad = 0;
  if (got.size() != want.size()) return got.size() + want.size() + 1;
  for (std::size_t i = 0; i < got.size(); ++i) {
    const double s = slack.empty() ? 0.0 : slack[i];
    bad += !(std::fabs(static_cast<double>(got[i]) - want[i]) <=
             s + tolerance<T>() * std::max(1.0, std::fabs(want[i])));
  }
  return bad;
}

// Every rank's vector of the same length, in rank order.
template <class T>
std::vector<std::vector<T>> gather(strata::LocalComm& comm, const std::vector<T>& mine) {
  const auto n = static_cast<std::size_t>(comm.size());
  std::vector<T> all(mine.size() * n);
  comm.all_gather(std::span<const T>(mine), std::span<T>(all));
  std::vector<std::vector<T>> out;
  for (std::size_t r = 0; r < n; ++r) {
    out.emplace_back(all.begin() + static_cast<std::ptrdiff_t>(r * mine.size()),
                     all.begin() + static_cast<std::ptrdiff_t>((r + 1) * mine.size()));
  }
  return out;
}

template <class T>
bool same_bits(std::span<const T> a, std::span<const T> b) {
  // memcmp's pointers must not be null, even for no bytes (empty spans may hold null).
  return a.size() == b.size() &&
         (a.empty() || std::memcmp(a.data(), b.data(), a.size() * sizeof(T)) == 0);
}

// --- The bound of a compressed mean --------------------------------------------------------

// Per element, how far the compressed mean of the members' x (model values, each known to
// within `uncertain[m]`, or exactly when that is empty) may lie from their exact mean: the
// uncertainty's mean, plus the two roundings that compressed_average documents,
// wire_unit * (mean |x| + |result|), per value for the 16-bit formats and per 256-block's
// largest magnitude for int8, plus the summation's rounding in float (g + 2 float ulps).
Vec compressed_slack(WireFormat f, const std::vector<Vec>& x, const std::vector<Vec>& uncertain) {
  const std::size_t g = x.size();
  const std::size_t n = x.front().size();
  Vec out(n, 0.0);
  if (f == WireFormat::native) return out;
  const double u = strata::wire_unit(f);
  const double sum_rounding = static_cast<double>(g + 2) * std::ldexp(1.0, -23);
  Vec mag(n, 0.0), mean(n, 0.0), known(n, 0.0);  // mean |x| (upper), |mean x|, mean uncertainty
  std::vector<Vec> upper(g, Vec(n));
  for (std::size_t m = 0; m < g; ++m) {
    for (std::size_t i = 0; i < n; ++i) {
      const double e = uncertain.empty() ? 0.0 : uncertain[m][i];
      upper[m][i] = std::fabs(x[m][i]) + e;
      known[i] += e / static_cast<double>(g);
      mean[i] += x[m][i] / static_cast<double>(g);
    }
  }
  const auto bound = [&](double a, double r) {
    // r bounds the mean before its second rounding; the result is within u of it.
    return (u * (1 + 1e-4) + sum_rounding) * (a + (r + u * a) * (1 + u));
  };
  if (f != WireFormat::int8) {
    for (std::size_t i = 0; i < n; ++i) {
      double a = 0;
      for (std::size_t m = 0; m < g; ++m) a += upper[m][i] / static_cast<double>(g);
      out[i] = known[i] + bound(a, std::fabs(mean[i]) + known[i]);
    }
    return out;
  }
  for (std::size_t first = 0; first < n; first += strata::int8_block) {
    const std::size_t last = std::min(n, first + strata::int8_block);
    double a = 0, r = 0;
    for (std::size_t m = 0; m < g; ++m) {
      double top = 0;
      for (std::size_t i = first; i < last; ++i) top = std::max(top, upper[m][i]);
      a += top / static_cast<double>(g);
    }
    for (std::size_t i = first; i < last; ++i) r = std::max(r, std::fabs(mean[i]) + known[i]);
    for (std::size_t i = first; i < last; ++i) out[i] = known[i] + bound(a, r);
  }
  return out;
}

// --- Policies, as the test describes them ---------------------------------------------------

// A user outer step with two state values per element, element-major: a damped sum of the
// pseudo-gradients and a count of the steps.
struct DampedStep {
  template <class T>
  void operator()(std::span<T> p, std::span<const T> a, std::span<const T> d,
                  std::span<T> s) const {
    for (std::size_t i = 0; i < p.size(); ++i) {
      s[2 * i] = T(0.5) * s[2 * i] + d[i];
      s[2 * i + 1] += T(1);
      p[i] = a[i] - d[i] - T(0.25) * s[2 * i] / s[2 * i + 1];
    }
  }
};
static_assert(strata::outer_step<DampedStep>);

struct Policy {
  enum class Kind { plain, nesterov, damped };
  Kind kind = Kind::plain;
  double lr = 1.0;
  double mu = 0.0;
  WireFormat wire = WireFormat::native;

  [[nodiscard]] bool keeps() const { return kind != Kind::plain || wire != WireFormat::native; }
  [[nodiscard]] std::size_t state() const {
    return kind == Kind::nesterov ? 1 : (kind == Kind::damped ? 2 : 0);
  }
  [[nodiscard]] strata::LevelPolicy library() const {
    strata::LevelPolicy p;
    p.wire = wire;
    if (kind == Kind::nesterov) p.outer = strata::OuterOptimizer::nesterov(lr, mu);
    if (kind == Kind::damped) p.outer = strata::OuterOptimizer::custom(DampedStep{}, 2, "damped");
    return p;
  }
  // The outer step on one element: the new parameter from the anchor a and the mean d, with
  // the element's state s (state() values).
  [[nodiscard]] double apply(double a, double d, double* s) const {
    switch (kind) {
      case Kind::plain: return a - d;
      case Kind::nesterov: s[0] = mu * s[0] + d; return a - lr * (d + mu * s[0]);
      case Kind::damped:
        s[0] = 0.5 * s[0] + d;
        s[1] += 1;
        return a - d - 0.25 * s[0] / s[1];
    }
    return 0;
  }
  // How much an error e in d can move the new parameter, and the state (first value).
  [[nodiscard]] double p_gain() const {
    return kind == Kind::nesterov ? lr * (1 + mu) : (kind == Kind::damped ? 1.25 : 1.0);
  }
  [[nodiscard]] std::string text() const {
    const char* names[] = {"plain", "nesterov", "damped"};
    std::string s = names[static_cast<int>(kind)];
    if (kind == Kind::nesterov) s += "(" + std::to_string(lr) + "," + std::to_string(mu) + ")";
    return s + "/" + std::string(strata::wire_name(wire));
  }
};

std::vector<strata::LevelPolicy> library(const std::vector<Policy>& ps) {
  std::vector<strata::LevelPolicy> out;
  for (const Policy& p : ps) out.push_back(p.library());
  return out;
}

std::string describe(const std::vector<strata::LevelSpec>& levels, const std::vector<Policy>& ps) {
  std::string s;
  for (std::size_t l = 0; l < levels.size(); ++l) {
    s += std::to_string(levels[l].period) + ":" + std::to_string(levels[l].group_size) + " " +
         ps[l].text() + "; ";
  }
  return s;
}

Policy random_policy(std::mt19937_64& rng, bool compressed) {
  Policy p;
  p.kind = static_cast<Policy::Kind>(rng() % 3);
  const double lrs[] = {0.5, 0.7, 1.0, 1.3};
  const double mus[] = {0.0, 0.5, 0.9};
  p.lr = lrs[rng() % 4];
  p.mu = mus[rng() % 3];
  if (compressed) {
    const WireFormat wires[] = {WireFormat::native, WireFormat::bf16, WireFormat::fp16,
                                WireFormat::int8};
    p.wire = wires[rng() % 4];
  }
  return p;
}

// --- The serial model of a hierarchical averager --------------------------------------------

// The schedule rule, independently: nothing in warm-up, then the highest level whose period
// divides the step (periods count from step 0).
std::optional<std::size_t> level_at(const std::vector<strata::LevelSpec>& levels,
                                    std::size_t warmup, std::size_t t) {
  if (t < warmup) return std::nullopt;
  std::optional<std::size_t> l;
  for (std::size_t i = 0; i < levels.size(); ++i) {
    if (t % levels[i].period == 0) l = i;
  }
  return l;
}

struct HierModel {
  std::vector<strata::LevelSpec> levels;
  std::vector<Policy> policies;
  std::size_t warmup = 0;
  std::vector<Vec> p;                           // [rank]
  std::vector<std::vector<Vec>> anchor, state;  // [level][rank], empty where the level keeps none
  // What the library may differ by after the last step: a compressed averaging's bound.
  std::vector<Vec> p_slack, state_slack;  // [rank]
  std::optional<std::size_t> last_level;

  void begin(int n, std::size_t d, bool same_start) {
    p.assign(static_cast<std::size_t>(n), Vec(d));
    for (int r = 0; r < n; ++r) {
      for (std::size_t i = 0; i < d; ++i)
        p[static_cast<std::size_t>(r)][i] = start_value(same_start, r, i);
    }
    anchor.assign(levels.size(), {});
    state.assign(levels.size(), {});
    for (std::size_t l = 0; l < levels.size(); ++l) {
      if (!policies[l].keeps()) continue;
      anchor[l] = p;
      state[l].assign(p.size(), Vec(d * policies[l].state(), 0.0));
    }
  }

  void local_update(std::size_t t) {
    for (std::size_t r = 0; r < p.size(); ++r) {
      for (std::size_t i = 0; i < p[r].size(); ++i) {
        p[r][i] -= update(static_cast<int>(r), t, i, t < warmup);
      }
    }
  }

  // The averaging after step t's local update.
  std::optional<std::size_t> average(std::size_t t) {
    const std::size_t d = p.front().size();
    p_slack.assign(p.size(), Vec(d, 0.0));
    state_slack.assign(p.size(), {});
    last_level = level_at(levels, warmup, t);
    const bool warm = t < warmup;
    if (!warm && !last_level) return last_level;
    const std::size_t top = warm ? levels.size() - 1 : *last_level;
    if (!warm) {
      const std::size_t l = top;
      const Policy& pol = policies[l];
      const std::size_t g = levels[l].group_size;
      for (std::size_t first = 0; first < p.size(); first += g) {
        if (!pol.keeps()) {
          for (std::size_t i = 0; i < d; ++i) {
            double sum = 0;
            for (std::size_t m = first; m < first + g; ++m) sum += p[m][i];
            for (std::size_t m = first; m < first + g; ++m) p[m][i] = sum / static_cast<double>(g);
          }
          continue;
        }
        std::vector<Vec> x;
        for (std::size_t m = first; m < first + g; ++m) {
          x.emplace_back(d);
          for (std::size_t i = 0; i < d; ++i) x.back()[i] = anchor[l][m][i] - p[m][i];
        }
        Vec mean(d, 0.0);
        for (std::size_t i = 0; i < d; ++i) {
          for (const Vec& xm : x) mean[i] += xm[i];
          mean[i] /= static_cast<double>(g);
        }
        const Vec slack = compressed_slack(pol.wire, x, {});
        for (std::size_t m = first; m < first + g; ++m) {
          state_slack[m].assign(d * pol.state(), 0.0);
          for (std::size_t i = 0; i < d; ++i) {
            p[m][i] = pol.apply(anchor[l][m][i], mean[i], state[l][m].data() + i * pol.state());
            p_slack[m][i] = pol.p_gain() * slack[i];
            if (pol.state() > 0) state_slack[m][i * pol.state()] = slack[i];
          }
        }
      }
    }
    // The anchors at or below the level (every level in warm-up) follow the parameters.
    for (std::size_t k = 0; k <= top; ++k) {
      if (policies[k].keeps()) anchor[k] = p;
    }
    return last_level;
  }
};

// A rank's view of the library averager's state, flat: its parameters, then per level its
// anchor and its outer state.
template <class T, class Averager>
std::vector<T> library_state(const Averager& avg, const std::vector<T>& params) {
  std::vector<T> out = params;
  const strata::OuterSnapshot<T> s = avg.template outer_state<T>();
  for (const auto& a : s.anchors) out.insert(out.end(), a.begin(), a.end());
  for (const auto& st : s.states) out.insert(out.end(), st.begin(), st.end());
  return out;
}

struct RunReport {
  std::size_t compressed_syncs = 0;  // averagings over a compressed wire in a group of 2 or more
  double largest_rounding = 0;       // the largest |library - exact model| at those
};

// Runs `steps` steps of `avg` on this rank and checks every one against the model (every rank
// holds the same model). Where a level compresses, the model restarts each step from the
// library's gathered state; with a common start, the members of a group that just averaged
// must hold the same bits.
template <class T, class Averager>
RunReport check_hier(strata::LocalComm& comm, Averager& avg, HierModel model,
                     const std::vector<std::size_t>& sizes, bool same_start, std::size_t steps) {
  const int me = comm.rank();
  const auto mine = static_cast<std::size_t>(me);
  const std::size_t d = total(sizes);
  bool anchors = false, compressed = false;
  for (const Policy& p : model.policies) {
    anchors = anchors || p.keeps();
    compressed = compressed || p.wire != WireFormat::native;
  }
  model.begin(comm.size(), d, same_start);
  Tensors<T> x(sizes);
  x.set(model.p[mine]);
  if (anchors) avg.begin(x.spans());
  RunReport report;
  std::size_t bad = 0, bad_levels = 0, bad_anchors = 0, bad_states = 0, bad_bits = 0;
  for (std::size_t t = 0; t < steps; ++t) {
    CAPTURE(t);
    model.local_update(t);
    x.step(me, t, t < model.warmup);
    const std::optional<std::size_t> expected = model.average(t);
    bad_levels += avg.average(x.spans()) != expected;
    const std::vector<T> got = x.flat();
    bad += off(std::span<const T>(got), model.p[mine], model.p_slack[mine]);
    if (anchors) {
      const strata::OuterSnapshot<T> s = avg.template outer_state<T>();
      for (std::size_t l = 0; l < model.levels.size(); ++l) {
        const bool followed = expected && l <= *expected;
        bad_anchors += off(std::span<const T>(s.anchors[l]),
                           model.policies[l].keeps() ? model.anchor[l][mine] : Vec{},
                           followed ? model.p_slack[mine] : Vec{});
        const bool moved = expected && l == *expected;
        bad_states += off(std::span<const T>(s.states[l]),
                          model.policies[l].keeps() ? model.state[l][mine] : Vec{},
                          moved ? model.state_slack[mine] : Vec{});
      }
    }
    if (!expected || !(same_start || compressed)) continue;
    // Every rank's state: the bits within the group, and the model's restart.
    const auto all = gather(comm, library_state(avg, got));
    const std::size_t g = model.levels[*expected].group_size;
    const std::size_t first = mine / g * g;
    if (same_start) {
      bad_bits += !same_bits(std::span<const T>(all[mine]).first(d),
                             std::span<const T>(all[first]).first(d));
    }
    const Policy& pol = model.policies[*expected];
    if (pol.wire != WireFormat::native && g > 1) {
      ++report.compressed_syncs;
      for (std::size_t i = 0; i < d; ++i) {
        report.largest_rounding = std::max(
            report.largest_rounding, std::fabs(static_cast<double>(got[i]) - model.p[mine][i]));
      }
    }
    if (!compressed) continue;
    for (std::size_t r = 0; r < all.size(); ++r) {
      std::size_t k = 0;
      for (std::size_t i = 0; i < d; ++i) model.p[r][i] = static_cast<double>(all[r][k++]);
      for (std::size_t l = 0; l < model.levels.size(); ++l) {
        if (!model.policies[l].keeps()) continue;
        for (double& v : model.anchor[l][r]) v = static_cast<double>(all[r][k++]);
      }
      for (std::size_t l = 0; l < model.levels.size(); ++l) {
        if (!model.policies[l].keeps()) continue;
        for (double& v : model.state[l][r]) v = static_cast<double>(all[r][k++]);
      }
    }
  }
  CHECK(bad == 0);
  CHECK(bad_levels == 0);
  CHECK(bad_anchors == 0);
  CHECK(bad_states == 0);
  CHECK(bad_bits == 0);
  return report;
}

std::size_t longest_period(const std::vector<strata::LevelSpec>& levels) {
  return levels.back().period;
}

// Random hierarchies and policies on worlds 1 to 16, against the model.
template <class T>
void random_outer(int n, std::uint64_t seed, int trials, bool compressed, bool same_start) {
  std::mt19937_64 rng(seed * 1000 + static_cast<std::uint64_t>(n));
  struct Trial {
    std::vector<strata::LevelSpec> levels;
    std::vector<Policy> policies;
    std::size_t warmup;
  };
  std::vector<Trial> cases;
  for (int k = 0; k < trials; ++k) {
    Trial c;
    c.levels = test_tools::random_levels(rng, static_cast<std::size_t>(n), 3);
    for (std::size_t l = 0; l < c.levels.size(); ++l) {
      c.policies.push_back(random_policy(rng, compressed));
    }
    // Every case keeps at least one anchor.
    if (std::none_of(c.policies.begin(), c.policies.end(),
                     [](const Policy& p) { return p.keeps(); })) {
      c.policies.back().kind = Policy::Kind::nesterov;
    }
    c.warmup = rng() % 4;
    cases.push_back(c);
  }
  std::vector<RunReport> reports(static_cast<std::size_t>(n));
  strata::LocalWorld(n).run([&](strata::LocalComm& comm) {
    for (const Trial& c : cases) {
      CAPTURE(describe(c.levels, c.policies));
      CAPTURE(c.warmup);
      strata::AveragerOptions opts;
      opts.levels = library(c.policies);
      strata::RuntimeHierarchicalAverager<strata::LocalComm> avg(
          comm, strata::RuntimeHierarchy(c.levels), c.warmup, opts);
      HierModel model{c.levels, c.policies, c.warmup, {}, {}, {}, {}, {}, {}};
      const std::size_t steps = c.warmup + 2 * longest_period(c.levels) + 2;
      const RunReport r = check_hier<T>(
          comm, avg, model, compressed ? large_tensors : small_tensors, same_start, steps);
      auto& mine = reports[static_cast<std::size_t>(comm.rank())];
      mine.compressed_syncs += r.compressed_syncs;
      mine.largest_rounding = std::max(mine.largest_rounding, r.largest_rounding);
    }
  });
  if (compressed) {
    // The wire did round: a compressed mean that came out exact everywhere would mean the
    // values never went through it.
    for (const RunReport& r : reports) {
      if (r.compressed_syncs > 0) CHECK(r.largest_rounding > 0);
    }
  }
}

// --- The serial model of streaming fragments -----------------------------------------------

struct StreamModel {
  std::size_t period = 1, fragments = 1, delay = 0, warmup = 0;
  double mix = 1.0;
  Policy outer;  // plain: X = a - d
  WireFormat wire = WireFormat::native;
  std::vector<std::size_t> bounds;  // fragment f: [bounds[f], bounds[f + 1])
  std::vector<Vec> p, anchor, state;
  std::vector<Vec> p_slack, anchor_slack, state_slack;  // propagated bounds of the wire's rounding
  struct Pending {
    std::size_t fragment, due;
    std::vector<Vec> x, x_slack;  // per rank, the fragment's X and its bound
  };
  std::vector<Pending> pending;
  std::vector<std::size_t> applied;  // the fragments mixed in at the last step

  void begin(int n, std::size_t d, bool same_start) {
    // The first D mod F fragments one element longer.
    bounds.assign(1, 0);
    for (std::size_t f = 0; f < fragments; ++f) {
      bounds.push_back(bounds.back() + d / fragments + (f < d % fragments ? 1 : 0));
    }
    p.assign(static_cast<std::size_t>(n), Vec(d));
    for (int r = 0; r < n; ++r) {
      for (std::size_t i = 0; i < d; ++i)
        p[static_cast<std::size_t>(r)][i] = start_value(same_start, r, i);
    }
    anchor = p;
    state.assign(p.size(), Vec(d * outer.state(), 0.0));
    p_slack.assign(p.size(), Vec(d, 0.0));
    anchor_slack = p_slack;
    state_slack = p_slack;
    pending.clear();
  }

  [[nodiscard]] std::optional<std::size_t> fragment_at(std::size_t t) const {
    if (t < warmup) return std::nullopt;
    const std::size_t stride = period / fragments;
    for (std::size_t f = 0; f < fragments; ++f) {
      if (t % period == f * stride) return f;
    }
    return std::nullopt;
  }

  void local_update(std::size_t t) {
    for (std::size_t r = 0; r < p.size(); ++r) {
      for (std::size_t i = 0; i < p[r].size(); ++i) {
        p[r][i] -= update(static_cast<int>(r), t, i, t < warmup);
      }
    }
  }

  void apply(const Pending& q) {
    for (std::size_t r = 0; r < p.size(); ++r) {
      for (std::size_t i = bounds[q.fragment]; i < bounds[q.fragment + 1]; ++i) {
        const std::size_t k = i - bounds[q.fragment];
        p[r][i] = (1 - mix) * p[r][i] + mix * q.x[r][k];
        p_slack[r][i] = (1 - mix) * p_slack[r][i] + mix * q.x_slack[r][k];
        anchor[r][i] = q.x[r][k];
        anchor_slack[r][i] = q.x_slack[r][k];
      }
    }
    applied.push_back(q.fragment);
  }

  std::optional<std::size_t> average(std::size_t t) {
    applied.clear();
    if (t < warmup) {
      anchor = p;
      return std::nullopt;
    }
    for (const Pending& q : pending) {
      if (q.due == t) apply(q);
    }
    std::erase_if(pending, [&](const Pending& q) { return q.due == t; });
    const std::optional<std::size_t> f = fragment_at(t);
    if (!f) return f;
    const std::size_t b = bounds[*f], e = bounds[*f + 1];
    const std::size_t n = p.size();
    std::vector<Vec> x(n, Vec(e - b)), x_slack(n, Vec(e - b));
    for (std::size_t r = 0; r < n; ++r) {
      for (std::size_t i = b; i < e; ++i) {
        x[r][i - b] = anchor[r][i] - p[r][i];
        x_slack[r][i - b] = anchor_slack[r][i] + p_slack[r][i];
      }
    }
    Vec mean(e - b, 0.0);
    for (std::size_t i = 0; i < e - b; ++i) {
      for (std::size_t r = 0; r < n; ++r) mean[i] += x[r][i];
      mean[i] /= static_cast<double>(n);
    }
    const Vec d_slack = compressed_slack(wire, x, x_slack);
    Pending q{*f, t + delay, {}, {}};
    const std::size_t k = outer.state();
    for (std::size_t r = 0; r < n; ++r) {
      q.x.emplace_back(e - b);
      q.x_slack.emplace_back(e - b);
      for (std::size_t i = b; i < e; ++i) {
        // The bounds of a, d and the state (its first value) carry through the outer step:
        // Nesterov m' = mu m + d, X = a - lr (d + mu m'); damped s' = s/2 + d,
        // X = a - d - s'/(4 count); plain X = a - d.
        const double bd = d_slack[i - b];
        double& bs = state_slack[r][i];
        double bx = anchor_slack[r][i] + bd;
        if (outer.kind == Policy::Kind::nesterov) {
          bs = outer.mu * bs + bd;
          bx = anchor_slack[r][i] + outer.lr * (bd + outer.mu * bs);
        } else if (outer.kind == Policy::Kind::damped) {
          bs = 0.5 * bs + bd;
          bx += 0.25 * bs;
        }
        q.x[r][i - b] = outer.apply(anchor[r][i], mean[i - b], state[r].data() + i * k);
        q.x_slack[r][i - b] = bx;
      }
    }
    if (delay == 0) {
      apply(q);
    } else {
      pending.push_back(std::move(q));
    }
    return f;
  }
};

struct StreamCase {
  std::size_t period, fragments, delay;
  double mix;
};

std::optional<strata::OuterOptimizer> library_outer(const Policy& p) { return p.library().outer; }

// Runs `steps` steps of a StreamingAverager against the model on this rank.
template <class T, class Averager>
void check_stream(strata::LocalComm& comm, Averager& avg, StreamModel model,
                  const std::vector<std::size_t>& sizes, bool same_start, std::size_t steps) {
  const int me = comm.rank();
  const auto mine = static_cast<std::size_t>(me);
  model.begin(comm.size(), total(sizes), same_start);
  Tensors<T> x(sizes);
  x.set(model.p[mine]);
  avg.begin(x.list());
  std::size_t bad = 0, bad_fragments = 0, bad_bits = 0;
  for (std::size_t t = 0; t < steps; ++t) {
    CAPTURE(t);
    model.local_update(t);
    x.step(me, t, t < model.warmup);
    const std::optional<std::size_t> f = model.average(t);
    bad_fragments += avg.average(x.list()) != f;
    bad_fragments += avg.fragment_at(t) != model.fragment_at(t);
    const std::vector<T> got = x.flat();
    bad += off(std::span<const T>(got), model.p[mine], model.p_slack[mine]);
    if (same_start && model.mix == 1.0 && !model.applied.empty()) {
      // A fragment just mixed in whole holds the same bits on every rank.
      const auto all = gather(comm, got);
      for (const std::size_t g : model.applied) {
        const std::size_t b = model.bounds[g], n = model.bounds[g + 1] - b;
        bad_bits += !same_bits(std::span<const T>(all[mine]).subspan(b, n),
                               std::span<const T>(all[0]).subspan(b, n));
      }
    }
  }
  CHECK(avg.step() == steps);
  CHECK(bad == 0);
  CHECK(bad_fragments == 0);
  CHECK(bad_bits == 0);
}

}  // namespace

// --- compressed_average -------------------------------------------------------------------

namespace {

// The values each rank averages: magnitudes from 2^-10 to 8, either sign, zero on every rank at
// every 97th element, and one whole int8 block of zeros when there are at least two.
double compressed_input(int rank, std::size_t n, std::size_t i) {
  if (i % 97 == 5 || (n >= 512 && i >= 256 && i < 512)) return 0.0;
  // splitmix64 of (rank, n, i): cheap, and the same on every rank.
  std::uint64_t z = static_cast<std::uint64_t>(rank) * 0x9e3779b97f4a7c15u +
                    i * 0xbf58476d1ce4e5b9u + n * 0x94d049bb133111ebu;
  z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9u;
  z = (z ^ (z >> 27)) * 0x94d049bb133111ebu;
  z ^= z >> 31;
  const double unit = static_cast<double>(z >> 11) * std::ldexp(1.0, -53);
  const double mag = std::exp2(-10.0 + 13.0 * unit);
  return (z & 1) != 0 ? mag : -mag;
}

template <class T>
void compressed_world(int n, WireFormat f) {
  const std::vector<std::size_t> lengths{0, 1, 7, 255, 256, 257, 3 * 256 + 1, 1000};
  std::vector<std::size_t> rounded(static_cast<std::size_t>(n), 0);
  strata::LocalWorld(n).run([&](strata::LocalComm& comm) {
    const int me = comm.rank();
    const auto g = static_cast<std::size_t>(n);
    for (const std::size_t len : lengths) {
      CAPTURE(len);
      std::vector<Vec> x(g, Vec(len));
      Vec mean(len, 0.0);
      for (std::size_t r = 0; r < g; ++r) {
        for (std::size_t i = 0; i < len; ++i) {
          x[r][i] =
              static_cast<double>(static_cast<T>(compressed_input(static_cast<int>(r), len, i)));
          mean[i] += x[r][i] / static_cast<double>(g);
        }
      }
      std::vector<T> in(len), out(len, T(-1));
      for (std::size_t i = 0; i < len; ++i)
        in[i] = static_cast<T>(x[static_cast<std::size_t>(me)][i]);
      const std::size_t bytes =
          strata::compressed_average(comm, std::span<const T>(in), std::span<T>(out), f);
      CHECK(bytes == strata::compressed_average_bytes(f, len, g));
      if (n == 1) {
        CHECK(same_bits(std::span<const T>(out), std::span<const T>(in)));
        continue;
      }
      // The documented bound: the result's magnitude is what the second rounding scales with.
      const Vec slack = compressed_slack(f, x, {});
      std::size_t bad = 0;
      for (std::size_t i = 0; i < len; ++i) {
        const double e = std::fabs(static_cast<double>(out[i]) - mean[i]);
        bad += !(e <= slack[i] + 1e-300);
        rounded[static_cast<std::size_t>(me)] += e > 0;
        if (x[0][i] == 0 && mean[i] == 0) bad += out[i] != T(0);  // exact zeros stay zero
      }
      CHECK(bad == 0);
      // Every member holds the same bits.
      const auto all = gather(comm, out);
      for (const auto& other : all)
        CHECK(same_bits(std::span<const T>(other), std::span<const T>(out)));
      // In place: the same result.
      std::vector<T> inout = in;
      strata::compressed_average(comm, std::span<const T>(inout), std::span<T>(inout), f);
      CHECK(same_bits(std::span<const T>(inout), std::span<const T>(out)));
    }
  });
  if (n > 1) CHECK(rounded[0] > 0);
}

}  // namespace

TEST_CASE("compressed_average: the mean within two roundings, the same bits on every member") {
  for (int n = 1; n <= 16; ++n) {
    CAPTURE(n);
    for (const WireFormat f : {WireFormat::bf16, WireFormat::fp16, WireFormat::int8}) {
      CAPTURE(strata::wire_name(f));
      compressed_world<float>(n, f);
      compressed_world<double>(n, f);
    }
  }
}

TEST_CASE("compressed_average: sizes and errors") {
  // Chunks of ceil(n/g) values, rounded to 2 values (16-bit) or 256 (int8), in 32-bit words,
  // sent g-1 times each way.
  CHECK(strata::compressed_average_bytes(WireFormat::bf16, 1000, 3) == 2 * 2 * 668);
  CHECK(strata::compressed_average_bytes(WireFormat::fp16, 7, 2) == 2 * 1 * 8);
  CHECK(strata::compressed_average_bytes(WireFormat::int8, 1000, 3) == 2 * 2 * (512 + 8));
  CHECK(strata::compressed_average_bytes(WireFormat::int8, 10, 4) == 2 * 3 * (256 + 4));
  CHECK(strata::compressed_average_bytes(WireFormat::bf16, 1000, 1) == 0);
  CHECK(strata::compressed_average_bytes(WireFormat::bf16, 0, 4) == 0);
  strata::LocalWorld(2).run([](strata::LocalComm& comm) {
    std::vector<float> a(3), b(4);
    CHECK_THROWS_WITH_AS(strata::compressed_average(comm, std::span<const float>(a),
                                                    std::span<float>(a), WireFormat::native),
                         "compressed_average: native is not a compressed format",
                         std::invalid_argument);
    CHECK_THROWS_WITH_AS(strata::compressed_average(comm, std::span<const float>(a),
                                                    std::span<float>(b), WireFormat::bf16),
                         "compressed_average: input of 3 values, output of 4",
                         std::invalid_argument);
  });
}

// --- Outer optimizers on the hierarchical averagers ----------------------------------------

TEST_CASE("outer optimizers: random hierarchies and policies against the serial model") {
  for (int n = 1; n <= 16; ++n) {
    CAPTURE(n);
    random_outer<double>(n, /*seed=*/1, /*trials=*/2, /*compressed=*/false, /*same_start=*/true);
    random_outer<double>(n, /*seed=*/2, /*trials=*/1, /*compressed=*/false, /*same_start=*/false);
  }
  for (const int n : {1, 3, 4, 8, 12}) {
    CAPTURE(n);
    random_outer<float>(n, /*seed=*/3, /*trials=*/1, /*compressed=*/false, /*same_start=*/true);
  }
}

TEST_CASE("outer optimizers: compressed wires within their bound, the same bits in a group") {
  for (int n = 1; n <= 16; ++n) {
    CAPTURE(n);
    random_outer<double>(n, /*seed=*/4, /*trials=*/n <= 8 ? 2 : 1, /*compressed=*/true,
                         /*same_start=*/true);
  }
  for (const int n : {2, 6, 8}) {
    CAPTURE(n);
    random_outer<float>(n, /*seed=*/5, /*trials=*/1, /*compressed=*/true, /*same_start=*/true);
  }
}

TEST_CASE("outer optimizers: nesterov(1, 0) is plain averaging") {
  for (const int n : {1, 2, 4, 6, 8, 12, 16}) {
    CAPTURE(n);
    std::mt19937_64 rng(static_cast<std::uint64_t>(n) + 77);
    const auto levels = test_tools::random_levels(rng, static_cast<std::size_t>(n), 3);
    const std::size_t warmup = 2;
    strata::LocalWorld(n).run([&](strata::LocalComm& comm) {
      strata::AveragerOptions opts;
      // Every level an outer step of lr 1 without momentum; the first over a plain level.
      for (std::size_t l = 0; l < levels.size(); ++l) {
        strata::LevelPolicy p;
        if (l > 0 || levels.size() == 1) p.outer = strata::OuterOptimizer::nesterov(1.0, 0.0);
        opts.levels.push_back(p);
      }
      const strata::RuntimeHierarchy h(levels);
      strata::RuntimeHierarchicalAverager<strata::LocalComm> outer(comm, h, warmup, opts);
      strata::RuntimeHierarchicalAverager<strata::LocalComm> plain(comm, h, warmup);
      const int me = comm.rank();
      const std::size_t d = total(small_tensors);
      std::vector<double> a(d), b(d);
      for (std::size_t i = 0; i < d; ++i) a[i] = b[i] = start_value(true, me, i);
      outer.begin(std::span<double>(a));
      std::size_t bad = 0;
      for (std::size_t t = 0; t < warmup + 2 * levels.back().period + 1; ++t) {
        for (std::size_t i = 0; i < d; ++i) {
          a[i] -= update(me, t, i, t < warmup);
          b[i] -= update(me, t, i, t < warmup);
        }
        bad += outer.average(std::span<double>(a)) != plain.average(std::span<double>(b));
        for (std::size_t i = 0; i < d; ++i) bad += !(std::fabs(a[i] - b[i]) <= 1e-12);
      }
      CHECK(bad == 0);
    });
  }
}

namespace {

using Small =
    strata::Hierarchy<strata::LevelWith<strata::Level<2, 2>, strata::CustomOuter<DampedStep, 2>>,
                      strata::Level<3, 4>,
                      strata::LevelWith<strata::Level<5, 8>, strata::NesterovOuter<0.7, 0.9>>>;
using Wired =
    strata::Hierarchy<strata::LevelWith<strata::Level<1, 2>, strata::Wire<WireFormat::bf16>>,
                      strata::LevelWith<strata::Level<3, 4>, strata::Wire<WireFormat::int8>,
                                        strata::NesterovOuter<0.5, 0.5>>>;

}  // namespace

TEST_CASE("outer optimizers: LevelWith levels carry their policies into HierarchicalAverager") {
  const auto policies = strata::level_policies<Small>();
  REQUIRE(policies.size() == 3);
  CHECK(policies[0].outer->name() == "custom");
  CHECK(policies[0].outer->state_per_element() == 2);
  CHECK(!policies[1].keeps_anchor());
  CHECK(policies[2].outer->name() == "nesterov:0.7:0.9");
  CHECK(policies[2].wire == WireFormat::native);
  const auto wired = strata::level_policies<Wired>();
  CHECK((wired[0].wire == WireFormat::bf16 && !wired[0].outer));
  CHECK((wired[1].wire == WireFormat::int8 && wired[1].outer->lr() == 0.5));

  strata::LocalWorld(8).run([](strata::LocalComm& comm) {
    strata::HierarchicalAverager<Small, strata::LocalComm> avg(comm, /*warmup=*/1);
    CHECK(avg.policies().size() == 3);
    std::vector<Policy> ps(3);
    ps[0].kind = Policy::Kind::damped;
    ps[2].kind = Policy::Kind::nesterov;
    ps[2].lr = 0.7;
    ps[2].mu = 0.9;
    HierModel model{{{2, 2}, {3, 4}, {5, 8}}, ps, 1, {}, {}, {}, {}, {}, {}};
    check_hier<double>(comm, avg, model, small_tensors, /*same_start=*/true, 24);

    // Policies in both places are refused, on every rank alike (nothing collective has run).
    const auto both = [&] {
      strata::HierarchicalAverager<Small, strata::LocalComm> a(
          comm, 0, strata::AveragerOptions{.levels = std::vector<strata::LevelPolicy>(3)});
    };
    CHECK_THROWS_WITH_AS(both(), doctest::Contains("give them in one place"),
                         std::invalid_argument);
  });

  strata::LocalWorld(4).run([](strata::LocalComm& comm) {
    strata::HierarchicalAverager<Wired, strata::LocalComm> avg(comm, /*warmup=*/2);
    std::vector<Policy> ps(2);
    ps[0].wire = WireFormat::bf16;
    ps[1].kind = Policy::Kind::nesterov;
    ps[1].lr = 0.5;
    ps[1].mu = 0.5;
    ps[1].wire = WireFormat::int8;
    HierModel model{{{1, 2}, {3, 4}}, ps, 2, {}, {}, {}, {}, {}, {}};
    check_hier<double>(comm, avg, model, large_tensors, /*same_start=*/true, 14);
  });
}

TEST_CASE("outer optimizers: a restored averager continues with the same bits") {
  for (const int n : {2, 4, 6}) {
    CAPTURE(n);
    strata::LocalWorld(n).run([&](strata::LocalComm& comm) {
      const auto un = static_cast<std::size_t>(n);
      const std::vector<strata::LevelSpec> levels{{2, n == 2 ? 1u : 2u}, {3, un}};
      std::vector<Policy> ps(levels.size());
      ps[0].kind = Policy::Kind::damped;
      ps.back().kind = Policy::Kind::nesterov;
      ps.back().lr = 0.7;
      ps.back().mu = 0.9;
      ps.back().wire = n == 6 ? WireFormat::fp16 : WireFormat::native;
      strata::AveragerOptions opts;
      opts.levels = library(ps);
      const strata::RuntimeHierarchy h(levels);
      const std::size_t warmup = 1, d = total(small_tensors);
      const int me = comm.rank();
      const auto run = [&](auto& avg, Tensors<double>& x, std::size_t from, std::size_t to) {
        for (std::size_t t = from; t < to; ++t) {
          x.step(me, t, t < warmup);
          avg.average(x.spans());
        }
      };
      Vec start(d);
      for (std::size_t i = 0; i < d; ++i) start[i] = start_value(false, me, i);

      Tensors<double> straight(small_tensors);
      straight.set(start);
      {
        strata::RuntimeHierarchicalAverager<strata::LocalComm> avg(comm, h, warmup, opts);
        avg.begin(straight.spans());
        run(avg, straight, 0, 20);
      }
      Tensors<double> resumed(small_tensors);
      resumed.set(start);
      strata::AveragerState saved;
      strata::OuterSnapshot<double> outer;
      {
        strata::RuntimeHierarchicalAverager<strata::LocalComm> avg(comm, h, warmup, opts);
        avg.begin(resumed.spans());
        run(avg, resumed, 0, 7);
        saved = avg.state();
        outer = avg.outer_state<double>();
      }
      CHECK(outer.anchors.size() == levels.size());
      CHECK(outer.states[0].size() == 2 * d);  // two values per element, element-major
      strata::RuntimeHierarchicalAverager<strata::LocalComm> restarted(comm, h, warmup, opts);
      restarted.restore(saved);
      restarted.load_outer_state(outer, d);
      run(restarted, resumed, 7, 20);
      CHECK(same_bits(std::span<const double>(resumed.flat()),
                      std::span<const double>(straight.flat())));

      // A snapshot that does not fit is refused.
      strata::RuntimeHierarchicalAverager<strata::LocalComm> other(comm, h, warmup, opts);
      const std::string size_message = "BasicAverager: the outer state of level 0 does not fit " +
                                       std::to_string(d + 1) + " parameters and its policy";
      CHECK_THROWS_WITH_AS(other.load_outer_state(outer, d + 1), size_message.c_str(),
                           std::invalid_argument);
      strata::OuterSnapshot<double> short_one = outer;
      short_one.anchors.push_back({});
      short_one.states.push_back({});
      const std::string level_message = "BasicAverager: an outer state of " +
                                        std::to_string(levels.size() + 1) + " levels for " +
                                        std::to_string(levels.size());
      CHECK_THROWS_WITH_AS(other.load_outer_state(short_one, d), level_message.c_str(),
                           std::invalid_argument);
    });
  }
}

TEST_CASE("outer optimizers: errors name the rule") {
  CHECK_THROWS_WITH_AS((void)strata::OuterOptimizer::nesterov(0.0, 0.5),
                       "OuterOptimizer: the outer learning rate must be finite and above 0, got 0",
                       std::invalid_argument);
  CHECK_THROWS_AS((void)strata::OuterOptimizer::nesterov(INFINITY, 0.5), std::invalid_argument);
  CHECK_THROWS_AS((void)strata::OuterOptimizer::nesterov(NAN, 0.5), std::invalid_argument);
  CHECK_THROWS_WITH_AS((void)strata::OuterOptimizer::nesterov(0.7, 1.0),
                       "OuterOptimizer: the outer momentum must be in [0, 1), got 1",
                       std::invalid_argument);
  CHECK_THROWS_AS((void)strata::OuterOptimizer::nesterov(0.7, -0.1), std::invalid_argument);
  CHECK(strata::OuterOptimizer::nesterov(0.7, 0.9).name() == "nesterov:0.7:0.9");
  CHECK(strata::OuterOptimizer::nesterov(0.1 + 0.2, 0.0).name() ==
        "nesterov:0.30000000000000004:0");
  CHECK(!strata::LevelPolicy{}.keeps_anchor());
  CHECK(strata::LevelPolicy{.outer = std::nullopt, .wire = WireFormat::fp16}.keeps_anchor());

  strata::LocalWorld(2).run([](strata::LocalComm& comm) {
    const auto h = strata::RuntimeHierarchy::parse("1:1,2:2");
    CHECK_THROWS_WITH_AS(
        (strata::RuntimeHierarchicalAverager<strata::LocalComm>(
            comm, h, 0, strata::AveragerOptions{.levels = std::vector<strata::LevelPolicy>(1)})),
        "BasicAverager: 1 level policies for 2 levels", std::invalid_argument);

    strata::AveragerOptions opts;
    opts.levels = {strata::LevelPolicy{},
                   strata::LevelPolicy{.outer = strata::OuterOptimizer::nesterov(0.7, 0.9)}};
    strata::RuntimeHierarchicalAverager<strata::LocalComm> avg(comm, h, 0, opts);
    std::vector<double> w(5, 1.0);
    CHECK_THROWS_WITH_AS(
        avg.average(std::span<double>(w)),
        "BasicAverager: a level keeps an anchor (outer optimizer or compressed wire); call "
        "begin(parameters) with the initial parameters before the first step",
        std::invalid_argument);
    CHECK(avg.step() == 0);
    avg.begin(std::span<double>(w));
    std::vector<double> longer(6, 1.0);
    CHECK_THROWS_WITH_AS(avg.average(std::span<double>(longer)),
                         "BasicAverager: the anchors hold 5 parameters, the call passes 6",
                         std::invalid_argument);
    std::vector<int> ints(5, 1);
    CHECK_THROWS_WITH_AS(
        avg.average(std::span<int>(ints)),
        "BasicAverager: outer optimizers and compressed wires need floating-point parameters",
        std::invalid_argument);
    CHECK(avg.step() == 0);
    // Floats have anchors of their own: begin was for doubles.
    std::vector<float> fw(5, 1.0f);
    CHECK_THROWS_AS(avg.average(std::span<float>(fw)), std::invalid_argument);
    CHECK(avg.average(std::span<double>(w)) == 1u);  // the doubles still work
    CHECK(avg.step() == 1);

    // Without an anchor, nothing changes: integers average, no begin.
    strata::RuntimeHierarchicalAverager<strata::LocalComm> plain(comm, h);
    std::vector<std::int64_t> iw{comm.rank() * 4};
    CHECK(plain.average(std::span<std::int64_t>(iw)) == 1u);
    CHECK(iw[0] == 2);
  });
}

// --- Streaming fragments -------------------------------------------------------------------

TEST_CASE("streaming: fragments against the serial model, outer and plain") {
  const std::vector<StreamCase> cases{{4, 1, 0, 1.0},   {8, 4, 1, 0.5}, {6, 3, 1, 1.0},
                                      {12, 4, 2, 0.75}, {6, 2, 2, 0.3}, {5, 5, 0, 1.0}};
  std::vector<Policy> outers(3);
  outers[1].kind = Policy::Kind::nesterov;
  outers[1].lr = 0.7;
  outers[1].mu = 0.9;
  outers[2].kind = Policy::Kind::damped;
  for (const int n : {1, 2, 3, 4, 5, 7, 8, 12, 16}) {
    CAPTURE(n);
    strata::LocalWorld(n).run([&](strata::LocalComm& comm) {
      for (const StreamCase& c : cases) {
        for (const Policy& o : outers) {
          for (const std::size_t warmup : {std::size_t{0}, std::size_t{3}}) {
            CAPTURE(c.period);
            CAPTURE(c.fragments);
            CAPTURE(c.delay);
            CAPTURE(c.mix);
            CAPTURE(o.text());
            CAPTURE(warmup);
            const bool same = warmup == 0;  // with warm-up, a different start on every rank
            strata::StreamingAverager<strata::LocalComm> avg(
                comm, c.period, {c.fragments, c.delay, c.mix}, warmup, library_outer(o));
            StreamModel model;
            model.period = c.period;
            model.fragments = c.fragments;
            model.delay = c.delay;
            model.mix = c.mix;
            model.warmup = warmup;
            model.outer = o;
            // Three periods, ending a step after a fragment started: its result never lands.
            const std::size_t steps = warmup + 3 * c.period + 1;
            check_stream<double>(comm, avg, model, small_tensors, same, steps);
          }
        }
      }
    });
  }
  // Floats, one case.
  strata::LocalWorld(4).run([&](strata::LocalComm& comm) {
    strata::StreamingAverager<strata::LocalComm> avg(comm, 8, {4, 1, 0.5}, 2,
                                                     library_outer(outers[1]));
    StreamModel model;
    model.period = 8;
    model.fragments = 4;
    model.delay = 1;
    model.mix = 0.5;
    model.warmup = 2;
    model.outer = outers[1];
    check_stream<float>(comm, avg, model, small_tensors, true, 30);
  });
}

TEST_CASE("streaming: compressed wires within their bound") {
  for (const int n : {1, 2, 3, 4, 8, 16}) {
    CAPTURE(n);
    strata::LocalWorld(n).run([&](strata::LocalComm& comm) {
      for (const WireFormat wire : {WireFormat::bf16, WireFormat::fp16, WireFormat::int8}) {
        for (const bool nesterov : {false, true}) {
          CAPTURE(strata::wire_name(wire));
          CAPTURE(nesterov);
          Policy o;
          if (nesterov) {
            o.kind = Policy::Kind::nesterov;
            o.lr = 0.7;
            o.mu = 0.9;
          }
          const StreamCase c{4, 2, 1, nesterov ? 0.5 : 1.0};
          strata::StreamingAverager<strata::LocalComm> avg(
              comm, c.period, {c.fragments, c.delay, c.mix}, 1, library_outer(o), wire);
          StreamModel model;
          model.period = c.period;
          model.fragments = c.fragments;
          model.delay = c.delay;
          model.mix = c.mix;
          model.warmup = 1;
          model.outer = o;
          model.wire = wire;
          // Two syncs of each fragment: the bound of the first carries into the second.
          check_stream<double>(comm, avg, model, large_tensors, true, 1 + 2 * c.period);
          if (n > 1) {
            // Fragment 0 of two over an odd D: (D + 1) / 2 values.
            const std::size_t first = (total(large_tensors) + 1) / 2;
            CHECK(avg.bytes_per_sync<double>(total(large_tensors), 0) ==
                  strata::compressed_average_bytes(wire, first, static_cast<std::size_t>(n)));
          }
        }
      }
    });
  }
}

TEST_CASE("streaming: fragment boundaries, schedule and settings") {
  // Fragment sizes D/F, the first D mod F one larger.
  for (std::size_t d = 0; d < 40; ++d) {
    for (std::size_t f = 1; f <= 7; ++f) {
      std::size_t at = 0;
      for (std::size_t k = 0; k < f; ++k) {
        CHECK(strata::fragment_begin(d, f, k) == at);
        at += d / f + (k < d % f ? 1 : 0);
      }
      CHECK(strata::fragment_begin(d, f, f) == d);
    }
  }
  strata::LocalWorld(1).run([](strata::LocalComm& comm) {
    strata::StreamingAverager<strata::LocalComm> avg(comm, 12, {.fragments = 4, .delay = 2}, 5);
    for (std::size_t t = 0; t < 40; ++t) {
      std::optional<std::size_t> want;
      if (t >= 5 && t % 3 == 0) want = (t % 12) / 3;
      CHECK(avg.fragment_at(t) == want);
    }
    CHECK(avg.period() == 12);
    CHECK(avg.streaming().delay == 2);
    // Native bytes: a ring all-reduce of the fragment (nothing in a world of one).
    CHECK(avg.bytes_per_sync<float>(100, 0) == 0);
  });

  const auto rejects = [](strata::StreamingOptions s, std::size_t period, const char* message) {
    CAPTURE(period);
    CHECK_THROWS_WITH_AS(s.check(period), message, std::invalid_argument);
  };
  rejects({}, 0, "Streaming: the period is 0");
  rejects({.fragments = 0}, 8, "Streaming: the fragment count F = 0 must divide the period P = 8");
  rejects({.fragments = 3}, 8, "Streaming: the fragment count F = 3 must divide the period P = 8");
  rejects({.fragments = 4, .delay = 2}, 8, "Streaming: the delay 2 must be below P/F = 2");
  rejects({.fragments = 1, .delay = 8}, 8, "Streaming: the delay 8 must be below P/F = 8");
  rejects({.mix = 0.0}, 8, "Streaming: the mix must be in (0, 1], got 0");
  rejects({.mix = 1.5}, 8, "Streaming: the mix must be in (0, 1], got 1.5");
  CHECK_THROWS_AS(strata::StreamingOptions{.mix = NAN}.check(8), std::invalid_argument);
  CHECK_NOTHROW(strata::StreamingOptions{.fragments = 4, .delay = 1, .mix = 1.0}.check(8));

  strata::LocalWorld(3).run([](strata::LocalComm& comm) {
    CHECK_THROWS_WITH_AS((strata::StreamingAverager<strata::LocalComm>(comm, 8, {.fragments = 3})),
                         "Streaming: the fragment count F = 3 must divide the period P = 8",
                         std::invalid_argument);
    strata::StreamingAverager<strata::LocalComm> avg(comm, 4, {.fragments = 2});
    std::vector<double> w(5, 1.0);
    CHECK_THROWS_WITH_AS(
        avg.average(std::span<double>(w)),
        "StreamingAverager: call begin(parameters) with the initial parameters first",
        std::invalid_argument);
    avg.begin(std::span<double>(w));
    std::vector<double> shorter(4, 1.0);
    CHECK_THROWS_WITH_AS(avg.average(std::span<double>(shorter)),
                         "StreamingAverager: the anchors hold 5 parameters, the call passes 4",
                         std::invalid_argument);
    CHECK(avg.step() == 0);

    using H = strata::Hierarchy<strata::Level<8, 2>>;
    CHECK_THROWS_WITH_AS(
        (strata::StaticStreamingAverager<H, strata::Streaming<4, 1, 0.5>, strata::LocalComm>(comm)),
        "StaticStreamingAverager: the hierarchy's world is 2 ranks, the communicator has 3",
        std::invalid_argument);
  });
}

TEST_CASE("streaming: StaticStreamingAverager takes its outer optimizer from LevelWith") {
  using H =
      strata::Hierarchy<strata::LevelWith<strata::Level<8, 4>, strata::NesterovOuter<0.7, 0.9>>>;
  using S = strata::Streaming<4, 1, 0.5>;
  strata::LocalWorld(4).run([](strata::LocalComm& comm) {
    strata::StaticStreamingAverager<H, S, strata::LocalComm> avg(comm, /*warmup=*/3);
    CHECK(avg.period() == 8);
    CHECK(avg.streaming().fragments == 4);
    StreamModel model;
    model.period = 8;
    model.fragments = 4;
    model.delay = 1;
    model.mix = 0.5;
    model.warmup = 3;
    model.outer.kind = Policy::Kind::nesterov;
    model.outer.lr = 0.7;
    model.outer.mu = 0.9;
    check_stream<double>(comm, avg, model, small_tensors, true, 3 + 3 * 8 + 2);
  });
}

TEST_CASE("outer optimizers: ranks that pass different policies all fail at construction") {
  strata::LocalWorld(4).run([](strata::LocalComm& comm) {
    strata::AveragerOptions o;
    o.levels = std::vector<strata::LevelPolicy>(2);
    if (comm.rank() == 3) o.levels[1].outer = strata::OuterOptimizer::nesterov(0.7, 0.9);
    const auto build = [&] {
      strata::RuntimeHierarchicalAverager<strata::LocalComm> a(
          comm, strata::RuntimeHierarchy::parse("1:2,2:4"), 0, o);
    };
    CHECK_THROWS_WITH_AS(build(), doctest::Contains("different level policies"),
                         strata::usage_error);
  });
}

namespace {

// A user's outer step that fails half-way through, after changing some of its state.
struct ThrowingStep {
  template <class T>
  void operator()(std::span<T> p, std::span<const T> a, std::span<const T> d,
                  std::span<T> s) const {
    for (std::size_t i = 0; i < p.size(); ++i) {
      s[i] += 1;
      if (i == 1) throw std::runtime_error("step refused");
      p[i] = a[i] - d[i];
    }
  }
};

}  // namespace

TEST_CASE("outer optimizers: a user step that throws leaves the state and refuses later steps") {
  strata::LocalWorld(2).run([](strata::LocalComm& comm) {
    strata::AveragerOptions o;
    o.levels = {
        strata::LevelPolicy{.outer = strata::OuterOptimizer::custom(ThrowingStep{}, 1, "t")}};
    strata::RuntimeHierarchicalAverager<strata::LocalComm> avg(
        comm, strata::RuntimeHierarchy::parse("1:2"), 0, o);
    std::vector<double> w(3, 1.0);
    avg.begin(std::span<double>(w));
    w.assign(3, comm.rank());
    CHECK_THROWS_WITH_AS(avg.average(std::span<double>(w)), "step refused", std::runtime_error);
    CHECK(w == std::vector<double>(3, comm.rank()));  // the parameters as they were
    const auto state = avg.outer_state<double>();
    CHECK(state.states[0] == std::vector<double>(3, 0.0));  // the state as it was
    CHECK(avg.step() == 0);
    CHECK_THROWS_WITH_AS(avg.average(std::span<double>(w)), doctest::Contains("unusable"),
                         strata::error);
  });
}
