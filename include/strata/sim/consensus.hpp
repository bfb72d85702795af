#pragma once
//! \file
//! The consensus model: how far apart a schedule lets the replicas drift, computed exactly.
//!
//! Every rank's parameters take an independent random step of unit variance per coordinate at
//! every training step (a gradient step's noise); averaging in a group replaces its members by
//! their mean. The consensus distance after step t is the expected mean squared distance of the
//! replicas from their average, per coordinate: C(t) = E[(1/n) sum_i (x_i - mean(x))^2]. It is
//! the quantity that bounds the extra error of local and decentralised SGD over synchronous SGD
//! in their analyses, so two schedules with the same C cost the model about the same quality.
//!
//! The expectation is exact (a recursion over the run, no sampling). The covariance of the
//! replicas stays in a space of a few numbers:
//! - contiguous groups: the groups of all levels nest, so the parameters split into orthogonal
//!   subspaces (differences inside the smallest groups, between the smallest groups inside the
//!   next, ..., the world's mean); a drift adds one unit per dimension to each, an averaging of
//!   level l zeroes those below it, and an outer optimizer is a small linear map on each;
//! - shuffled groups: the assignment is drawn afresh at every averaging, uniformly over what
//!   `GroupAssignment::shuffled` allows, which is invariant under permuting ranks inside a node
//!   and permuting nodes; the expected covariance is then a*I + b*B (+ a multiple of the all-ones
//!   matrix, which no averaging changes), B joining the ranks of a node, and each averaging's
//!   expected effect on (a, b) is a closed form.

#include <algorithm>
#include <cmath>
#include <cstddef>
#include <optional>
#include <stdexcept>
#include <string>
#include <vector>

#include "strata/sim/method.hpp"

namespace strata::sim {

//! An outer optimizer on one level (Nesterov momentum on the pseudo-gradient): at an averaging of
//! level `level`, with a its anchor and m its momentum, `d = a - mean(p)`, `m = momentum*m + d`,
//! `p = a - lr*(d + momentum*m)`, and every anchor at or below the level becomes p. `lr = 1`,
//! `momentum = 0` is plain averaging.
//!
//! \code
//! const strata::sim::OuterLevel diloco{.level = 0, .lr = 0.7, .momentum = 0.9};
//! assert(diloco.level == 0);
//! \endcode
struct OuterLevel {
  std::size_t level = 0;
  double lr = 1.0;
  double momentum = 0.0;
};

//! Streaming fragments of a one-level schedule with period P: F contiguous fragments; fragment f
//! synchronises at the steps t (not in warm-up) with `t % P == f * (P / F)` (local SGD:
//! `(t - warm-up) % P`, its period counting from the end of warm-up, as `StreamingAverager` with
//! `StreamingOptions::from_warmup`), and its result is mixed in `delay` steps later as
//! `p = (1 - mix) * p + mix * X`. Requires F | P, delay < P / F and 0 < mix <= 1.
//!
//! \code
//! const strata::sim::StreamingFragments s{.fragments = 4, .delay = 1, .mix = 0.5};
//! assert(s.fragments == 4);
//! \endcode
struct StreamingFragments {
  std::size_t fragments = 1;
  std::size_t delay = 0;
  double mix = 1.0;
};

//! What the model needs beyond the method. `ranks_per_node` is required with intra-node
//! gradients (the node's mean step is shared) and with shuffled groups (the node decides how
//! groups are drawn). `streaming` unset takes the method's own fragments and delay
//! (`Method::with_streaming`) with mix 1; set, it adds the mix, and its fragment count and delay
//! must then be the method's, when the method has streaming.
//!
//! \code
//! const strata::sim::ConsensusOptions o{.ranks_per_node = 8};
//! assert(o.outer.empty() && !o.streaming);
//! \endcode
struct ConsensusOptions {
  std::size_t ranks_per_node = 0;
  std::vector<OuterLevel> outer{};
  std::optional<StreamingFragments> streaming{};
};

//! The expected consensus distance after each step, averaged over a run, and its largest value.
//!
//! \code
//! strata::sim::Consensus c;
//! assert(c.mean == 0.0 && c.max == 0.0);
//! \endcode
struct Consensus {
  double mean = 0.0;
  double max = 0.0;
};

}  // namespace strata::sim

namespace strata::detail {

// The covariance of the replicas under contiguous groups, one small symmetric matrix per
// subspace. A subspace's state holds the parameters and, for each level with an outer optimizer,
// its anchor and momentum: d = 1 + 2 * (levels with an outer optimizer).
class NestedConsensus {
 public:
  NestedConsensus(const sim::Method& m, const sim::ConsensusOptions& o) : world_(m.world_size()) {
    const auto levels = m.levels();
    std::vector<std::size_t> chain{1};
    for (const LevelSpec& l : levels) chain.push_back(l.group_size);
    if (m.intra_node_gradients()) chain.push_back(o.ranks_per_node);
    chain.push_back(world_);
    std::sort(chain.begin(), chain.end());
    chain.erase(std::unique(chain.begin(), chain.end()), chain.end());
    for (std::size_t k = 1; k < chain.size(); ++k) {
      if (chain[k] % chain[k - 1] != 0) {
        throw std::invalid_argument(
            "consensus: a node of " + std::to_string(o.ranks_per_node) +
            " ranks does not nest with the groups of " + levels_text(levels) +
            " (each group size must divide the next, the node size included)");
      }
    }
    // Subspace j (j < chain.size() - 1): constant inside blocks of chain[j], varying between
    // those blocks inside blocks of chain[j + 1]; the last block is the world, whose mean is
    // not a distance and is not tracked.
    subspaces_ = chain.size() - 1;
    for (std::size_t j = 0; j < subspaces_; ++j) {
      dims_.push_back(static_cast<double>(world_ / chain[j] - world_ / chain[j + 1]));
    }
    const auto index_of = [&](std::size_t g) {
      return static_cast<std::size_t>(std::find(chain.begin(), chain.end(), g) - chain.begin());
    };
    for (const LevelSpec& l : levels) level_block_.push_back(index_of(l.group_size));
    noise_from_ = m.intra_node_gradients() ? index_of(o.ranks_per_node) : 0;

    outer_slot_.assign(levels.size(), none);
    std::vector<sim::OuterLevel> outer = o.outer;
    std::sort(outer.begin(), outer.end(),
              [](const sim::OuterLevel& a, const sim::OuterLevel& b) { return a.level < b.level; });
    for (const sim::OuterLevel& u : outer) {
      outer_slot_[u.level] = outer_.size();
      outer_.push_back(u);
    }
    dim_ = 1 + 2 * outer_.size();
    cov_.assign(subspaces_ * dim_ * dim_, 0.0);
    // One map per (level, subspace), built once: an averaging is then S <- M S M^T.
    maps_.resize(levels.size() * subspaces_);
    for (std::size_t l = 0; l < levels.size(); ++l) {
      for (std::size_t j = 0; j < subspaces_; ++j) maps_[l * subspaces_ + j] = sync_map(l, j);
    }
  }

  void drift() {
    for (std::size_t j = noise_from_; j < subspaces_; ++j) at(j, 0, 0) += 1.0;
  }

  void average(std::size_t level) {
    std::vector<double> tmp(dim_ * dim_);
    for (std::size_t j = 0; j < subspaces_; ++j) {
      const std::vector<double>& m = maps_[level * subspaces_ + j];
      double* s = &cov_[j * dim_ * dim_];
      // tmp = M S, then S = tmp M^T
      for (std::size_t r = 0; r < dim_; ++r) {
        for (std::size_t c = 0; c < dim_; ++c) {
          double v = 0.0;
          for (std::size_t k = 0; k < dim_; ++k) v += m[r * dim_ + k] * s[k * dim_ + c];
          tmp[r * dim_ + c] = v;
        }
      }
      for (std::size_t r = 0; r < dim_; ++r) {
        for (std::size_t c = 0; c < dim_; ++c) {
          double v = 0.0;
          for (std::size_t k = 0; k < dim_; ++k) v += tmp[r * dim_ + k] * m[c * dim_ + k];
          s[r * dim_ + c] = v;
        }
      }
    }
  }

  [[nodiscard]] double distance() const {
    double sum = 0.0;
    for (std::size_t j = 0; j < subspaces_; ++j) sum += dims_[j] * cov_[j * dim_ * dim_];
    return sum / static_cast<double>(world_);
  }

 private:
  static constexpr std::size_t none = static_cast<std::size_t>(-1);

  static std::string levels_text(std::span<const LevelSpec> levels) {
    std::string s;
    for (const LevelSpec& l : levels) {
      if (!s.empty()) s += ',';
      s += std::to_string(l.period) + ':' + std::to_string(l.group_size);
    }
    return s;
  }

  double& at(std::size_t j, std::size_t r, std::size_t c) {
    return cov_[(j * dim_ + r) * dim_ + c];
  }

  // The linear map of an averaging of `level` on subspace j. State: p, then (anchor, momentum)
  // per outer slot.
  [[nodiscard]] std::vector<double> sync_map(std::size_t level, std::size_t j) const {
    std::vector<double> m(dim_ * dim_, 0.0);
    const auto set = [&](std::size_t r, std::size_t c, double v) { m[r * dim_ + c] = v; };
    // The group mean keeps this subspace when the level's groups are at least its blocks' parents.
    const double kept = j >= level_block_[level] ? 1.0 : 0.0;
    const std::size_t slot = outer_slot_[level];
    // Rows of the new p, as coefficients over the old state.
    std::vector<double> p_row(dim_, 0.0);
    for (std::size_t k = 0; k < dim_; ++k) set(k, k, 1.0);  // untouched entries keep their value
    if (slot == none) {
      p_row[0] = kept;
    } else {
      const sim::OuterLevel& u = outer_[slot];
      const std::size_t a = 1 + 2 * slot;
      const std::size_t mo = a + 1;
      // d = a - kept p; m' = mu m + d; p' = a - lr (d + mu m') = a - lr ((1 + mu) d + mu^2 m)
      std::vector<double> d_row(dim_, 0.0);
      d_row[a] = 1.0;
      d_row[0] = -kept;
      std::vector<double> m_row = d_row;
      m_row[mo] += u.momentum;
      for (std::size_t k = 0; k < dim_; ++k) {
        p_row[k] = (k == a ? 1.0 : 0.0) - u.lr * (d_row[k] + u.momentum * m_row[k]);
      }
      for (std::size_t k = 0; k < dim_; ++k) set(mo, k, m_row[k]);
    }
    for (std::size_t k = 0; k < dim_; ++k) set(0, k, p_row[k]);
    // Every anchor at or below the level follows the new parameters.
    for (std::size_t l = 0; l <= level; ++l) {
      if (outer_slot_[l] == none) continue;
      for (std::size_t k = 0; k < dim_; ++k) set(1 + 2 * outer_slot_[l], k, p_row[k]);
    }
    return m;
  }

  std::size_t world_;
  std::size_t subspaces_ = 0;
  std::vector<double> dims_;
  std::vector<std::size_t> level_block_;
  std::size_t noise_from_ = 0;
  std::vector<std::size_t> outer_slot_;
  std::vector<sim::OuterLevel> outer_;
  std::size_t dim_ = 1;
  std::vector<double> cov_;
  std::vector<std::vector<double>> maps_;
};

// 0 when nothing is counted: the ratios below are probabilities of pairs that may not exist.
inline double consensus_share(double num, double den) { return num == 0.0 ? 0.0 : num / den; }

// The expected covariance a*I + b*B under shuffled groups (plus a multiple of the all-ones
// matrix, which averaging keeps and the distance ignores).
class ShuffledConsensus {
 public:
  ShuffledConsensus(const sim::Method& m, std::size_t ranks_per_node)
      : n_(m.world_size()), r_(ranks_per_node), intra_(m.intra_node_gradients()) {
    for (const LevelSpec& l : m.levels()) {
      maps_.push_back(level_map(static_cast<double>(l.group_size), l.group_size));
    }
  }

  void drift() {
    if (intra_) {
      b_ += 1.0 / static_cast<double>(r_);  // each rank takes its node's mean step: cov B / r
    } else {
      a_ += 1.0;
    }
  }

  void average(std::size_t level) {
    const Map& m = maps_[level];
    const double a = m.aa * a_ + m.ab * b_;
    const double b = m.ba * a_ + m.bb * b_;
    a_ = a;
    b_ = b;
  }

  [[nodiscard]] double distance() const {
    const double n = static_cast<double>(n_);
    const double r = static_cast<double>(r_);
    // tr((I - J/n)(aI + bB)) / n
    return (a_ * (n - 1.0) + b_ * (n - r)) / n;
  }

 private:
  // (a, b) -> (aa a + ab b, ba a + bb b)
  struct Map {
    double aa = 1, ab = 0, ba = 0, bb = 1;
  };

  // E[W S W] for S = a I + b B, W the averaging matrix of a random assignment; W I W = W.
  [[nodiscard]] Map level_map(double g, std::size_t gi) const {
    const double n = static_cast<double>(n_);
    const double r = static_cast<double>(r_);
    Map m;
    if (gi == 1) return m;
    if (gi <= r_ && r_ % gi == 0) {
      // Groups inside nodes, ranks shuffled inside each node: W B W = B, and
      // E[W] = (1/g - c) I + c B with c = P(same group | same node) / g.
      const double c = consensus_share(g - 1.0, (r - 1.0) * g);
      m.aa = 1.0 / g - c;
      m.ab = 0.0;
      m.ba = c;
      m.bb = 1.0;
    } else if (gi % r_ == 0) {
      // Groups of whole nodes, nodes shuffled: W B W = r W, and
      // E[W] = (1 - q)/g B + q/g J with q = P(two distinct nodes share a group).
      const double nodes = n / r;
      const double q = consensus_share(g / r - 1.0, nodes - 1.0);
      m.aa = 0.0;
      m.ab = 0.0;
      m.ba = (1.0 - q) / g;
      m.bb = r * (1.0 - q) / g;
    } else {
      // Any rank with any: E[W] = (1/g - u) I + u J with u = (g - 1) / ((n - 1) g), and
      // E[W B W] = x I + y B + z J from the entries of W B W counted over the random groups.
      const double u = (g - 1.0) / ((n - 1.0) * g);
      const double diag = (g + g * (g - 1.0) * (r - 1.0) / (n - 1.0)) / (g * g);
      const auto off = [&](double s) {
        // Same-node ordered pairs among the n - 2 ranks other than i and j.
        const double q = s == 1.0 ? (r - 2.0) * (r - 3.0) + (n - r) * (r - 1.0)
                                  : 2.0 * (r - 1.0) * (r - 2.0) + (n - 2.0 * r) * (r - 1.0);
        const double pair = consensus_share(q, (n - 2.0) * (n - 3.0));
        const double one = consensus_share(r - 1.0 - s, n - 2.0);
        const double p = (g - 1.0) / (n - 1.0);  // j in i's group
        const double together = g + 2.0 * s + 4.0 * (g - 2.0) * one + (g - 2.0) * (g - 3.0) * pair;
        const double apart = s + 2.0 * (g - 1.0) * one + (g - 1.0) * (g - 1.0) * pair;
        return (p * together + (1.0 - p) * apart) / (g * g);
      };
      const double same = r_ > 1 ? off(1.0) : 0.0;
      const double other = off(0.0);
      m.aa = 1.0 / g - u;
      m.ab = diag - same;
      m.ba = 0.0;
      m.bb = same - other;
    }
    return m;
  }

  std::size_t n_;
  std::size_t r_;
  bool intra_;
  double a_ = 0.0;
  double b_ = 0.0;
  std::vector<Map> maps_;
};

inline void check_consensus_options(const sim::Method& m, const sim::ConsensusOptions& o) {
  const auto levels = m.levels();
  const bool needs_node = m.intra_node_gradients() || m.groups() == sim::GroupAssignment::shuffled;
  if (needs_node) {
    if (o.ranks_per_node == 0) {
      throw std::invalid_argument(
          "consensus: intra-node gradients and shuffled groups need the node size "
          "(sim::ConsensusOptions::ranks_per_node is 0)");
    }
    if (m.world_size() % o.ranks_per_node != 0) {
      throw std::invalid_argument("consensus: a node of " + std::to_string(o.ranks_per_node) +
                                  " ranks does not divide the world of " +
                                  std::to_string(m.world_size()));
    }
  }
  for (std::size_t i = 0; i < o.outer.size(); ++i) {
    const sim::OuterLevel& u = o.outer[i];
    if (u.level >= levels.size()) {
      throw std::invalid_argument("consensus: an outer optimizer on level " +
                                  std::to_string(u.level) + " but the method has " +
                                  std::to_string(levels.size()) + " averaging levels");
    }
    if (!(std::isfinite(u.lr) && u.lr > 0.0)) {
      throw std::invalid_argument("consensus: the outer learning rate of level " +
                                  std::to_string(u.level) + " must be finite and above 0");
    }
    if (!(u.momentum >= 0.0 && u.momentum < 1.0)) {
      throw std::invalid_argument("consensus: the outer momentum of level " +
                                  std::to_string(u.level) + " must be in [0, 1)");
    }
    for (std::size_t k = 0; k < i; ++k) {
      if (o.outer[k].level == u.level) {
        throw std::invalid_argument("consensus: level " + std::to_string(u.level) +
                                    " has two outer optimizers");
      }
    }
    // The top level's result is the same on every rank whatever the optimizer, so it never
    // changes the distance; below it the anchors belong to groups, which shuffling dissolves.
    if (m.groups() == sim::GroupAssignment::shuffled && u.level + 1 < levels.size()) {
      throw std::invalid_argument(
          "consensus: an outer optimizer below the top level needs contiguous groups (its "
          "anchor and momentum belong to a group, and shuffled groups change at every averaging)");
    }
  }
  if (o.streaming) {
    const sim::StreamingFragments& s = *o.streaming;
    if (levels.size() != 1) {
      throw std::invalid_argument(
          "consensus: streaming fragments need a one-level schedule (local SGD or P:N), not " +
          std::to_string(levels.size()) + " levels");
    }
    const std::size_t p = levels[0].period;
    if (s.fragments == 0 || p % s.fragments != 0) {
      throw std::invalid_argument("consensus: " + std::to_string(s.fragments) +
                                  " fragments do not divide the period " + std::to_string(p));
    }
    if (s.delay >= p / s.fragments) {
      throw std::invalid_argument("consensus: a delay of " + std::to_string(s.delay) +
                                  " steps is not below P/F = " + std::to_string(p / s.fragments));
    }
    if (!(s.mix > 0.0 && s.mix <= 1.0)) {
      throw std::invalid_argument("consensus: the mix must be in (0, 1]");
    }
    if (m.streaming() && (s.fragments != m.fragments() || s.delay != m.fragment_delay())) {
      throw std::invalid_argument(
          "consensus: the method's streaming (F = " + std::to_string(m.fragments()) + ", delay " +
          std::to_string(m.fragment_delay()) + ") and ConsensusOptions::streaming (F = " +
          std::to_string(s.fragments) + ", delay " + std::to_string(s.delay) + ") differ");
    }
  }
}

// The fragments the model runs: the options' (checked to agree with the method's), else the
// method's own with a full mix.
inline std::optional<sim::StreamingFragments> consensus_streaming(const sim::Method& m,
                                                                  const sim::ConsensusOptions& o) {
  if (o.streaming || !m.streaming()) return o.streaming;
  return sim::StreamingFragments{m.fragments(), m.fragment_delay(), 1.0};
}

// Calls `out(step, distance)` for every step of the run.
template <class Out>
void consensus_run(const sim::Method& m, std::size_t steps, const sim::ConsensusOptions& o,
                   Out&& out) {
  check_consensus_options(m, o);
  if (m.kind() == sim::MethodKind::synchronous) {
    for (std::size_t t = 0; t < steps; ++t) out(t, 0.0);
    return;
  }
  if (const std::optional<sim::StreamingFragments> streaming = consensus_streaming(m, o)) {
    // The distance is the mean over fragments (their sizes differ by one element at most:
    // weights 1/F). A fragment's result X is the same on every rank (one level, the world), so
    // whatever the outer optimizer, its arrival only scales that fragment's spread by
    // (1 - mix)^2; between arrivals every fragment gains the same spread per step. So each
    // fragment is one number, its spread at its last arrival and the drift count then, and the
    // sum over fragments is kept running: a step costs O(1), an arrival O(1), and a full cycle
    // of F arrivals resums the bases so that rounding cannot build up over a long run.
    const sim::StreamingFragments& s = *streaming;
    const std::size_t frags = s.fragments;
    const std::size_t p = m.levels()[0].period;
    const std::size_t stride = p / frags;
    // Local SGD counts its period from the end of warm-up, a hierarchy P:N from step 0.
    const std::size_t origin = m.kind() == sim::MethodKind::local ? m.warmup() : 0;
    sim::ConsensusOptions plain = o;
    plain.outer.clear();
    plain.streaming.reset();
    NestedConsensus unit(m, plain);  // also refuses a node that does not nest with the groups
    unit.drift();
    const double per_step = unit.distance();
    const double keep = (1.0 - s.mix) * (1.0 - s.mix);
    std::vector<double> base(frags, 0.0);
    std::vector<std::size_t> base_drifts(frags, 0);
    double base_sum = 0.0;
    std::size_t base_drifts_sum = 0;
    std::size_t drifts = 0;
    for (std::size_t t = 0; t < steps; ++t) {
      if (!m.world_gradients_at(t)) ++drifts;
      // The result started at t - delay arrives now.
      if (t >= s.delay && !m.world_gradients_at(t - s.delay)) {
        const std::size_t phase = (t - s.delay - origin) % p;
        if (phase % stride == 0) {
          const std::size_t f = phase / stride;
          const double next =
              keep * (base[f] + per_step * static_cast<double>(drifts - base_drifts[f]));
          base_sum += next - base[f];
          base_drifts_sum += drifts - base_drifts[f];
          base[f] = next;
          base_drifts[f] = drifts;
          if (f + 1 == frags) {
            base_sum = 0.0;
            for (const double b : base) base_sum += b;
          }
        }
      }
      const std::size_t pending = frags * drifts - base_drifts_sum;
      out(t, (base_sum + per_step * static_cast<double>(pending)) / static_cast<double>(frags));
    }
    return;
  }
  const auto run = [&](auto& model) {
    std::vector<std::optional<std::size_t>> levels(std::min<std::size_t>(steps, 4096));
    for (std::size_t first = 0; first < steps; first += levels.size()) {
      const std::size_t count = std::min(levels.size(), steps - first);
      m.averaging_levels(first, std::span(levels.data(), count));
      for (std::size_t i = 0; i < count; ++i) {
        const std::size_t t = first + i;
        if (!m.world_gradients_at(t)) model.drift();
        if (levels[i]) model.average(*levels[i]);
        out(t, model.distance());
      }
    }
  };
  if (m.groups() == sim::GroupAssignment::shuffled) {
    ShuffledConsensus model(m, o.ranks_per_node);
    run(model);
  } else {
    NestedConsensus model(m, o);
    run(model);
  }
}

}  // namespace strata::detail

namespace strata::sim {

//! The expected consensus distance after each of the first `steps` steps of `m` (drift, then the
//! step's averaging), per coordinate, for a unit random step per rank and step. Synchronous SGD
//! and warm-up steps add no spread (gradients are averaged over the world); intra-node gradients
//! share the node's mean step. A method with streaming fragments (`Method::with_streaming`) is
//! modelled with them (`ConsensusOptions::streaming`). Throws `std::invalid_argument` for options
//! that do not fit `m`, streaming fragments or a delay other than the method's included.
//!
//! \code
//! const auto local = strata::sim::Method::local_sgd(/*world=*/4, /*period=*/2);
//! const auto c = strata::sim::consensus_trace(local, 4);
//! // averaged at steps 0 and 2; one step apart, 3/4 of a unit of spread per coordinate
//! assert(c.size() == 4 && c[0] == 0.0 && c[1] == 0.75 && c[2] == 0.0 && c[3] == 0.75);
//! \endcode
[[nodiscard]] inline std::vector<double> consensus_trace(const Method& m, std::size_t steps,
                                                         const ConsensusOptions& o = {}) {
  std::vector<double> out(steps);
  strata::detail::consensus_run(m, steps, o, [&](std::size_t t, double c) { out[t] = c; });
  return out;
}

//! `consensus_trace`'s mean and maximum over the run, without storing it.
//!
//! \code
//! using strata::sim::Method;
//! const auto h = Method::hierarchical(strata::RuntimeHierarchy::parse("2:8,4:64,8:256"));
//! const auto c = strata::sim::consensus(h, 1000);
//! assert(c.mean < strata::sim::consensus(Method::local_sgd(256, 8), 1000).mean);
//! assert(strata::sim::consensus(Method::synchronous(256), 1000).max == 0.0);
//! \endcode
[[nodiscard]] inline Consensus consensus(const Method& m, std::size_t steps,
                                         const ConsensusOptions& o = {}) {
  Consensus c;
  double sum = 0.0;
  strata::detail::consensus_run(m, steps, o, [&](std::size_t, double v) {
    sum += v;
    c.max = std::max(c.max, v);
  });
  c.mean = steps == 0 ? 0.0 : sum / static_cast<double>(steps);
  return c;
}

}  // namespace strata::sim
