#pragma once
//! \file
//! The load model of an embedding plan and the report of how evenly a plan spreads it.

#include <algorithm>
#include <cstddef>
#include <span>
#include <stdexcept>
#include <string>
#include <vector>

namespace strata {

//! What the balancer weighs when it places table-wise, column-wise and table-row-wise tables:
//! each table's expected lookups per step (over the whole world; empty: the same for every
//! table), the bytes of an element, and how much memory counts against lookup traffic (1: memory
//! only, 0: traffic only). A shard's share of the load is
//! `memory_weight * bytes / total bytes + (1 - memory_weight) * traffic / total traffic`, where
//! traffic is lookups times the shard's columns (rows of a row block count by their fraction).
//!
//! \code
//! strata::LoadModel m{.lookups = {4096, 4096, 64}, .element_bytes = 4, .memory_weight = 0.5};
//! assert(m.lookups_of(2) == 64);
//! \endcode
struct LoadModel {
  std::vector<double> lookups{};
  std::size_t element_bytes = 4;
  double memory_weight = 0.5;

  //! Table j's expected lookups per step: 1 when no figures were given.
  [[nodiscard]] double lookups_of(std::size_t j) const {
    return lookups.empty() ? 1.0 : lookups.at(j);
  }

  //! Throws `std::invalid_argument` when the figures cannot describe `tables` tables.
  void check(std::size_t tables) const {
    if (!lookups.empty() && lookups.size() != tables) {
      throw std::invalid_argument("LoadModel: " + std::to_string(lookups.size()) +
                                  " lookup figures for " + std::to_string(tables) + " tables");
    }
    for (std::size_t j = 0; j < lookups.size(); ++j) {
      if (!(lookups[j] >= 0)) {
        throw std::invalid_argument("LoadModel: table " + std::to_string(j) +
                                    " expects a negative or undefined number of lookups");
      }
    }
    if (!(memory_weight >= 0 && memory_weight <= 1)) {
      throw std::invalid_argument("LoadModel: memory_weight must lie in [0, 1]");
    }
    if (element_bytes == 0) throw std::invalid_argument("LoadModel: element_bytes is 0");
  }
};

//! How a plan spreads the load over the ranks: per rank, the bytes of its shards (replicas
//! included), its expected lookup traffic (elements returned per step) and its share of the
//! combined load; `max/mean` of each says how far the busiest rank is from an even spread (1 is
//! perfect).
//!
//! \code
//! strata::BalanceReport r{.memory_bytes = {4, 2}, .traffic = {1, 1}, .load = {0.6, 0.4}};
//! assert(r.memory_max_over_mean() > 1.3 && r.load_max_over_mean() == 1.2);
//! \endcode
struct BalanceReport {
  std::vector<double> memory_bytes{};
  std::vector<double> traffic{};
  std::vector<double> load{};

  [[nodiscard]] static double max_over_mean(std::span<const double> v) {
    if (v.empty()) return 1.0;
    double sum = 0;
    for (double x : v) sum += x;
    const double mean = sum / static_cast<double>(v.size());
    return mean > 0 ? *std::max_element(v.begin(), v.end()) / mean : 1.0;
  }
  [[nodiscard]] double memory_max_over_mean() const { return max_over_mean(memory_bytes); }
  [[nodiscard]] double traffic_max_over_mean() const { return max_over_mean(traffic); }
  [[nodiscard]] double load_max_over_mean() const { return max_over_mean(load); }
};

}  // namespace strata
