#pragma once
//! \file
//! The sparse input of one rank for one step, the pooling of its lookups, and the row update
//! that the backward exchange applies where a row lives.

#include <cstddef>
#include <cstdint>
#include <span>

namespace strata {

//! How the lookups of one sample in one table become one vector: their sum, or their mean (the
//! sum divided by the hotness; its gradient is the upstream gradient times 1/hotness).
enum class Pooling { sum, mean };

//! One rank's ids for one step: `tables × samples × hotness` ids, table-major
//! (`ids[(j * samples + s) * hotness + k]` is lookup k of sample s in table j). Ranks may hold
//! different numbers of samples, none included, and different hotness.
//!
//! \code
//! const std::vector<std::int64_t> ids{3, 3, 0, 1};  // 2 tables, 1 sample, 2 lookups each
//! strata::SparseBatch b{ids, 2, 1, 2};
//! assert(b.id(1, 0, 1) == 1);
//! \endcode
struct SparseBatch {
  std::span<const std::int64_t> ids{};
  std::size_t tables = 0;
  std::size_t samples = 0;
  std::size_t hotness = 1;

  [[nodiscard]] constexpr std::int64_t id(std::size_t table, std::size_t sample,
                                          std::size_t lookup) const noexcept {
    return ids[(table * samples + sample) * hotness + lookup];
  }
};

//! What the backward exchange hands the update for one row of one shard or replica: the table,
//! the row (in the whole table), the first column the shard holds, the shard's values of that
//! row and the sum of their gradients over every sample of the world that looked the row up.
//!
//! \code
//! std::vector<double> v{1, 2};
//! const std::vector<double> g{10, 20};
//! strata::RowGradient<double> r{0, 5, 0, v, g};
//! strata::Sgd{0.1}(r);
//! assert(v[0] == 0 && v[1] == 0);
//! \endcode
template <class T>
struct RowGradient {
  std::size_t table = 0;
  std::size_t row = 0;
  std::size_t col_begin = 0;
  std::span<T> values{};
  std::span<const T> grad{};
};

//! Plain sparse SGD: `values[d] -= lr * grad[d]`.
struct Sgd {
  double lr = 0.01;

  template <class T>
  void operator()(const RowGradient<T>& r) const {
    const T step = static_cast<T>(lr);
    for (std::size_t d = 0; d < r.values.size(); ++d) r.values[d] -= step * r.grad[d];
  }
};

}  // namespace strata
