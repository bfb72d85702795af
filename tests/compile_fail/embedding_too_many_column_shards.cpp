// A column-wise table with more shards than the world has ranks must not compile, and the
// message must name that table and the numbers.
// expect: EmbeddingPlan: table 0 (500x32, column:16): 16 column shards need 16 distinct ranks, the world has 8
// expect: static assertion failed: EmbeddingPlan: a column-wise table cannot have more shards than the world has ranks
#include <strata/embedding/plan.hpp>

using strata::Cluster;
using strata::ColumnWise;
using strata::EmbeddingPlan;
using strata::Table;
using strata::TableWise;

#ifdef STRATA_COMPILE_FAIL
constexpr std::size_t shards = 16;
#else
constexpr std::size_t shards = 8;  // the valid control: one shard on every rank
#endif

using Plan =
    EmbeddingPlan<Cluster<8, 4>, Table<500, 32, ColumnWise<shards>>, Table<1000, 16, TableWise>>;

// Naming a static member instantiates the class, and with it the check.
constexpr auto used = Plan::num_tables;
