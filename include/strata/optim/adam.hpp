#pragma once
//! \file
//! `strata::optim::Adam`: `torch.optim.Adam`, as a shard update.

#include <cstddef>
#include <span>

#include "strata/optim/detail/update_math.hpp"
#include "strata/optim/update.hpp"

namespace strata::optim {

//! `torch.optim.Adam` (amsgrad off): the L2 weight decay is added to the gradient, then
//! `m = b1·m + (1-b1)·g`, `v = b2·v + (1-b2)·g²`, `p -= lr/(1-b1^t) · m / (√v/√(1-b2^t) + eps)`,
//! with PyTorch 1.13's order of operations (later versions compute m with `lerp`: equal up to
//! rounding). State: m and v (two values per parameter).
//!
//! \code
//! #include <cmath>
//! std::vector<double> p{1.0}, g{0.5}, np{1.0}, st{0.0, 0.0}, nst{0.0, 0.0};
//! strata::optim::Adam adam{.lr = 0.1};
//! adam.compute(strata::optim::ShardContext<double>{.params = p, .grads = g, .new_params = np,
//!                                                  .state = st, .new_state = nst, .step = 1}, {});
//! assert(std::abs(np[0] - 0.9) < 1e-6);  // the first step moves by about lr
//! \endcode
struct Adam {
  static constexpr std::size_t state_size = 2;
  static constexpr std::size_t norm_slots = 0;
  double lr = 1e-3;
  double beta1 = 0.9;
  double beta2 = 0.999;
  double eps = 1e-8;
  double weight_decay = 0.0;

  template <class T>
  void compute(const ShardContext<T>& c, std::span<double>) const {
    const auto s = detail::adam_step<T>(lr, beta1, beta2, eps, weight_decay, c.step);
    const std::size_t n = c.params.size();
    T* m = c.new_state.data();
    T* v = c.new_state.data() + n;
    for (std::size_t i = 0; i < n; ++i)
      detail::adam_element(s, c.new_params[i], c.grads[i], m[i], v[i]);
  }
  template <class T>
  void apply(const ShardContext<T>&, std::span<const double>) const {}
};

}  // namespace strata::optim
