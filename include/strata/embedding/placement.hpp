#pragma once
//! \file
//! Placement policies: where the rows and columns of one embedding table live.

#include <concepts>
#include <cstddef>
#include <stdexcept>
#include <string>
#include <string_view>

#include "strata/detail/message.hpp"

namespace strata {

//! "Let the balancer choose": the rank (or node) of a placement that names none.
inline constexpr std::size_t auto_place = static_cast<std::size_t>(-1);

//! The kinds of placement (docs/embeddings.md, "Placements").
enum class Placement {
  table_wise,      //!< the whole table on one rank
  column_wise,     //!< `shards` column blocks of width/shards on `shards` consecutive ranks
  row_wise,        //!< contiguous row blocks over every rank of the world
  table_row_wise,  //!< contiguous row blocks over the ranks of one node
  data_parallel,   //!< a replica on every rank; gradients summed by an all-reduce
};

//! One table's placement as a value: the kind, the number of column shards (1 unless
//! column-wise), and where: the rank of a table-wise table, the first rank of a column-wise one,
//! the node of a table-row-wise one, or `auto_place`. A hybrid table (`hybrid`) also keeps a
//! replica of its `frequent` most frequent rows on every rank (`auto_place`: chosen by the cost
//! model); `kind`, `shards` and `where` then place the rest.
//!
//! \code
//! constexpr strata::PlacementSpec p{strata::Placement::column_wise, 4, 8};
//! static_assert(p.shards == 4 && p.where == 8 && !p.hybrid);
//! \endcode
struct PlacementSpec {
  Placement kind = Placement::table_wise;
  std::size_t shards = 1;
  std::size_t where = auto_place;
  bool hybrid = false;
  std::size_t frequent = auto_place;

  friend constexpr bool operator==(const PlacementSpec&, const PlacementSpec&) = default;
};

//! The whole table on one rank, chosen by the balancer.
struct TableWise {
  static constexpr PlacementSpec spec{Placement::table_wise, 1, auto_place};
};
//! `Shards` column blocks of `width / Shards` columns each, on `Shards` distinct ranks chosen by
//! the balancer; the width must divide by `Shards`.
template <std::size_t Shards>
struct ColumnWise {
  static constexpr PlacementSpec spec{Placement::column_wise, Shards, auto_place};
};
//! Contiguous blocks of rows over every rank: rank q holds rows
//! `[q*(R/n) + min(q, R%n), ...)`, the first `R % n` ranks one row more. A table with fewer rows
//! than ranks leaves some ranks without rows.
struct RowWise {
  static constexpr PlacementSpec spec{Placement::row_wise, 1, auto_place};
};
//! Row-wise over the ranks of one node (chosen by the balancer), table-wise across nodes: the
//! lookups of a table stay on one node's fast links.
struct TableRowWise {
  static constexpr PlacementSpec spec{Placement::table_row_wise, 1, auto_place};
};
//! Replicated on every rank; looked up locally; the gradients of its rows from every rank's
//! samples are summed by an all-reduce before the same update runs on every replica.
struct DataParallel {
  static constexpr PlacementSpec spec{Placement::data_parallel, 1, auto_place};
};

//! `Policy` placed by hand: the rank of a `TableWise` table, the first of the consecutive ranks
//! of a `ColumnWise` one, or the node of a `TableRowWise` one.
//!
//! \code
//! using P = strata::Pinned<strata::ColumnWise<2>, 6>;  // columns on ranks 6 and 7
//! static_assert(P::spec.shards == 2 && P::spec.where == 6);
//! \endcode
template <class Policy, std::size_t Where>
struct Pinned {
  static_assert(!Policy::spec.hybrid, "Pinned: pin the inner placement of a Hybrid table");
  static_assert(Policy::spec.kind == Placement::table_wise ||
                    Policy::spec.kind == Placement::column_wise ||
                    Policy::spec.kind == Placement::table_row_wise,
                "Pinned: only TableWise, ColumnWise and TableRowWise tables have a place to pin");
  static constexpr PlacementSpec spec{Policy::spec.kind, Policy::spec.shards, Where, false,
                                      auto_place};
};

//! Frequent rows replicated, the rest placed by `Inner` (any placement but `DataParallel`): the
//! `Frequent` most frequent rows of the table (by counts over a sample of batches; `auto_place`:
//! as many as the cost model of `choose_frequent` finds best) live on every rank, are looked up
//! locally and have their gradients summed in the fused all-reduce; the others go through the
//! exchange. `Hybrid<RowWise, 0>` is plain row-wise, `Hybrid<RowWise, Rows>` plain
//! data-parallel, in results.
//!
//! \code
//! using P = strata::Hybrid<strata::RowWise, 100>;
//! static_assert(P::spec.hybrid && P::spec.frequent == 100 && P::spec.kind == strata::Placement::row_wise);
//! \endcode
template <class Inner = RowWise, std::size_t Frequent = auto_place>
struct Hybrid {
  static_assert(Inner::spec.kind != Placement::data_parallel && !Inner::spec.hybrid,
                "Hybrid: the rest of a hybrid table is placed table-wise, column-wise, row-wise or "
                "table-row-wise");
  static constexpr PlacementSpec spec{Inner::spec.kind, Inner::spec.shards, Inner::spec.where, true,
                                      Frequent};
};

//! A type that names a placement: one of the policies above.
//!
//! \code
//! static_assert(strata::placement_policy<strata::RowWise>);
//! static_assert(!strata::placement_policy<int>);
//! \endcode
template <class P>
concept placement_policy = requires {
  { P::spec } -> std::convertible_to<PlacementSpec>;
};

//! The command-line word of a placement kind: `table`, `column`, `row`, `table-row`, `dp`.
constexpr std::string_view placement_word(Placement kind) noexcept {
  switch (kind) {
    case Placement::table_wise: return "table";
    case Placement::column_wise: return "column";
    case Placement::row_wise: return "row";
    case Placement::table_row_wise: return "table-row";
    case Placement::data_parallel: return "dp";
  }
  return "?";
}

namespace detail {
// The placement in the words `parse_placement` reads, for messages of both plan forms.
constexpr void describe_placement(Message& m, const PlacementSpec& p) noexcept {
  if (p.hybrid) m << "hybrid:";
  m << placement_word(p.kind);
  if (p.kind == Placement::column_wise) m << ":" << p.shards;
  if (p.where != auto_place) m << "@" << p.where;
  if (p.hybrid && p.frequent != auto_place) m << "/" << p.frequent;
}
}  // namespace detail

//! `to_string` of a placement in the words `parse_placement` reads.
//!
//! \code
//! assert(strata::to_string(strata::Pinned<strata::ColumnWise<2>, 6>::spec) == "column:2@6");
//! \endcode
inline std::string to_string(const PlacementSpec& p) {
  detail::Message m;
  detail::describe_placement(m, p);
  return std::string(m.view());
}

//! Reads `table`, `column:S`, `row`, `table-row` or `dp`, each optionally followed by `@N` (the
//! rank, first rank or node); or `hybrid`, `hybrid:P` (P one of the others but `dp`; `row` when
//! omitted), optionally followed by `/N` (the frequent rows). Throws `std::invalid_argument`
//! naming the text otherwise.
//!
//! \code
//! assert((strata::parse_placement("column:4@8") == strata::PlacementSpec{strata::Placement::column_wise, 4, 8}));
//! assert(strata::parse_placement("dp").kind == strata::Placement::data_parallel);
//! \endcode
inline PlacementSpec parse_placement(std::string_view text) {
  const auto fail = [&](std::string_view why) -> PlacementSpec {
    throw std::invalid_argument("placement \"" + std::string(text) + "\": " + std::string(why));
  };
  const auto number = [&](std::string_view digits, std::string_view what) {
    if (digits.empty() || digits.size() > 9) fail(std::string(what) + " needs 1 to 9 digits");
    std::size_t v = 0;
    for (char c : digits) {
      if (c < '0' || c > '9') fail(std::string(what) + " is not a whole number");
      v = v * 10 + static_cast<std::size_t>(c - '0');
    }
    return v;
  };
  std::string_view body = text;
  PlacementSpec p;
  if (body.starts_with("hybrid")) {
    std::string_view rest = body.substr(6);
    std::size_t frequent = auto_place;
    if (const auto slash = rest.rfind('/'); slash != std::string_view::npos) {
      frequent = number(rest.substr(slash + 1), "the frequent rows after /");
      rest = rest.substr(0, slash);
    }
    if (!rest.empty() && !rest.starts_with(":")) {
      return fail("a hybrid placement reads hybrid, hybrid:P or either with /N");
    }
    PlacementSpec inner = rest.empty() ? PlacementSpec{Placement::row_wise, 1, auto_place}
                                       : parse_placement(rest.substr(1));
    if (inner.kind == Placement::data_parallel || inner.hybrid) {
      fail("the rest of a hybrid table is placed by table, column:S, row or table-row");
    }
    inner.hybrid = true;
    inner.frequent = frequent;
    return inner;
  }
  if (const auto at = body.find('@'); at != std::string_view::npos) {
    p.where = number(body.substr(at + 1), "the place after @");
    body = body.substr(0, at);
  }
  if (body == "table") {
    p.kind = Placement::table_wise;
  } else if (body.starts_with("column:")) {
    p.kind = Placement::column_wise;
    p.shards = number(body.substr(7), "the shard count");
  } else if (body == "row") {
    p.kind = Placement::row_wise;
  } else if (body == "table-row") {
    p.kind = Placement::table_row_wise;
  } else if (body == "dp") {
    p.kind = Placement::data_parallel;
  } else {
    return fail("expected table, column:S, row, table-row or dp, optionally with @N");
  }
  if (p.where != auto_place &&
      (p.kind == Placement::row_wise || p.kind == Placement::data_parallel)) {
    fail("row and dp tables span every rank and take no @N");
  }
  return p;
}

}  // namespace strata
