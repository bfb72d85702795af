// An EmbeddingPlan whose world does not divide into nodes must not compile, and must say which
// numbers.
// expect: EmbeddingPlan: a world of 6 ranks does not divide into nodes of 4 ranks
// expect: static assertion failed: EmbeddingPlan: the world must be a positive multiple of the ranks per node
#include <strata/embedding/plan.hpp>

using strata::Cluster;
using strata::EmbeddingPlan;
using strata::RowWise;
using strata::Table;
using strata::TableWise;

#ifdef STRATA_COMPILE_FAIL
using World = Cluster<6, 4>;
#else
using World = Cluster<8, 4>;  // the valid control
#endif

using Plan = EmbeddingPlan<World, Table<1000, 16, TableWise>, Table<64, 8, RowWise>>;

// Naming a static member instantiates the class, and with it the check.
constexpr auto used = Plan::num_tables;
