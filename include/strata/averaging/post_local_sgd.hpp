#pragma once
//! \file
//! Post-local SGD: the gradient synchronisation that goes with a model averager.

#include <cstddef>
#include <optional>
#include <span>
#include <stdexcept>
#include <string>
#include <type_traits>
#include <vector>

#include "strata/averaging/averager.hpp"
#include "strata/comm/communicator.hpp"
#include "strata/comm/level_comms.hpp"

namespace strata {

//! Where `PostLocalGradientSync::sync` averaged the gradients at a step.
//!
//! \code
//! static_assert(strata::GradientSync::none != strata::GradientSync::world);
//! \endcode
enum class GradientSync { none, node, world };

//! The gradient all-reduce of post-local SGD, called once per step before the optimizer (the
//! averager runs after it). While the averager is in warm-up, gradients are averaged over the
//! whole world: synchronous SGD. Afterwards they are averaged inside each node's group every step
//! when `intra_node` is on, and not at all otherwise. The warm-up and the step counter are the
//! averager's own, read through the reference, so the two cannot disagree.
//!
//! \code
//! #include <strata/comm/local.hpp>
//! strata::LocalWorld(4).run([](strata::LocalComm& comm) {
//!   strata::PeriodicAverager<strata::LocalComm> avg(comm, /*period=*/4, /*warmup=*/1);
//!   strata::PostLocalGradientSync sync(avg, comm, /*ranks_per_node=*/2, /*intra_node=*/true);
//!   std::vector<double> g{double(comm.rank())};
//!   std::vector<std::span<double>> grads{g};
//!   assert(sync.sync(grads) == strata::GradientSync::world && g[0] == 1.5);  // warm-up
//!   std::vector<double> w{0.0};
//!   avg.average(std::span<double>(w));  // step 0 done
//!   g[0] = comm.rank();
//!   assert(sync.sync(grads) == strata::GradientSync::node);
//!   assert(g[0] == (comm.rank() < 2 ? 0.5 : 2.5));
//! });
//! \endcode
template <class Averager>
class PostLocalGradientSync {
 public:
  using Comm = typename Averager::comm_type;

  //! Collective when `intra_node` is on and a node holds more than one rank but not the whole
  //! world: it builds the node communicator.
  PostLocalGradientSync(const Averager& averager, Comm& world, int ranks_per_node, bool intra_node)
      : averager_(&averager), world_(&world), intra_node_(intra_node) {
    if (ranks_per_node <= 0 || world.size() % ranks_per_node != 0) {
      throw std::invalid_argument("PostLocalGradientSync: world size " +
                                  std::to_string(world.size()) + " is not a positive multiple of " +
                                  std::to_string(ranks_per_node) + " ranks per node");
    }
    if (intra_node && ranks_per_node > 1 && ranks_per_node < world.size()) {
      node_.emplace(split_node(world, ranks_per_node));
    } else if (intra_node && ranks_per_node == world.size()) {
      node_is_world_ = true;
    }
  }

  //! Averages the gradients as the step requires; returns which group it averaged over.
  template <comm_value T>
  GradientSync sync(std::span<const std::span<T>> gradients) {
    const GradientSync where = next();
    if (where == GradientSync::none) return where;
    Comm& comm = where == GradientSync::world ? *world_ : *node_;
    detail::fused_average(comm, std::get<detail::PackCache<T>>(caches_), gradients);
    return where;
  }

  template <comm_value T>
  GradientSync sync(const std::vector<std::span<T>>& gradients) {
    return sync(std::span<const std::span<T>>(gradients));
  }

  //! What the next `sync` will do at the averager's current step.
  [[nodiscard]] GradientSync next() const noexcept {
    if (averager_->step() < averager_->schedule().warmup()) return GradientSync::world;
    if (!intra_node_) return GradientSync::none;
    if (node_is_world_) return GradientSync::world;
    return node_ ? GradientSync::node : GradientSync::none;  // one rank per node: nothing to do
  }

 private:
  const Averager* averager_;
  Comm* world_;
  bool intra_node_;
  bool node_is_world_ = false;
  std::optional<Comm> node_;
  detail::PackCaches caches_;
};

}  // namespace strata
