#pragma once
//! \file
//! The `shard_update` concept: what a sharded optimizer asks of an update (SGD, Adam, LAMB, or
//! a user's own), and the view of one rank's shard that it works on.

#include <concepts>
#include <cstddef>
#include <cstdint>
#include <span>

namespace strata::optim {

//! A piece of one tensor inside a rank's shard: `length` elements at `offset` in the shard are
//! elements `[tensor_offset, tensor_offset + length)` of tensor `tensor`. Shard elements that no
//! segment covers are padding (zero parameters, zero gradients).
//!
//! \code
//! strata::optim::ShardSegment s{.offset = 0, .length = 4, .tensor = 2, .tensor_offset = 96};
//! assert(s.tensor == 2 && s.length == 4);
//! \endcode
struct ShardSegment {
  std::size_t offset = 0;
  std::size_t length = 0;
  std::size_t tensor = 0;
  std::size_t tensor_offset = 0;

  friend bool operator==(const ShardSegment&, const ShardSegment&) = default;
};

//! One rank's shard during an update. `new_params` and `new_state` start as copies of `params`
//! and `state`, and the update changes them in place; the optimizer commits them only when every
//! rank's update succeeded. `state` holds `state_size` vectors of the shard's length one after
//! the other (Adam: first moments, then second moments). `grads` is the mean gradient over the
//! world, already clipped. `step` is 1 at the first update, as PyTorch counts it.
//!
//! \code
//! std::vector<double> p{1.0}, g{0.5}, np{1.0};
//! strata::optim::ShardContext<double> c{.params = p, .grads = g, .new_params = np, .step = 1};
//! assert(c.new_params[0] == 1.0 && c.num_tensors == 0);
//! \endcode
template <class T>
struct ShardContext {
  std::span<const T> params{};
  std::span<const T> grads{};
  std::span<T> new_params{};
  std::span<const T> state{};
  std::span<T> new_state{};
  std::span<T> scratch{};  // one element per shard element, for the update's own use
  std::span<const ShardSegment> segments{};
  std::size_t num_tensors = 0;
  std::uint64_t step = 0;
};

//! An update a sharded optimizer can apply to a shard. `U::state_size` is the number of state
//! values per parameter, `U::norm_slots` the number of per-tensor squared norms the update needs
//! between its two phases. `compute(ctx, partials)` runs first and adds this shard's share of
//! each squared norm into `partials` (tensor-major: `partials[tensor * norm_slots + slot]`); the
//! optimizer sums them over the ranks that hold the tensor's other pieces (one small all-reduce
//! of doubles) and calls `apply(ctx, norms)` with the totals. An update without norms
//! (`norm_slots == 0`) does all its work in `compute`, and `apply` gets an empty span.
//!
//! \code
//! #include <strata/optim/sgd.hpp>
//! static_assert(strata::optim::shard_update<strata::optim::Sgd, double>);  // see docs/optimizers.md for a user's own
//! static_assert(!strata::optim::shard_update<int, double>);
//! \endcode
template <class U, class T>
concept shard_update = std::floating_point<T> &&
    requires(U& u, const ShardContext<T>& c, std::span<double> partials,
             std::span<const double> norms) {
  { U::state_size } -> std::convertible_to<std::size_t>;
  { U::norm_slots } -> std::convertible_to<std::size_t>;
  u.compute(c, partials);
  u.apply(c, norms);
};

}  // namespace strata::optim
