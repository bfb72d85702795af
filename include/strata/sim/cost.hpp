#pragma once
//! \file
//! Cost model: how long one all-reduce of the model takes over a group of ranks.

#include <cmath>
#include <cstddef>
#include <stdexcept>
#include <string>

#include "strata/schedule/wire.hpp"
#include "strata/sim/detail/format.hpp"

namespace strata::sim {

//! One kind of link, as a ring all-reduce sees it.
//!
//! `bandwidth_bytes_per_s` is the *bus bandwidth* of an all-reduce (what `nccl-tests` reports as
//! busbw): the rate at which each rank's 2(g-1)/g share of the buffer crosses the slowest link of
//! the ring, not the link's nominal rate. `latency_s` is paid once per sequential ring step.
//!
//! \code
//! const strata::sim::Link ethernet{/*bandwidth_bytes_per_s=*/3.2e9, /*latency_s=*/25e-6};
//! assert(ethernet.bandwidth_bytes_per_s == 3.2e9);
//! \endcode
struct Link {
  double bandwidth_bytes_per_s = 1e9;
  double latency_s = 0.0;
};

//! Time of one ring all-reduce of `model_bytes` over a group of g ranks:
//!
//!     T(g) = latency_s * 2(g-1) + 2(g-1)/g * model_bytes / bandwidth_bytes_per_s
//!
//! with the intra-node link when the group lies inside one node (ranks sit on nodes in
//! contiguous blocks of `ranks_per_node`, so a contiguous group of g lies inside one node exactly
//! when g divides `ranks_per_node`), and the inter-node link otherwise: a ring that leaves a node
//! is as fast as its slowest hop. T(1) = 0.
//!
//! Gradient all-reduces (synchronous SGD, warm-up, post-local SGD's intra-node all-reduce) start
//! while the backward pass is still running, as PyTorch DDP's buckets do: the fraction
//! `backward_overlap` of T(g) is hidden behind it. Model averaging runs after the optimizer step
//! and hides nothing.
//!
//! \code
//! strata::sim::CostModel c;
//! c.model_bytes = 1e9;
//! c.ranks_per_node = 4;
//! c.intra_node = {/*bandwidth_bytes_per_s=*/1e10, /*latency_s=*/0.0};
//! c.inter_node = {1e9, 1e-3};
//! c.backward_overlap = 0.25;
//! c.validate();
//! assert(c.allreduce_s(1) == 0.0);
//! assert(c.allreduce_s(2) == 2.0 * 1 / 2 * 1e9 / 1e10);            // inside a node
//! assert(c.allreduce_s(8) == 14 * 1e-3 + 2.0 * 7 / 8 * 1e9 / 1e9);  // across nodes
//! assert(c.gradient_allreduce_s(8) == 0.75 * c.allreduce_s(8));
//! \endcode
struct CostModel {
  double model_bytes = 0.0;        //!< bytes averaged per all-reduce (parameters or gradients)
  std::size_t ranks_per_node = 1;  //!< ranks (GPUs) per machine
  Link intra_node{};               //!< links inside a machine (PCIe, NVLink)
  Link inter_node{};               //!< links between machines (Ethernet, InfiniBand)
  double backward_overlap = 0.0;   //!< fraction of a gradient all-reduce hidden by backward

  //! The cluster of the published straggler study: ResNet-18 on machines of 4 NVIDIA T4 over
  //! PCIe, 32 Gbit/s Ethernet between machines, NCCL. Every number here is an assumption, stated
  //! in docs/stragglers.md:
  //! - model bytes: 11.7 M float32 parameters = 46.8 MB;
  //! - intra-node: 6 GB/s bus bandwidth (PCIe 3.0 x16 carries 15.75 GB/s nominal each way; four
  //!   T4 without NVLink share one root complex, and without peer-to-peer access, as in most
  //!   cloud machines, NCCL stages through host memory), 10 us per ring step;
  //! - inter-node: 80 % of 32 Gbit/s = 3.2 GB/s (NCCL's socket transport over TCP), 25 us per
  //!   ring step;
  //! - half of a gradient all-reduce hidden behind the backward pass (DDP buckets; the last
  //!   bucket cannot overlap, and backward is about two thirds of a step).
  //!
  //! \code
  //! const auto c = strata::sim::CostModel::t4_resnet18();
  //! assert(c.ranks_per_node == 4 && c.model_bytes == 46.8e6);
  //! \endcode
  [[nodiscard]] static CostModel t4_resnet18() {
    CostModel c;
    c.model_bytes = 46.8e6;
    c.ranks_per_node = 4;
    c.intra_node = {6e9, 10e-6};
    c.inter_node = {3.2e9, 25e-6};
    c.backward_overlap = 0.5;
    return c;
  }

  //! The largest `model_bytes` accepted: the simulator counts a model's values and a fragment's
  //! bytes in 64-bit integers, which this keeps far from overflowing.
  static constexpr double max_model_bytes = 1e18;

  //! Throws `std::invalid_argument` naming the first field that makes no sense.
  void validate() const {
    using detail::sim_number;
    if (!(std::isfinite(model_bytes) && model_bytes >= 0.0)) {
      throw std::invalid_argument("CostModel: model bytes " + sim_number(model_bytes) +
                                  " is not a finite non-negative number");
    }
    if (model_bytes > max_model_bytes) {
      throw std::invalid_argument("CostModel: model bytes " + sim_number(model_bytes) +
                                  " is above the largest the simulator counts, " +
                                  sim_number(max_model_bytes));
    }
    if (ranks_per_node == 0) throw std::invalid_argument("CostModel: ranks per node is 0");
    check_link("intra-node", intra_node);
    check_link("inter-node", inter_node);
    if (!(backward_overlap >= 0.0 && backward_overlap <= 1.0)) {
      throw std::invalid_argument("CostModel: backward overlap " + sim_number(backward_overlap) +
                                  " is outside [0, 1]");
    }
  }

  //! True when a contiguous group of `g` ranks lies inside one node.
  [[nodiscard]] bool inside_node(std::size_t g) const noexcept {
    return g != 0 && g <= ranks_per_node && ranks_per_node % g == 0;
  }

  //! T(g): seconds of one all-reduce over `g` ranks, none of it hidden.
  [[nodiscard]] double allreduce_s(std::size_t g) const noexcept {
    if (g <= 1) return 0.0;
    const Link& link = inside_node(g) ? intra_node : inter_node;
    return link.latency_s * static_cast<double>(RingAllReduce::steps(g)) +
           RingAllReduce::bytes_per_rank(model_bytes, g) / link.bandwidth_bytes_per_s;
  }

  //! The part of a gradient all-reduce over `g` ranks that the backward pass does not hide.
  [[nodiscard]] double gradient_allreduce_s(std::size_t g) const noexcept {
    return (1.0 - backward_overlap) * allreduce_s(g);
  }

 private:
  static void check_link(const char* name, const Link& l) {
    if (!(std::isfinite(l.bandwidth_bytes_per_s) && l.bandwidth_bytes_per_s > 0.0)) {
      throw std::invalid_argument(std::string("CostModel: ") + name + " bandwidth " +
                                  detail::sim_number(l.bandwidth_bytes_per_s) +
                                  " bytes/s is not a finite positive number");
    }
    if (!(std::isfinite(l.latency_s) && l.latency_s >= 0.0)) {
      throw std::invalid_argument(std::string("CostModel: ") + name + " latency " +
                                  detail::sim_number(l.latency_s) +
                                  " s is not a finite non-negative number");
    }
  }
};

}  // namespace strata::sim
