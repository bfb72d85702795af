// A table with no columns must not compile, and the message must name that table, its shape and
// its placement.
// expect: EmbeddingPlan: table 0 (1000x0, dp): rows and width must be positive
// expect: static assertion failed: EmbeddingPlan: every table needs rows and columns
#include <strata/embedding/plan.hpp>

using strata::Cluster;
using strata::DataParallel;
using strata::EmbeddingPlan;
using strata::Table;
using strata::TableRowWise;

#ifdef STRATA_COMPILE_FAIL
constexpr std::size_t width = 0;
#else
constexpr std::size_t width = 8;  // the valid control
#endif

using Plan =
    EmbeddingPlan<Cluster<8, 4>, Table<1000, width, DataParallel>, Table<100, 8, TableRowWise>>;

// Naming a static member instantiates the class, and with it the check.
constexpr auto used = Plan::num_tables;
