// A table-wise table pinned to a rank past the world must not compile, and the message must
// name that table, its placement and the numbers.
// expect: EmbeddingPlan: table 1 (1000x16, table@8): rank 8 is outside the world of 8 ranks
// expect: static assertion failed: EmbeddingPlan: a pinned table must lie inside the world
#include <strata/embedding/plan.hpp>

using strata::Cluster;
using strata::EmbeddingPlan;
using strata::Pinned;
using strata::RowWise;
using strata::Table;
using strata::TableWise;

#ifdef STRATA_COMPILE_FAIL
constexpr std::size_t rank = 8;
#else
constexpr std::size_t rank = 7;  // the valid control: the last rank
#endif

using Plan =
    EmbeddingPlan<Cluster<8, 4>, Table<64, 8, RowWise>, Table<1000, 16, Pinned<TableWise, rank>>>;

// Naming a static member instantiates the class, and with it the check.
constexpr auto used = Plan::num_tables;
