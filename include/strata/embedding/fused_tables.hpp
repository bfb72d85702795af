#pragma once
//! \file
//! `FusedTables<T>`: the embedding blocks of one rank, those of one width in one buffer.

#include <algorithm>
#include <cstddef>
#include <limits>
#include <span>
#include <stdexcept>
#include <string>
#include <utility>
#include <vector>

namespace strata {

//! Where one block (a shard or a replica) lives: its width group, its first row in the group's
//! buffer, its rows and width.
//!
//! \code
//! strata::FusedBlock b{.group = 0, .first_row = 100, .rows = 50, .width = 16};
//! assert(b.first_row + b.rows == 150);
//! \endcode
struct FusedBlock {
  std::size_t group = 0;
  std::size_t first_row = 0;
  std::size_t rows = 0;
  std::size_t width = 0;
};

//! The embedding rows one rank holds, fused by width: every block of the same width (whatever
//! its table) shares one row-major buffer, at a row offset, so that the lookups of all of them
//! are served by one `gather` per width. Groups are numbered in the order their width first
//! appears; blocks keep the order they were given.
//!
//! \code
//! const std::vector<std::pair<std::size_t, std::size_t>> blocks{{4, 2}, {3, 8}, {5, 2}};
//! strata::FusedTables<float> t(blocks);  // rows x width
//! assert(t.num_groups() == 2 && t.block(2).group == 0 && t.block(2).first_row == 4);
//! t.row(2, 1)[0] = 7;  // row 1 of block 2 is row 5 of group 0
//! std::vector<float> out(2);
//! const std::vector<std::size_t> rows{5};
//! t.gather(0, rows, out);
//! assert(out[0] == 7);
//! \endcode
template <class T>
class FusedTables {
 public:
  FusedTables() = default;

  //! One block per (rows, width) pair, zero-filled. Throws `std::invalid_argument` for a width
  //! of 0.
  explicit FusedTables(std::span<const std::pair<std::size_t, std::size_t>> rows_by_width) {
    for (std::size_t b = 0; b < rows_by_width.size(); ++b) {
      const auto [rows, width] = rows_by_width[b];
      if (width == 0) {
        throw std::invalid_argument("FusedTables: block " + std::to_string(b) + " has width 0");
      }
      const auto it = std::find(widths_.begin(), widths_.end(), width);
      const std::size_t g = static_cast<std::size_t>(it - widths_.begin());
      const std::size_t before = it == widths_.end() ? 0 : rows_[g];
      if (rows > std::numeric_limits<std::size_t>::max() / sizeof(T) / width - before) {
        throw std::invalid_argument("FusedTables: block " + std::to_string(b) + " (" +
                                    std::to_string(rows) + " rows of width " +
                                    std::to_string(width) +
                                    ") makes its width group larger than memory can address");
      }
      if (it == widths_.end()) {
        widths_.push_back(width);
        rows_.push_back(0);
      }
      blocks_.push_back({g, rows_[g], rows, width});
      rows_[g] += rows;
    }
    data_.resize(widths_.size());
    for (std::size_t g = 0; g < widths_.size(); ++g) data_[g].assign(rows_[g] * widths_[g], T{});
  }

  [[nodiscard]] std::size_t num_blocks() const noexcept { return blocks_.size(); }
  [[nodiscard]] std::size_t num_groups() const noexcept { return widths_.size(); }
  [[nodiscard]] const FusedBlock& block(std::size_t b) const { return blocks_.at(b); }
  [[nodiscard]] std::size_t group_width(std::size_t g) const { return widths_.at(g); }
  [[nodiscard]] std::size_t group_rows(std::size_t g) const { return rows_.at(g); }
  //! The row-major buffer of width group g.
  [[nodiscard]] std::span<T> group_data(std::size_t g) { return data_.at(g); }
  [[nodiscard]] std::span<const T> group_data(std::size_t g) const { return data_.at(g); }

  //! Row `i` of block `b` (0-based inside the block).
  [[nodiscard]] std::span<T> row(std::size_t b, std::size_t i) {
    const FusedBlock& k = blocks_[b];
    return std::span<T>(data_[k.group]).subspan((k.first_row + i) * k.width, k.width);
  }
  [[nodiscard]] std::span<const T> row(std::size_t b, std::size_t i) const {
    const FusedBlock& k = blocks_[b];
    return std::span<const T>(data_[k.group]).subspan((k.first_row + i) * k.width, k.width);
  }
  //! The row of group `g`'s buffer that row `i` of block `b` is.
  [[nodiscard]] std::size_t fused_row(std::size_t b, std::size_t i) const {
    return blocks_[b].first_row + i;
  }

  //! One gather for every block of width group `g`: row k of `out` becomes row `rows[k]` of the
  //! group's buffer. Throws `std::invalid_argument` before writing anything if a row is out of
  //! range or `out` is not `rows.size()` rows.
  void gather(std::size_t g, std::span<const std::size_t> rows, std::span<T> out) const {
    const std::size_t w = widths_.at(g);
    if (out.size() != rows.size() * w) {
      throw std::invalid_argument("FusedTables::gather: " + std::to_string(rows.size()) +
                                  " rows of width " + std::to_string(w) + " need " +
                                  std::to_string(rows.size() * w) + " elements, out has " +
                                  std::to_string(out.size()));
    }
    for (std::size_t r : rows) {
      if (r >= rows_[g]) {
        throw std::invalid_argument("FusedTables::gather: row " + std::to_string(r) +
                                    " is outside group " + std::to_string(g) + "'s " +
                                    std::to_string(rows_[g]) + " rows");
      }
    }
    const T* src = data_[g].data();
    for (std::size_t k = 0; k < rows.size(); ++k)
      std::copy_n(src + rows[k] * w, w, out.data() + k * w);
  }

 private:
  std::vector<FusedBlock> blocks_;
  std::vector<std::size_t> widths_;
  std::vector<std::size_t> rows_;
  std::vector<std::vector<T>> data_;
};

}  // namespace strata
