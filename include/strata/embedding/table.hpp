#pragma once
//! \file
//! `Table<Rows, Width, Policy>`: one embedding table of a compile-time plan, and `TableSpec`, its
//! run-time form.

#include <cstddef>

#include "strata/embedding/placement.hpp"

namespace strata {

//! One embedding table as a value: rows, width (elements per row) and placement.
//!
//! \code
//! strata::TableSpec t{1000, 16, strata::RowWise::spec};
//! assert(t.rows * t.width == 16000);
//! \endcode
struct TableSpec {
  std::size_t rows = 0;
  std::size_t width = 0;
  PlacementSpec placement{};

  friend constexpr bool operator==(const TableSpec&, const TableSpec&) = default;
};

//! One embedding table of an `EmbeddingPlan`: `Rows` rows of `Width` elements, placed by
//! `Policy`. The rules are checked by the plan that lists it, which knows the world.
//!
//! \code
//! using T = strata::Table<1000, 16, strata::ColumnWise<2>>;
//! static_assert(T::spec.rows == 1000 && T::spec.placement.shards == 2);
//! \endcode
template <std::size_t Rows, std::size_t Width, placement_policy Policy>
struct Table {
  static constexpr TableSpec spec{Rows, Width, Policy::spec};
};

}  // namespace strata
