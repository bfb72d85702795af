// The serial model that the sharded optimizer's tests compare against: a problem (tensor sizes,
// world size, every rank's gradient at every step, derived from a hash of the indices so that
// every rank and process can compute every other's), the mean gradient over the ranks, global
// norm clipping, and SGD, Adam (torch.optim.Adam) and LAMB written out element by element in
// double, without any of the library's update code. A small driver runs a ShardedOptimizer on
// one rank of any communicator with the same problem.
#pragma once

#include <strata/optim/sharded_optimizer.hpp>

#include <algorithm>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <optional>
#include <span>
#include <string>
#include <vector>

namespace serial {

using Tensors = std::vector<std::vector<double>>;

// splitmix64 of the mixed indices, as a double in [-1, 1).
inline double unit(std::uint64_t a, std::uint64_t b, std::uint64_t c, std::uint64_t d,
                   std::uint64_t e = 0) {
  std::uint64_t x = 0x9e3779b97f4a7c15ull;
  for (std::uint64_t w : {a, b, c, d, e}) {
    x ^= w + 0x9e3779b97f4a7c15ull + (x << 6) + (x >> 2);
    x += 0x9e3779b97f4a7c15ull;
    x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ull;
    x = (x ^ (x >> 27)) * 0x94d049bb133111ebull;
    x ^= x >> 31;
  }
  return static_cast<double>(x >> 11) * 0x1.0p-52 - 1.0;
}

// Every rank's gradients: element i of tensor t at step s on rank r is a per-element base
// (magnitude 0.5 to 1, sign fixed over the steps, so that no moment cancels to nothing) plus a
// rank-dependent part of at most 0.3.
struct Problem {
  std::vector<std::size_t> sizes;
  std::size_t world = 1;
  std::uint64_t seed = 1;

  [[nodiscard]] double initial(std::size_t t, std::size_t i) const {
    return unit(seed, 0, t, i, 11);
  }
  [[nodiscard]] double grad(std::uint64_t step, std::size_t rank, std::size_t t,
                            std::size_t i) const {
    const double sign = unit(seed, 1, t, i, 12) < 0 ? -1.0 : 1.0;
    const double base = sign * (0.75 + 0.25 * unit(seed, step, t, i, 13));
    return base + 0.3 * unit(seed, step, t, i, 100 + rank);
  }
  [[nodiscard]] std::size_t elements() const {
    std::size_t n = 0;
    for (std::size_t s : sizes) n += s;
    return n;
  }
};

inline Tensors initial_params(const Problem& p) {
  Tensors x(p.sizes.size());
  for (std::size_t t = 0; t < p.sizes.size(); ++t) {
    x[t].resize(p.sizes[t]);
    for (std::size_t i = 0; i < p.sizes[t]; ++i) x[t][i] = p.initial(t, i);
  }
  return x;
}

// Rank `rank`'s gradients at `step`, in the element type of the optimizer under test.
template <class T>
std::vector<std::vector<T>> rank_grads(const Problem& p, std::uint64_t step, std::size_t rank) {
  std::vector<std::vector<T>> g(p.sizes.size());
  for (std::size_t t = 0; t < p.sizes.size(); ++t) {
    g[t].resize(p.sizes[t]);
    for (std::size_t i = 0; i < p.sizes[t]; ++i) g[t][i] = static_cast<T>(p.grad(step, rank, t, i));
  }
  return g;
}

// The mean over the ranks of their gradients as type T rounds them, summed in rank order.
template <class T = double>
Tensors mean_grad(const Problem& p, std::uint64_t step) {
  Tensors g(p.sizes.size());
  for (std::size_t t = 0; t < p.sizes.size(); ++t) {
    g[t].assign(p.sizes[t], 0.0);
    for (std::size_t i = 0; i < p.sizes[t]; ++i) {
      double sum = 0.0;
      for (std::size_t r = 0; r < p.world; ++r) {
        sum += static_cast<double>(static_cast<T>(p.grad(step, r, t, i)));
      }
      g[t][i] = sum / static_cast<double>(p.world);
    }
  }
  return g;
}

inline double norm(const Tensors& x) {
  double sq = 0.0;
  for (const auto& t : x) {
    for (double v : t) sq += v * v;
  }
  return std::sqrt(sq);
}

// PyTorch's clip_grad_norm_: scale by min(1, max_norm / (norm + 1e-6)).
inline double clip(Tensors& g, double max_norm) {
  const double factor = std::min(1.0, max_norm / (norm(g) + 1e-6));
  for (auto& t : g) {
    for (double& v : t) v *= factor;
  }
  return factor;
}

// The updates: `step(params, grads, t)` with t = 1 at the first step.
struct SgdRef {
  double lr = 0.05;
  double weight_decay = 0.0;
  void step(Tensors& p, const Tensors& g, std::uint64_t) {
    for (std::size_t t = 0; t < p.size(); ++t) {
      for (std::size_t i = 0; i < p[t].size(); ++i) {
        p[t][i] -= lr * (g[t][i] + weight_decay * p[t][i]);
      }
    }
  }
};

// torch.optim.Adam, amsgrad off: L2 decay into the gradient, then the bias-corrected step.
struct AdamRef {
  double lr = 0.01, beta1 = 0.9, beta2 = 0.999, eps = 1e-8, weight_decay = 0.0;
  Tensors m{}, v{};
  void step(Tensors& p, const Tensors& g, std::uint64_t k) {
    if (m.empty()) {
      for (const auto& t : p) {
        m.emplace_back(t.size(), 0.0);
        v.emplace_back(t.size(), 0.0);
      }
    }
    const double bc1 = 1.0 - std::pow(beta1, static_cast<double>(k));
    const double bc2 = 1.0 - std::pow(beta2, static_cast<double>(k));
    for (std::size_t t = 0; t < p.size(); ++t) {
      for (std::size_t i = 0; i < p[t].size(); ++i) {
        const double grad = g[t][i] + weight_decay * p[t][i];
        m[t][i] = beta1 * m[t][i] + (1.0 - beta1) * grad;
        v[t][i] = beta2 * v[t][i] + (1.0 - beta2) * grad * grad;
        const double denom = std::sqrt(v[t][i]) / std::sqrt(bc2) + eps;
        p[t][i] -= lr / bc1 * m[t][i] / denom;
      }
    }
  }
};

// LAMB: Adam's moments without decay, bias-corrected; u = m^/(sqrt(v^) + eps) + wd p; per tensor
// p -= lr * (||p|| / ||u||) * u, the ratio 1 where either norm is 0.
struct LambRef {
  double lr = 0.01, beta1 = 0.9, beta2 = 0.999, eps = 1e-6, weight_decay = 0.0;
  Tensors m{}, v{};
  void step(Tensors& p, const Tensors& g, std::uint64_t k) {
    if (m.empty()) {
      for (const auto& t : p) {
        m.emplace_back(t.size(), 0.0);
        v.emplace_back(t.size(), 0.0);
      }
    }
    const double bc1 = 1.0 - std::pow(beta1, static_cast<double>(k));
    const double bc2 = 1.0 - std::pow(beta2, static_cast<double>(k));
    for (std::size_t t = 0; t < p.size(); ++t) {
      std::vector<double> u(p[t].size());
      double pp = 0.0, uu = 0.0;
      for (std::size_t i = 0; i < p[t].size(); ++i) {
        m[t][i] = beta1 * m[t][i] + (1.0 - beta1) * g[t][i];
        v[t][i] = beta2 * v[t][i] + (1.0 - beta2) * g[t][i] * g[t][i];
        u[i] = (m[t][i] / bc1) / (std::sqrt(v[t][i] / bc2) + eps) + weight_decay * p[t][i];
        pp += p[t][i] * p[t][i];
        uu += u[i] * u[i];
      }
      const double ratio = pp > 0.0 && uu > 0.0 ? std::sqrt(pp) / std::sqrt(uu) : 1.0;
      for (std::size_t i = 0; i < p[t].size(); ++i) p[t][i] -= lr * ratio * u[i];
    }
  }
};

// The serial run: parameters after `steps` steps, and the unclipped norm of each step's mean
// gradient. `T` is the element type the ranks' gradients are rounded to before they are summed.
struct Trajectory {
  Tensors params;
  std::vector<double> grad_norms;
};

template <class T = double, class Ref>
Trajectory run(const Problem& p, Ref ref, std::uint64_t steps, std::optional<double> clip_norm,
               std::uint64_t first_step = 1) {
  Trajectory out{initial_params(p), {}};
  for (std::uint64_t s = first_step; s < first_step + steps; ++s) {
    Tensors g = mean_grad<T>(p, s);
    out.grad_norms.push_back(norm(g));
    if (clip_norm) clip(g, *clip_norm);
    ref.step(out.params, g, s - first_step + 1);
  }
  return out;
}

// The largest |a - b| / max(1, |b|) over every element; tensors of the wrong shape give +inf.
template <class T>
double max_error(const std::vector<std::vector<T>>& got, const Tensors& want) {
  if (got.size() != want.size()) return HUGE_VAL;
  double worst = 0.0;
  for (std::size_t t = 0; t < got.size(); ++t) {
    if (got[t].size() != want[t].size()) return HUGE_VAL;
    for (std::size_t i = 0; i < got[t].size(); ++i) {
      const double d = std::abs(static_cast<double>(got[t][i]) - want[t][i]) /
                       std::max(1.0, std::abs(want[t][i]));
      if (!(d <= worst)) worst = d;  // NaN sticks
    }
  }
  return worst;
}

template <class T>
bool bitwise_equal(const std::vector<std::vector<T>>& a, const std::vector<std::vector<T>>& b) {
  if (a.size() != b.size()) return false;
  for (std::size_t t = 0; t < a.size(); ++t) {
    if (a[t].size() != b[t].size()) return false;
    if (!a[t].empty() && std::memcmp(a[t].data(), b[t].data(), a[t].size() * sizeof(T)) != 0) {
      return false;
    }
  }
  return true;
}

template <class T>
std::vector<std::vector<T>> cast(const Tensors& x) {
  std::vector<std::vector<T>> y(x.size());
  for (std::size_t t = 0; t < x.size(); ++t) y[t].assign(x[t].begin(), x[t].end());
  return y;
}

template <class T>
std::vector<std::span<T>> spans(std::vector<std::vector<T>>& x) {
  return std::vector<std::span<T>>(x.begin(), x.end());
}

// What one rank saw in `drive`.
template <class T>
struct RankResult {
  std::vector<std::vector<T>> params;
  std::vector<double> grad_norms;
  std::vector<strata::optim::StepReport> reports;
  std::size_t state_values = 0;
  std::size_t shard_elements = 0;
  std::size_t total_elements = 0;
  std::size_t shards = 0;
  std::size_t num_buckets = 0;
};

// How `drive` hands the gradients over: all at once with `step`, one by one with `grad_ready` in
// the layout's ready order, or one by one in tensor order rotated by the rank (every rank a
// different order, none of them the ready order).
enum class Marking { step, ready_order, rotated };

// Runs `steps` steps of a ShardedOptimizer on this rank of `comm` for problem `p`.
template <class T, class Comm, class Update>
RankResult<T> drive(Comm& comm, const Problem& p, Update update,
                    const strata::optim::ShardedOptions& options, std::uint64_t steps,
                    Marking marking = Marking::step) {
  RankResult<T> out;
  out.params = cast<T>(initial_params(p));
  const auto spans_of = spans(out.params);
  strata::optim::ShardedOptimizer<T, Comm, Update> opt(comm, spans_of, update, options);
  const auto rank = static_cast<std::size_t>(comm.rank());
  for (std::uint64_t s = 1; s <= steps; ++s) {
    const auto g = rank_grads<T>(p, s, rank);
    strata::optim::StepReport report;
    switch (marking) {
      case Marking::step: report = opt.step(g); break;
      case Marking::ready_order:
        for (std::size_t t : opt.layout().ready_order()) opt.grad_ready(t, g[t]);
        report = opt.finish_step();
        break;
      case Marking::rotated:
        for (std::size_t k = 0; k < g.size(); ++k) {
          const std::size_t t = (k + rank) % g.size();
          opt.grad_ready(t, g[t]);
        }
        report = opt.finish_step();
        break;
    }
    out.grad_norms.push_back(report.grad_norm);
    out.reports.push_back(report);
  }
  out.state_values = opt.state_values().size();
  out.shard_elements = opt.layout().shard_elements();
  out.total_elements = opt.layout().total_elements();
  out.shards = opt.layout().shards();
  out.num_buckets = opt.layout().num_buckets();
  return out;
}

}  // namespace serial
