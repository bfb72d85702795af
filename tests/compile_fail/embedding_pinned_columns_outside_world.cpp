// A column-wise table pinned so that its first shard is inside the world but its last is not
// must not compile, and the message must name that table and the last rank.
// expect: EmbeddingPlan: table 2 (500x16, column:2@7): rank 8 is outside the world of 8 ranks
// expect: static assertion failed: EmbeddingPlan: a pinned table must lie inside the world
#include <strata/embedding/plan.hpp>

using strata::Cluster;
using strata::ColumnWise;
using strata::EmbeddingPlan;
using strata::Pinned;
using strata::Table;
using strata::TableWise;

#ifdef STRATA_COMPILE_FAIL
constexpr std::size_t first = 7;
#else
constexpr std::size_t first = 6;  // the valid control: ranks 6 and 7
#endif

using Plan = EmbeddingPlan<Cluster<8, 4>, Table<1000, 16, TableWise>, Table<1000, 16, TableWise>,
                           Table<500, 16, Pinned<ColumnWise<2>, first>>>;

// Naming a static member instantiates the class, and with it the check.
constexpr auto used = Plan::num_tables;
