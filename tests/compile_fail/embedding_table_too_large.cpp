// An EmbeddingPlan that breaks a rule must not compile, and must name the table and the numbers.
// expect: EmbeddingPlan: table 1 (4611686018427387904x8, row): rows x width elements do not fit in memory addresses
// expect: static assertion failed: EmbeddingPlan: a table must fit in memory addresses
#include <strata/embedding/plan.hpp>

using strata::Cluster;
using strata::EmbeddingPlan;
using strata::RowWise;
using strata::Table;
using strata::TableWise;

#ifdef STRATA_COMPILE_FAIL
using Plan = EmbeddingPlan<Cluster<8>, Table<1000, 16, TableWise>,
                           Table<(std::size_t(1) << 62), 8, RowWise>>;
#else
using Plan = EmbeddingPlan<Cluster<8>, Table<1000, 16, TableWise>,
                           Table<(std::size_t(1) << 20), 8, RowWise>>;  // the valid control
#endif

constexpr auto used = Plan::num_tables;  // instantiates the plan, and with it the checks
