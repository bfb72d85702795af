#pragma once
//! \file
//! `HierarchicalAllReduce`: the all-reduce of a world of N nodes of G ranks as a reduce-scatter
//! inside each node, an all-reduce of each 1/G shard among the ranks with the same local index
//! across nodes, and an all-gather inside each node.
//!
//! Bytes one rank sends for c elements of s bytes, with ring algorithms at every step (what NCCL
//! and the usual MPI libraries run for large buffers):
//!
//! | schedule | step | link | bytes sent per rank |
//! | --- | --- | --- | --- |
//! | flat ring all-reduce over W = N·G ranks | reduce-scatter + all-gather | the ring's edges; G of every W cross a node boundary when N > 1 | 2(W-1)/W · c·s, of which the node's G ranks push 2(W-1)/W · c·s through the node's one outgoing ring edge |
//! | hierarchical | reduce-scatter in the node | intra | (G-1)/G · c·s |
//! | | all-reduce of the shard across nodes | inter | 2(N-1)/N · c·s/G |
//! | | all-gather in the node | intra | (G-1)/G · c·s |
//!
//! Across nodes every rank sends 2(N-1)/N · c·s/G: the G ranks of a node together send about
//! what the flat ring's one edge out of the node carries, but over G links in parallel instead
//! of one, and in 2(N-1) steps instead of 2(W-1) (the chunks are c/W in both). The price is two
//! extra steps inside the node. `hierarchical_all_reduce_traffic` and `flat_all_reduce_traffic`
//! give these numbers for one rank.

#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <span>
#include <string>
#include <type_traits>
#include <vector>

#include "strata/comm/communicator.hpp"
#include "strata/comm/level_comms.hpp"
#include "strata/comm/link_traffic.hpp"
#include "strata/error.hpp"
#include "strata/hierarchy/topology.hpp"

namespace strata {

//! Elements one rank sends over each kind of link in a ring all-reduce of `elements` over the
//! whole world of `topo`: 2(W-1)/W of the buffer, in 2(W-1) messages. A ring that visits the
//! ranks in order crosses a node boundary on one edge per node, so a rank whose successor is on
//! another node (the last local rank) sends all of it across; the others send it inside the
//! node.
//!
//! \code
//! const strata::NodeTopology topo(8, 4);
//! auto last = strata::flat_all_reduce_traffic(800, topo, 3), first = strata::flat_all_reduce_traffic(800, topo, 0);
//! assert(last.inter == 1400 && last.intra == 0 && first.intra == 1400);
//! \endcode
inline LinkTraffic flat_all_reduce_traffic(std::size_t elements, const NodeTopology& topo,
                                           std::size_t rank) {
  LinkTraffic t;
  const std::size_t w = topo.world_size();
  if (w == 1) return t;
  const std::size_t sent = 2 * (w - 1) * elements / w;
  const bool crosses = topo.num_nodes() > 1 && topo.local_rank(rank) + 1 == topo.ranks_per_node();
  (crosses ? t.inter : t.intra) = sent;
  (crosses ? t.inter_messages : t.intra_messages) = 2 * (w - 1);
  return t;
}

//! Elements one rank sends over each kind of link in `HierarchicalAllReduce` of `elements`
//! (rounded up to a multiple of the node size, as the schedule pads): (G-1)/G twice inside the
//! node, 2(N-1)/N of the 1/G shard across nodes, ring algorithms at every step.
//!
//! \code
//! auto t = strata::hierarchical_all_reduce_traffic(800, strata::NodeTopology(8, 4));
//! assert(t.intra == 1200 && t.inter == 200);  // 2*(3/4)*800, 2*(1/2)*200
//! \endcode
inline LinkTraffic hierarchical_all_reduce_traffic(std::size_t elements, const NodeTopology& topo) {
  LinkTraffic t;
  const std::size_t g = topo.ranks_per_node(), n = topo.num_nodes();
  const std::size_t shard = (elements + g - 1) / g;
  t.intra = 2 * (g - 1) * shard;
  t.intra_messages = 2 * (g - 1);
  t.inter = n > 1 ? 2 * (n - 1) * shard / n : 0;
  t.inter_messages = n > 1 ? 2 * (n - 1) : 0;
  return t;
}

//! The all-reduce of a world laid out as `NodeTopology` (G ranks per node, N nodes) in three
//! steps: reduce-scatter inside the node, all-reduce of each shard over the ranks with the same
//! local index (`split_strided`), all-gather inside the node. Its result equals the flat
//! all-reduce up to rounding (the sums are associated differently); it is bitwise identical on
//! every rank. Construction is collective over `world` (two splits) and throws
//! `strata::usage_error` on every rank when the topology's world size is not the communicator's.
//!
//! The sharded steps are public too: `reduce_scatter` leaves every rank with its local index's
//! shard reduced over the whole world (the ranks with one local index hold the same shard), and
//! `all_gather` puts the node's shards back together; a sharded optimizer updates the shard in
//! between.
//!
//! Buffers whose length is not a multiple of G are padded through a staging buffer; `all_reduce`
//! always works on a copy, so a failure in any of the three steps leaves the caller's buffer as
//! it was on every rank where the failure is seen. A failure in the last step (the node's
//! all-gather) is seen only by that node: ranks of other nodes may already hold the result.
//!
//! \code
//! #include <strata/comm/local.hpp>
//! strata::LocalWorld(4).run([](strata::LocalComm& world) {
//!   strata::HierarchicalAllReduce<strata::LocalComm> hier(world, strata::NodeTopology(4, 2));
//!   std::vector<double> v{1.0 * world.rank(), 1.0, 2.0};
//!   hier.all_reduce(std::span<double>(v), strata::ReduceOp::sum);
//!   assert(v[0] == 6 && v[1] == 4 && v[2] == 8);
//! });
//! \endcode
template <communicator Comm>
class HierarchicalAllReduce {
  static_assert(!device_memory_v<Comm>,
                "HierarchicalAllReduce: this communicator's buffers are device memory; the "
                "staging buffers of this schedule are host memory");

 public:
  //! Collective over `world`: splits the node and strided communicators (see the class comment).
  HierarchicalAllReduce(Comm& world, NodeTopology topology)
      : topology_(checked(world, topology)),
        node_(split_node(world, static_cast<int>(topology.ranks_per_node()))),
        across_(split_strided(world, static_cast<int>(topology.ranks_per_node()))) {}

  HierarchicalAllReduce(HierarchicalAllReduce&&) noexcept = default;
  HierarchicalAllReduce& operator=(HierarchicalAllReduce&&) noexcept = default;

  [[nodiscard]] const NodeTopology& topology() const noexcept { return topology_; }
  //! The world's size (for code written against a communicator's `size()`).
  [[nodiscard]] int size() const noexcept { return static_cast<int>(topology_.world_size()); }
  //! This rank's node.
  [[nodiscard]] Comm& node() noexcept { return node_; }
  //! The ranks with this rank's local index, one per node, ordered by node.
  [[nodiscard]] Comm& across() noexcept { return across_; }

  //! In place: every rank ends with the reduction of every rank's buffer. `ReduceOp::average`
  //! sums in both steps and divides by the world size once (truncating for integers, as the flat
  //! all-reduce does).
  template <comm_value T>
  void all_reduce(std::span<T> buf, ReduceOp op) {
    const std::size_t g = topology_.ranks_per_node();
    const std::size_t shard = (buf.size() + g - 1) / g;
    std::vector<T>& staging = staging_for<T>();
    staging.assign(shard * g, T{});  // padding is reduced but never read back
    std::copy(buf.begin(), buf.end(), staging.begin());
    std::vector<T> piece(shard);
    reduce_scatter(std::span<const T>(staging), std::span<T>(piece), op);
    node_.all_gather(std::span<const T>(piece), std::span<T>(staging));
    std::copy_n(staging.begin(), buf.size(), buf.begin());
  }

  //! `in` holds G·L elements; `out` (L elements) receives block `local_rank` of the reduction of
  //! every rank's `in` over the whole world.
  template <comm_value T>
  void reduce_scatter(std::span<const T> in, std::span<T> out, ReduceOp op) {
    const ReduceOp step = op == ReduceOp::average ? ReduceOp::sum : op;
    node_.reduce_scatter(in, out, step);
    if (across_.size() > 1) across_.all_reduce(out, step);
    if (op == ReduceOp::average) {
      const auto w = static_cast<T>(topology_.world_size());
      if constexpr (std::is_floating_point_v<T>) {
        const T inv = T(1) / w;
        for (T& x : out) x *= inv;
      } else {
        for (T& x : out) x /= w;
      }
    }
  }

  //! `in` holds this rank's shard (L elements); `out` (G·L) receives the node's shards in local
  //! rank order.
  template <comm_value T>
  void all_gather(std::span<const T> in, std::span<T> out) {
    node_.all_gather(in, out);
  }

  //! What this schedule sends per rank for `elements`, by link kind (see the file's table).
  [[nodiscard]] LinkTraffic traffic(std::size_t elements) const {
    return hierarchical_all_reduce_traffic(elements, topology_);
  }

 private:
  static NodeTopology checked(Comm& world, NodeTopology topology) {
    if (topology.world_size() != static_cast<std::size_t>(world.size())) {
      throw usage_error("HierarchicalAllReduce", world.rank(),
                        "the topology describes " + std::to_string(topology.world_size()) +
                            " ranks (" + std::to_string(topology.num_nodes()) + " nodes of " +
                            std::to_string(topology.ranks_per_node()) + "), the communicator has " +
                            std::to_string(world.size()));
    }
    return topology;
  }

  template <class T>
  std::vector<T>& staging_for() {
    if constexpr (std::is_same_v<T, float>) return staging_f_;
    else if constexpr (std::is_same_v<T, double>) return staging_d_;
    else if constexpr (std::is_same_v<T, std::int32_t>) return staging_i_;
    else return staging_l_;
  }

  NodeTopology topology_;
  Comm node_;
  Comm across_;
  std::vector<float> staging_f_;
  std::vector<double> staging_d_;
  std::vector<std::int32_t> staging_i_;
  std::vector<std::int64_t> staging_l_;
};

}  // namespace strata
