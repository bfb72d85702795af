// A Hierarchy that breaks a rule must not compile, and must say which rule, level and numbers.
// expect: Hierarchy: level 1 group size 8 is not greater than level 0 group size 32; group sizes must strictly increase
// expect: static assertion failed: Hierarchy: group sizes must strictly increase
#include <strata/hierarchy/hierarchy.hpp>

using strata::Hierarchy;
using strata::Level;

#ifdef STRATA_COMPILE_FAIL
using Bad = Hierarchy<Level<2, 32>, Level<4, 8>>;
#else
using Bad = Hierarchy<Level<2, 8>, Level<4, 32>, Level<8, 64>>;  // the valid control
#endif

constexpr auto used = Bad::num_levels;
