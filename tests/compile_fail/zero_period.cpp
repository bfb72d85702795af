// A Hierarchy that breaks a rule must not compile, and must say which rule, level and numbers.
// expect: Hierarchy: level 1 period is 0; periods must be positive
// expect: static assertion failed: Hierarchy: every period must be positive
#include <strata/hierarchy/hierarchy.hpp>

using strata::Hierarchy;
using strata::Level;

#ifdef STRATA_COMPILE_FAIL
using Bad = Hierarchy<Level<2, 8>, Level<0, 32>>;
#else
using Bad = Hierarchy<Level<2, 8>, Level<4, 32>, Level<8, 64>>;  // the valid control
#endif

constexpr auto used = Bad::num_levels;
