// A column-wise table of no shards must not compile, and the message must name that table.
// expect: EmbeddingPlan: table 1 (500x16, column:0): needs at least one column shard
// expect: static assertion failed: EmbeddingPlan: a column-wise table needs at least one shard, others exactly one
#include <strata/embedding/plan.hpp>

using strata::Cluster;
using strata::ColumnWise;
using strata::EmbeddingPlan;
using strata::Table;
using strata::TableWise;

#ifdef STRATA_COMPILE_FAIL
constexpr std::size_t shards = 0;
#else
constexpr std::size_t shards = 4;  // the valid control
#endif

using Plan =
    EmbeddingPlan<Cluster<8, 4>, Table<1000, 16, TableWise>, Table<500, 16, ColumnWise<shards>>>;

// Naming a static member instantiates the class, and with it the check.
constexpr auto used = Plan::num_tables;
