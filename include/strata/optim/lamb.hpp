#pragma once
//! \file
//! `strata::optim::Lamb`: LAMB with per-tensor trust ratios, as a shard update.

#include <cstddef>
#include <span>

#include "strata/optim/detail/update_math.hpp"
#include "strata/optim/update.hpp"

namespace strata::optim {

//! LAMB (You et al.): moments as Adam's without weight decay, bias-corrected;
//! `u = m̂/(√v̂ + eps) + weight_decay·p`; per tensor the trust ratio `‖p‖/‖u‖` (1 where either is
//! 0); `p -= lr·ratio·u`. The norms are of whole tensors: `compute` adds this shard's part of
//! ‖p‖² and ‖u‖² (two slots per tensor), the optimizer sums them over the ranks that hold the
//! other parts, and `apply` steps. State: m and v.
//!
//! \code
//! std::vector<double> p{3.0, 4.0}, g{1.0, 1.0}, np = p, st(4, 0.0), nst(4, 0.0), u(2), part(2, 0.0);
//! std::vector<strata::optim::ShardSegment> seg{{.offset = 0, .length = 2, .tensor = 0}};
//! strata::optim::ShardContext<double> c{.params = p, .grads = g, .new_params = np, .state = st,
//!                                       .new_state = nst, .scratch = u, .segments = seg,
//!                                       .num_tensors = 1, .step = 1};
//! strata::optim::Lamb lamb{.lr = 0.1};
//! lamb.compute(c, part);
//! assert(part[0] == 25.0);  // ||p||^2
//! lamb.apply(c, part);      // here the shard is the whole tensor
//! assert(np[0] < 3.0);
//! \endcode
struct Lamb {
  static constexpr std::size_t state_size = 2;
  static constexpr std::size_t norm_slots = 2;  // ||p||^2, ||u||^2
  double lr = 1e-3;
  double beta1 = 0.9;
  double beta2 = 0.999;
  double eps = 1e-6;
  double weight_decay = 0.0;

  template <class T>
  void compute(const ShardContext<T>& c, std::span<double> partials) const {
    const auto s = detail::adam_step<T>(lr, beta1, beta2, eps, weight_decay, c.step);
    const std::size_t n = c.params.size();
    T* m = c.new_state.data();
    T* v = c.new_state.data() + n;
    for (std::size_t i = 0; i < n; ++i) {
      c.scratch[i] = detail::lamb_direction(s, c.params[i], c.grads[i], m[i], v[i]);
    }
    for (const ShardSegment& seg : c.segments) {
      double pp = 0.0, uu = 0.0;
      for (std::size_t i = seg.offset; i < seg.offset + seg.length; ++i) {
        pp += static_cast<double>(c.params[i]) * static_cast<double>(c.params[i]);
        uu += static_cast<double>(c.scratch[i]) * static_cast<double>(c.scratch[i]);
      }
      partials[seg.tensor * norm_slots] += pp;
      partials[seg.tensor * norm_slots + 1] += uu;
    }
  }

  template <class T>
  void apply(const ShardContext<T>& c, std::span<const double> norms) const {
    for (const ShardSegment& seg : c.segments) {
      const double ratio =
          detail::trust_ratio(norms[seg.tensor * norm_slots], norms[seg.tensor * norm_slots + 1]);
      const T step = static_cast<T>(lr * ratio);
      for (std::size_t i = seg.offset; i < seg.offset + seg.length; ++i) {
        c.new_params[i] = c.params[i] - step * c.scratch[i];
      }
    }
  }
};

}  // namespace strata::optim
