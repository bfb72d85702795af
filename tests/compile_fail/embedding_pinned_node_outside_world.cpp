// A table-row-wise table pinned to a node that does not exist must not compile, and the message
// must name that table, the node and the cluster's shape.
// expect: EmbeddingPlan: table 1 (100x8, table-row@2): node 2 is outside the 2 nodes of 4 ranks
// expect: static assertion failed: EmbeddingPlan: a pinned table-row-wise table must name an existing node
#include <strata/embedding/plan.hpp>

using strata::Cluster;
using strata::EmbeddingPlan;
using strata::Pinned;
using strata::Table;
using strata::TableRowWise;
using strata::TableWise;

#ifdef STRATA_COMPILE_FAIL
constexpr std::size_t node = 2;
#else
constexpr std::size_t node = 1;  // the valid control: the last node
#endif

using Plan = EmbeddingPlan<Cluster<8, 4>, Table<1000, 16, TableWise>,
                           Table<100, 8, Pinned<TableRowWise, node>>>;

// Naming a static member instantiates the class, and with it the check.
constexpr auto used = Plan::num_tables;
