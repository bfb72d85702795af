// Only level types go into a Hierarchy: the concept names what is missing.
// expect: level_type<Ls>) [with Ls = {strata::Level<2, 8>, int}]
#include <strata/hierarchy/hierarchy.hpp>

#ifdef STRATA_COMPILE_FAIL
using Bad = strata::Hierarchy<strata::Level<2, 8>, int>;
#else
using Bad = strata::Hierarchy<strata::Level<2, 8>>;
#endif

constexpr auto used = Bad::num_levels;
