#pragma once
//! \file
//! `HierarchicalAllToAll`: the uneven all-to-all of a world as an exchange inside each node
//! followed by one exchange among the ranks with the same local index across nodes.

#include <cstddef>
#include <cstdint>
#include <span>
#include <stdexcept>
#include <string>
#include <vector>

#include "strata/comm/communicator.hpp"
#include "strata/comm/level_comms.hpp"
#include "strata/comm/link_traffic.hpp"

namespace strata {

//! What the flat uneven all-to-all sends over each kind of link: rank `rank` sends
//! `send_counts[p]` elements to each peer p, on nodes of `ranks_per_node`.
//!
//! \code
//! const std::vector<std::size_t> counts{1, 2, 3, 4};  // rank 0 of 4, nodes of 2
//! const auto t = strata::flat_all_to_all_traffic(counts, 0, 2);
//! assert(t.intra == 2 && t.inter == 7 && t.inter_messages == 2);
//! \endcode
inline LinkTraffic flat_all_to_all_traffic(std::span<const std::size_t> send_counts,
                                           std::size_t rank, std::size_t ranks_per_node) {
  LinkTraffic t;
  for (std::size_t p = 0; p < send_counts.size(); ++p) {
    if (p == rank || send_counts[p] == 0) continue;
    const bool same_node = p / ranks_per_node == rank / ranks_per_node;
    (same_node ? t.intra : t.inter) += send_counts[p];
    ++(same_node ? t.intra_messages : t.inter_messages);
  }
  return t;
}

//! The uneven all-to-all of a world of N nodes of G ranks in two steps (MLPerf's DLRM exchange):
//! 1. inside each node, rank (n, l) sends local rank l' everything it has for the ranks with
//!    local index l' on every node (the node's data is gathered by destination local index);
//! 2. among the ranks of local index l' (one per node, `split_strided`), rank (n, l') sends node
//!    m everything node n has for (m, l').
//! Data then sits at its destination, in the flat exchange's order, so the result equals
//! `world.all_to_all(in, send_counts, out, recv_counts)`; no third (scatter) step is needed
//! because step 1 already routed by destination local index. Inter-node traffic is the same
//! number of elements as the flat exchange's, in N-1 messages per rank instead of (N-1)·G;
//! intra-node traffic grows by what leaves the node through another local index. A third, tiny
//! exchange inside the node carries the per-node counts step 2 needs.
//!
//! Construction is collective over `world` (it splits the node and strided communicators).
//! Arguments are checked as each step's exchange checks them (the counts of each step must agree
//! pairwise; a per-pair disagreement that cancels inside a node shows as the step-2 totals');
//! the number of counts and their sum against the input are checked on the calling rank alone
//! before anything is sent, so its peers see a `timeout_error`. `EmbeddingExchange` derives every
//! receive count from the transposed send counts, so it never meets either.
//!
//! \code
//! #include <strata/comm/local.hpp>
//! strata::LocalWorld(4).run([](strata::LocalComm& world) {
//!   strata::HierarchicalAllToAll<strata::LocalComm> a2a(world, 2);
//!   const int r = world.rank();
//!   std::vector<std::size_t> counts(4, 1);
//!   std::vector<double> in{r * 10.0, r * 10.0 + 1, r * 10.0 + 2, r * 10.0 + 3}, out(4);
//!   a2a.all_to_all<double>(in, counts, out, counts);
//!   assert(out[3] == 30 + r);  // rank 3's element for this rank
//! });
//! \endcode
template <communicator Comm>
class HierarchicalAllToAll {
 public:
  HierarchicalAllToAll(Comm& world, std::size_t ranks_per_node)
      : world_size_(static_cast<std::size_t>(world.size())),
        rank_(static_cast<std::size_t>(world.rank())),
        g_(ranks_per_node),
        node_(split_node(world, static_cast<int>(ranks_per_node))),
        across_(split_strided(world, static_cast<int>(ranks_per_node))) {}

  [[nodiscard]] std::size_t world_size() const noexcept { return world_size_; }
  [[nodiscard]] std::size_t ranks_per_node() const noexcept { return g_; }
  //! The link traffic of this rank in the last `all_to_all`.
  [[nodiscard]] const LinkTraffic& last_traffic() const noexcept { return traffic_; }

  //! Equal to `world.all_to_all(in, send_counts, out, recv_counts)` (see the class).
  template <comm_value T>
  void all_to_all(std::span<const T> in, std::span<const std::size_t> send_counts, std::span<T> out,
                  std::span<const std::size_t> recv_counts) {
    const std::size_t w = world_size_, g = g_, nodes = w / g;
    if (send_counts.size() != w || recv_counts.size() != w) {
      throw std::invalid_argument("HierarchicalAllToAll: needs " + std::to_string(w) +
                                  " counts each way, got " + std::to_string(send_counts.size()) +
                                  " and " + std::to_string(recv_counts.size()));
    }
    const std::size_t l = rank_ % g, n = rank_ / g;
    traffic_ = {};
    std::vector<std::size_t> offset(w + 1, 0);
    for (std::size_t p = 0; p < w; ++p) offset[p + 1] = offset[p] + send_counts[p];
    if (offset[w] != in.size()) {
      // Checked here alone: the peers of a rank that throws see a timeout, not a hang.
      throw std::invalid_argument("HierarchicalAllToAll: the send counts add up to " +
                                  std::to_string(offset[w]) + " elements, the input holds " +
                                  std::to_string(in.size()));
    }
    // Step 0: each local peer l' learns how much of ours is bound for (m, l'), for every m.
    words_out_.assign(g * nodes, 0);
    for (std::size_t lp = 0; lp < g; ++lp)
      for (std::size_t m = 0; m < nodes; ++m)
        words_out_[lp * nodes + m] = static_cast<std::int64_t>(send_counts[m * g + lp]);
    words_in_.assign(g * nodes, 0);
    node_.template all_to_all<std::int64_t>(words_out_, words_in_);

    // Step 1: regroup our input by destination local index (then node), send inside the node.
    auto& stage1 = staging<T>(0);
    stage1.resize(offset[w]);
    std::vector<std::size_t> c1_send(g, 0), c1_recv(g, 0);
    std::size_t at = 0;
    for (std::size_t lp = 0; lp < g; ++lp) {
      for (std::size_t m = 0; m < nodes; ++m) {
        const std::size_t p = m * g + lp;
        for (std::size_t i = 0; i < send_counts[p]; ++i) stage1[at + i] = in[offset[p] + i];
        at += send_counts[p];
        c1_send[lp] += send_counts[p];
      }
      if (lp != l && c1_send[lp] != 0) traffic_.intra += c1_send[lp], ++traffic_.intra_messages;
    }
    std::size_t total1 = 0;
    for (std::size_t lq = 0; lq < g; ++lq) {
      for (std::size_t m = 0; m < nodes; ++m)
        c1_recv[lq] += static_cast<std::size_t>(words_in_[lq * nodes + m]);
      total1 += c1_recv[lq];
    }
    auto& got1 = staging<T>(1);
    got1.resize(total1);
    node_.template all_to_all<T>(std::span<const T>(stage1), c1_send, std::span<T>(got1), c1_recv);

    // Step 2: got1 holds, per source local index lq, the blocks for (m, l) for every m; send
    // each node m its blocks, in source order.
    std::vector<std::size_t> src(g * nodes + 1, 0);  // start of block (lq, m) in got1
    for (std::size_t lq = 0; lq < g; ++lq)
      for (std::size_t m = 0; m < nodes; ++m)
        src[lq * nodes + m + 1] =
            src[lq * nodes + m] + static_cast<std::size_t>(words_in_[lq * nodes + m]);
    auto& stage2 = staging<T>(0);
    stage2.resize(total1);
    std::vector<std::size_t> c2_send(nodes, 0), c2_recv(nodes, 0);
    at = 0;
    for (std::size_t m = 0; m < nodes; ++m) {
      for (std::size_t lq = 0; lq < g; ++lq) {
        const std::size_t b = lq * nodes + m, len = src[b + 1] - src[b];
        for (std::size_t i = 0; i < len; ++i) stage2[at + i] = got1[src[b] + i];
        at += len;
        c2_send[m] += len;
      }
      if (m != n && c2_send[m] != 0) traffic_.inter += c2_send[m], ++traffic_.inter_messages;
      for (std::size_t lq = 0; lq < g; ++lq) c2_recv[m] += recv_counts[m * g + lq];
    }
    across_.template all_to_all<T>(std::span<const T>(stage2), c2_send, out, c2_recv);
  }

 private:
  template <class T>
  std::vector<T>& staging(int which) {
    if constexpr (std::is_same_v<T, double>) return which ? d1_ : d0_;
    else if constexpr (std::is_same_v<T, float>) return which ? f1_ : f0_;
    else if constexpr (std::is_same_v<T, std::int64_t>) return which ? l1_ : l0_;
    else return which ? i1_ : i0_;
  }

  std::size_t world_size_, rank_, g_;
  Comm node_;
  Comm across_;
  LinkTraffic traffic_;
  std::vector<std::int64_t> words_out_, words_in_;
  std::vector<double> d0_, d1_;
  std::vector<float> f0_, f1_;
  std::vector<std::int64_t> l0_, l1_;
  std::vector<std::int32_t> i0_, i1_;
};

}  // namespace strata
