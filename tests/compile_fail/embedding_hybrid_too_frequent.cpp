// An EmbeddingPlan that breaks a rule must not compile, and must name the table and the numbers.
// expect: EmbeddingPlan: table 1 (500x16, hybrid:row/600): 600 frequent rows exceed the 500 rows of the table
// expect: static assertion failed: EmbeddingPlan: a hybrid table replicates at most all its rows and places the rest table-, column-, row- or table-row-wise
#include <strata/embedding/plan.hpp>

using strata::Cluster;
using strata::EmbeddingPlan;
using strata::Hybrid;
using strata::RowWise;
using strata::Table;
using strata::TableWise;

#ifdef STRATA_COMPILE_FAIL
using Plan =
    EmbeddingPlan<Cluster<8>, Table<1000, 16, TableWise>, Table<500, 16, Hybrid<RowWise, 600>>>;
#else
using Plan = EmbeddingPlan<Cluster<8>, Table<1000, 16, TableWise>,
                           Table<500, 16, Hybrid<RowWise, 500>>>;  // the valid control
#endif

constexpr auto used = Plan::num_tables;  // instantiates the plan, and with it the checks
