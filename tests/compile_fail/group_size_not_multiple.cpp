// A Hierarchy that breaks a rule must not compile, and must say which rule, level and numbers.
// expect: Hierarchy: level 2 group size 30 is not a multiple of level 1 group size 8
// expect: static assertion failed: Hierarchy: each group size must be a multiple of the one before (groups nest)
#include <strata/hierarchy/hierarchy.hpp>

using strata::Hierarchy;
using strata::Level;

#ifdef STRATA_COMPILE_FAIL
using Bad = Hierarchy<Level<1, 4>, Level<2, 8>, Level<4, 30>>;
#else
using Bad = Hierarchy<Level<2, 8>, Level<4, 32>, Level<8, 64>>;  // the valid control
#endif

constexpr auto used = Bad::num_levels;
