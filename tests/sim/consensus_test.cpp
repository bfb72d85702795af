// The consensus model against an independent serial computation: the full covariance of every
// rank's state (parameters, and for outer optimizers anchors, momenta and results in flight)
// propagated with explicit matrices, rank by rank, and for shuffled groups averaged over every
// assignment the shuffle can draw (enumerated, not sampled).
#include <doctest/doctest.h>

#include <algorithm>
#include <cmath>
#include <cstddef>
#include <numeric>
#include <optional>
#include <stdexcept>
#include <strata/sim/consensus.hpp>
#include <string>
#include <vector>

using strata::RuntimeHierarchy;
using strata::sim::consensus;
using strata::sim::consensus_trace;
using strata::sim::ConsensusOptions;
using strata::sim::GroupAssignment;
using strata::sim::Method;
using strata::sim::OuterLevel;
using strata::sim::StreamingFragments;

namespace {

using Matrix = std::vector<std::vector<double>>;

Matrix zeros(std::size_t n) { return Matrix(n, std::vector<double>(n, 0.0)); }

Matrix identity(std::size_t n) {
  Matrix m = zeros(n);
  for (std::size_t i = 0; i < n; ++i) m[i][i] = 1.0;
  return m;
}

Matrix mul(const Matrix& a, const Matrix& b) {
  Matrix c = zeros(a.size());
  for (std::size_t i = 0; i < a.size(); ++i) {
    for (std::size_t k = 0; k < a.size(); ++k) {
      if (a[i][k] == 0.0) continue;
      for (std::size_t j = 0; j < a.size(); ++j) c[i][j] += a[i][k] * b[k][j];
    }
  }
  return c;
}

Matrix transpose(const Matrix& a) {
  Matrix t = zeros(a.size());
  for (std::size_t i = 0; i < a.size(); ++i) {
    for (std::size_t j = 0; j < a.size(); ++j) t[i][j] = a[j][i];
  }
  return t;
}

// M S M^T
Matrix conjugate(const Matrix& m, const Matrix& s) { return mul(mul(m, s), transpose(m)); }

// The group-mean matrix of groups given as a rank order cut into consecutive blocks of g.
Matrix group_mean(const std::vector<std::size_t>& order, std::size_t g) {
  const std::size_t n = order.size();
  Matrix w = zeros(n);
  for (std::size_t b = 0; b < n; b += g) {
    for (std::size_t i = b; i < b + g; ++i) {
      for (std::size_t j = b; j < b + g; ++j) w[order[i]][order[j]] = 1.0 / static_cast<double>(g);
    }
  }
  return w;
}

std::vector<std::size_t> iota(std::size_t n) {
  std::vector<std::size_t> v(n);
  std::iota(v.begin(), v.end(), std::size_t{0});
  return v;
}

// The parameters' spread: (1/n) tr((I - J/n) S_pp), S_pp the parameter block (first n rows).
double spread(const Matrix& s, std::size_t n) {
  double diag = 0.0;
  double all = 0.0;
  for (std::size_t i = 0; i < n; ++i) {
    diag += s[i][i];
    for (std::size_t j = 0; j < n; ++j) all += s[i][j];
  }
  return (diag - all / static_cast<double>(n)) / static_cast<double>(n);
}

// Embeds the n x n block `b` at block position (r, c) of a state of `blocks` blocks.
void put(Matrix& m, std::size_t r, std::size_t c, const Matrix& b, double scale = 1.0) {
  const std::size_t n = b.size();
  for (std::size_t i = 0; i < n; ++i) {
    for (std::size_t j = 0; j < n; ++j) m[r * n + i][c * n + j] += scale * b[i][j];
  }
}

// The dense reference for contiguous groups. State blocks: p, then (anchor, momentum) for each
// outer level in level order. Every operation is written rank by rank as a matrix.
std::vector<double> dense_contiguous(const Method& m, std::size_t steps, std::size_t node,
                                     std::vector<OuterLevel> outer) {
  const std::size_t n = m.world_size();
  std::sort(outer.begin(), outer.end(),
            [](const OuterLevel& a, const OuterLevel& b) { return a.level < b.level; });
  const std::size_t blocks = 1 + 2 * outer.size();
  const std::size_t dim = n * blocks;
  Matrix s = zeros(dim);
  Matrix noise = zeros(dim);
  put(noise, 0, 0, m.intra_node_gradients() ? group_mean(iota(n), node) : identity(n));
  const auto levels = m.averaging_levels(steps);
  std::vector<double> out;
  for (std::size_t t = 0; t < steps; ++t) {
    if (!m.world_gradients_at(t)) {
      for (std::size_t i = 0; i < dim; ++i) {
        for (std::size_t j = 0; j < dim; ++j) s[i][j] += noise[i][j];
      }
    }
    if (levels[t]) {
      const std::size_t l = *levels[t];
      const Matrix w = group_mean(iota(n), m.levels()[l].group_size);
      Matrix map = identity(dim);
      // Rows of the new p over the old state, as blocks.
      Matrix p_row = zeros(dim);
      std::optional<std::size_t> slot;
      for (std::size_t k = 0; k < outer.size(); ++k) {
        if (outer[k].level == l) slot = k;
      }
      if (!slot) {
        put(p_row, 0, 0, w);
      } else {
        const double lr = outer[*slot].lr;
        const double mu = outer[*slot].momentum;
        const std::size_t a = 1 + 2 * *slot;
        const std::size_t mo = a + 1;
        // d = a - W p; m' = mu m + d; p' = a - lr (d + mu m')
        Matrix d = zeros(dim);
        put(d, 0, a, identity(n));
        put(d, 0, 0, w, -1.0);
        Matrix mnew = d;
        put(mnew, 0, mo, identity(n), mu);
        put(p_row, 0, a, identity(n));
        for (std::size_t i = 0; i < n; ++i) {
          for (std::size_t j = 0; j < dim; ++j) p_row[i][j] -= lr * (d[i][j] + mu * mnew[i][j]);
        }
        for (std::size_t i = 0; i < n; ++i) map[mo * n + i] = mnew[i];
      }
      for (std::size_t i = 0; i < n; ++i) map[i] = p_row[i];
      for (std::size_t k = 0; k < outer.size(); ++k) {
        if (outer[k].level > l) continue;
        for (std::size_t i = 0; i < n; ++i) map[(1 + 2 * k) * n + i] = p_row[i];
      }
      s = conjugate(map, s);
    }
    out.push_back(spread(s, n));
  }
  return out;
}

// Every rank order the shuffle of a level of group g can produce (GroupAssignment::shuffled):
// inside nodes, of whole nodes, or of all ranks; each is equally likely.
std::vector<std::vector<std::size_t>> all_orders(std::size_t n, std::size_t node, std::size_t g) {
  std::vector<std::vector<std::size_t>> out;
  if (g <= node && node % g == 0) {
    // Every combination of one permutation per node.
    std::vector<std::vector<std::size_t>> partial{{}};
    for (std::size_t b = 0; b < n; b += node) {
      std::vector<std::size_t> perm(node);
      std::iota(perm.begin(), perm.end(), b);
      std::vector<std::vector<std::size_t>> next;
      do {
        for (const auto& p : partial) {
          auto q = p;
          q.insert(q.end(), perm.begin(), perm.end());
          next.push_back(std::move(q));
        }
      } while (std::next_permutation(perm.begin(), perm.end()));
      partial = std::move(next);
    }
    return partial;
  }
  if (g % node == 0) {
    std::vector<std::size_t> nodes = iota(n / node);
    do {
      std::vector<std::size_t> o;
      for (std::size_t k : nodes) {
        for (std::size_t i = 0; i < node; ++i) o.push_back(k * node + i);
      }
      out.push_back(std::move(o));
    } while (std::next_permutation(nodes.begin(), nodes.end()));
    return out;
  }
  std::vector<std::size_t> perm = iota(n);
  do {
    out.push_back(perm);
  } while (std::next_permutation(perm.begin(), perm.end()));
  return out;
}

// The dense reference for shuffled groups: the expected covariance, averaged over every order.
std::vector<double> dense_shuffled(const Method& m, std::size_t steps, std::size_t node) {
  const std::size_t n = m.world_size();
  Matrix s = zeros(n);
  const Matrix noise = m.intra_node_gradients() ? group_mean(iota(n), node) : identity(n);
  std::vector<std::vector<Matrix>> maps;
  for (const auto& l : m.levels()) {
    std::vector<Matrix> ws;
    for (const auto& o : all_orders(n, node, l.group_size))
      ws.push_back(group_mean(o, l.group_size));
    maps.push_back(std::move(ws));
  }
  const auto levels = m.averaging_levels(steps);
  std::vector<double> out;
  for (std::size_t t = 0; t < steps; ++t) {
    if (!m.world_gradients_at(t)) {
      for (std::size_t i = 0; i < n; ++i) {
        for (std::size_t j = 0; j < n; ++j) s[i][j] += noise[i][j];
      }
    }
    if (levels[t]) {
      Matrix sum = zeros(n);
      const auto& ws = maps[*levels[t]];
      for (const Matrix& w : ws) {
        const Matrix c = conjugate(w, s);
        for (std::size_t i = 0; i < n; ++i) {
          for (std::size_t j = 0; j < n; ++j) sum[i][j] += c[i][j] / static_cast<double>(ws.size());
        }
      }
      s = sum;
    }
    out.push_back(spread(s, n));
  }
  return out;
}

// The dense reference for streaming fragments of a one-level world schedule, with a world-level
// Nesterov outer optimizer. Per fragment, state blocks: p, anchor, momentum, result in flight X.
// The period counts from step `origin`: 0 for a hierarchy P:N, the warm-up for local SGD.
std::vector<double> dense_streaming(const Method& m, std::size_t steps, StreamingFragments sf,
                                    OuterLevel u, std::size_t origin = 0) {
  const std::size_t n = m.world_size();
  const std::size_t period = m.levels()[0].period;
  const std::size_t dim = 4 * n;
  const Matrix w = group_mean(iota(n), n);
  std::vector<Matrix> s(sf.fragments, zeros(dim));
  std::vector<double> out;
  for (std::size_t t = 0; t < steps; ++t) {
    double sum = 0.0;
    for (std::size_t f = 0; f < sf.fragments; ++f) {
      if (!m.world_gradients_at(t)) {
        for (std::size_t i = 0; i < n; ++i) s[f][i][i] += 1.0;
      }
      const auto starts_at = [&](std::size_t when) {
        return !m.world_gradients_at(when) && when >= origin &&
               (when - origin) % period == f * (period / sf.fragments);
      };
      const auto start = [&] {
        // d = a - W p; m = mu m + d; X = a - lr (d + mu m)
        Matrix map = identity(dim);
        Matrix d = zeros(dim);
        put(d, 0, 1, identity(n));
        put(d, 0, 0, w, -1.0);
        Matrix mnew = d;
        put(mnew, 0, 2, identity(n), u.momentum);
        Matrix x = zeros(dim);
        put(x, 0, 1, identity(n));
        for (std::size_t i = 0; i < n; ++i) {
          for (std::size_t j = 0; j < dim; ++j)
            x[i][j] -= u.lr * (d[i][j] + u.momentum * mnew[i][j]);
        }
        for (std::size_t i = 0; i < n; ++i) {
          map[2 * n + i] = mnew[i];
          map[3 * n + i] = x[i];
        }
        s[f] = conjugate(map, s[f]);
      };
      const auto apply = [&] {
        // p = (1 - mix) p + mix X; anchor = X
        Matrix map = identity(dim);
        for (std::size_t i = 0; i < n; ++i) {
          std::fill(map[i].begin(), map[i].end(), 0.0);
          map[i][i] = 1.0 - sf.mix;
          map[i][3 * n + i] = sf.mix;
          std::fill(map[n + i].begin(), map[n + i].end(), 0.0);
          map[n + i][3 * n + i] = 1.0;
        }
        s[f] = conjugate(map, s[f]);
      };
      if (sf.delay > 0 && t >= sf.delay && starts_at(t - sf.delay)) apply();
      if (starts_at(t)) {
        start();
        if (sf.delay == 0) apply();
      }
      sum += spread(s[f], n);
    }
    out.push_back(sum / static_cast<double>(sf.fragments));
  }
  return out;
}

// Streaming fragments as one spread per fragment, stepped one by one: each gains `per_step` at
// every step past warm-up, and shrinks by (1 - mix)^2 when a result started `delay` steps
// before, at a step whose phase from `origin` is its turn, arrives. O(steps x F).
std::vector<double> per_fragment(const Method& m, std::size_t steps, StreamingFragments sf,
                                 std::size_t origin, double per_step) {
  const std::size_t period = m.levels()[0].period;
  std::vector<double> spread_of(sf.fragments, 0.0);
  std::vector<double> out;
  for (std::size_t t = 0; t < steps; ++t) {
    double sum = 0.0;
    for (std::size_t f = 0; f < sf.fragments; ++f) {
      if (!m.world_gradients_at(t)) spread_of[f] += per_step;
      if (t >= sf.delay && t - sf.delay >= m.warmup() && t - sf.delay >= origin &&
          (t - sf.delay - origin) % period == f * (period / sf.fragments)) {
        spread_of[f] *= (1.0 - sf.mix) * (1.0 - sf.mix);
      }
      sum += spread_of[f];
    }
    out.push_back(sum / static_cast<double>(sf.fragments));
  }
  return out;
}

void check_equal(const std::vector<double>& got, const std::vector<double>& want) {
  REQUIRE(got.size() == want.size());
  for (std::size_t t = 0; t < got.size(); ++t) {
    INFO("step " << t);
    CHECK(got[t] == doctest::Approx(want[t]).epsilon(1e-12).scale(1.0));
  }
}

}  // namespace

TEST_CASE("consensus: closed forms for synchronous and local SGD") {
  CHECK(consensus(Method::synchronous(64), 100).max == 0.0);
  // Local SGD of period P from step 0: after the averaging at step kP the spread is 0, then
  // (n - 1)/n per step: the mean over whole periods is (n - 1)/n (P - 1)/2.
  for (std::size_t n : {2, 5, 16, 256}) {
    for (std::size_t p : {1, 2, 3, 8}) {
      const auto c = consensus(Method::local_sgd(n, p), 20 * p);
      const double unit = static_cast<double>(n - 1) / static_cast<double>(n);
      CHECK(c.mean == doctest::Approx(unit * static_cast<double>(p - 1) / 2.0));
      CHECK(c.max == doctest::Approx(unit * static_cast<double>(p - 1)));
    }
  }
  // Warm-up steps add nothing; local SGD's period counts from the end of warm-up.
  const auto w = consensus_trace(Method::local_sgd(4, 4, /*warmup=*/3), 8);
  CHECK(w == std::vector<double>{0, 0, 0, 0, 0.75, 1.5, 2.25, 0});
}

TEST_CASE("consensus: contiguous hierarchies equal the dense covariance, rank by rank") {
  const char* texts[] = {"2:2,4:4",          "1:2,3:6",      "2:2,3:4,5:8",
                         "1:3,2:6,4:12",     "3:2,4:4,6:16", "2:4,5:8",
                         "1:2,2:4,3:8,4:16", "7:5",          "1:4,3:8,4:16"};
  for (const char* text : texts) {
    const RuntimeHierarchy h = RuntimeHierarchy::parse(text);
    for (std::size_t warmup : {0, 3}) {
      const Method m = Method::hierarchical(h, warmup);
      INFO(m.name());
      check_equal(consensus_trace(m, 30), dense_contiguous(m, 30, 1, {}));
      // Intra-node gradients for every node size that nests with the groups.
      const std::size_t n = h.world_size();
      for (std::size_t node = 2; node <= n; ++node) {
        if (n % node != 0) continue;
        bool nests = true;
        for (const auto& l : h.levels()) {
          nests = nests && (l.group_size % node == 0 || node % l.group_size == 0);
        }
        if (!nests) continue;
        const Method mi = m.with_intra_node_gradients();
        INFO("node " << node);
        check_equal(consensus_trace(mi, 30, {.ranks_per_node = node}),
                    dense_contiguous(mi, 30, node, {}));
      }
    }
  }
}

TEST_CASE("consensus: outer optimizers on any level equal the dense state, anchors included") {
  const Method m = Method::hierarchical(RuntimeHierarchy::parse("1:2,2:4,4:8"), 2);
  const std::vector<std::vector<OuterLevel>> cases = {
      {{.level = 0, .lr = 0.7, .momentum = 0.9}},
      {{.level = 1, .lr = 1.3, .momentum = 0.5}},
      {{.level = 2, .lr = 0.7, .momentum = 0.9}},
      {{.level = 0, .lr = 0.5, .momentum = 0.2}, {.level = 2, .lr = 0.9, .momentum = 0.6}},
      {{.level = 1, .lr = 0.8, .momentum = 0.3}, {.level = 0, .lr = 1.1, .momentum = 0.0}},
  };
  for (const auto& outer : cases) {
    INFO(outer.size() << " outer levels, first on level " << outer[0].level);
    check_equal(consensus_trace(m, 40, {.outer = outer}), dense_contiguous(m, 40, 1, outer));
  }
  // lr 1, momentum 0 on every level is plain averaging.
  check_equal(consensus_trace(m, 40, {.outer = {{0, 1.0, 0.0}, {1, 1.0, 0.0}, {2, 1.0, 0.0}}}),
              consensus_trace(m, 40));
  // The top level's result is common to the world: its optimizer never changes the spread.
  check_equal(consensus_trace(m, 40, {.outer = {{.level = 2, .lr = 0.7, .momentum = 0.9}}}),
              consensus_trace(m, 40));
  // Below the top it does: a lower level's momentum keeps the groups apart across averagings.
  CHECK(consensus(m, 40, {.outer = {{.level = 0, .lr = 0.7, .momentum = 0.9}}}).mean !=
        doctest::Approx(consensus(m, 40).mean));
}

TEST_CASE("consensus: shuffled groups equal the covariance averaged over every assignment") {
  struct Case {
    const char* hierarchy;
    std::size_t node;
  };
  // Inside nodes, whole nodes, and all ranks (groups that are neither).
  const Case cases[] = {{"1:2,3:4", 2}, {"1:2,2:4,5:8", 4}, {"1:2,2:4,3:8", 2}, {"1:3,4:6", 2},
                        {"1:2,3:6", 3}, {"1:2,2:8", 2},     {"2:2,3:4,4:8", 4}};
  for (const Case& c : cases) {
    for (bool intra : {false, true}) {
      const Method m = Method::hierarchical(RuntimeHierarchy::parse(c.hierarchy), 1)
                           .with_groups(GroupAssignment::shuffled)
                           .with_intra_node_gradients(intra);
      INFO(m.name() << ", node " << c.node);
      check_equal(consensus_trace(m, 24, {.ranks_per_node = c.node}),
                  dense_shuffled(m, 24, c.node));
    }
  }
  // Pairs that change every step mix information across the node: less spread than fixed pairs.
  const Method fixed = Method::hierarchical(RuntimeHierarchy::parse("1:2,8:64"));
  const Method rotated = fixed.with_groups(GroupAssignment::shuffled);
  CHECK(consensus(rotated, 80, {.ranks_per_node = 8}).mean <
        consensus(fixed, 80, {.ranks_per_node = 8}).mean);
}

TEST_CASE("consensus: streaming fragments equal the dense state with results in flight") {
  const Method m = Method::hierarchical(RuntimeHierarchy::parse("8:6"), 2);
  for (std::size_t f : {1, 2, 4, 8}) {
    for (std::size_t delay = 0; delay < 8 / f; ++delay) {
      for (double mix : {1.0, 0.5}) {
        const StreamingFragments sf{.fragments = f, .delay = delay, .mix = mix};
        const OuterLevel u{.level = 0, .lr = 0.7, .momentum = 0.9};
        INFO(f << " fragments, delay " << delay << ", mix " << mix);
        check_equal(consensus_trace(m, 37, {.outer = {u}, .streaming = sf}),
                    dense_streaming(m, 37, sf, u));
      }
    }
  }
  // One fragment, no delay, full mix: plain local SGD.
  check_equal(consensus_trace(m, 37, {.streaming = StreamingFragments{}}), consensus_trace(m, 37));
}

TEST_CASE("consensus: local SGD's fragments count their period from the end of warm-up") {
  // A warm-up of 3 steps, not a multiple of P = 8: fragment f starts at 3 + k P + f P/F.
  const Method local = Method::local_sgd(6, 8, /*warmup=*/3);
  const Method absolute = Method::hierarchical(RuntimeHierarchy::parse("8:6"), 3);
  for (std::size_t f : {1, 2, 4, 8}) {
    for (std::size_t delay = 0; delay < 8 / f; ++delay) {
      for (double mix : {1.0, 0.5}) {
        const StreamingFragments sf{.fragments = f, .delay = delay, .mix = mix};
        const OuterLevel u{.level = 0, .lr = 0.7, .momentum = 0.9};
        INFO(f << " fragments, delay " << delay << ", mix " << mix);
        const auto trace = consensus_trace(local, 37, {.outer = {u}, .streaming = sf});
        check_equal(trace, dense_streaming(local, 37, sf, u, /*origin=*/3));
        // The same fragments counted from step 0 (a hierarchy 8:6) meet at other steps; with
        // F = P a fragment meets at every step, and only which one differs, not the spread.
        check_equal(consensus_trace(absolute, 37, {.outer = {u}, .streaming = sf}),
                    dense_streaming(absolute, 37, sf, u, /*origin=*/0));
        if (f < 8) CHECK(trace != consensus_trace(absolute, 37, {.outer = {u}, .streaming = sf}));
      }
    }
  }
  // One fragment, no delay, full mix: plain local SGD with its warm-up.
  check_equal(consensus_trace(local, 37, {.streaming = StreamingFragments{}}),
              consensus_trace(local, 37));
}

TEST_CASE("consensus: a method's own streaming fragments are modelled, and must agree") {
  const Method local = Method::local_sgd(6, 8, /*warmup=*/3);
  const Method streamed = local.with_streaming(4, /*delay=*/1);
  const StreamingFragments same{.fragments = 4, .delay = 1, .mix = 1.0};
  const OuterLevel plain{.level = 0, .lr = 1.0, .momentum = 0.0};
  // Unset options take the method's F and delay with a full mix.
  check_equal(consensus_trace(streamed, 37), consensus_trace(local, 37, {.streaming = same}));
  check_equal(consensus_trace(streamed, 37), dense_streaming(local, 37, same, plain, 3));
  CHECK(consensus(streamed, 37).mean != doctest::Approx(consensus(local, 37).mean));
  // Options that agree add their mix.
  const StreamingFragments half{.fragments = 4, .delay = 1, .mix = 0.5};
  check_equal(consensus_trace(streamed, 37, {.streaming = half}),
              dense_streaming(local, 37, half, plain, 3));
  // Options that disagree are refused, naming both.
  for (const StreamingFragments other : {StreamingFragments{.fragments = 2, .delay = 1},
                                         StreamingFragments{.fragments = 4, .delay = 0}}) {
    CHECK_THROWS_WITH_AS(
        (void)consensus(streamed, 37, {.streaming = other}),
        ("consensus: the method's streaming (F = 4, delay 1) and "
         "ConsensusOptions::streaming (F = " +
         std::to_string(other.fragments) + ", delay " + std::to_string(other.delay) + ") differ")
            .c_str(),
        std::invalid_argument);
  }
}

TEST_CASE("consensus: streaming over long runs and many fragments, one spread per fragment") {
  // The model keeps a running sum over fragments; the reference steps every fragment.
  struct Case {
    Method m;
    StreamingFragments sf;
    std::size_t origin;
    std::size_t node;
    double per_step;  // one step's spread: (n - 1)/n, or (n - r)/(n r) with intra-node steps
  };
  const Case cases[] = {
      {Method::local_sgd(16, 64, 5), {.fragments = 64, .delay = 0, .mix = 0.3}, 5, 0, 15.0 / 16},
      {Method::local_sgd(16, 64, 7), {.fragments = 16, .delay = 3, .mix = 1.0}, 7, 0, 15.0 / 16},
      {Method::hierarchical(RuntimeHierarchy::parse("48:32"), 9).with_intra_node_gradients(),
       {.fragments = 12, .delay = 2, .mix = 0.8},
       0,
       4,
       28.0 / 128},
  };
  for (const Case& c : cases) {
    INFO(c.m.name() << ", " << c.sf.fragments << " fragments");
    const std::size_t steps = 50'000;
    const auto got = consensus_trace(c.m, steps, {.ranks_per_node = c.node, .streaming = c.sf});
    const auto want = per_fragment(c.m, steps, c.sf, c.origin, c.per_step);
    REQUIRE(got.size() == want.size());
    std::size_t bad = 0;
    for (std::size_t t = 0; t < steps; ++t) {
      if (!(got[t] == doctest::Approx(want[t]).epsilon(1e-12).scale(1.0))) ++bad;
    }
    CHECK(bad == 0);
  }
}

TEST_CASE("consensus: options that do not fit the method are refused with the rule") {
  const Method h = Method::hierarchical(RuntimeHierarchy::parse("2:2,4:8"));
  const auto fails = [](auto&& f, const std::string& text) {
    try {
      f();
      FAIL("no exception");
    } catch (const std::invalid_argument& e) {
      CHECK(std::string(e.what()).find(text) != std::string::npos);
    }
  };
  fails([&] { (void)consensus(h.with_intra_node_gradients(), 8); }, "need the node size");
  fails(
      [&] { (void)consensus(h.with_groups(GroupAssignment::shuffled), 8, {.ranks_per_node = 3}); },
      "does not divide the world of 8");
  const Method six = Method::hierarchical(RuntimeHierarchy::parse("1:2,2:6"));
  fails([&] { (void)consensus(six.with_intra_node_gradients(), 8, {.ranks_per_node = 3}); },
        "a node of 3 ranks does not nest with the groups of 1:2,2:6");
  fails([&] { (void)consensus(h, 8, {.outer = {{.level = 2}}}); }, "has 2 averaging levels");
  fails([&] { (void)consensus(h, 8, {.outer = {{.level = 0, .lr = 0.0}}}); }, "above 0");
  fails([&] { (void)consensus(h, 8, {.outer = {{.level = 0, .lr = 1, .momentum = 1.0}}}); },
        "[0, 1)");
  fails(
      [&] {
        (void)consensus(h, 8, {.outer = {{.level = 1}, {.level = 1}}});
      },
      "two outer optimizers");
  fails(
      [&] {
        (void)consensus(h.with_groups(GroupAssignment::shuffled), 8,
                        {.ranks_per_node = 2, .outer = {{.level = 0}}});
      },
      "needs contiguous groups");
  fails([&] { (void)consensus(h, 8, {.streaming = StreamingFragments{}}); }, "one-level schedule");
  const Method one = Method::local_sgd(8, 6);
  fails([&] { (void)consensus(one, 8, {.streaming = StreamingFragments{.fragments = 4}}); },
        "do not divide the period 6");
  fails([&] { (void)consensus(one.with_streaming(3), 8, {.streaming = StreamingFragments{}}); },
        "the method's streaming (F = 3, delay 0) and ConsensusOptions::streaming (F = 1, "
        "delay 0) differ");
  fails(
      [&] {
        (void)consensus(one, 8, {.streaming = StreamingFragments{.fragments = 3, .delay = 2}});
      },
      "not below P/F = 2");
  fails([&] { (void)consensus(one, 8, {.streaming = StreamingFragments{.mix = 0.0}}); }, "(0, 1]");
}
