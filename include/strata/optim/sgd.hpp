#pragma once
//! \file
//! `strata::optim::Sgd`: plain SGD with L2 weight decay, as a shard update.

#include <cstddef>
#include <span>

#include "strata/optim/update.hpp"

namespace strata::optim {

//! `p -= lr * (g + weight_decay * p)` (`torch.optim.SGD` without momentum). No state, no norms.
//!
//! \code
//! std::vector<double> p{1.0}, g{0.5}, np{1.0};
//! strata::optim::Sgd sgd{.lr = 0.1, .weight_decay = 0.5};
//! sgd.compute(strata::optim::ShardContext<double>{.params = p, .grads = g, .new_params = np, .step = 1}, {});
//! assert(np[0] == 1.0 - 0.1 * (0.5 + 0.5 * 1.0));
//! \endcode
struct Sgd {
  static constexpr std::size_t state_size = 0;
  static constexpr std::size_t norm_slots = 0;
  double lr = 0.01;
  double weight_decay = 0.0;

  template <class T>
  void compute(const ShardContext<T>& c, std::span<double>) const {
    const T lr_t = static_cast<T>(lr), wd = static_cast<T>(weight_decay);
    for (std::size_t i = 0; i < c.params.size(); ++i) {
      const T p = c.params[i];
      c.new_params[i] = p - lr_t * (c.grads[i] + wd * p);
    }
  }
  template <class T>
  void apply(const ShardContext<T>&, std::span<const double>) const {}
};

}  // namespace strata::optim
