#pragma once
//! \file
//! `LinkTraffic`: what one rank sends inside its node and across nodes, for the hierarchical
//! schedules (all-to-all, all-reduce) and their flat counterparts.

#include <cstddef>

namespace strata {

//! Elements (not bytes) one rank sends over each kind of link in one operation, and in how many
//! messages; a rank's sends to itself count nowhere.
//!
//! \code
//! strata::LinkTraffic t{.intra = 10, .inter = 30, .intra_messages = 1, .inter_messages = 1};
//! assert(t.intra + t.inter == 40);
//! \endcode
struct LinkTraffic {
  //! Elements sent to ranks on the same node, and to ranks on other nodes.
  std::size_t intra = 0;
  std::size_t inter = 0;
  //! Messages (steps of the algorithm) of each kind.
  std::size_t intra_messages = 0;
  std::size_t inter_messages = 0;

  //! Adds another operation's traffic.
  LinkTraffic& operator+=(const LinkTraffic& o) noexcept {
    intra += o.intra;
    inter += o.inter;
    intra_messages += o.intra_messages;
    inter_messages += o.inter_messages;
    return *this;
  }
};

}  // namespace strata
