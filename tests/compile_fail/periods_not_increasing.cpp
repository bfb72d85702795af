// A Hierarchy that breaks a rule must not compile, and must say which rule, level and numbers.
// expect: Hierarchy: level 2 period 4 is not greater than level 1 period 8; periods must strictly increase
// expect: static assertion failed: Hierarchy: periods must strictly increase from the smallest group to the largest
#include <strata/hierarchy/hierarchy.hpp>

using strata::Hierarchy;
using strata::Level;

#ifdef STRATA_COMPILE_FAIL
using Bad = Hierarchy<Level<2, 8>, Level<8, 32>, Level<4, 64>>;
#else
using Bad = Hierarchy<Level<2, 8>, Level<4, 32>, Level<8, 64>>;  // the valid control
#endif

constexpr auto used = Bad::num_levels;
