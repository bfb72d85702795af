// A table with no rows must not compile, and the message must name that table, its shape and
// its placement.
// expect: EmbeddingPlan: table 2 (0x16, row): rows and width must be positive
// expect: static assertion failed: EmbeddingPlan: every table needs rows and columns
#include <strata/embedding/plan.hpp>

using strata::Cluster;
using strata::ColumnWise;
using strata::EmbeddingPlan;
using strata::RowWise;
using strata::Table;
using strata::TableWise;

#ifdef STRATA_COMPILE_FAIL
constexpr std::size_t rows = 0;
#else
constexpr std::size_t rows = 64;  // the valid control
#endif

using Plan = EmbeddingPlan<Cluster<8, 4>, Table<1000, 16, TableWise>, Table<500, 16, ColumnWise<4>>,
                           Table<rows, 16, RowWise>>;

// Naming a static member instantiates the class, and with it the check.
constexpr auto used = Plan::num_tables;
