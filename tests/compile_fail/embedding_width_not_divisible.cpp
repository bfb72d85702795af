// A column-wise table whose width does not divide by its shard count must not compile, and the
// message must name that table and the numbers.
// expect: EmbeddingPlan: table 1 (500x15, column:4): width 15 does not divide into 4 column shards
// expect: static assertion failed: EmbeddingPlan: a column-wise table's width must divide by its shard count
#include <strata/embedding/plan.hpp>

using strata::Cluster;
using strata::ColumnWise;
using strata::EmbeddingPlan;
using strata::RowWise;
using strata::Table;
using strata::TableWise;

#ifdef STRATA_COMPILE_FAIL
constexpr std::size_t width = 15;
#else
constexpr std::size_t width = 16;  // the valid control
#endif

using Plan = EmbeddingPlan<Cluster<8, 4>, Table<1000, 16, TableWise>,
                           Table<500, width, ColumnWise<4>>, Table<64, 8, RowWise>>;

// Naming a static member instantiates the class, and with it the check.
constexpr auto used = Plan::num_tables;
