// The DLRM-shaped workload that dlrm_exchange and embedding_bench share: Criteo Kaggle's 26
// categorical features scaled to this machine, and Zipf-distributed ids for each table.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <numeric>
#include <random>
#include <vector>

namespace dlrm {

// Criteo Kaggle's 26 categorical features, in column order: distinct values of each.
inline constexpr std::size_t criteo_kaggle_rows[26] = {
    1460, 583,   10131227, 2202608, 305,  24,   12517, 633,     3,  93145, 5683,   8351593, 3194,
    27,   14992, 5461306,  10,      5652, 2173, 4,     7046547, 18, 15,    286181, 105,     142572};
inline constexpr std::size_t criteo_kaggle_largest = 10131227;
// Tables up to this size keep their real row count when the model is scaled down.
inline constexpr std::size_t keep_real_rows = 1000;

// The 26 tables scaled so that the largest has `max_rows` rows (at least one row each).
inline std::vector<std::size_t> table_rows(std::size_t max_rows) {
  std::vector<std::size_t> rows;
  const double scale = static_cast<double>(max_rows) / static_cast<double>(criteo_kaggle_largest);
  for (std::size_t real : criteo_kaggle_rows) {
    const auto scaled = static_cast<std::size_t>(std::llround(static_cast<double>(real) * scale));
    rows.push_back(std::max({scaled, std::min(real, keep_real_rows), std::size_t{1}}));
  }
  return rows;
}

// Zipf ids for one table: inverse transform sampling over the cumulative weights of the ranks.
class ZipfTable {
 public:
  ZipfTable(std::size_t rows, double exponent) : cumulative_(rows) {
    double sum = 0;
    for (std::size_t i = 0; i < rows; ++i) {
      sum += std::pow(static_cast<double>(i + 1), -exponent);
      cumulative_[i] = sum;
    }
    // A multiplier prime to the size makes i -> i * m mod rows a permutation of the rows: the
    // popular rows spread over every row block, as hashed values would.
    stride_ = std::max<std::size_t>(1, rows * 618 / 1000);
    while (std::gcd(stride_, rows) != 1) ++stride_;
  }

  std::int64_t draw(std::mt19937_64& rng) const {
    const double u = static_cast<double>(rng() >> 11) * 0x1.0p-53 * cumulative_.back();
    auto i = static_cast<std::size_t>(std::upper_bound(cumulative_.begin(), cumulative_.end(), u) -
                                      cumulative_.begin());
    i = std::min(i, cumulative_.size() - 1);
    return static_cast<std::int64_t>(i * stride_ % cumulative_.size());
  }

 private:
  std::vector<double> cumulative_;
  std::size_t stride_ = 1;
};

}  // namespace dlrm
