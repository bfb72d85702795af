// A row-wise or data-parallel table spans every rank: pinning it must not compile, and must say
// which placements can be pinned.
// expect: static assertion failed: Pinned: only TableWise, ColumnWise and TableRowWise tables have a place to pin
#include <strata/embedding/plan.hpp>

using strata::Cluster;
using strata::EmbeddingPlan;
using strata::Pinned;
using strata::RowWise;
using strata::Table;
using strata::TableRowWise;

#ifdef STRATA_COMPILE_FAIL
using Plan = EmbeddingPlan<Cluster<8, 4>, Table<1000, 16, Pinned<RowWise, 1>>>;
#else
using Plan = EmbeddingPlan<Cluster<8, 4>, Table<1000, 16, Pinned<TableRowWise, 1>>>;  // control
#endif

constexpr auto used = Plan::num_tables;  // instantiates the plan, and with it the checks
