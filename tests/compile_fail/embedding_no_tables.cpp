// An EmbeddingPlan with no table must not compile, and must say so.
// The quoted form is the text carried in the rule's Message argument, printed by the compiler.
// expect: "EmbeddingPlan: needs at least one table"
// expect: static assertion failed: EmbeddingPlan: needs at least one table
#include <strata/embedding/plan.hpp>

using strata::Cluster;
using strata::EmbeddingPlan;
using strata::Table;
using strata::TableWise;

#ifdef STRATA_COMPILE_FAIL
using Plan = EmbeddingPlan<Cluster<8, 4>>;
#else
using Plan = EmbeddingPlan<Cluster<8, 4>, Table<1000, 16, TableWise>>;  // the valid control
#endif

// Naming a static member instantiates the class, and with it the check.
constexpr auto used = Plan::num_tables;
