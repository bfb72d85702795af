// A Hierarchy that breaks a rule must not compile, and must say which rule, level and numbers.
// expect: Hierarchy: needs at least one level
// expect: static assertion failed: Hierarchy: needs at least one level
#include <strata/hierarchy/hierarchy.hpp>

using strata::Hierarchy;
using strata::Level;

#ifdef STRATA_COMPILE_FAIL
using Bad = Hierarchy<>;
#else
using Bad = Hierarchy<Level<2, 8>, Level<4, 32>, Level<8, 64>>;  // the valid control
#endif

constexpr auto used = Bad::num_levels;
